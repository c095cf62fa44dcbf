"""Face detectors compared (Haar, MTCNN, BlazeFace): recall, false alarms, time per image, and
the expressions read through each one's crops.

Test set, made deterministically from shared/ (no download; detector_scenes.py): composed
scenes with 1-4 faces (FERPlus validation faces and the astronaut's head, 60-300 px) pasted
without overlap on plain, noise or photo (coffee.png) backgrounds, some scenes larger than the
detector's 1280 px limit, plus the two shared photos (astronaut.png: one face, coffee.png: none).

A detection is a hit when it is centred on a not yet matched true face and of a similar size
(see `matches`); every other detection, duplicates included, is a false alarm. FERPlus faces
include profiles, occlusions and low-contrast faces that no frontal detector finds, so recall
is a relative measure between detectors. MTCNN needs its weights installed (`make setup` does).
Every configuration is scored and timed at the first --threads count (OpenCV and torch threads),
and each detector's default configuration is timed again at each count on the first scenes.

The photo path (benchmarks/photo_path.py; --photo-faces, 0 skips it): FERPlus Valid faces
pasted one per photo-like scene at 80-300 px, read by `ExpressionRecognizer` with each
detector at its default settings and margin, as `qcsfer predict` reads a photo: detection rate,
false alarms, accuracy, where the box sits against the FERPlus crop, and (BlazeFace) the
accuracy of its found faces at each --margins. Video frames (--video-frames): frames drawn as
benchmarks/video.py draws its video, faces found per detector.

    python benchmarks/detectors.py [--scenes 40] [--threads 1 2] [--photo-faces 300] [--out F]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from detector_scenes import FER_VALID, PHOTOS, Scene, make_scenes, video_frames
from face_matching import Box, matches

from qcsfer.inference.detection.blazeface import SCORE_THRESHOLD, BlazeFaceDetector
from qcsfer.inference.detectors import make_detector
from qcsfer.inference.faces import Detector, Face
from qcsfer.inference.haar import HaarDetector
from qcsfer.inference.mtcnn import MTCNNDetector

PHOTO_DETECTORS = ("alt2", "mtcnn", "blazeface", "blazeface-back")


def score(found: list[Face], truths: list[Box]) -> tuple[int, int]:
    """(hits, false alarms); each true face matches at most one detection."""
    free = list(truths)
    hits = 0
    for face in sorted(found, key=lambda f: -(f.score or 0)):
        match = next((t for t in free if matches(face.box, t)), None)
        if match is not None:
            free.remove(match)
            hits += 1
    return hits, len(found) - hits


def configs() -> list[tuple[str, str, Detector]]:
    return [
        ("alt2", "minNeighbors 5", HaarDetector("alt2", min_neighbors=5)),
        ("alt2", "minNeighbors 3", HaarDetector("alt2", min_neighbors=3)),
        ("default", "minNeighbors 5", HaarDetector("default", min_neighbors=5)),
        ("default", "minNeighbors 3", HaarDetector("default", min_neighbors=3)),
        ("mtcnn", "thresholds 0.6/0.7/0.7", MTCNNDetector(thresholds=(0.6, 0.7, 0.7))),
        ("mtcnn", "thresholds 0.6/0.7/0.8 (default)", MTCNNDetector()),
        ("mtcnn", "thresholds 0.6/0.7/0.95", MTCNNDetector(thresholds=(0.6, 0.7, 0.95))),
        *[
            (name, f"score {t}{' (default)' if t == SCORE_THRESHOLD else ''}",
             BlazeFaceDetector(variant, threshold=t))
            for name, variant in (("blazeface", "front"), ("blazeface-back", "back"))
            for t in (0.5, 0.65, 0.75)
        ],
    ]  # fmt: skip


def timed(
    detector: Detector, scenes: list[Scene], threads: int, repeats: int
) -> tuple[list[float], list[float]]:
    """Per scene, best of `repeats`: wall and process-CPU milliseconds with `threads` threads.

    CPU time is the steadier measure on a shared machine: other work delays the wall clock but
    does not add to this process's CPU time.
    """
    cv2.setNumThreads(threads)
    torch.set_num_threads(threads)
    wall, cpu = [], []
    for scene in scenes:
        detector.detect(scene.image[:64, :64])  # warm-up outside the timing
        best, best_cpu = float("inf"), float("inf")
        for _ in range(repeats):
            start, start_cpu = time.perf_counter(), time.process_time()
            detector.detect(scene.image)
            best = min(best, time.perf_counter() - start)
            best_cpu = min(best_cpu, time.process_time() - start_cpu)
        wall.append(best * 1000)
        cpu.append(best_cpu * 1000)
    return wall, cpu


def scenes_table(args: argparse.Namespace) -> list[str]:
    scenes = make_scenes(args.scenes, args.seed)
    total = sum(len(s.faces) for s in scenes)
    lines = [
        f"{len(scenes)} images ({len(scenes) - 2} composed + astronaut.png + coffee.png), "
        f"{total} faces; OpenCV {cv2.__version__}, torch {torch.__version__}; ms / image: "
        f"median, best of {args.repeats}, {args.threads[0]} thread(s), in brackets CPU ms\n",
        "| detector | settings | recall | false alarms | images with false alarms "
        "| astronaut (1 face) | coffee (0) | ms / image (CPU ms) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    for name, settings, detector in configs():
        cv2.setNumThreads(args.threads[0])
        torch.set_num_threads(args.threads[0])
        hits = alarms = alarm_images = 0
        per_photo = {}
        for scene in scenes:
            h, a = score(detector.detect(scene.image), scene.faces)
            hits, alarms, alarm_images = hits + h, alarms + a, alarm_images + (a > 0)
            if scene.name.endswith(".png"):
                per_photo[scene.name] = f"{h} found, {a} false"
        wall, cpu = timed(detector, scenes, args.threads[0], args.repeats)
        lines.append(
            f"| {name} | {settings} | {hits}/{total} ({hits / total:.0%}) | {alarms} "
            f"| {alarm_images}/{len(scenes)} | {per_photo['astronaut.png']} "
            f"| {per_photo['coffee.png']} "
            f"| {statistics.median(wall):.1f} ({statistics.median(cpu):.1f}) |"
        )
        print(lines[-1], flush=True)
    return lines


def threads_table(args: argparse.Namespace) -> list[str]:
    """Each detector at its defaults, timed at every --threads count on the first scenes."""
    scenes = make_scenes(args.scenes, args.seed)[: args.timing_scenes]
    lines = [
        f"\nthreads: the first {len(scenes)} scenes, each detector at its defaults; ms / image: "
        "median, in brackets CPU ms\n",
        "| detector | " + " | ".join(f"{t} thread{'s' * (t > 1)}" for t in args.threads) + " |",
        "|---|" + "---|" * len(args.threads),
    ]
    for name in PHOTO_DETECTORS:
        detector = make_detector(name)
        cells = []
        for threads in args.threads:
            wall, cpu = timed(detector, scenes, threads, args.repeats)
            cells.append(f"{statistics.median(wall):.1f} ({statistics.median(cpu):.1f})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    print("\n".join(lines), flush=True)
    return lines


def photo_path_table(args: argparse.Namespace) -> list[str]:
    """Expressions read through each detector's crops: benchmarks/photo_path.py's scenes."""
    from photo_path import Reading, load_photos, make_scene, read_scene
    from robustness import CLEAN, photo_summary, run_condition, sample_valid

    from qcsfer.inference.recognizer import ExpressionRecognizer

    cv2.setNumThreads(args.threads[0])
    torch.set_num_threads(args.threads[0])
    faces, targets = sample_valid(FER_VALID.parent, args.photo_faces, args.seed)
    photos = load_photos(PHOTOS)
    direct = run_condition(ExpressionRecognizer(detect=False), CLEAN, faces, args.seed)
    readers = {name: ExpressionRecognizer(detector=name) for name in PHOTO_DETECTORS}
    readings: dict[str, list[Reading]] = {name: [] for name in readers}
    for i, face in enumerate(faces):
        scene = make_scene(face, np.random.default_rng([args.seed, 1, i]), photos)
        for name, reader in readers.items():
            margins = args.margins if name.startswith("blazeface") else ()
            readings[name].append(read_scene(reader, scene, margins))
    lines = [
        f"\nphoto path: {len(faces)} FERPlus Valid faces (seed {args.seed}), each pasted into "
        "a scene and read by the recognizer with each detector at its own margin\n",
        "| detector | margin | faces found | false alarms | accuracy, all faces (missed = wrong) "
        "| accuracy, faces found | direct crops, same faces | FERPlus side / box side "
        "| box centre dy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    sweeps = []
    for name, reader in readers.items():
        margins = args.margins if name.startswith("blazeface") else ()
        p = photo_summary(reader, readings[name], targets, direct, margins)
        frame = p.get("framing", {})
        lines.append(
            f"| {name} | {p['margin']:g} | {p['detection_rate']:.1%} | {p['false_alarms']} "
            f"| {p['all_faces']['accuracy']:.2%} | {p['detected_faces']['accuracy']:.2%} "
            f"| {p['direct_crop_same_faces']['accuracy']:.2%} "
            f"| {frame.get('true_side_over_box_side', float('nan')):.3f} "
            f"| {frame.get('centre_offset_y', float('nan')):+.3f} |"
        )
        if margins:
            row = " | ".join(f"{p['margins'][f'{m:g}']['accuracy']:.2%}" for m in margins)
            sweeps.append(f"| {name}: accuracy on found faces | {row} |")
    if sweeps:
        lines += ["", "| margin | " + " | ".join(f"{m:g}" for m in args.margins) + " |"]
        lines += ["|---|" + "---|" * len(args.margins), *sweeps]
    print("\n".join(lines), flush=True)
    return lines


def video_table(args: argparse.Namespace) -> list[str]:
    frames = video_frames(args.video_frames)
    lines = [
        f"\nvideo frames: {len(frames)} frames like benchmarks/video.py's (1280x720, two faces "
        f"140-260 px), each detector at its defaults, {args.threads[0]} thread(s)\n",
        "| detector | faces found | false alarms | ms / frame, median (CPU ms) |",
        "|---|---|---|---|",
    ]
    for name in PHOTO_DETECTORS:
        detector = make_detector(name)
        hits = alarms = 0
        for frame in frames:
            h, a = score(detector.detect(frame.image), frame.faces)
            hits, alarms = hits + h, alarms + a
        wall, cpu = timed(detector, frames, args.threads[0], args.repeats)
        ms = f"{statistics.median(wall):.1f} ({statistics.median(cpu):.1f})"
        lines.append(f"| {name} | {hits}/{2 * len(frames)} | {alarms} | {ms} |")
    print("\n".join(lines), flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenes", type=int, default=40, help="composed scenes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="timed at each")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per image")
    parser.add_argument("--photo-faces", type=int, default=300, help="photo path faces (0: none)")
    parser.add_argument(
        "--margins", type=lambda t: tuple(float(m) for m in t.split(",")),
        default=(0.0, 0.05, 0.1, 0.15), help="crop margins swept for BlazeFace on the photo path",
    )  # fmt: skip
    parser.add_argument(
        "--timing-scenes", type=int, default=10, help="scenes timed per thread count"
    )
    parser.add_argument("--video-frames", type=int, default=40, help="video frames (0: none)")
    parser.add_argument("--out", type=Path, help="also write the tables to this markdown file")
    args = parser.parse_args()
    lines = scenes_table(args)
    if len(args.threads) > 1:
        lines += threads_table(args)
    if args.video_frames:
        lines += video_table(args)
    if args.photo_faces:
        lines += photo_path_table(args)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
