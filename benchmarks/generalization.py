"""The generalization suite: how a model reads faces from four sources, at both operating points.

    python benchmarks/generalization.py MODEL [--datasets ../shared/datasets] [--detector auto]
        [--centre-crop 0.7] [--min-support 20] [--out benchmarks/results] [--no-cache]

MODEL is what `qcsfer predict --model` takes: `default`, a weights file, a run directory or an
.onnx file. Sources (never a training split):

- FERPlus Valid, majority labels, each face averaged with its mirror image;
- affectnet-web `dev`: the carve of 5% per class that the data layer holds out of its `train`
  (`qcsfer.data.carves`), so no training run reads it;
- tcce `dev` (192 px head-and-shoulders photos) through the recognizer's own pipeline: the
  default face detector, the largest face, cropped as `qcsfer predict` crops it; a photo with no
  face found counts as wrong. The same photos with a fixed centred square crop are reported
  beside it for comparison (`--centre-crop`, a fraction of the shorter side: 0.7 is about the
  median side of MTCNN's crops on tcce dev, 0.705; its crops sit 7% of that side lower, this
  one is centred);
- lfw-imfdb `dev` (already face crops, read whole like `predict --no-detect`).

Per source and operating point: accuracy, balanced accuracy over the classes with at least
`--min-support` faces, and every class's recall. The suite score is the mean balanced accuracy
of FERPlus, affectnet-web, tcce through the detector and lfw-imfdb. Writes
generalization-NAME.json and .md under --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from reports import machine, model_name, write_report
from suite_scores import SourceReading, markdown, score_readings

from qcsfer.data.datasets import read_dataset
from qcsfer.data.detected_faces import centred_face
from qcsfer.data.images import default_cache_dir, load_images
from qcsfer.data.records import DatasetError, LabeledImages
from qcsfer.errors import ImageError
from qcsfer.imaging import read_image
from qcsfer.inference.faces import Detector, Face
from qcsfer.inference.recognizer import ExpressionRecognizer

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = ROOT.parent / "shared" / "datasets"
CENTRE_CROP = 0.7  # MTCNN's median crop side on tcce dev (0.705)
SUITE = ("ferplus-valid", "affectnet-web-dev", "tcce-dev-detector", "lfw-imfdb-dev")


def model_labels(
    data: LabeledImages, classes: list[str]
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """(kept indices, labels in the model's classes, notes): classes matched by name; faces of
    classes the model does not have are left out and counted."""
    lookup = np.array([classes.index(c) if c in classes else -1 for c in data.classes])
    mapped = lookup[data.labels] if len(data) else np.zeros(0, np.int64)
    kept = np.flatnonzero(mapped >= 0)
    notes = {"class not in the model": len(data) - len(kept)}
    return kept, mapped[kept].astype(np.int64), notes


def read_split(fmt: str, root: Path, split: str, **options: object) -> LabeledImages:
    try:
        return read_dataset(fmt, root, split, **options)
    except DatasetError as exc:
        raise SystemExit(f"generalization suite: {exc} (see --datasets)") from exc


@dataclass(frozen=True)
class SourceInputs:
    """One source's faces decoded for the model, before any model reads them: what every
    checkpoint of one run (same classes and preprocessing) shares, so it is read once."""

    key: str
    title: str
    labels: np.ndarray  # int64 N, in the model's classes
    inputs: np.ndarray  # uint8 F x C x L x L, the faces found (F = found.sum())
    found: np.ndarray  # bool N: False where the detector found no face
    notes: dict[str, int]
    flip: bool = False  # average each face's logits with its mirror image's


@dataclass(frozen=True)
class SuiteInputs:
    sources: list[SourceInputs]
    crop: dict[str, float]  # the detector crops' median geometry on tcce dev
    detector: str
    margin: float


def crop_inputs(
    recognizer: ExpressionRecognizer,
    key: str,
    title: str,
    data: LabeledImages,
    cache: bool,
    flip: bool = False,
) -> SourceInputs:
    """Face crops decoded as training and `evaluate` decode them (the image cache applies)."""
    prep = recognizer.preprocessing
    kept, labels, notes = model_labels(data, recognizer.classes)
    store = load_images(
        [data.paths[i] for i in kept],
        prep.load_size,
        prep.grayscale,
        default_cache_dir() if cache else None,
    )
    batch = store.images[torch.from_numpy(np.flatnonzero(store.valid))].numpy()
    notes["unreadable"] = store.skipped
    found = np.ones(len(batch), dtype=bool)
    return SourceInputs(key, title, labels[store.valid], batch, found, notes, flip)


def read_source(recognizer: ExpressionRecognizer, source: SourceInputs) -> SourceReading:
    """A model's logits on one source's decoded faces (zeros where no face was found)."""
    logits = np.zeros((len(source.labels), len(recognizer.classes)), np.float32)
    if len(source.inputs):
        read = recognizer.logits(source.inputs)
        if source.flip:  # the mirror image, as `evaluate --flip` (load and image size are equal)
            read = (read + recognizer.logits(np.ascontiguousarray(source.inputs[..., ::-1]))) / 2
        logits[source.found] = read
    return SourceReading(
        source.key, source.title, source.labels, logits, source.found, source.notes
    )


def detector_name(recognizer: ExpressionRecognizer) -> str:
    return getattr(recognizer.detector, "name", "none")


def photo_inputs(
    recognizer: ExpressionRecognizer, data: LabeledImages, centre: float
) -> tuple[SourceInputs, SourceInputs, dict]:
    """Photos through the recognizer's detector (the largest face, cropped as predict crops),
    and the same photos with a fixed centred crop; plus the detector crops' median geometry."""
    kept, labels, notes = model_labels(data, recognizer.classes)
    found, detected, centred, rows, geometry = [], [], [], [], []
    several = unreadable = 0
    for i, label in zip(kept, labels, strict=True):
        try:
            rgb = read_image(data.paths[i])
        except ImageError:
            unreadable += 1
            continue
        height, width = rgb.shape[:2]
        rows.append(label)
        centre_crop = [centred_face(width, height, centre).box]
        centred.append(recognizer.prepare(rgb, boxes=centre_crop, margin=0.0).inputs[0])
        batch = recognizer.prepare(rgb)
        several += len(batch) > 1
        found.append(bool(len(batch)))
        if len(batch):
            largest = max(
                range(len(batch)), key=lambda j: batch.faces[j].width * batch.faces[j].height
            )
            detected.append(batch.inputs[largest])
            geometry.append(_geometry(batch.faces[largest], recognizer.margin, width, height))
    found_mask = np.array(found, dtype=bool)
    prep = recognizer.preprocessing
    empty = np.zeros((0, 1 if prep.grayscale else 3, prep.load_size, prep.load_size), np.uint8)
    labels_read = np.array(rows, dtype=np.int64)
    base = {**notes, "unreadable": unreadable}
    via_detector = SourceInputs(
        "tcce-dev-detector",
        f"tcce dev, {detector_name(recognizer)} detector",
        labels_read,
        np.stack(detected) if detected else empty,
        found_mask,
        {
            **base,
            "no face found (counted wrong)": int((~found_mask).sum()),
            "several faces": several,
        },
    )
    via_centre = SourceInputs(
        "tcce-dev-centre",
        f"tcce dev, centre crop {centre:g}",
        labels_read,
        np.stack(centred) if centred else empty,
        np.ones(len(rows), dtype=bool),
        base,
    )
    median = np.median(np.array(geometry), 0) if geometry else np.full(3, np.nan)
    crop = {
        "crop_side_over_image_side": float(median[0]),
        "crop_centre_offset_x": float(median[1]),
        "crop_centre_offset_y": float(median[2]),
    }
    return via_detector, via_centre, crop


def _geometry(face: Face, margin: float, width: int, height: int) -> tuple[float, float, float]:
    """The predict crop's side over the image's shorter side, and its centre's offset from the
    image centre (fractions of the shorter side)."""
    short = min(width, height)
    side = max(face.width, face.height) * (1 + 2 * margin)
    cx, cy = (face.x0 + face.x1) / 2, (face.y0 + face.y1) / 2
    return side / short, (cx - width / 2) / short, (cy - height / 2) / short


def read_suite(
    recognizer: ExpressionRecognizer, datasets: Path, centre: float, cache: bool = True
) -> SuiteInputs:
    """Every source's faces decoded for `recognizer`'s classes and preprocessing, through its
    detector: the model-independent part of the suite (and its slowest: face detection)."""
    ferplus = read_split("ferplus", datasets / "ferplus", "valid", label_mode="majority")
    affectnet = read_split("folder", datasets / "affectnet-web", "dev")
    tcce = read_split("folder", datasets / "tcce", "dev")
    lfw = read_split("folder", datasets / "lfw-imfdb", "dev")
    fer = crop_inputs(recognizer, "ferplus-valid", "FERPlus Valid (flip)", ferplus, cache, True)
    web = crop_inputs(recognizer, "affectnet-web-dev", "affectnet-web dev carve", affectnet, cache)
    via_detector, via_centre, crop = photo_inputs(recognizer, tcce, centre)
    faces = crop_inputs(recognizer, "lfw-imfdb-dev", "lfw-imfdb dev", lfw, cache)
    sources = [fer, web, via_detector, via_centre, faces]
    return SuiteInputs(sources, crop, detector_name(recognizer), recognizer.margin)


def read_all(recognizer: ExpressionRecognizer, suite: SuiteInputs) -> list[SourceReading]:
    """The model's logits on every source of the suite."""
    return [read_source(recognizer, source) for source in suite.sources]


def run(args: argparse.Namespace, detector: str | Detector = "auto") -> dict:
    """Read every source, score both operating points, return the result document."""
    started = time.perf_counter()
    recognizer = ExpressionRecognizer(
        args.model, device=args.device, detector=detector, batch_size=args.batch_size
    )
    suite_inputs = read_suite(recognizer, args.datasets, args.centre_crop, not args.no_cache)
    readings = read_all(recognizer, suite_inputs)
    rule = recognizer.decision
    sources, suite = score_readings(readings, rule, recognizer.classes, args.min_support, SUITE)
    return {
        "model": args.name,
        "model_path": str(args.model),
        "classes": recognizer.classes,
        "operating_points": {p: dataclasses.asdict(rule.point(p)) for p in suite},
        "default_point": rule.default,
        "detector": suite_inputs.detector,
        "detector_margin": suite_inputs.margin,
        "tcce_detector_crop": suite_inputs.crop,
        "centre_crop": args.centre_crop,
        "min_support": args.min_support,
        "suite_sources": list(SUITE),
        "suite": suite,
        "sources": sources,
        "command": "python benchmarks/generalization.py " + " ".join(args.argv),
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "seconds": round(time.perf_counter() - started),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="'default', a weights file, a run directory or an .onnx")
    parser.add_argument("--name", help="the model's name in results (default: from MODEL)")
    parser.add_argument("--datasets", type=Path, default=SHARED_DATASETS)
    parser.add_argument("--centre-crop", type=float, default=CENTRE_CROP, metavar="FRACTION")
    parser.add_argument("--min-support", type=int, default=20, metavar="FACES")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="torch and OpenCV threads")
    parser.add_argument("--no-cache", action="store_true", help="decode without the image cache")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    if not 0 < args.centre_crop <= 2:
        parser.error("--centre-crop must be in (0, 2]")
    if args.min_support < 1 or args.batch_size < 1:
        parser.error("--min-support and --batch-size must be at least 1")
    if args.name is None:
        args.name = model_name(args.model)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    return args


def main(argv: list[str] | None = None, detector: str | Detector = "auto") -> dict:
    """Run the suite; `detector` replaces the default one (tests pass a stub)."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    result = run(args, detector)
    stem = f"generalization-{args.name}"
    table = markdown(result)
    write_report(args.out, stem, result, table)
    print(table)
    return result


if __name__ == "__main__":
    main()
