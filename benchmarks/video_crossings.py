"""Video at the crossings: faces found, id switches and labels where the two faces meet.

benchmarks/video.py's synthetic video has its two faces cross every 15 s (its x paths meet at
t = k * pi / 0.21 s). This script reads a window around each crossing (from 1.5 s before to
3 s after, 68 frames at 15 frames/s) with `recognizer.video(start=..., end=...)`, for each
detector spec (DETECTOR or DETECTOR@SECONDS between full-frame detections, as video.py), the
specs alternating per window so that they are compared side by side under the same load, and
scores every window against the true face squares (video_truth.py). No outputs are written:
this measures finding and tracking, not the files.

    python benchmarks/video_crossings.py [--video faces-50s.mp4] [--at 15 30 45] \
        [--detectors mtcnn blazeface-back blazeface-back:before] [--misses]

`:before` after a spec turns the crossing rules off (no bridging while faces are near, missed
tracks searched for around where they are expected: `video/detect.py`), for a side-by-side
before and after. Boxes are scored as video.py scores them (a box goes to the face whose square
holds its centre, the one on top first) and, in further columns, with the nearer centre
deciding between two squares (a box on the visible half of a half-hidden face often has its
centre just inside the square of the face on top) and by one-to-one matching
(`video_truth.assign`).

prints a markdown table (and the raw numbers to --json when given); --misses also lists the
frames where a visible face was not found.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

from video import make_video, reference_labels
from video_truth import assign, placements, score, visible

BEFORE, AFTER = 1.5, 3.0  # seconds of each window before and after the crossing


def window(recognizer: object, video: Path, at: float, spec: str) -> dict:
    """One crossing's records, full-frame detections and CPU seconds. spec: DETECTOR,
    DETECTOR@SECONDS, and `:before` for the path without its crossing rules."""
    spec, before, _ = spec.partition(":before")
    interval = spec.partition("@")[2]
    analysis = recognizer.video(  # type: ignore[attr-defined]
        video,
        start=at - BEFORE,
        end=at + AFTER,
        detect_interval=float(interval) if interval else None,
    )
    analysis.finder.search = not before
    records = []
    cpu = _cpu_seconds()
    for frame in analysis:
        faces = [
            {"track": p.track, "box": list(p.box), "label": p.label, "raw_label": p.raw_label}
            for p in frame.predictions
        ]
        records.append({"frame": frame.frame, "faces": faces})
    cpu = _cpu_seconds() - cpu
    return {
        "records": records,
        "detections": analysis.finder.detections,
        "searches": analysis.finder.searches,
        "fps": analysis.stats.fps,
        "cpu_s": cpu,
    }


def misses(records: list[dict], fps: float) -> list[str]:
    """Frames where a visible true face was not found (boxes go to faces as `score` says)."""
    out = []
    for record in records:
        squares = placements(record["frame"], fps)
        taken = assign([face["box"] for face in record["faces"]], squares)
        for k, seen in enumerate(visible(record["frame"], fps)):
            if seen and k not in taken:
                out.append(f"frame {record['frame']} face {k}")
    return out


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, help="keep the test video here (reused if there)")
    parser.add_argument("--at", type=float, nargs="+", default=[15.0, 30.0, 45.0])
    parser.add_argument(
        "--detectors", nargs="+", default=["mtcnn", "blazeface-back", "blazeface-back:before"]
    )
    parser.add_argument("--threads", type=int, default=1, help="torch and OpenCV threads")
    parser.add_argument("--misses", action="store_true", help="list the faces not found")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    import cv2
    import torch

    from qcsfer.inference.recognizer import ExpressionRecognizer

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    reference = reference_labels()
    recognizers = {}
    for spec in args.detectors:
        name = spec.partition(":")[0].partition("@")[0]
        recognizers[spec] = ExpressionRecognizer("default", detector=name)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        video = args.video or Path(folder) / "faces-50s.mp4"
        if not video.is_file():
            make_video(video, (max(args.at) + AFTER + 1) / 60, 15)
        for at in args.at:
            for spec in args.detectors:
                got = window(recognizers[spec], video, at, spec)
                row = {"at": at, "detector": spec, "detections": got["detections"]}
                row["searches"] = got["searches"]
                row |= {"frames": len(got["records"]), "cpu_s": got["cpu_s"]}
                row["truth"] = score(got["records"], got["fps"], reference)
                row["nearest"] = score(got["records"], got["fps"], reference, "nearest")
                row["matched"] = score(got["records"], got["fps"], reference, "matched")
                if args.misses:
                    row["misses"] = misses(got["records"], got["fps"])
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    print(table(rows))
    if args.json is not None:
        report = {
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()}",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "command": " ".join(sys.argv),
            "rows": rows,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")


def table(rows: list[dict]) -> str:
    lines = [
        "| crossing at | detector | full-frame detections | visible faces found | tracks "
        "| id switches | label right | nearer-centre rule: found / switches "
        "| one-to-one: found / switches / label right | regions searched | CPU ms per frame |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        t, n, m = r["truth"], r["nearest"], r["matched"]
        lines.append(
            f"| {r['at']:g} s | {r['detector']} | {r['detections']}/{r['frames']} "
            f"| {t['found']}/{t['visible_faces']} | {t['tracks']} | {t['id_switches']} "
            f"| {t['label_accuracy']:.1%} | {n['found']} / {n['id_switches']} "
            f"| {m['found']} / {m['id_switches']} / {m['label_accuracy']:.1%} | {r['searches']} "
            f"| {1000 * r['cpu_s'] / max(r['frames'], 1):.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
