"""The `qcsfer` command: thin sub-commands that parse, call the library and print."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from . import __version__
from .errors import MissingDependencyError, QcsferError
from .exits import run_until_stopped


def _data(args: argparse.Namespace) -> int:
    from .data.datasets import DEFAULT_SPLITS, parse_spec, read_dataset
    from .data.records import DatasetError
    from .data.summary import summarize

    data_format, root = parse_spec(args.spec, args.format)
    options = _key_values(args.option, typed=True)
    absent = []
    for split in args.split or DEFAULT_SPLITS[data_format]:
        try:
            data = read_dataset(data_format, root, split, **options)
        except DatasetError as exc:
            if args.split:  # asked for by name: an error; a default split may just be absent
                raise
            absent.append(exc)
            print(f"{data_format} / {split}: not available ({exc})\n")
            continue
        print(summarize(data, sample=args.check).table() + "\n")
    if len(absent) == len(args.split or DEFAULT_SPLITS[data_format]):
        raise absent[-1]  # nothing readable at all: that is an error
    return 0


def _train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .engine.trainer import train

    if args.resume:
        if args.config or args.run_dir or args.overwrite:
            raise ValueError(
                "--resume continues a run with its own configuration: drop the config file, "
                "--run-dir and --overwrite (--set is accepted for options safe to change, "
                "such as epochs)"
            )
        run_dir = train(
            None,
            Path(args.resume),
            resume=True,
            overrides=args.set,
            allow_data_change=args.allow_data_change,
        )
    else:
        config = load_config(args.config, args.set)
        run_dir = train(
            config, Path(args.run_dir) if args.run_dir else None, overwrite=args.overwrite
        )
    print(f"run directory: {run_dir}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .data.datasets import parse_spec
    from .engine.evaluate import evaluate

    data_format, root = parse_spec(args.data, args.format)
    mapping = _key_values(args.class_map, typed=False) or None
    evaluation = evaluate(
        args.weights,
        data_format,
        root,
        args.split,
        options=_key_values(args.option, typed=True),
        mapping=mapping,
        flip=args.flip,
        device=args.device,
        batch_size=args.batch_size,
        out_dir=args.out,
        prior=args.prior,
        cache=not args.no_cache,
    )
    print(evaluation.metrics.table())
    print(f"\noperating points (prior: {args.prior} above):")
    for p in evaluation.points.values():
        print(
            f"  prior={p.prior:<8} strength {p.prior_strength:.2f}  temperature "
            f"{p.temperature:.3f}  accuracy {p.accuracy:.4f}  balanced {p.balanced_accuracy:.4f}"
            f"  macro F1 {p.macro_f1:.4f}  ECE {p.ece_before:.4f} -> {p.ece_after:.4f} calibrated"
        )
    print(f"wrote {Path(args.out) / 'metrics.json'} and confusion_matrix.png")
    return 0


def _info(args: argparse.Namespace) -> int:
    from .models.complexity import measure_complexity
    from .models.configs import CONFIGS, get_config

    if args.target in CONFIGS:
        config = get_config(args.target, **({"num_classes": args.classes} if args.classes else {}))
        report = measure_complexity(config, mode=args.mode)
    elif str(args.target).lower().endswith(".onnx"):  # the card embedded at export
        from .pretrained import load_card

        card = load_card(args.target)
        print(card.summary())
        if not card.model:  # exported before cards recorded the network's configuration
            return 0
        report = measure_complexity(card.model_config(), mode=None)
    else:
        from .models.weights import load_weights
        from .pretrained import resolve_weights

        model, card = load_weights(resolve_weights(args.target))
        report = measure_complexity(model)
        print(card.summary())
    print(report.summary())
    return 0


def _recognizer_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", default="default", help="'default', a weights file, a run directory or .onnx"
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, auto (PyTorch backend)")
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
        help="auto (mtcnn if installed, else alt2), mtcnn (needs: pip install --no-deps "
        "facenet-pytorch==2.6.0) or a Haar cascade: alt2, alt, default, alt_tree or an XML path",
    )
    p.add_argument(
        "--align", action="store_true", help="level the eyes before classifying (mtcnn only)"
    )
    p.add_argument(
        "--prior",
        choices=["dataset", "balanced"],
        help="operating point: the training set's class prior kept (dataset) or every class "
        "weighted equally (balanced); default: the model's own default",
    )


def _boxes(args: argparse.Namespace) -> list[tuple[float, float, float, float]] | None:
    """The --box options; also refuses --align where it would silently do nothing."""
    from .inference.faces import parse_box

    if args.align and (args.detector != "mtcnn" or args.no_detect or args.box):
        raise ValueError("--align needs faces found by --detector mtcnn (it places the eyes)")
    return [parse_box(text) for text in args.box] if args.box else None


def _predict(args: argparse.Namespace) -> int:
    from .inference.recognizer import ExpressionRecognizer
    from .inference.runner import run_predict

    boxes = _boxes(args)
    if args.fps is not None and args.every != 1:
        raise ValueError("give --every or --fps, not both")
    try:
        recognizer = ExpressionRecognizer(
            args.model,
            backend=args.backend,
            device=args.device,
            detect=not args.no_detect,
            detector=args.detector,
            align=args.align,
            batch_size=args.batch_size,
            prior=args.prior,
        )
    except ImportError as exc:  # onnxruntime missing for an .onnx model
        raise MissingDependencyError(str(exc)) from exc
    summary = run_predict(
        recognizer,
        args.inputs,
        fmt=args.format,
        out_dir=args.out,
        every=args.every,
        video={"fps": args.fps, "start": args.start, "end": args.end, "tau": args.smooth},
        boxes=boxes,
        progress=not args.quiet,
    )
    print(summary.line(), file=sys.stderr)
    if summary.annotated:
        print(f"annotated images in {args.out}", file=sys.stderr)
    return 0 if summary.images or summary.frames else 1


def _export(args: argparse.Namespace) -> int:
    from .inference.export import export_weights
    from .outputs import check_output_file

    out = check_output_file(args.out or Path(args.weights).stem + ".onnx")
    try:
        report = export_weights(args.weights, args.format, out, opset=args.opset)
    except ImportError as exc:  # onnx / onnxruntime missing
        raise MissingDependencyError(str(exc)) from exc
    print(
        f"wrote {report.path} ({report.format}); max |logit difference| vs PyTorch "
        f"{report.max_abs_diff:.2g} on batch sizes {', '.join(map(str, report.batch_sizes))}"
    )
    return 0


def _explain(args: argparse.Namespace) -> int:
    from .inference.explain import explain
    from .inference.recognizer import ExpressionRecognizer
    from .outputs import check_output_folder

    check_output_folder(args.out)
    if str(args.model).lower().endswith(".onnx"):
        raise ValueError(
            f"{args.model}: explain reads the attention of the PyTorch model; give its weights "
            "file, run directory or 'default' (an exported .onnx file cannot be explained)"
        )
    boxes = _boxes(args)
    model, network = args.model, None
    if args.reference:  # the whole training graph, read once; the recognizer runs its base
        from .inference.backends import LoadedModel, TorchBackend
        from .models.weights import load_weights
        from .pretrained import resolve_weights

        network, card = load_weights(resolve_weights(args.model))
        if not hasattr(network, "csa"):
            raise ValueError(
                f"{args.model}: holds no CSA modules (an inference-only or baseline "
                "model); use a run's best.safetensors from DCS/QCS training"
            )
        backend = TorchBackend(network.base, card.preprocessing, args.device)
        network.to(backend.device)
        model = LoadedModel(backend, card)
    recognizer = ExpressionRecognizer(
        model,
        backend="torch",
        device=args.device,
        detect=not args.no_detect,
        detector=args.detector,
        align=args.align,
        prior=args.prior,
    )
    if network is not None:
        from .inference.explain import explain_csa

        path = explain_csa(recognizer, network, args.image, args.reference, args.out)
        print(f"CSA maps: {path}")
    written = explain(recognizer, args.image, args.out, boxes=boxes)
    if not written:
        print(f"{args.image}: no face found (for pre-cropped faces use --no-detect)")
        return 1
    for prediction, path in written:
        print(f"{path}: {prediction.label} {prediction.confidence:.0%} at {prediction.box}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    try:
        import fastapi  # noqa: F401 - the optional extra, checked before loading the model
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(
            f"{exc}; install it with: pip install 'qcsfer[serve]'"
        ) from exc
    from .serve import ServeSettings, serve
    from .serve.settings import token_from

    settings = ServeSettings(
        model=args.model,
        backend=args.backend,
        device=args.device,
        detector=args.detector,
        prior=args.prior,
        host=args.host,
        port=args.port,
        workers=args.workers,
        threads=args.threads,
        batch_window_ms=args.batch_window_ms,
        max_batch_faces=args.max_batch_faces,
        max_pending=args.max_pending,
        timeout_s=args.timeout,
        max_body_bytes=args.max_upload_mb * 1024 * 1024,
        max_images=args.max_images,
        max_faces=args.max_faces,
        token=token_from(args.token),
        cors_origins=tuple(args.cors),
    )
    serve(settings)
    return 0


def _convert(args: argparse.Namespace) -> int:
    from .models.reference import convert_reference

    path, report = convert_reference(args.checkpoint, args.dataset, args.out, args.mode)
    print(report.summary())
    print(f"wrote {path} and {path.with_suffix('.json').name}")
    return 0


REFERENCE_DATASETS = ("rafdb", "ferplus", "affectnet7", "affectnet8")
_PICKLE_MAGIC = (b"PK\x03\x04", b"\x80")  # torch zip archive, legacy torch pickle


def _reference_options(p: argparse.ArgumentParser, model_arg: str) -> None:
    """--reference-dataset: use an authors' checkpoint directly (converted once, cached)."""
    p.add_argument(
        "--reference-dataset",
        choices=REFERENCE_DATASETS,
        help="the model is an authors' reference checkpoint (.pth) trained on this dataset",
    )
    p.add_argument("--reference-mode", default="qcs", choices=["qcs", "dcs"])
    p.set_defaults(model_arg=model_arg)


