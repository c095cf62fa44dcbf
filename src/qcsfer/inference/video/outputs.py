"""The files `qcsfer predict VIDEO --out DIR` writes for one video, as the frames come.

DIR/<video name>/
  frames.csv      one row per face per sampled frame: time, frame, track, box, smoothed label
                  and probabilities (p_*), the frame's own probabilities (raw_*)
  frames.jsonl    one JSON object per sampled frame (also those without a face)
  tracks.csv/json per track: time on screen, share of time per expression, dominant, changes
                  (the JSON also says how reading went: corrupt frames, truncation, interruption)
  timelines/      track-N.png, each track's smoothed probabilities over time
  annotated.mp4   the sampled frames with each face's box, track id and smoothed label

Rows are flushed as they are written and a track's timeline is drawn as soon as it ends, so an
interrupted run leaves every file readable with everything up to the interruption. The annotated
video is drawn and encoded in a thread of its own (`FrameWriter`): on a machine with two cores
that work runs beside the detection and the model instead of after them.
"""

from __future__ import annotations

import csv
import json
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ...io import atomic_write
from ..annotate import annotate
from .analysis import TrackedPrediction, VideoAnalysis, VideoFrame
from .io import ReadStats, open_writer
from .summary import TrackSummaries
from .timeline import Timeline, draw_timeline

TRACK_COLUMNS = (
    "track",
    "first_seen",
    "last_seen",
    "seconds_on_screen",
    "frames",
    "dominant",
    "changes",
)
MIN_TIMELINE_FRAMES = 3  # shorter tracks (often a false detection) get no picture
WRITE_QUEUE = 8  # frames waiting for the annotated video's thread (bounded: memory stays flat)


