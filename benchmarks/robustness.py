"""Robustness: a model's accuracy on FERPlus Valid faces as they would reach it from elsewhere.

    python benchmarks/robustness.py [--model default] [--prior P] [--faces 500] [--seed 0]
        [--detectors mtcnn,alt2] [--margins=-0.05,0,0.05] [--out benchmarks/results]
    python benchmarks/robustness.py --synthetic --faces 8     # runs anywhere: no dataset needed

A seeded sample of FERPlus Valid (majority labels; never the test split) is read by the model
clean, under each condition of `conditions.py` (framing shifts, image quality, a mirror), and
along the photo path (`photo_path.py`: pasted into a photo-like scene, found by each detector,
read by the full `ExpressionRecognizer`). One table per model: accuracy, balanced accuracy and
macro F1 per condition, then the mean accuracy over conditions and the worst condition (every
row but `clean`; the photo path enters as the faces the first available detector finds, since
faces it misses are the detector's doing, not the model's). A second table gives the photo path
per detector: detection rate, accuracy over all faces (a missed face counts as wrong) and over
the faces found, beside the direct-crop accuracy of the same faces; `--margins` adds the
accuracy of the found faces cropped with each margin, and the box geometry says which margin
reproduces the FERPlus framing. Results: JSON and markdown under --out.

--synthetic reads the package's own astronaut photo (one smiling face) instead of FERPlus: a
check that everything runs anywhere (tests), not a measurement.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import torch
from conditions import CLEAN, CONDITIONS, Condition
from photo_path import Reading, load_photos, make_scene, read_scene
from PIL import Image
from reports import machine, model_name, write_report

from qcsfer.data.ferplus import CLASSES, read_ferplus
from qcsfer.data.records import DatasetError
from qcsfer.engine.metrics import Metrics, compute_metrics
from qcsfer.imaging import read_image
from qcsfer.inference.model_input import FaceBatch
from qcsfer.inference.recognizer import ExpressionRecognizer

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
ASSETS = ROOT / "src" / "qcsfer" / "assets"
ASTRONAUT_FACE = (176, 67, 272, 163)  # a FERPlus-like square around the face in astronaut.jpg
NO_FACE = "no face"  # the prediction for a face the detector missed


def sample_valid(root: Path, count: int, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """`count` Valid faces (0: all) drawn with the seed, in file order, as RGB arrays."""
    try:
        data = read_ferplus(root, "valid", "majority")
    except DatasetError as exc:
        raise SystemExit(f"{exc} (give --ferplus ROOT, or --synthetic)") from exc
    rng = np.random.default_rng(seed)
    total = len(data.paths)
    chosen = np.sort(rng.choice(total, size=min(count, total), replace=False)) if count else None
    indices = np.arange(total) if chosen is None else chosen
    return [read_image(data.paths[i]) for i in indices], data.labels[indices]


def synthetic_faces(count: int, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """The astronaut's smiling face at 48 px gray in varied brightness, labelled happiness."""
    rng = np.random.default_rng(seed)
    face = Image.open(ASSETS / "astronaut.jpg").crop(ASTRONAUT_FACE).convert("L")
    base = np.asarray(face.resize((48, 48), Image.BILINEAR), np.float64)
    faces = [
        np.repeat(np.clip(base * rng.uniform(0.7, 1.2), 0, 255).astype(np.uint8)[:, :, None], 3, 2)
        for _ in range(count or 8)
    ]
    return faces, np.full(len(faces), CLASSES.index("happiness"))


def classify(
    recognizer: ExpressionRecognizer, faces: list[np.ndarray] | list[FaceBatch]
) -> np.ndarray:
    """Predicted class indices of one face each: whole face crops (RGB arrays, read without
    detection) or faces the recognizer prepared; one shared batch, as `predict` reads them."""
    batches = [
        f if isinstance(f, FaceBatch) else recognizer.prepare(f, detector=None) for f in faces
    ]
    predictions = recognizer.classify(batches)
    return np.array([recognizer.classes.index(p.label) for (p,) in predictions], dtype=np.int64)