def _resolve_reference(args: argparse.Namespace) -> None:
    """Point the command at a converted copy of a reference checkpoint, or say how to make one."""
    name = getattr(args, "model_arg", None)
    path = Path(str(getattr(args, name, ""))) if name else None
    if path is None or not path.is_file() or path.suffix in (".safetensors", ".json", ".onnx"):
        return
    if args.reference_dataset:
        from .data.images import default_cache_dir
        from .models.reference import converted_path

        cache = default_cache_dir() / "reference"
        setattr(
            args,
            name,
            str(converted_path(path, args.reference_dataset, args.reference_mode, cache)),
        )
        return
    with path.open("rb") as f:
        head = f.read(4)
    if head.startswith(_PICKLE_MAGIC):
        raise ValueError(
            f"{path} is a PyTorch checkpoint, not qcsfer weights. If it is one of the authors' "
            f"QCS/DCS checkpoints, convert it once:\n  qcsfer convert {path} --dataset "
            f"{{{','.join(REFERENCE_DATASETS)}}} [--mode dcs] --out {path.stem}.safetensors\n"
            "or use it directly with --reference-dataset DATASET [--reference-mode dcs]"
        )


def _key_values(items: list[str], typed: bool) -> dict[str, object]:
    """KEY=VALUE arguments. Typed values are read as YAML (7 -> int, true -> bool); untyped ones
    stay strings (class names such as 'no' or '1' stay names)."""
    import yaml

    out: dict[str, object] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"expected KEY=VALUE, got {item!r}")
        key, value = (part.strip() for part in item.split("=", 1))
        out[key] = yaml.safe_load(value) if typed else value
    return out


