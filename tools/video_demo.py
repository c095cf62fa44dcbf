"""Make the short demo video behind the README's timeline picture.

One "person" whose expression changes: FERPlus validation faces on which at least 8 of the 10
annotators agree (neutral, happiness, surprise, sadness, anger, happiness), upsampled, each held
for a few seconds with a cross-fade, drifting slowly; and the astronaut photo's face crossing
the frame below. The faces are read from ../shared at run time (nothing copied here).

    python tools/video_demo.py demo.mp4
    qcsfer predict demo.mp4 --every 2 --out demo-video   # timelines in demo-video/demo/timelines
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import cv2
import numpy as np

from qcsfer.errors import QcsferError
from qcsfer.outputs import check_not_an_input

ROOT = Path(__file__).resolve().parents[1]
VALID = ROOT.parent / "shared" / "datasets" / "ferplus" / "FER2013Valid"
CLASSES = ["neutral", "happiness", "surprise", "sadness", "anger"]
SEQUENCE = ["neutral", "happiness", "surprise", "sadness", "anger", "happiness"]
SIZE, FPS, HOLD, FADE = (640, 360), 15, 4.0, 0.6


def agreed_faces() -> dict[str, Path]:
    """The first validation face per class with at least 8 of 10 votes for it."""
    found: dict[str, Path] = {}
    with open(VALID / "label.csv", newline="") as handle:
        for row in csv.reader(handle):
            votes = [int(v) for v in row[2:7]]
            best = int(np.argmax(votes))
            if votes[best] >= 8 and CLASSES[best] not in found:
                found[CLASSES[best]] = VALID / row[0]
    missing = set(CLASSES) - set(found)
    if missing:
        raise SystemExit(f"no agreed face for {sorted(missing)} in {VALID}")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the video to write (.mp4)")
    args = parser.parse_args()
    photo_path = ROOT / "src" / "qcsfer" / "assets" / "astronaut.jpg"
    face_paths = agreed_faces()
    check_not_an_input(args.out, [photo_path, *face_paths.values()])
    faces = {
        name: cv2.resize(cv2.imread(str(path)), (170, 170), interpolation=cv2.INTER_CUBIC)
        for name, path in face_paths.items()
    }
    photo = cv2.imread(str(photo_path))
    head = cv2.resize(photo[40:200, 145:305], (110, 110), interpolation=cv2.INTER_AREA)
    writer = cv2.VideoWriter(str(args.out), cv2.VideoWriter_fourcc(*"mp4v"), FPS, SIZE)
    total = round(len(SEQUENCE) * HOLD * FPS)
    for i in range(total):
        t = i / FPS
        step = min(int(t // HOLD), len(SEQUENCE) - 1)
        face = faces[SEQUENCE[step]].astype(np.float32)
        into = (t - step * HOLD - (HOLD - FADE)) / FADE
        if step + 1 < len(SEQUENCE) and into > 0:
            face = (1 - into) * face + into * faces[SEQUENCE[step + 1]]
        frame = np.full((SIZE[1], SIZE[0], 3), 120, np.uint8)
        x = round(60 + 40 * np.sin(t / 3))
        frame[20:190, x : x + 170] = face.astype(np.uint8)
        hx = round((SIZE[0] - 110) * (t / (total / FPS)))
        frame[230:340, hx : hx + 110] = head
        writer.write(frame)
    writer.release()
    print(f"wrote {args.out} ({total / FPS:.0f} s)")


if __name__ == "__main__":
    try:
        main()
    except QcsferError as exc:  # a message, not a traceback
        raise SystemExit(f"{Path(__file__).name}: error: {exc}") from None