def condition_rng(seed: int, name: str) -> np.random.Generator:
    """One stream per condition: adding a condition leaves the others' parameters unchanged."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def run_condition(
    recognizer: ExpressionRecognizer, condition: Condition, faces: list[np.ndarray], seed: int
) -> np.ndarray:
    rng = condition_rng(seed, condition.name)
    return classify(recognizer, [condition.apply(face, rng) for face in faces])


def scores(metrics: Metrics) -> dict[str, float]:
    return {
        "images": metrics.total,
        "accuracy": metrics.accuracy,
        "balanced_accuracy": metrics.balanced_accuracy,
        "macro_f1": metrics.macro_f1,
    }


def photo_summary(
    recognizer: ExpressionRecognizer,
    readings: list[Reading],
    targets: np.ndarray,
    direct: np.ndarray,
    margins: tuple[float, ...],
) -> dict:
    """Detection rate, accuracy over all and over found faces, direct crops, margins, geometry."""
    classes = tuple(recognizer.classes)
    found = np.array([r.found for r in readings])
    predicted = np.array([r.label for r in readings])
    everyone = np.where(found, predicted, len(classes))  # a missed face: the "no face" class
    detected = compute_metrics(targets[found], predicted[found], classes)
    summary = {
        "faces": len(readings),
        "detection_rate": float(found.mean()),
        "false_alarms": int(sum(r.false_alarms for r in readings)),
        "all_faces": scores(compute_metrics(targets, everyone, (*classes, NO_FACE))),
        "detected_faces": scores(detected),
        "direct_crop_same_faces": scores(compute_metrics(targets[found], direct[found], classes)),
        "margin": recognizer.margin,
    }
    if found.any():
        geometry = np.array([r.geometry for r in readings if r.found])
        scale, dx, dy, aspect = np.median(geometry, axis=0)
        summary["framing"] = {
            "true_side_over_box_side": float(scale),
            "centre_offset_x": float(dx),
            "centre_offset_y": float(dy),
            "box_height_over_width": float(aspect),
            "ferplus_margin": float((scale - 1) / 2),
        }
        summary["margins"] = {}
        for j, margin in enumerate(margins):
            batch = [r.crops[j] for r in readings if r.found]
            sweep = compute_metrics(targets[found], classify(recognizer, batch), classes)
            summary["margins"][f"{margin:g}"] = scores(sweep)
    return summary


def run(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    if args.synthetic:
        faces, targets = synthetic_faces(args.faces, args.seed)
        photos = load_photos(ASSETS)
    else:
        faces, targets = sample_valid(args.ferplus, args.faces, args.seed)
        photos = load_photos(args.photos)
    direct_reader = ExpressionRecognizer(args.model, detect=False, prior=args.prior)
    classes = tuple(direct_reader.classes)
    if classes != CLASSES:
        raise SystemExit(f"the model's classes {list(classes)} are not FERPlus's {list(CLASSES)}")

    rows: dict[str, dict] = {}
    predictions: dict[str, np.ndarray] = {}
    for condition in (CLEAN, *CONDITIONS):
        predictions[condition.name] = run_condition(direct_reader, condition, faces, args.seed)
        metrics = compute_metrics(targets, predictions[condition.name], classes)
        rows[condition.name] = {"description": condition.description, **scores(metrics)}
    conditions_s = time.perf_counter() - started

    readers, skipped = {}, {}
    for name in args.detectors:
        try:
            readers[name] = ExpressionRecognizer(args.model, detector=name, prior=args.prior)
        except (ImportError, FileNotFoundError) as exc:  # MTCNN weights not installed
            skipped[name] = str(exc)
            print(f"photo path: skipping detector {name}: {exc}", file=sys.stderr)
    readings: dict[str, list[Reading]] = {name: [] for name in readers}
    for i, face in enumerate(faces):
        scene = make_scene(face, np.random.default_rng([args.seed, 1, i]), photos)
        for name, reader in readers.items():
            readings[name].append(read_scene(reader, scene, args.margins))
        if (i + 1) % 100 == 0:
            print(f"photo path: {i + 1}/{len(faces)} faces", file=sys.stderr)
    photo = {
        name: photo_summary(reader, readings[name], targets, predictions["clean"], args.margins)
        for name, reader in readers.items()
    }
    if photo:
        first = next(iter(photo))
        rows[f"photo path ({first}), faces found"] = {
            "description": f"pasted into a scene, found by {first}, read by the recognizer",
            **photo[first]["detected_faces"],
        }
    perturbed = {name: row for name, row in rows.items() if name != CLEAN.name}
    worst = min(perturbed, key=lambda name: perturbed[name]["accuracy"])
    return {
        "model": str(args.model),
        "name": args.name,
        "data": "synthetic: the astronaut's face" if args.synthetic else "FERPlus Valid",
        "faces": len(faces),
        "seed": args.seed,
        "prior": direct_reader.prior,
        "conditions": rows,
        "summary": {
            "mean_accuracy": float(np.mean([row["accuracy"] for row in perturbed.values()])),
            "worst_condition": worst,
            "worst_accuracy": perturbed[worst]["accuracy"],
        },
        "photo_path": photo,
        "skipped_detectors": skipped,
        "seconds": {
            "conditions": round(conditions_s, 1),
            "photo_path": round(time.perf_counter() - started - conditions_s, 1),
        },
        "machine": machine(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python", "benchmarks/robustness.py", *sys.argv[1:]]),
    }


def _pct(value: float) -> str:
    return f"{100 * value:.2f}%"


def markdown(result: dict) -> str:
    lines = [
        f"Robustness of `{result['name']}`: {result['faces']} faces ({result['data']}), "
        f"seed {result['seed']}, operating point prior={result['prior']}.",
        "",
        "| condition | accuracy | balanced accuracy | macro F1 |",
        "|---|---|---|---|",
    ]
    for name, row in result["conditions"].items():
        lines.append(
            f"| {name} | {_pct(row['accuracy'])} | {_pct(row['balanced_accuracy'])} "
            f"| {_pct(row['macro_f1'])} |"
        )
    summary = result["summary"]
    lines += [
        "",
        f"Mean accuracy over conditions: **{_pct(summary['mean_accuracy'])}**; worst condition: "
        f"**{summary['worst_condition']}** ({_pct(summary['worst_accuracy'])}).",
    ]
    if result["photo_path"]:
        lines += [
            "",
            "| photo path | margin | detection rate | accuracy, all faces (missed = wrong) "
            "| balanced, all faces | accuracy, faces found | direct-crop accuracy, same faces "
            "| false alarms | true side / box side | box centre offset x, y | box h / w |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, photo in result["photo_path"].items():
            framing = photo.get("framing", {})
            lines.append(
                f"| {name} | {photo['margin']:g} | {_pct(photo['detection_rate'])} "
                f"| {_pct(photo['all_faces']['accuracy'])} "
                f"| {_pct(photo['all_faces']['balanced_accuracy'])} "
                f"| {_pct(photo['detected_faces']['accuracy'])} "
                f"| {_pct(photo['direct_crop_same_faces']['accuracy'])} "
                f"| {photo['false_alarms']} "
                f"| {framing.get('true_side_over_box_side', float('nan')):.3f} "
                f"| {framing.get('centre_offset_x', float('nan')):+.3f}, "
                f"{framing.get('centre_offset_y', float('nan')):+.3f} "
                f"| {framing.get('box_height_over_width', float('nan')):.3f} |"
            )
        sweeps = [(n, p) for n, p in result["photo_path"].items() if p.get("margins")]
        if sweeps:
            lines += ["", "| detector | margin | accuracy, faces found | vs direct crop |"]
            lines.append("|---|---|---|---|")
            for name, photo in sweeps:
                direct = photo["direct_crop_same_faces"]["accuracy"]
                for margin, row in photo["margins"].items():
                    gap = 100 * (row["accuracy"] - direct)
                    lines.append(f"| {name} | {margin} | {_pct(row['accuracy'])} | {gap:+.2f} |")
    seconds = result["seconds"]
    lines += [
        "",
        f"Command: `{result['command']}`; {result['date']}; {result['machine']}; "
        f"{seconds['conditions']} s for the conditions, "
        f"{seconds['photo_path']} s for the photo path.",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="default", help="'default', a weights file or a run dir")
    parser.add_argument("--name", help="the model's name in results (default: from --model)")
    parser.add_argument("--prior", help="dataset or balanced (default: the model's default)")
    parser.add_argument("--faces", type=int, default=500, help="Valid faces sampled (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--detectors",
        type=lambda text: [d for d in text.split(",") if d],
        default=["mtcnn", "alt2"],
        help="photo-path detectors, comma-separated; the first available one enters the summary",
    )
    parser.add_argument(
        "--margins",
        type=lambda text: tuple(float(m) for m in text.split(",") if m),
        default=(),
        help="also read the found faces cropped with each of these margins, e.g. -0.05,0,0.05",
    )
    parser.add_argument("--ferplus", type=Path, default=SHARED / "datasets" / "ferplus")
    parser.add_argument("--photos", type=Path, default=SHARED / "photos")
    parser.add_argument("--synthetic", action="store_true", help="the astronaut's face, no dataset")
    parser.add_argument("--threads", type=int, default=1, help="torch and OpenCV threads")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    if args.faces < 0:
        parser.error("--faces must be >= 0")
    if any(m <= -0.5 for m in args.margins):
        parser.error("--margins must be > -0.5 (a negative margin trims the box)")
    if args.name is None:
        args.name = model_name(args.model)
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    result = run(args)
    stem = f"robustness-{args.name}" + ("-synthetic" if args.synthetic else "")
    table = markdown(result)
    write_report(args.out, stem, result, table)
    print(table)
    return result


if __name__ == "__main__":
    main()
