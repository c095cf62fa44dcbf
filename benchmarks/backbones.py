"""What each base network costs: the IR `small` at 48 px and the faceres MobileNet at 128-224 px.

    python benchmarks/backbones.py [--repeats 3] [--threads 2] [--out benchmarks/results]

Per candidate: inference parameters and GMACs, QCS training images/s (one optimiser step of
forward + backward in bf16 autocast, channels_last, with the recipe's frozen layers and frozen
BatchNorm statistics: a pretrained faceres trains its last blocks only, a randomly initialised one
trains everything with live statistics), and ONNX Runtime ms per face (batch 1 and batch 16).
Candidates are measured side by side, alternating, so ratios hold on a loaded machine. Weights
are random: speed does not depend on them. Writes backbones.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from speed import time_steps

from qcsfer.card import ModelCard
from qcsfer.models import QCSModel, branch_loss, get_config
from qcsfer.models.complexity import measure_complexity
from qcsfer.preprocessing import Preprocessing

# name -> (config, overrides, frozen backbone layers)
CANDIDATES = {
    "small 48 px (IR, scratch)": ("small", {}, 0),
    "faceres 128 px, pretrained (6 layers frozen)": ("faceres", {}, 6),
    "faceres 128 px, random init": ("faceres", {"frozen_backbone_norm": False}, 0),
    "faceres 160 px, pretrained (6 layers frozen)": (
        "faceres", {"image_size": 160, "backbone_size": 160, "token_grid": 5}, 6),
    "faceres 224 px, pretrained (6 layers frozen)": (
        "faceres", {"image_size": 224, "backbone_size": 224, "token_grid": 7}, 6),
}  # fmt: skip
ANCHORS = 8  # quadruplets per training step: 32 images


def build(name: str) -> QCSModel:
    config_name, overrides, frozen = CANDIDATES[name]
    torch.manual_seed(0)
    model = QCSModel(get_config(config_name, num_classes=8, **overrides), "qcs")
    if frozen:
        for layer in list(model.base.backbone.layers)[:frozen]:
            layer.requires_grad_(False)
    return model.to(memory_format=torch.channels_last).train()


def training_step(model: QCSModel) -> Callable[[], None]:
    size = model.config.image_size
    images = torch.randn(4 * ANCHORS, 3, size, size).contiguous(memory_format=torch.channels_last)
    images = images.unflatten(0, (4, ANCHORS))
    targets = torch.randint(0, 8, (4, ANCHORS))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(images)
        branch_loss(logits, targets).backward()
        optimizer.step()

    return step


def onnx_ms_per_face(model: QCSModel) -> tuple[float, float]:
    """ONNX Runtime latency at batch 1 and per face at batch 16, ms."""
    import onnxruntime as ort

    from qcsfer.inference.export import export_onnx

    base = model.base.eval()
    side = base.config.image_size
    prep = Preprocessing(image_size=side, load_size=side, grayscale=True)
    card = ModelCard("base", base.config.to_dict(), tuple(map(str, range(8))), prep)
    path = Path(tempfile.mkdtemp()) / "model.onnx"
    export_onnx(base, card, path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    one, many = (torch.randn(n, 3, side, side).numpy() for n in (1, 16))
    session.run(None, {name: one})
    single = time_steps(lambda: session.run(None, {name: one}), 30)
    batch = time_steps(lambda: session.run(None, {name: many}), 5)
    return single * 1e3, batch / 16 * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steps = {name: training_step(build(name)) for name in CANDIDATES}
    for step in steps.values():  # warm-up
        step()
    seconds: dict[str, list[float]] = {name: [] for name in CANDIDATES}
    for _ in range(args.repeats):  # alternate: every candidate sees the same machine state
        for name, step in steps.items():
            seconds[name].append(time_steps(step, 2))
    rows = []
    for name in CANDIDATES:
        model = build(name)
        cost = measure_complexity(model.base.config, mode=None)
        single, batched = onnx_ms_per_face(model)
        rows.append(
            {
                "candidate": name,
                "params_m": cost.params_inference / 1e6,
                "gmacs": cost.gmacs_inference,
                "train_img_s": 4 * ANCHORS / statistics.median(seconds[name]),
                "onnx_ms_batch1": single,
                "onnx_ms_per_face_batch16": batched,
            }
        )
        print(f"  {rows[-1]}", file=sys.stderr)
    record = {
        "date": time.strftime("%Y-%m-%d"),
        "threads": args.threads,
        "command": " ".join(sys.argv),
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "backbones.json").write_text(json.dumps(record, indent=2) + "\n")
    print("| base network | params (M) | GMACs | QCS train img/s | ONNX ms, batch 1 | "
          "ONNX ms/face, batch 16 |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['candidate']} | {r['params_m']:.2f} | {r['gmacs']:.3f} | "
            f"{r['train_img_s']:.1f} | {r['onnx_ms_batch1']:.1f} | "
            f"{r['onnx_ms_per_face_batch16']:.1f} |"
        )


if __name__ == "__main__":
    main()
