"""Video end to end: frames/s and peak memory of `qcsfer predict VIDEO --out DIR`.

Makes a synthetic 1280x720 video (default 5 minutes at 15 frames/s, MPEG-4) in a temporary
folder from the test photos: two faces (the astronaut and her mirror image, from the packaged
photo and shared/photos) gliding across the coffee photo on crossing paths, at sizes that
change slowly. Nothing is downloaded and nothing large stays behind.

Each measurement runs `run_predict` (decode + detect + classify + track + smooth + write every
output: frames.csv/jsonl, tracks, timelines, annotated video) in a fresh process, so its peak
resident memory (ru_maxrss) is its own:
- speed: both detectors (Haar alt2, MTCNN) at --every 1 and --every 5 on the first
  `--seconds` of the video: video frames/s (decoded frames per wall second, the real-time
  factor at 1 = the video's rate), sampled frames/s (frames run through the model), and video
  frames per CPU-second of the process (less sensitive to other work on a shared machine);
- memory: Haar --every 5 over the first minute and over all 5 minutes: peak RSS must not grow
  with the video's length.

    python benchmarks/video.py [--minutes 5] [--seconds 20] [--fps 15]

prints a markdown table (and writes it with the raw numbers to --json when given).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "src" / "qcsfer" / "assets"
PHOTOS = ROOT.parent / "shared" / "photos"
SIZE = (1280, 720)
HEAD = (145, 40, 305, 200)  # the astronaut's head in the 512 px photo


def _photo(name: str) -> np.ndarray:
    """A test photo (BGR): the shared PNG when present, else the packaged JPEG."""
    shared = PHOTOS / f"{name}.png"
    path = shared if shared.is_file() else ASSETS / f"{name}.jpg"
    image = cv2.imread(str(path))
    if image is None:
        raise SystemExit(f"cannot read {path}")
    return image


def make_video(path: Path, minutes: float, fps: int) -> Path:
    """Two faces crossing over a photo background, `minutes` long at `fps` frames/s."""
    background = cv2.resize(_photo("coffee"), SIZE, interpolation=cv2.INTER_AREA)
    head = _photo("astronaut")[HEAD[1] : HEAD[3], HEAD[0] : HEAD[2]]
    heads = [head, np.ascontiguousarray(head[:, ::-1])]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, SIZE)
    if not writer.isOpened():
        raise SystemExit("OpenCV cannot write MPEG-4 video here")
    for i in range(round(minutes * 60 * fps)):
        t = i / fps
        frame = background.copy()
        for k, sprite in enumerate(heads):
            side = round(200 + 60 * math.sin(0.3 * t + k))
            face = cv2.resize(sprite, (side, side), interpolation=cv2.INTER_AREA)
            phase = 0.21 * t + k * math.pi  # the two move in opposite directions and cross
            x = round((SIZE[0] - side) * (0.5 + 0.5 * math.sin(phase)))
            y = round((SIZE[1] - side) * (0.5 + 0.3 * math.sin(0.13 * t + k)))
            frame[y : y + side, x : x + side] = face
        writer.write(frame)
    writer.release()
    return path


def measure(
    video: Path, detector: str, every: int, seconds: float, out: Path, threads: int
) -> dict:
    """One run of predict with every output on, in this process; its numbers."""
    import torch

    from qcsfer.inference.recognizer import ExpressionRecognizer
    from qcsfer.inference.runner import run_predict

    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    recognizer = ExpressionRecognizer("default", detector=detector)
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    summary = run_predict(
        recognizer,
        [str(video)],
        fmt="csv",
        out_dir=out,
        every=every,
        video={"end": seconds},
        stdout=io.StringIO(),
        stderr=io.StringIO(),
        progress=False,
    )
    wall, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
    capture = cv2.VideoCapture(str(video))
    fps, length = capture.get(cv2.CAP_PROP_FPS), capture.get(cv2.CAP_PROP_FRAME_COUNT)
    capture.release()
    decoded = min(math.ceil(seconds * fps), int(length))  # every frame is decoded
    return {
        "detector": detector,
        "every": every,
        "video_seconds": seconds,
        "threads": threads,
        "sampled": summary.frames,
        "faces": summary.faces,
        "wall_s": wall,
        "video_fps": decoded / wall,
        "sampled_fps": summary.frames / wall,
        "cpu_s": cpu,
        "video_frames_per_cpu_s": decoded / cpu,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _cpu_seconds() -> float:
    """User + system CPU time of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run(video: Path, detector: str, every: int, seconds: float, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, __file__, "--measure", str(video), detector, str(every)]
        command += [str(seconds), out, str(threads)]
        done = subprocess.run(command, check=True, capture_output=True, text=True)
        return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--measure":
        video, detector, every, seconds, out, threads = sys.argv[2:8]
        numbers = measure(
            Path(video), detector, int(every), float(seconds), Path(out), int(threads)
        )
        print(json.dumps(numbers))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="length of the test video")
    parser.add_argument("--seconds", type=float, default=20.0, help="video seconds per speed run")
    parser.add_argument("--fps", type=int, default=15, help="frame rate of the test video")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch and OpenCV threads (1: fair when shared)"
    )
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        video = make_video(Path(folder) / "faces-720p.mp4", args.minutes, args.fps)
        print(f"made {args.minutes:g} min of 720p video in {time.perf_counter() - started:.0f} s")
        for detector in ("alt2", "mtcnn"):
            for every in (1, 5):
                rows.append(run(video, detector, every, args.seconds, args.threads))
                print(json.dumps(rows[-1]), flush=True)
        for minutes in (1.0, args.minutes):
            rows.append(run(video, "alt2", 5, minutes * 60, args.threads))
            print(json.dumps(rows[-1]), flush=True)
    table = [
        "| detector | --every | video | sampled frames | faces | video frames/s "
        "| sampled frames/s | video frames per CPU-s | peak RSS (MB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        table.append(
            f"| {r['detector']} | {r['every']} | {r['video_seconds']:g} s | {r['sampled']} "
            f"| {r['faces']} | {r['video_fps']:.1f} | {r['sampled_fps']:.1f} "
            f"| {r['video_frames_per_cpu_s']:.1f} | {r['peak_rss_mb']:.0f} |"
        )
    print("\n".join(table))
    if args.json is not None:
        machine = f"{platform.machine()}, {platform.processor() or 'cpu'}"
        args.json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
