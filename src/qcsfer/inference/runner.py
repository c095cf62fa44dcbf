"""`qcsfer predict`: predict on every input (inputs.py), report (report.py), annotate.

Nothing here stops a run for one bad input: unreadable files are reported on stderr, carried
in JSON/CSV output with their error, counted, and skipped.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Generator, Iterable, Sequence
from pathlib import Path
from typing import IO, Any

from PIL import Image

from ..errors import UsageError
from ..io import atomic_write
from ..outputs import check_output_folder, writing
from ..status_line import StatusLine
from .annotate import annotate
from .inputs import Input, expand_inputs
from .recognizer import ExpressionRecognizer
from .report import OutputFormat, Reporter, Summary
from .results import ImageResult
from .video import VideoAnalysis
from .video.outputs import with_outputs


class Progress(StatusLine):
    """`[i/n] name` on one rewritten stderr line; silent when stderr is not a terminal."""

    def __init__(self, total: int, enabled: bool, stream: IO[str] | None = None) -> None:
        super().__init__(enabled, stream)
        self.total = total
        self.done = 0

    def show(self, text: str) -> None:
        super().show(f"[{self.done}/{self.total}] {text}")

    def step(self, name: str) -> None:
        self.done += 1
        self.show(name)


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
        raise UsageError("--every must be >= 1")
    out = check_output_folder(out_dir) if out_dir is not None else None
    inputs = expand_inputs(items, exclude=out)
    if not inputs:
        raise UsageError(f"no images or videos found in {', '.join(items)}")
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
