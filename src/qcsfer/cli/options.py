"""Argument types and option groups that several commands share, and the authors' reference
checkpoints given in place of a model (`--reference-dataset`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UsageError, WeightsError
from ..torch_files import not_a_torch_file

REFERENCE_DATASETS = ("rafdb", "ferplus", "affectnet7", "affectnet8")


def positive(text: str) -> int:
    """An integer option that must be at least 1 (a batch size, a frame step)."""
    return integer_from(text, 1)


def at_least_zero(text: str) -> int:
    return integer_from(text, 0)


def integer_from(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
    return value


def model_options(p: argparse.ArgumentParser, backend: bool = True) -> None:
    """--model, --backend (ONNX Runtime or PyTorch) and --device: which model runs where."""
    p.add_argument(
        "--model",
        default="default",
        help="a shipped model (general, ferplus; default: general if installed, else ferplus), "
        "a weights file, a run directory or .onnx",
    )
    if backend:
        p.add_argument("--backend", default="auto", choices=["auto", "torch", "onnx"])
    p.add_argument("--device", default="cpu", help="cpu, cuda, auto (PyTorch backend)")


NEGATIVE_VALUED = ("--box",)  # options whose value may start with '-' (a box left of the image)


def attach_negative_values(argv: list[str]) -> list[str]:
    """`--box -10,0,90,100` as `--box=-10,0,90,100`: argparse reads a value starting with '-'
    as an option of its own unless it is a plain negative number."""
    joined: list[str] = []
    values = iter(argv)
    for item in values:
        if item in NEGATIVE_VALUED:
            value = next(values, None)
            if value is not None and value.startswith("-") and value[1:2].isdigit():
                joined.append(f"{item}={value}")
                continue
            joined.extend([item] if value is None else [item, value])
        else:
            joined.append(item)
    return joined


LANDMARK_DETECTORS = ("mtcnn", "blazeface", "blazeface-back")  # detectors that place the eyes


def face_options(p: argparse.ArgumentParser) -> None:
    """Which faces are classified (detector, given boxes, alignment) and at which prior."""
    p.add_argument("--no-detect", action="store_true", help="each image is one face (no detector)")
    p.add_argument(
        "--box",
        action="append",
        default=None,
        metavar="X0,Y0,X1,Y1",
        help="classify this box (pixels) instead of detecting faces (repeatable)",
    )
    p.add_argument(
        "--detector",
        default="auto",
        help="auto (photos: mtcnn if installed, else alt2; videos and cameras: blazeface-back), "
        "mtcnn (needs: pip install --no-deps facenet-pytorch==2.6.0), blazeface (faces near the "
        "camera), blazeface-back (smaller faces) or a Haar cascade: alt2, alt, default, "
        "alt_tree or an XML path",
    )
    p.add_argument(
        "--align",
        action="store_true",
        help="level the eyes before classifying (mtcnn, blazeface, blazeface-back)",
    )
    p.add_argument(
        "--prior",
        choices=["dataset", "balanced"],
        help="operating point: most accurate on the training set's class mix (dataset) or "
        "every class weighted equally (balanced); default: the model's own default",
    )


def given_boxes(args: argparse.Namespace) -> list[tuple[float, float, float, float]] | None:
    """The --box options; also refuses --align where it would silently do nothing."""
    from ..inference.faces import parse_box

    if args.align and (args.detector not in LANDMARK_DETECTORS or args.no_detect or args.box):
        raise UsageError(
            "--align needs faces found by --detector mtcnn, blazeface or blazeface-back "
            "(they place the eyes)"
        )
    return [parse_box(text) for text in args.box] if args.box else None


def reference_options(p: argparse.ArgumentParser, model_arg: str) -> None:
    """--reference-dataset: use an authors' checkpoint directly (converted once, cached)."""
    p.add_argument(
        "--reference-dataset",
        choices=REFERENCE_DATASETS,
        help="the model is an authors' reference checkpoint (.pth) trained on this dataset",
    )
    p.add_argument("--reference-mode", default="qcs", choices=["qcs", "dcs"])
    p.set_defaults(model_arg=model_arg)


def resolve_reference(args: argparse.Namespace) -> None:
    """Point the command at a converted copy of a reference checkpoint, or say how to make one."""
    name = getattr(args, "model_arg", None)
    path = Path(str(getattr(args, name, ""))) if name else None
    if path is None or not path.is_file() or path.suffix in (".safetensors", ".json", ".onnx"):
        return
    if args.reference_dataset:
        from ..data.images import default_cache_dir
        from ..models.reference import converted_path

        cache = default_cache_dir() / "reference"
        setattr(
            args,
            name,
            str(converted_path(path, args.reference_dataset, args.reference_mode, cache)),
        )
        return
    if not_a_torch_file(path) is None:
        raise WeightsError(
            f"{path} is a PyTorch checkpoint, not qcsfer weights. If it is one of the authors' "
            f"QCS/DCS checkpoints, convert it once:\n  qcsfer convert {path} --dataset "
            f"{{{','.join(REFERENCE_DATASETS)}}} [--mode dcs] --out {path.stem}.safetensors\n"
            "or use it directly with --reference-dataset DATASET [--reference-mode dcs]"
        )
