"""Speed: QCS training throughput (ours vs a naive implementation), inference, data pipeline.

    python benchmarks/speed.py [--configs small tiny paper] [--repeats 3] [--skip-inference]
                               [--device cpu|cuda]

Training: images per second through forward + backward + optimiser step, QCS mode.
- ours: the four branches in ONE batched base-network call, bf16 autocast, channels_last;
- naive: four separate base-network calls (one per branch), fp32, default memory format, the
  way a straightforward port of the reference runs. It lives only here, for comparison.
Both are measured side by side in one process, alternating, and reported as a ratio.

Inference: the shipped model (or `small` initialised at random if none is shipped), batch 1
latency and batch 64 throughput, eager fp32 / eager bf16 / ONNX Runtime; peak resident memory
of each in a fresh subprocess. Data: sampler + gather + batched augmentation images per second.

On CUDA (`--device cuda`) the same training comparison runs with larger batches, the data
pipeline augments on the GPU, and inference reports eager fp32 / bf16 with peak GPU memory.

Writes benchmarks/results/speed.json (speed-cuda.json on CUDA) and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from qcsfer.data.sampling import BranchSampler
from qcsfer.data.transforms import Augmentation, train_transform
from qcsfer.models import BranchLogits, QCSModel, branch_loss, get_config
from qcsfer.preprocessing import Preprocessing

RESULTS = Path(__file__).parent / "results"
# Anchors per step (x4 images): what each device trains with in practice.
ANCHORS = {
    "cpu": {"tiny": 32, "small": 32, "paper": 2},
    "cuda": {"tiny": 64, "small": 64, "paper": 16},
}


def naive_forward(model: QCSModel, images: torch.Tensor) -> BranchLogits:
    """Four separate base-network calls, then the same cross classifier."""
    features = torch.stack([model.base.forward_features(images[g]) for g in range(len(images))])
    base_logits = torch.stack([model.base.forward_head(f) for f in features])
    return BranchLogits(base_logits, model.cross_logits(features[:, :, 1:]))


def make_step(name: str, implementation: str, device: torch.device):
    config = get_config(name, num_classes=8)
    torch.manual_seed(0)
    model = QCSModel(config, "qcs").to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    b = ANCHORS[device.type][name]
    images = torch.randn(4, b, 3, config.image_size, config.image_size, device=device)
    targets = torch.randint(0, 8, (4, b), device=device)
    if implementation == "ours":
        model = model.to(memory_format=torch.channels_last)
        flat = images.flatten(0, 1).contiguous(memory_format=torch.channels_last)
        images = flat.unflatten(0, (4, b))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        if implementation == "ours":
            with torch.autocast(device.type, dtype=torch.bfloat16):
                logits = model(images)
        else:
            logits = naive_forward(model, images)
        branch_loss(logits, targets).backward()
        optimizer.step()

    return step, 4 * b


def synchronize(device: torch.device | None) -> None:
    """CUDA runs asynchronously: wait for the queued work before reading the clock."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step, steps: int, device: torch.device | None = None) -> float:
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return (time.perf_counter() - start) / steps


def training_throughput(names: list[str], repeats: int, device: torch.device) -> list[dict]:
    rows = []
    for name in names:
        steps = 2 if name == "paper" and device.type == "cpu" else 5
        runs = {impl: make_step(name, impl, device) for impl in ("ours", "naive")}
        for step, _ in runs.values():  # warm-up
            step()
        seconds = {impl: [] for impl in runs}
        for _ in range(repeats):  # alternate so both see the same machine state
            for impl, (step, _) in runs.items():
                seconds[impl].append(time_steps(step, steps, device))
        images = runs["ours"][1]
        ours = images / statistics.median(seconds["ours"])
        naive = images / statistics.median(seconds["naive"])
        rows.append(
            {
                "config": name,
                "images_per_step": images,
                "ours_img_s": ours,
                "naive_img_s": naive,
                "speedup": ours / naive,
            }
        )
        print(
            f"  {name}: ours {ours:.1f} img/s, naive {naive:.1f} img/s, x{ours / naive:.2f}",
            file=sys.stderr,
        )
    return rows


def data_throughput(repeats: int, device: torch.device) -> dict:
    """Sampler + gather + augmentation of FERPlus-sized images (48 px gray), no model.

    As in training: the uint8 images are gathered on the CPU, moved, and augmented on `device`.
    """
    n, b = 25_000, 32
    labels = np.random.default_rng(0).integers(0, 8, n)
    images = torch.randint(0, 256, (n, 1, 48, 48), dtype=torch.uint8)
    sampler = BranchSampler(labels, 4, b)
    prep = Preprocessing(image_size=48, load_size=48, grayscale=True)
    aug, g = Augmentation(), torch.Generator(device).manual_seed(0)
    synchronize(device)
    start = time.perf_counter()
    batches = sampler.epoch(0)[: 20 * repeats]
    for index in batches:
        batch = images[torch.from_numpy(index.reshape(-1))].to(device, non_blocking=True)
        train_transform(batch, prep, aug, g)
    synchronize(device)
    seconds = time.perf_counter() - start
    return {"images_per_second": batches.size / seconds}


