"""Tables of benchmarks/video.py's rows: speed, truth scores, stages, side-by-side ratios."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# Stages of the work per frame for --profile: the functions whose (cumulative) time is each.
STAGES = {
    "decode": [
        "<method 'grab' of 'cv2.VideoCapture' objects>",
        "<method 'retrieve' of 'cv2.VideoCapture' objects>",
    ],
    "detection": ["detect.py:find"],
    "crops": ["recognizer.py:prepare"],
    "classification": ["recognizer.py:classify"],
    "drawing": ["annotate.py:annotate"],
    "encoding": ["<method 'write' of 'cv2.VideoWriter' objects>"],
    "timelines": ["timeline.py:draw_timeline"],
    "outputs (all)": ["outputs.py:add", "outputs.py:close"],
}


def stages(profiler: object, frames: int) -> dict[str, float]:
    """Main-thread CPU ms per frame of each stage (STAGES), and of everything profiled."""
    import pstats

    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    out = {}
    for stage, names in STAGES.items():
        total = 0.0
        for (file, _, function), (_, _, _, cumulative, _) in stats.items():
            label = function if file == "~" else f"{Path(file).name}:{function}"
            total += cumulative if label in names else 0.0
        out[stage] = 1000 * total / max(frames, 1)
    out["total"] = 1000 * pstats.Stats(profiler).total_tt / max(frames, 1)  # type: ignore[arg-type]
    return out


def markdown(rows: list[dict], marks: list[float]) -> str:
    at = " / ".join(f"{m:g}" for m in marks)
    table = [
        f"| round | detector | --every | full-frame detections | faces found / visible "
        f"| tracks | id switches | label right | one-to-one: found / label right "
        f"| same label as first row "
        f"| video frames/s (wall) | video frames per CPU-s | RSS (MB) at {at} min "
        f"| peak RSS (MB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        rss = " / ".join(f"{p['rss_mb']:.0f}" for p in r["marks"])
        t, a, m = r["truth"], r["agreement_with_first"], r["truth_matched"]
        table.append(
            f"| {r.get('round', 1)} | {r['detector']} | {r['every']} "
            f"| {r['detections']}/{r['sampled']} | {t['found']}/{t['visible_faces']} "
            f"| {r['tracks']} | {t['id_switches']} | {t['label_accuracy']:.1%} "
            f"| {m['found']} / {m['label_accuracy']:.1%} "
            f"| {a['same_label']:.1%} | {r['video_fps']:.1f} "
            f"| {r['video_frames_per_cpu_s']:.1f} | {rss} | {r['peak_rss_mb']:.0f} |"
        )
    if any("stage_ms_per_frame" in r for r in rows):
        names = [*STAGES, "total"]
        table += ["", "| detector | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for r in rows:
            if "stage_ms_per_frame" in r:
                ms = r["stage_ms_per_frame"]
                table.append(
                    f"| {r['detector']} | " + " | ".join(f"{ms[s]:.1f}" for s in names) + " |"
                )
    return "\n".join(table)


def ratios(rows: list[dict], specs: list[str]) -> str:
    """Each configuration's speed over the first one's, round by round (wall and CPU)."""
    lines = []
    for every in sorted({r["every"] for r in rows}):
        for spec in specs[1:]:
            pairs = [
                (a, b)
                for a in rows
                for b in rows
                if a["detector"] == specs[0]
                and b["detector"] == spec
                and a["every"] == b["every"] == every
                and a.get("round") == b.get("round")
            ]
            wall = [b["video_fps"] / a["video_fps"] for a, b in pairs]
            cpu = [b["video_frames_per_cpu_s"] / a["video_frames_per_cpu_s"] for a, b in pairs]
            if wall:
                lines.append(
                    f"--every {every}: {spec} over {specs[0]}: wall "
                    + ", ".join(f"{x:.2f}x" for x in wall)
                    + f" (mean {np.mean(wall):.2f}x); per CPU-s "
                    + ", ".join(f"{x:.2f}x" for x in cpu)
                    + f" (mean {np.mean(cpu):.2f}x)"
                )
    return "\n".join(lines)