def _positive(text: str) -> int:
    """An integer option that must be at least 1 (a batch size, a frame step)."""
    return _integer_from(text, 1)


def _at_least_zero(text: str) -> int:
    return _integer_from(text, 0)


def _integer_from(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
    return value


def _opset(text: str) -> int:
    """The ONNX opsets our network exports with: from 11 (first tested) to 20 (torch's
    TorchScript-based exporter's last)."""
    value = _integer_from(text, 11)
    if value > 20:
        raise argparse.ArgumentTypeError(f"must be at most 20, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qcsfer", description="QCS facial expression recognition: train, evaluate, predict."
    )
    parser.add_argument("--version", action="version", version=f"qcsfer {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    parser.add_argument(
        "--debug", action="store_true", help="show the full traceback of an error, not one line"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("data", help="read a dataset and print its class counts")
    p.add_argument(
        "spec",
        help="FORMAT:ROOT, e.g. ferplus:../shared/datasets/ferplus "
        "(for csv the root is the list file)",
    )
    p.add_argument("--format", help="the format when SPEC is only a path")
    p.add_argument("--split", nargs="+", help="splits to read (default: the format's usual ones)")
    p.add_argument(
        "--check",
        type=_at_least_zero,
        default=500,
        metavar="N",
        help="decode N random images per split to report sizes and unreadable files",
    )
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="reader option, e.g. label_mode=probability",
    )
    p.set_defaults(func=_data)

    p = sub.add_parser("train", help="train a baseline, DCS or QCS model")
    p.add_argument("config", nargs="?", help="YAML recipe (see configs/)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set optim.lr=1e-4 (repeatable)",
    )
    p.add_argument("--run-dir", help="where to write the run (default runs/<name>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR exactly")
    p.add_argument(
        "--overwrite", action="store_true", help="replace the run already in the run directory"
    )
    p.add_argument(
        "--allow-data-change",
        action="store_true",
        help="resume although the data differ from the run's (the difference is logged)",
    )
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="metrics of a model on a dataset split")
    p.add_argument(
        "weights",
        nargs="?",
        default="default",
        help="weights file, run directory (its best model) or 'default'",
    )
    p.add_argument(
        "--data",
        required=True,
        help="FORMAT:ROOT, e.g. ferplus:/data/FERPlus (for csv: the list file)",
    )
    p.add_argument("--format", help="the format when --data is only a path")
    p.add_argument("--split", default="test")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "--class-map",
        action="append",
        default=[],
        metavar="DATASET=MODEL",
        help="map a dataset class name onto a model class name (repeatable); "
        "dataset classes left out are excluded",
    )
    p.add_argument("--flip", action="store_true", help="average with the mirrored image (TTA)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=_positive, default=256)
    p.add_argument("--out", default="evaluation", help="folder for metrics.json and the PNG")
    p.add_argument(
        "--prior",
        default="dataset",
        choices=["dataset", "balanced"],
        help="operating point for the table: the training prior kept (dataset) or corrected "
        "(balanced); both are reported",
    )
    _reference_options(p, "weights")
    p.add_argument(
        "--no-cache", action="store_true", help="decode without the image cache (QCSFER_CACHE)"
    )
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("info", help="a model's card, or the size and cost of a configuration")
    p.add_argument(
        "target",
        help="a configuration (paper, small, tiny), 'default', a weights file or a run directory",
    )
    p.add_argument("--mode", default="qcs", choices=["baseline", "dcs", "qcs"])
    p.add_argument("--classes", type=int, help="number of classes (default: the config's)")
    _reference_options(p, "target")
    p.set_defaults(func=_info)

    p = sub.add_parser("predict", help="expressions of the faces in images, folders or videos")
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image, folder, glob, video, or webcam:N (camera N)",
    )
    _recognizer_options(p)
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "onnx"])
    p.add_argument(
        "--out",
        help="folder for annotated images; per video a folder with frames.csv/.jsonl, "
        "tracks.csv/.json, timelines/ and annotated.mp4",
    )
    p.add_argument("--format", default="table", choices=["table", "json", "csv"])
    p.add_argument("--every", type=_positive, default=1, metavar="N", help="video: every Nth frame")
    p.add_argument("--fps", type=float, metavar="F", help="video: F frames per second instead")
    p.add_argument("--start", type=float, default=0.0, metavar="S", help="video: from S seconds")
    p.add_argument("--end", type=float, metavar="S", help="video: up to S seconds")
    p.add_argument(
        "--smooth",
        type=float,
        default=0.5,
        metavar="SECONDS",
        help="video: time constant of each face's expression smoothing (0: off)",
    )
    p.add_argument("--batch-size", type=_positive, default=64, help="faces per forward pass")
    _reference_options(p, "model")
    p.set_defaults(func=_predict)

    p = sub.add_parser("export", help="export the inference network to ONNX")
    p.add_argument("weights", help="weights file, run directory or 'default'")
    p.add_argument("--format", default="onnx", choices=["onnx"])
    p.add_argument("--out", help="output file (default: WEIGHTS name + .onnx)")
    p.add_argument("--opset", type=_opset, default=17, help="ONNX opset (11 to 20)")
    _reference_options(p, "weights")
    p.set_defaults(func=_export)

    p = sub.add_parser("explain", help="draw where the classifier looks (class-token attention)")
    p.add_argument("image")
    _recognizer_options(p)
    p.add_argument("--out", default="explain", help="folder for the PNG files")
    p.add_argument(
        "--reference",
        nargs="+",
        metavar="IMAGE",
        help="also draw the CSA maps: a face of the same class, one of another class "
        "(and optionally a second of that class); needs a DCS/QCS training weights file",
    )
    _reference_options(p, "model")
    p.set_defaults(func=_explain)

    p = sub.add_parser("serve", help="HTTP API and web page (uploads, live webcam)")
    p.add_argument(
        "--model", default="default", help="'default', a weights file, a run directory or .onnx"
    )
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "onnx"])
    p.add_argument("--device", default="cpu", help="cpu, cuda, auto (PyTorch backend)")
    p.add_argument("--detector", help="default face detector (a request may pick another)")
    p.add_argument(
        "--prior", choices=["dataset", "balanced"], help="default class prior (a request may pick)"
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on; 0.0.0.0 exposes the server to the network (use --token)",
    )
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="model threads (and decoding threads)")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="threads inside each model call (CPU use: workers x threads)",
    )
    p.add_argument(
        "--batch-window-ms",
        type=float,
        default=5.0,
        help="how long to wait for faces of other requests to batch with (0: no batching)",
    )
    p.add_argument("--max-batch-faces", type=int, default=64)
    p.add_argument(
        "--max-pending", type=int, default=32, help="requests in progress before 503 busy"
    )
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request (504 after)")
    p.add_argument("--max-upload-mb", type=int, default=20, help="largest request body (413)")
    p.add_argument("--max-images", type=int, default=16, help="images per request (413)")
    p.add_argument("--max-faces", type=int, default=32, help="faces per image")
    p.add_argument(
        "--token", help="require 'Authorization: Bearer TOKEN' (default: $QCSFER_TOKEN if set)"
    )
    p.add_argument(
        "--cors", action="append", default=[], metavar="ORIGIN", help="allow this web origin"
    )
    p.set_defaults(func=_serve)

    p = sub.add_parser("convert", help="an authors' reference checkpoint -> qcsfer weights")
    p.add_argument("checkpoint", help="the .pth file (a state dict, or a training checkpoint)")
    p.add_argument("--dataset", required=True, choices=REFERENCE_DATASETS)
    p.add_argument("--mode", default="qcs", choices=["qcs", "dcs"])
    p.add_argument("--out", required=True, help="the .safetensors file to write (+ its .json)")
    p.set_defaults(func=_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    if hasattr(sys.stdout, "reconfigure"):  # file names as the OS gives them, even undecodable
        sys.stdout.reconfigure(errors="surrogateescape")
    try:
        _resolve_reference(args)
        return run_until_stopped(lambda: args.func(args), args.command)
    except (QcsferError, ValueError, OSError) as exc:  # not RuntimeError: torch's own errors
        if args.debug:
            raise
        print(f"qcsfer {args.command}: error: {_message(exc)}", file=sys.stderr)
        return 2


def _message(exc: Exception) -> str:
    """An OSError as 'FILE: reason' (which file and why); anything else as its own message."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc)


if __name__ == "__main__":
    sys.exit(main())