class FrameWriter(threading.Thread):
    """Draws each frame's faces and appends it to the annotated video, in its own thread."""

    def __init__(self, writer: Any) -> None:
        super().__init__(name="qcsfer-video-writer", daemon=True)
        self.writer = writer
        self.error: BaseException | None = None
        self._frames: queue.Queue[tuple[np.ndarray, list[TrackedPrediction]] | None]
        self._frames = queue.Queue(WRITE_QUEUE)

    def put(self, image: np.ndarray, faces: list[TrackedPrediction]) -> None:
        if self.error is not None:
            raise self.error
        self._frames.put((image, faces))

    def run(self) -> None:
        import cv2

        while (item := self._frames.get()) is not None:
            if self.error is not None:
                continue  # drain, so `put` never blocks on a dead writer
            image, faces = item
            try:
                texts = [f"#{p.track} {p.label} {p.confidence:.0%}" for p in faces]
                drawn = annotate(image, faces, texts)
                self.writer.write(cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
            except BaseException as exc:  # raised again in the caller's thread, by `finish`
                self.error = exc

    def finish(self) -> None:
        """Write what is queued, then release the video (raises what failed in the thread)."""
        self._frames.put(None)
        self.join()
        self.writer.release()
        if self.error is not None:
            raise self.error


class VideoOutputs:
    """Writers for one video's output folder; call `add` per frame, then `close` (always)."""

    def __init__(
        self, folder: Path, classes: list[str], step: float, max_gap: float, video: bool = True
    ) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.classes = classes
        self.step = step  # seconds between sampled frames
        self.max_gap = max_gap
        self.summaries = TrackSummaries()
        self.timelines: dict[int, Timeline] = {}
        self.drawn: list[Path] = []
        self.video_path: Path | None = None
        self._want_video = video
        self._writer: FrameWriter | None = None
        self._csv_file = open(folder / "frames.csv", "w", newline="", encoding="utf-8")  # noqa: SIM115
        self._csv = csv.writer(self._csv_file)
        columns = ["time", "frame", "track", "x0", "y0", "x1", "y1", "label", "confidence"]
        columns += ["raw_label", "detector_score", *(f"p_{c}" for c in classes)]
        self._csv.writerow([*columns, *(f"raw_{c}" for c in classes)])
        self._jsonl = open(folder / "frames.jsonl", "w", encoding="utf-8")  # noqa: SIM115

    def add(self, frame: VideoFrame) -> None:
        faces = [p for p in frame.predictions if isinstance(p, TrackedPrediction)]
        for p in faces:
            score = "" if p.detector_score is None else f"{p.detector_score:g}"
            row = [f"{frame.time:.3f}", frame.frame, p.track, *p.box, p.label]
            row += [f"{p.confidence:.4f}", p.raw_label, score]
            row += [f"{p.probabilities[c]:.4f}" for c in self.classes]
            self._csv.writerow([*row, *(f"{p.raw[c]:.4f}" for c in self.classes)])
            timeline = self.timelines.setdefault(p.track, Timeline())
            timeline.add(frame.time, np.array([p.probabilities[c] for c in self.classes]))
        self._jsonl.write(json.dumps(frame.to_dict()) + "\n")
        self._csv_file.flush()
        self._jsonl.flush()
        self.summaries.add(frame)
        if self._want_video and frame.image is not None:
            self._write_video(frame, faces)
        self._draw_ended(frame.time)

    def _write_video(self, frame: VideoFrame, faces: list[TrackedPrediction]) -> None:
        assert frame.image is not None
        if self._writer is None:
            height, width = frame.image.shape[:2]
            fps = 1.0 / self.step if self.step > 0 else 25.0
            writer, self.video_path = open_writer(self.folder / "annotated", fps, (width, height))
            self._writer = FrameWriter(writer)
            self._writer.start()
        self._writer.put(frame.image, faces)

    def _draw_ended(self, now: float | None) -> None:
        """Draw (and forget) the timelines of tracks gone for longer than the gap allows."""
        for track in list(self.timelines):
            summary = self.summaries.summaries[track]
            if now is None or now - summary.last_seen > self.max_gap:
                timeline = self.timelines.pop(track)
                if summary.frames >= MIN_TIMELINE_FRAMES:
                    path = self.folder / "timelines" / f"track-{track}.png"
                    title = f"track {track}: {summary.first_seen:.1f}-{summary.last_seen:.1f} s"
                    gap = max(2.5 * self.step, 1e-6)
                    if draw_timeline(timeline, self.classes, path, title, gap) is not None:
                        self.drawn.append(path)

    def close(self, stats: ReadStats | None = None, interrupted: bool = False) -> None:
        """Finish every file: the video, open timelines, the track summaries."""
        for handle in (self._csv_file, self._jsonl):
            handle.close()
        try:
            self._write_tracks(stats, interrupted)
            self._draw_ended(None)  # last: the tables above matter most
        finally:
            if self._writer is not None:
                writer, self._writer = self._writer, None
                writer.finish()

    def _write_tracks(self, stats: ReadStats | None, interrupted: bool) -> None:
        summaries = self.summaries.finish()
        rows = [s.to_dict(self.classes) for s in summaries]
        with open(self.folder / "tracks.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow([*TRACK_COLUMNS, *(f"share_{c}" for c in self.classes)])
            for row in rows:
                writer.writerow([*(row[k] for k in TRACK_COLUMNS), *row["shares"].values()])
        document = {
            "classes": self.classes,
            "reading": _reading(stats, interrupted),
            "tracks": rows,
        }
        text = json.dumps(document, indent=2) + "\n"
        atomic_write(
            self.folder / "tracks.json", lambda tmp: tmp.write_text(text, encoding="utf-8")
        )


def _reading(stats: ReadStats | None, interrupted: bool) -> dict[str, Any]:
    if stats is None:
        return {"interrupted": interrupted}
    return {
        "fps": stats.fps,
        "declared_frames": stats.declared,
        "frames_decoded": stats.decoded,
        "frames_sampled": stats.sampled,
        "corrupt_frames_skipped": stats.corrupt,
        "truncated": stats.truncated,
        "interrupted": interrupted,
    }


def with_outputs(
    analysis: VideoAnalysis, folder: Path | None, written: list[Path]
) -> Iterator[VideoFrame]:
    """The analysis' frames, each also written into `folder` (None: nothing written).

    The files are finished however iteration ends (the end, an error, Ctrl-C, the caller
    stopping); the annotated video's path is appended to `written`.
    """
    if folder is None:
        yield from analysis
        return
    outputs: VideoOutputs | None = None
    finished = False
    try:
        for frame in analysis:
            if outputs is None:  # the sampling step is known once the video is open
                classes = analysis.recognizer.classes
                outputs = VideoOutputs(folder, classes, analysis.step, analysis.tracker.max_gap)
            outputs.add(frame)
            yield frame
        finished = True
    finally:
        if outputs is not None:
            outputs.close(analysis.stats, interrupted=not finished)
            if outputs.video_path is not None:
                written.append(outputs.video_path)
