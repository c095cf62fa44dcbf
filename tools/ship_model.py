"""Package a run's best model as the default model inside qcsfer (src/qcsfer/weights/).

    python tools/ship_model.py runs/ferplus-qcs-small [--name ferplus-qcs-small]

Re-evaluates the model on its validation split (with and without flip averaging) so the numbers
in its provenance are measured on the file that ships, and records the commit it came from.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

from qcsfer.engine.evaluate import evaluate
from qcsfer.models.weights import load_weights, save_weights
from qcsfer.pretrained import DEFAULT_WEIGHTS, WEIGHTS_DIR

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--name", default=DEFAULT_WEIGHTS)
    args = parser.parse_args()

    model, metadata = load_weights(args.run_dir / "best.safetensors", base_only=True)
    config = metadata["provenance"]["config"]
    data = config["data"]
    measured = {}
    for flip in (False, True):
        metrics = evaluate(
            args.run_dir,
            data["format"],
            data["root"],
            data["val_split"],
            options={k: v for k, v in data["options"].items()},
            flip=flip,
            device="cpu",
        )
        measured["flip" if flip else "plain"] = {
            "accuracy": metrics.accuracy,
            "balanced_accuracy": metrics.balanced_accuracy,
            "macro_f1": metrics.macro_f1,
            "images": metrics.total,
        }
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    history = [
        json.loads(line) for line in (args.run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    provenance = {
        **metadata["provenance"],
        "dataset": f"{data['format']} ({data['options']}), trained on '{data['train_split']}', "
        f"selected on '{data['val_split']}'",
        "seed": config["seed"],
        "epochs_trained": len(history),
        "train_minutes": round(sum(h["epoch_seconds"] for h in history) / 60, 1),
        "validation": measured,
        "commit": commit,
        "command": f"qcsfer train configs/... (resolved config above); shipped with "
        f"python tools/ship_model.py {args.run_dir}",
    }
    out = save_weights(
        model,
        WEIGHTS_DIR / f"{args.name}.safetensors",
        classes=metadata["classes"],
        preprocessing=metadata["preprocessing"],
        provenance=provenance,
    )
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    print(json.dumps(measured, indent=2))


if __name__ == "__main__":
    main()
