"""Video end to end: frames/s and resident memory over the length of a video.

Makes a synthetic 1280x720 video (default 5 minutes at 15 frames/s, MPEG-4) from the test
photos: two faces (the astronaut and her mirror image, from the packaged photo and
shared/photos) gliding across the coffee photo on crossing paths, at sizes that change slowly.
Nothing is downloaded; the video lives in a temporary folder unless --video names a file to
keep (an existing one is reused, which saves making it again).

Each row is one fresh process that runs the video up to the last mark (--marks, minutes of
video) through what `qcsfer predict VIDEO --out DIR` runs for it (VideoAnalysis and every
output: frames.csv/jsonl, tracks, timelines, annotated video) for one detector and sampling. At
each mark it records the resident memory now (VmRSS) and the peak so far (VmHWM); at the end,
with every file closed and the timelines drawn, the peak again (ru_maxrss). Memory that does
not grow with the video's length reads the same from mark to mark. Speed: video frames decoded
per wall second (the real-time factor at 1 = the video's rate) and per CPU-second of the process
(less sensitive to other work on a shared machine).

    python benchmarks/video.py [--minutes 5] [--fps 15] [--marks 1 2 5] [--every 1 5]

prints a markdown table (and writes it with the raw numbers to --json when given).
--tracemalloc adds the Python heap at each mark and where it grew most between the first and
the last mark (Python objects, numpy arrays; not PyTorch's or OpenCV's own memory; RSS then
includes tracemalloc's own records);
--env KEY=VALUE runs the measured processes with that variable (e.g. MALLOC_ARENA_MAX=2).
"""

from __future__ import annotations

import argparse
import json
import math
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
    video: Path, detector: str, every: int, out: Path, threads: int, marks: list[float], trace: bool
) -> dict:
    """The video up to the last mark (minutes) with every output on, in this process; memory
    at each mark."""
    import torch

    from qcsfer.inference.recognizer import ExpressionRecognizer
    from qcsfer.inference.video import VideoAnalysis
    from qcsfer.inference.video_outputs import with_outputs

    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    recognizer = ExpressionRecognizer("default", detector=detector)
    if trace:
        tracemalloc.start()
    end = max(marks) * 60
    analysis = VideoAnalysis(recognizer, video, every=every, end=end, keep_images=True)
    waiting, points, snapshots = sorted(marks), [], []
    sampled = faces = 0
    tracks: set[int] = set()
    start, cpu_start = time.perf_counter(), _cpu_seconds()
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
            print(json.dumps({"detector": detector, "every": every, **point}), file=sys.stderr)
    wall, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
    decoded = analysis.stats.decoded
    row = {
        "detector": detector,
        "every": every,
        "video_seconds": analysis.stats.position / analysis.stats.fps,
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
    }
    if len(snapshots) > 1:
        grown = snapshots[-1].compare_to(snapshots[0], "lineno")[:5]
        row["traced_growth"] = [str(stat) for stat in grown]
    return row


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


def run(video: Path, detector: str, every: int, args: argparse.Namespace) -> dict:
    """`measure` in a fresh process (its memory is its own)."""
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, __file__, "--measure", str(video), detector, str(every), out]
        command += [str(args.threads), ",".join(map(str, args.marks)), str(int(args.tracemalloc))]
        env = {**os.environ, **dict(item.split("=", 1) for item in args.env)}
        done = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True, env=env)
        return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--measure":
        video, detector, every, out, threads, marks, trace = sys.argv[2:9]
        minutes = [float(m) for m in marks.split(",")]
        numbers = measure(
            Path(video), detector, int(every), Path(out), int(threads), minutes, trace == "1"
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
    parser.add_argument("--detectors", nargs="+", default=["alt2", "mtcnn"])
    parser.add_argument("--every", type=int, nargs="+", default=[1, 5])
    parser.add_argument(
        "--threads", type=int, default=1, help="torch and OpenCV threads (1: fair when shared)"
    )
    parser.add_argument("--tracemalloc", action="store_true", help="also the Python heap")
    parser.add_argument("--env", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    args.marks = [m for m in args.marks if m <= args.minutes] or [args.minutes]
    with tempfile.TemporaryDirectory() as folder:
        video = args.video or Path(folder) / "faces-720p.mp4"
        if not video.is_file():
            started = time.perf_counter()
            make_video(video, args.minutes, args.fps)
            print(
                f"made {args.minutes:g} min of 720p video in {time.perf_counter() - started:.0f} s"
            )
        rows = []
        for detector in args.detectors:
            for every in args.every:
                rows.append(run(video, detector, every, args))
                print(json.dumps(rows[-1]), flush=True)
    print(markdown(rows, args.marks))
    if args.json is not None:
        machine = f"{platform.machine()}, {platform.processor() or 'cpu'}"
        report = {"machine": machine, "command": " ".join(sys.argv), "env": args.env, "rows": rows}
        args.json.write_text(json.dumps(report, indent=2) + "\n")


def markdown(rows: list[dict], marks: list[float]) -> str:
    at = " / ".join(f"{m:g}" for m in marks)
    table = [
        f"| detector | --every | sampled frames | faces | tracks | video frames/s (wall) "
        f"| video frames per CPU-s | RSS (MB) at {at} min | peak RSS (MB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        rss = " / ".join(f"{p['rss_mb']:.0f}" for p in r["marks"])
        table.append(
            f"| {r['detector']} | {r['every']} | {r['sampled']} | {r['faces']} | {r['tracks']} "
            f"| {r['video_fps']:.1f} | {r['video_frames_per_cpu_s']:.1f} | {rss} "
            f"| {r['peak_rss_mb']:.0f} |"
        )
    return "\n".join(table)


if __name__ == "__main__":
    main()