def probe(kind: str, weights: str, device_name: str) -> dict:
    """Inference speed of one backend; run in a fresh process so peak memory is its own."""
    from qcsfer.card import ModelCard
    from qcsfer.models import BaseNetwork
    from qcsfer.pretrained import load_model

    if weights == "random":
        torch.manual_seed(0)
        model = BaseNetwork(get_config("small", num_classes=8)).eval()
        side = model.config.image_size
        prep = Preprocessing(image_size=side, load_size=side, grayscale=True)
        card = ModelCard("base", model.config.to_dict(), tuple(map(str, range(8))), prep)
    else:
        model, card = load_model(weights)
    device = torch.device(device_name)
    model = model.to(device)
    size = model.config.image_size
    one = torch.randn(1, 3, size, size, device=device)
    many = torch.randn(64, 3, size, size, device=device)
    if kind == "onnx":
        import tempfile

        import onnxruntime as ort

        from qcsfer.inference.export import export_onnx

        path = Path(tempfile.mkdtemp()) / "model.onnx"
        export_onnx(model, card, path)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name

        def run(x: torch.Tensor) -> object:
            return session.run(None, {name: x.numpy()})
    else:

        def run(x: torch.Tensor) -> object:
            bf16 = kind == "bf16"
            with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
                return model(x)

    run(one)
    run(many)
    latency = time_steps(lambda: run(one), 50, device)
    batch = time_steps(lambda: run(many), 10, device)
    # VmHWM: this process's peak resident memory (ru_maxrss would include the forking parent).
    status = Path("/proc/self/status").read_text().splitlines()
    peak_mb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024
    row = {
        "backend": kind,
        "latency_ms": latency * 1e3,
        "batch64_img_s": 64 / batch,
        "peak_rss_mb": peak_mb,
    }
    if device.type == "cuda":
        row["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return row


def inference(weights: str, device: torch.device) -> list[dict]:
    rows = []
    kinds = ("fp32", "bf16", "onnx") if device.type == "cpu" else ("fp32", "bf16")
    for kind in kinds:
        out = subprocess.run(
            [sys.executable, __file__, "--probe", kind, weights, device.type],
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            print(f"  inference {kind} failed: {out.stderr[-500:]}", file=sys.stderr)
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", default=["small", "tiny", "paper"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-inference", action="store_true")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--probe", nargs=3, metavar=("BACKEND", "WEIGHTS", "DEVICE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.probe:
        print(json.dumps(probe(*args.probe)))
        return

    from qcsfer.pretrained import DEFAULT_WEIGHTS, WEIGHTS_DIR

    shipped = WEIGHTS_DIR / f"{DEFAULT_WEIGHTS}.safetensors"
    weights = "default" if shipped.is_file() else "random"
    device = torch.device(args.device)
    machine = f"{platform.machine()}, {torch.get_num_threads()} threads"
    if device.type == "cuda":
        machine += f", {torch.cuda.get_device_name(device)}"
    report = {
        "date": date.today().isoformat(),
        "machine": machine,
        "torch": torch.__version__,
        "command": "python " + " ".join(sys.argv),
        "training": training_throughput(args.configs, args.repeats, device),
        "data": data_throughput(args.repeats, device),
        "inference_weights": weights,
        "inference": [] if args.skip_inference else inference(weights, device),
    }
    RESULTS.mkdir(exist_ok=True)
    name = "speed.json" if device.type == "cpu" else f"speed-{device.type}.json"
    (RESULTS / name).write_text(json.dumps(report, indent=2))

    print(
        "| config | images/step | ours: batched, bf16 (img/s) | naive: 4 calls, fp32 (img/s) |"
        " speed-up |"
    )
    print("|---|---|---|---|---|")
    for r in report["training"]:
        print(
            f"| {r['config']} | {r['images_per_step']} | {r['ours_img_s']:.1f} | "
            f"{r['naive_img_s']:.1f} | {r['speedup']:.2f}x |"
        )
    print(
        f"\ndata pipeline (sampler + gather + augmentation): "
        f"{report['data']['images_per_second']:.0f} img/s"
    )
    if report["inference"]:
        print(f"\ninference ({weights} model)\n")
        print(
            "| backend | latency batch 1 (ms) | throughput batch 64 (img/s) | peak RSS (MB) |"
            " peak GPU memory (MB) |"
        )
        print("|---|---|---|---|---|")
        for r in report["inference"]:
            gpu = f"{r['peak_gpu_mb']:.0f}" if "peak_gpu_mb" in r else "-"
            print(
                f"| {r['backend']} | {r['latency_ms']:.2f} | {r['batch64_img_s']:.0f} | "
                f"{r['peak_rss_mb']:.0f} | {gpu} |"
            )


if __name__ == "__main__":
    main()
