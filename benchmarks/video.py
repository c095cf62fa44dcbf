"""Video end to end: frames/s, how well faces were found and read, and resident memory.

Makes a synthetic 1280x720 video (default 5 minutes at 15 frames/s, MPEG-4) from the test
photos: two faces (the astronaut and her mirror image, from the packaged photo and
shared/photos) gliding across the coffee photo on crossing paths, at sizes that change slowly.
Nothing is downloaded; the video lives in a temporary folder unless --video names a file to
keep (an existing one is reused, which saves making it again; it must be this script's).

Each row is one fresh process that runs the video up to the last mark (--marks, minutes of
video) through what `qcsfer predict VIDEO --out DIR` runs for it (VideoAnalysis and every
output: frames.csv/jsonl, tracks, timelines, annotated video) for one detector (DETECTOR, or
DETECTOR@SECONDS between full-frame detections) and sampling. `--rounds N` runs every
configuration N times, alternating, so that they are compared side by side under the same load.
Speed: video frames decoded per wall second (the real-time factor at 1 = the video's rate) and
per CPU-second of the process (less sensitive to other work on a shared machine), and each
configuration's ratio to the first one's, round by round. Quality, against the true face
squares the video was made with (video_truth.py): visible faces found, tracks, id switches, the
share of faces read as the label `predict` gives the astronaut photo (MTCNN), and the share read
the same as by the first configuration; boxes go to faces by the top square rule, and found and
label right also by one-to-one matching (`video_truth.assign`). Memory: at each mark the
resident memory now (VmRSS) and the peak so far (VmHWM); at the end, with every file closed and
the timelines drawn, the peak again (ru_maxrss). Memory that does not grow with the video's
length reads the same from mark to mark: one throwaway timeline is drawn before the first mark
(matplotlib's one-off cost, recorded as `first_timeline`), and the per-frame records the quality
scores need are read back from frames.jsonl after the last mark rather than kept in this
process.

    python benchmarks/video.py [--minutes 5] [--fps 15] [--marks 1 2 5] [--every 1 5] \
        [--detectors mtcnn blazeface-back] [--rounds 2] [--profile]

prints markdown tables (and writes them with the raw numbers to --json when given).
--profile adds the main thread's CPU ms per frame of each stage (cProfile, which inflates
Python-heavy stages; the annotated video is drawn and encoded in another thread, not counted);
--tracemalloc adds the Python heap at each mark and where it grew most between the first and
the last mark (Python objects, numpy arrays; not PyTorch's or OpenCV's own memory; RSS then
includes tracemalloc's own records);
--env KEY=VALUE runs the measured processes with that variable (e.g. MALLOC_ARENA_MAX=2).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
from video_report import markdown, ratios, stages
from video_truth import SIZE, agreement, placements, score

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "src" / "qcsfer" / "assets"
PHOTOS = ROOT.parent / "shared" / "photos"
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
        frame = background.copy()
        for sprite, (x, y, side) in zip(heads, placements(i, fps), strict=True):
            face = cv2.resize(sprite, (side, side), interpolation=cv2.INTER_AREA)
            frame[y : y + side, x : x + side] = face
        writer.write(frame)
    writer.release()
    return path


def measure(
    video: Path,
    spec: str,
    every: int,
    out: Path,
    threads: int,
    marks: list[float],
    trace: bool,
    profile: bool = False,
) -> dict:
    """The video up to the last mark (minutes) with every output on, in this process; memory
    at each mark. spec: DETECTOR or DETECTOR@SECONDS (full-frame detection interval)."""
    import cProfile

    import torch

    from qcsfer.inference.recognizer import ExpressionRecognizer
    from qcsfer.inference.video import VideoAnalysis
    from qcsfer.inference.video.outputs import with_outputs

    detector, _, interval = spec.partition("@")
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    recognizer = ExpressionRecognizer("default", detector=detector)
    if trace:
        tracemalloc.start()
    end = max(marks) * 60
    analysis = VideoAnalysis(
        recognizer,
        video,
        every=every,
        end=end,
        keep_images=True,
        detect_interval=float(interval) if interval else None,
    )
    waiting, points, snapshots = sorted(marks), [], []
    sampled = faces = 0
    tracks: set[int] = set()
    before_warm = _status_mb()["rss_mb"]
    _warm_timelines(out / "warm-up.png", recognizer.classes)
    warm = {"rss_before_mb": before_warm, "rss_after_mb": _status_mb()["rss_mb"]}
    profiler = cProfile.Profile(time.thread_time) if profile else None
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    if profiler is not None:
        profiler.enable()
    for frame in with_outputs(analysis, out, []):
        sampled += 1
        faces += len(frame.predictions)
        tracks.update(p.track for p in frame.predictions)
        while waiting and frame.time + analysis.step >= waiting[0] * 60 - 1e-6:
            point = {"minute": waiting.pop(0), "wall_s": time.perf_counter() - start}
            point |= {"cpu_s": _cpu_seconds() - cpu_start, **_status_mb()}
            point["timelines_drawn"] = len(list(out.glob("timelines/*.png")))
            if trace:
                point["traced_mb"] = tracemalloc.get_traced_memory()[0] / 2**20
                snapshots[1:] = [tracemalloc.take_snapshot()]  # first and latest only
            points.append(point)
            print(json.dumps({"detector": spec, "every": every, **point}), file=sys.stderr)
    if profiler is not None:
        profiler.disable()
    wall, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
    decoded = analysis.stats.decoded
    row = {
        "detector": spec,
        "every": every,
        "detect_interval": analysis.finder.interval,
        "detections": analysis.finder.detections,
        "video_seconds": analysis.stats.position / analysis.stats.fps,
        "fps": analysis.stats.fps,
        "threads": threads,
        "sampled": sampled,
        "faces": faces,
        "tracks": len(tracks),
        "wall_s": wall,
        "video_fps": decoded / wall,
        "cpu_s": cpu,
        "video_frames_per_cpu_s": decoded / cpu,
        "marks": points,
        "rss_end_mb": _status_mb()["rss_mb"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "first_timeline": warm,
        "records": _records(out / "frames.jsonl"),
    }
    if profiler is not None:
        row["stage_ms_per_frame"] = stages(profiler, sampled)
    if len(snapshots) > 1:
        grown = snapshots[-1].compare_to(snapshots[0], "lineno")[:5]
        row["traced_growth"] = [str(stat) for stat in grown]
    return row


def _warm_timelines(path: Path, classes: list[str]) -> None:
    """Draw one throwaway timeline: matplotlib's one-off cost (import, fonts: ~37 MB) is then
    paid before the first mark instead of between two marks, where it read as growth."""
    from qcsfer.inference.video.timeline import Timeline, draw_timeline

    timeline = Timeline()
    for i in range(3):
        timeline.add(i / 10, np.full(len(classes), 1 / len(classes)))
    draw_timeline(timeline, classes, path, "warm-up", 1.0)
    path.unlink(missing_ok=True)


def _records(frames_jsonl: Path) -> list[dict]:
    """Each sampled frame's faces (track, box, labels), read back from the run's frames.jsonl
    after the marks: kept in a list during the run they grew by ~0.8 MB per 1,000 frames."""
    records = []
    with frames_jsonl.open(encoding="utf-8") as lines:
        for line in lines:
            frame = json.loads(line)
            keys = ("track", "box", "label", "raw_label")
            faces = [{k: face[k] for k in keys} for face in frame["faces"]]
            records.append({"frame": frame["frame"], "faces": faces})
    return records


def _status_mb() -> dict[str, float]:
    """Resident memory now (VmRSS) and its peak so far (VmHWM), in MB."""
    fields = {"VmRSS:": "rss_mb", "VmHWM:": "hwm_mb"}
    numbers = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, *value = line.split()
        if name in fields:
            numbers[fields[name]] = int(value[0]) / 1024
    return numbers


def _cpu_seconds() -> float:
    """User + system CPU time of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run(video: Path, spec: str, every: int, args: argparse.Namespace) -> dict:
    """`measure` in a fresh process (its memory is its own)."""
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, __file__, "--measure", str(video), spec, str(every), out]
        command += [str(args.threads), ",".join(map(str, args.marks)), str(int(args.tracemalloc))]
        command += [str(int(args.profile))]
        env = {**os.environ, **dict(item.split("=", 1) for item in args.env)}
        done = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True, env=env)
        return json.loads(done.stdout.strip().splitlines()[-1])


