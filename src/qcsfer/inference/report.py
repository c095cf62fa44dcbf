"""How `qcsfer predict` reports: results streamed as a table, CSV or one JSON document, and
the closing counts (`Summary`)."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

from .results import ImageResult
from .video import TrackedPrediction

OutputFormat = Literal["table", "json", "csv"]
NO_FACE_HINT = "no face found (for pre-cropped faces use --no-detect)"


@dataclass
class Summary:
    images: int = 0  # readable images
    frames: int = 0  # sampled video frames
    faces: int = 0
    no_face: int = 0
    unreadable: list[str] = field(default_factory=list)  # skipped: unreadable, or unusable
    annotated: list[Path] = field(default_factory=list)  # annotated images and videos written
    corrupt_frames: int = 0  # undecodable video frames skipped
    truncated: list[str] = field(default_factory=list)  # videos that ended early

    def line(self) -> str:
        parts = [f"{self.images} image{'s' * (self.images != 1)}"]
        if self.frames:
            parts.append(f"{self.frames} video frames")
        parts.append(f"{self.faces} face{'s' * (self.faces != 1)}")
        parts.append(f"{self.no_face} without a face")
        parts.append(f"{len(self.unreadable)} skipped (unreadable or unusable)")
        if self.corrupt_frames:
            parts.append(f"{self.corrupt_frames} corrupt video frames skipped")
        if self.truncated:
            parts.append(f"{len(self.truncated)} truncated video(s)")
        if self.annotated:
            parts.append(f"{len(self.annotated)} annotated file{'s' * (len(self.annotated) != 1)}")
        return ", ".join(parts)


class Reporter:
    """Writes results as a table, CSV or one JSON document, all streamed: each result is written
    as it comes, so a failure late in a run (a full disk, a closed pipe) loses no earlier result.
    """

    def __init__(
        self, fmt: OutputFormat, classes: list[str], stream: IO[str], show_frame: bool
    ) -> None:
        self.fmt = fmt
        self.classes = classes
        self.stream = stream
        self.show_frame = show_frame
        self._records = 0
        self._csv = csv.writer(stream) if fmt == "csv" else None
        self._header_done = False

    def _header(self) -> None:
        if self._header_done:
            return
        self._header_done = True
        if self._csv is not None:
            columns = ["file", "frame", *self._video_titles(), "status", "x0", "y0", "x1", "y1"]
            columns += ["label", "confidence"]
            columns += ["detector_score", *(f"p_{c}" for c in self.classes), "error"]
            self._csv.writerow(columns)
        elif self.fmt == "table":
            self.stream.write(self._table_row(self._table_titles()) + "\n")
        else:  # json: the document opens here, `finish` closes it
            self.stream.write(f'{{\n  "classes": {json.dumps(self.classes)},\n  "results": [')

    def _video_titles(self) -> list[str]:
        return ["time", "track"] if self.show_frame else []

    def _video_cells(self, result: ImageResult, p: object) -> list[str]:
        """Time and track id of a face in a video frame (blank for images)."""
        if not self.show_frame:
            return []
        time = getattr(result, "time", None)
        track = p.track if isinstance(p, TrackedPrediction) else ""
        return ["" if time is None else f"{time:.3f}", str(track)]

    def _table_titles(self) -> list[str]:
        titles = ["file", "frame", "track"] if self.show_frame else ["file"]
        return [*titles, "box", "label", "conf", "det", *self.classes]

    def _table_row(self, cells: list[str]) -> str:
        lead = 3 if self.show_frame else 1
        widths = [36, 6, 5][:lead] + [20, 10, 5, 4] + [max(5, len(c)) for c in self.classes]
        out = []
        for i, (cell, width) in enumerate(zip(cells, widths, strict=False)):
            if i == 0 and len(cell) > width:
                cell = "..." + cell[-(width - 3) :]
            out.append(cell.ljust(width) if i < lead + 2 else cell.rjust(width))
        return "  ".join(out).rstrip()

    def add(self, result: ImageResult) -> None:
        self._header()
        if self.fmt == "json":
            record = json.dumps(result.to_dict(), indent=2).replace("\n", "\n    ")
            self.stream.write(("," if self._records else "") + "\n    " + record)
            self._records += 1
            self.stream.flush()
            return
        frame = "" if result.frame is None else str(result.frame)
        if self._csv is not None:
            empty = [""] * (6 + len(self.classes))
            lead = [result.source, frame, *self._video_cells(result, None)]
            if result.error is not None:
                self._csv.writerow([*lead, "error", *empty, result.error])
            elif not result.predictions:
                self._csv.writerow([*lead, "no_face", *empty, ""])
            for p in result.predictions:
                score = "" if p.detector_score is None else f"{p.detector_score:g}"
                probs = [f"{p.probabilities[c]:.6f}" for c in self.classes]
                row = [result.source, frame, *self._video_cells(result, p), "ok", *p.box]
                row += [p.label, f"{p.confidence:.6f}"]
                self._csv.writerow([*row, score, *probs, ""])
            return
        lead = [result.source, frame, ""] if self.show_frame else [result.source]
        if result.error is not None:
            return  # reported on stderr
        if not result.predictions:
            self.stream.write(self._table_row([*lead, "-", NO_FACE_HINT]) + "\n")
        for p in result.predictions:
            score = "-" if p.detector_score is None else f"{p.detector_score:g}"
            if isinstance(p, TrackedPrediction):
                lead[2] = str(p.track)
            cells = [*lead, ",".join(map(str, p.box)), p.label, f"{p.confidence:.2f}", score]
            cells += [f"{p.probabilities[c]:.2f}" for c in self.classes]
            self.stream.write(self._table_row(cells) + "\n")

    def finish(self, summary: Summary) -> None:
        self._header()
        if self.fmt == "json":
            counts = {
                "images": summary.images,
                "video_frames": summary.frames,
                "faces": summary.faces,
                "without_face": summary.no_face,
                "unreadable": summary.unreadable,
                "annotated": [str(path) for path in summary.annotated],
            }
            text = json.dumps(counts, indent=2).replace("\n", "\n  ")
            self.stream.write(("\n  " if self._records else "") + f'],\n  "summary": {text}\n}}\n')
        self.stream.flush()
