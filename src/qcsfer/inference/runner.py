"""`qcsfer predict`: expand inputs (files, folders, globs, videos), predict, report, annotate.

Nothing here stops a run for one bad input: unreadable files are reported on stderr, carried
in JSON/CSV output with their error, counted, and skipped.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import sys
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from PIL import Image

from ..imaging import IMAGE_SUFFIXES
from ..io import atomic_write
from ..outputs import check_output_folder, writing
from .annotate import annotate
from .recognizer import ExpressionRecognizer, ImageResult
from .video import VIDEO_SUFFIXES, WEBCAM, TrackedPrediction, VideoAnalysis, is_video
from .video_outputs import with_outputs

OutputFormat = Literal["table", "json", "csv"]
NO_FACE_HINT = "no face found (for pre-cropped faces use --no-detect)"


@dataclass(frozen=True)
class Input:
    """One expanded input: an image or video path, or a pattern/path that matched nothing."""

    path: str
    kind: Literal["image", "video", "missing"]


def expand_inputs(items: Sequence[str], exclude: Path | None = None) -> list[Input]:
    """Files as given; folders recursively (images and videos, sorted); glob patterns expanded.

    Folders and patterns skip what lies under `exclude` (the output folder: annotated images
    written inside an input folder are not read back as inputs on the next run).
    """
    skip = exclude.resolve() if exclude is not None else None

    def wanted(found: Path) -> bool:
        return skip is None or not found.resolve().is_relative_to(skip)

    out: list[Input] = []
    for item in items:
        path = Path(item)
        if WEBCAM.fullmatch(item):
            out.append(Input(item, "video"))
        elif path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES and wanted(p)
            )
            out += [_classify(str(p)) for p in found]
        elif path.exists():
            out.append(_classify(item))
        elif glob.has_magic(item):
            matches = sorted(
                m for m in glob.glob(item, recursive=True) if os.path.isfile(m) and wanted(Path(m))
            )
            out += [_classify(m) for m in matches] or [Input(item, "missing")]
        else:
            out.append(Input(item, "missing"))
    return out


def _classify(path: str) -> Input:
    return Input(path, "video" if is_video(path) else "image")


@dataclass
class Summary:
    images: int = 0  # readable images
    frames: int = 0  # sampled video frames
    faces: int = 0
    no_face: int = 0
    unreadable: list[str] = field(default_factory=list)
    annotated: list[Path] = field(default_factory=list)  # annotated images and videos written
    corrupt_frames: int = 0  # undecodable video frames skipped
    truncated: list[str] = field(default_factory=list)  # videos that ended early

    def line(self) -> str:
        parts = [f"{self.images} image{'s' * (self.images != 1)}"]
        if self.frames:
            parts.append(f"{self.frames} video frames")
        parts.append(f"{self.faces} face{'s' * (self.faces != 1)}")
        parts.append(f"{self.no_face} without a face")
        parts.append(f"{len(self.unreadable)} unreadable (skipped)")
        if self.corrupt_frames:
            parts.append(f"{self.corrupt_frames} corrupt video frames skipped")
        if self.truncated:
            parts.append(f"{len(self.truncated)} truncated video(s)")
        if self.annotated:
            parts.append(f"{len(self.annotated)} annotated file{'s' * (len(self.annotated) != 1)}")
        return ", ".join(parts)


class Progress:
    """`[i/n] name` on one rewritten stderr line; silent when stderr is not a terminal."""

    def __init__(self, total: int, enabled: bool, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stderr
        self.total = total
        self.enabled = enabled and self.stream.isatty()
        self.done = 0
        self._width = 0

    def show(self, text: str) -> None:
        if not self.enabled:
            return
        line = f"[{self.done}/{self.total}] {text}"[:120]
        self.stream.write("\r" + line.ljust(self._width))
        self.stream.flush()
        self._width = len(line)

    def step(self, name: str) -> None:
        self.done += 1
        self.show(name)

    def clear(self) -> None:
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0


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


class _Names:
    """Unique output names within one run (two inputs may share a file name)."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def __call__(self, source: str, suffix: str) -> str:
        stem = Path(source).stem or "image"
        name, n = stem, 1
        while name in self.used:
            name, n = f"{stem}_{n}", n + 1
        self.used.add(name)
        return name + suffix