def reference_labels() -> list[str]:
    """The label `qcsfer predict` (photo path, MTCNN) gives the astronaut's face and its mirror
    image: what each face of the video is expected to read as."""
    from qcsfer.inference.recognizer import ExpressionRecognizer

    recognizer = ExpressionRecognizer("default", detector="mtcnn")
    photo = cv2.cvtColor(_photo("astronaut"), cv2.COLOR_BGR2RGB)
    labels = []
    for image in (photo, np.ascontiguousarray(photo[:, ::-1])):
        faces = recognizer(image)
        labels.append(max(faces, key=lambda f: f.detector_score or 0).label if faces else "")
    return labels


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--measure":
        video, spec, every, out, threads, marks, trace, profile = sys.argv[2:10]
        minutes = [float(m) for m in marks.split(",")]
        numbers = measure(
            Path(video),
            spec,
            int(every),
            Path(out),
            int(threads),
            minutes,
            trace == "1",
            profile == "1",
        )
        print(json.dumps(numbers))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="length of the test video")
    parser.add_argument("--fps", type=int, default=15, help="frame rate of the test video")
    parser.add_argument("--video", type=Path, help="keep the test video here (reused if there)")
    parser.add_argument(
        "--marks", type=float, nargs="+", default=[1, 2, 5], help="minutes of video to record at"
    )
    parser.add_argument(
        "--detectors",
        nargs="+",
        default=["mtcnn", "blazeface-back"],
        help="DETECTOR or DETECTOR@SECONDS between full-frame detections (default: the video "
        "path's, 0.1 s for BlazeFace, 0 = every frame otherwise)",
    )
    parser.add_argument("--every", type=int, nargs="+", default=[1, 5])
    parser.add_argument(
        "--threads", type=int, default=1, help="torch and OpenCV threads (1: fair when shared)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every configuration this many times, alternating (side by side)",
    )
    parser.add_argument("--profile", action="store_true", help="main-thread CPU ms per stage")
    parser.add_argument("--tracemalloc", action="store_true", help="also the Python heap")
    parser.add_argument("--env", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    args.marks = [m for m in args.marks if m <= args.minutes] or [args.minutes]
    reference = reference_labels()
    print(f"reference labels (photo path, MTCNN): {reference}", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        video = args.video or Path(folder) / "faces-720p.mp4"
        if not video.is_file():
            started = time.perf_counter()
            make_video(video, args.minutes, args.fps)
            print(
                f"made {args.minutes:g} min of 720p video in {time.perf_counter() - started:.0f} s"
            )
        rows = []
        for round_ in range(args.rounds):
            for every in args.every:
                first = None
                for spec in args.detectors:
                    row = run(video, spec, every, args)
                    row["round"] = round_ + 1
                    row["truth"] = score(row["records"], row["fps"], reference)
                    row["truth_matched"] = score(row["records"], row["fps"], reference, "matched")
                    if first is None:
                        first = row
                    row["agreement_with_first"] = agreement(
                        row["records"], first["records"], row["fps"]
                    )
                    rows.append(row)
                    print(json.dumps({k: v for k, v in row.items() if k != "records"}), flush=True)
                for row in rows:
                    row.pop("records", None)
    print(markdown(rows, args.marks))
    print(ratios(rows, args.detectors))
    if args.json is not None:
        machine = f"{platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()}"
        report = {
            "machine": machine,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "command": " ".join(sys.argv),
            "env": args.env,
            "reference": reference,
            "rows": rows,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