def run_predict(
    recognizer: ExpressionRecognizer,
    items: Sequence[str],
    *,
    fmt: OutputFormat = "table",
    out_dir: str | os.PathLike[str] | None = None,
    every: int = 1,
    video: dict[str, Any] | None = None,
    boxes: Sequence[Sequence[float]] | None = None,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
    progress: bool = True,
) -> Summary:
    """Predict on every input and report; returns the counts (unreadable inputs skipped).

    video: options for VideoAnalysis (fps, start, end, tau, ...). On Ctrl-C the output so far
    is closed properly (the JSON document, an open video's files) before KeyboardInterrupt goes on.
    """
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    if every < 1:
        raise ValueError("--every must be >= 1")
    out = check_output_folder(out_dir) if out_dir is not None else None
    inputs = expand_inputs(items, exclude=out)
    if not inputs:
        raise ValueError(f"no images or videos found in {', '.join(items)}")
    has_video = any(i.kind == "video" for i in inputs)
    reporter = Reporter(fmt, recognizer.classes, stdout, show_frame=has_video)
    meter = Progress(len(inputs), progress and (len(inputs) > 10 or has_video), stderr)
    summary = Summary()
    if out is not None:
        with writing(out):
            out.mkdir(parents=True, exist_ok=True)
    names = _Names()
    options = {"every": every, "boxes": boxes, **(video or {})}

    def skipped(source: str, reason: str) -> None:
        meter.clear()
        summary.unreadable.append(source)
        stderr.write(f"skipped {reason}\n")

    results = _results(recognizer, inputs, options, out, names, meter, summary, stderr)
    try:
        for result in results:
            if result.error is not None:
                skipped(result.source, result.error)
            else:
                if result.frame is None:
                    summary.images += 1
                else:
                    summary.frames += 1
                summary.faces += len(result.predictions)
                summary.no_face += not result.predictions
                if out is not None and result.image is not None and result.frame is None:
                    target = out / names(result.source, ".png")
                    drawn = Image.fromarray(annotate(result.image, result.predictions))
                    with writing(target):
                        atomic_write(target, lambda tmp, d=drawn: d.save(tmp, format="PNG"))
                    summary.annotated.append(target)
            meter.clear()
            reporter.add(result)
    except KeyboardInterrupt:
        meter.clear()
        stderr.write("interrupted: the output written so far is complete and readable\n")
        raise
    finally:
        results.close()  # an open video's files are finished here
        meter.clear()
        reporter.finish(summary)
    return summary


def _results(
    recognizer: ExpressionRecognizer,
    inputs: list[Input],
    options: dict[str, Any],
    out: Path | None,
    names: _Names,
    meter: Progress,
    summary: Summary,
    stderr: IO[str],
) -> Generator[ImageResult, None, None]:
    """Results in input order: runs of images batched together, videos frame by frame.

    A video's own files (--out) are written as its frames come; what reading it met (corrupt
    frames, truncation) goes into `summary` and onto stderr.
    """
    run: list[str] = []

    def images(paths: list[str]) -> Iterable[str]:
        for path in paths:
            meter.step(path)
            yield path

    for item in [*inputs, None]:
        if item is not None and item.kind == "image":
            run.append(item.path)
            continue
        if run:
            yield from recognizer.iter_predictions(
                images(run), boxes=options["boxes"], keep_images=out is not None
            )
            run = []
        if item is None:
            break
        if item.kind == "missing":
            meter.step(item.path)
            yield ImageResult(item.path, error=f"{item.path}: no such file or matching path")
            continue
        meter.step(item.path)
        analysis = VideoAnalysis(
            recognizer,
            item.path,
            keep_images=out is not None,
            progress=lambda stats, name=item.path: meter.show(f"{name} {stats.progress()}"),
            **options,
        )
        folder = out / names(item.path, "") if out is not None else None
        try:
            yield from with_outputs(analysis, folder, summary.annotated)
        except ValueError as exc:  # unreadable (ImageError) or a --box outside the frame
            yield ImageResult(item.path, error=str(exc))
            continue  # stopped by the error: not a truncated file
        summary.corrupt_frames += analysis.stats.corrupt
        if analysis.stats.truncated:
            summary.truncated.append(item.path)
        if analysis.stats.problems():
            meter.clear()
            stderr.write(f"{item.path}: {'; '.join(analysis.stats.problems())}\n")
