"""Recognising faces: `qcsfer predict`, `explain` and `serve`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from ..errors import MissingDependencyError, UsageError, WeightsError
from .options import face_options, given_boxes, model_options, positive, reference_options


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="expressions of the faces in images, folders or videos")
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image, folder, glob, video, or webcam:N (camera N)",
    )
    model_options(p)
    face_options(p)
    p.add_argument(
        "--out",
        help="folder for annotated images; per video a folder with frames.csv/.jsonl, "
        "tracks.csv/.json, timelines/ and annotated.mp4",
    )
    p.add_argument("--format", default="table", choices=["table", "json", "csv"])
    p.add_argument("--every", type=positive, default=1, metavar="N", help="video: every Nth frame")
    p.add_argument("--fps", type=float, metavar="F", help="video: F frames per second instead")
    p.add_argument("--start", type=float, default=0.0, metavar="S", help="video: from S seconds")
    p.add_argument("--end", type=float, metavar="S", help="video: up to S seconds")
    p.add_argument(
        "--detect-every",
        type=positive,
        metavar="N",
        help="video and webcam: find faces on the whole frame every Nth analysed frame, the "
        "tracker moving them on in between (1: every frame; default: every 0.1 s for BlazeFace, "
        "every frame for other detectors)",
    )
    p.add_argument(
        "--smooth",
        type=float,
        default=0.5,
        metavar="SECONDS",
        help="video: time constant of each face's expression smoothing (0: off)",
    )
    p.add_argument("--batch-size", type=positive, default=64, help="faces per forward pass")
    reference_options(p, "model")
    p.set_defaults(func=_predict)

    p = sub.add_parser("explain", help="draw where the classifier looks (class-token attention)")
    p.add_argument("image")
    model_options(p, backend=False)  # explain reads the PyTorch model's attention
    face_options(p)
    p.add_argument("--out", default="explain", help="folder for the PNG files")
    p.add_argument(
        "--reference",
        nargs="+",
        metavar="IMAGE",
        help="also draw the CSA maps: a face of the same class, one of another class "
        "(and optionally a second of that class); needs a DCS/QCS training weights file",
    )
    reference_options(p, "model")
    p.set_defaults(func=_explain)

    p = sub.add_parser("serve", help="HTTP API and web page (uploads, live webcam)")
    serve_options(p)
    p.set_defaults(func=_serve)


def serve_options(p: argparse.ArgumentParser) -> None:
    """Every server setting as a flag, from its one declaration (`serve.settings.OPTIONS`):
    left out, a flag takes its QCSFER_* variable, else the setting's default."""
    from ..serve.settings import OPTIONS, Option

    def checked(option: Option) -> Callable[[str], Any]:
        def parse(text: str) -> Any:
            try:
                return option.kind(text)
            except ValueError as exc:  # argparse shows this message, naming the flag
                raise argparse.ArgumentTypeError(str(exc)) from None

        return parse

    for option in OPTIONS:
        p.add_argument(
            option.flag,
            dest=option.dest,
            type=checked(option),
            choices=option.choices,
            action="append" if option.many else "store",
            default=[] if option.many else None,
            metavar=option.metavar,
            help=f"{option.help} (default: {option.shown_default}; ${option.env})",
        )


def _predict(args: argparse.Namespace) -> int:
    from ..inference.recognizer import ExpressionRecognizer
    from ..inference.runner import run_predict

    boxes = given_boxes(args)
    if args.fps is not None and args.every != 1:
        raise UsageError("give --every or --fps, not both")
    detector = args.detector
    if detector == "auto" and not args.no_detect and boxes is None and _only_videos(args.inputs):
        from ..inference.detectors import make_detector

        detector = make_detector("auto", purpose="video")  # the fast detector for frames
    try:
        recognizer = ExpressionRecognizer(
            args.model,
            backend=args.backend,
            device=args.device,
            detect=not args.no_detect,
            detector=detector,
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
        video={
            "fps": args.fps,
            "start": args.start,
            "end": args.end,
            "tau": args.smooth,
            "detect_every": args.detect_every,
        },
        boxes=boxes,
        progress=not args.quiet,
    )
    print(summary.line(), file=sys.stderr)
    if summary.annotated:
        print(f"annotated images in {args.out}", file=sys.stderr)
    return 0 if summary.images or summary.frames else 1


def _only_videos(items: list[str]) -> bool:
    """Whether every input is a video or a camera (the `auto` detector's video purpose)."""
    from ..inference.inputs import expand_inputs

    expanded = expand_inputs(items)
    return bool(expanded) and all(i.kind == "video" for i in expanded)


def _explain(args: argparse.Namespace) -> int:
    from ..card import is_onnx_file
    from ..inference.explain import explain
    from ..inference.recognizer import ExpressionRecognizer
    from ..outputs import check_output_folder

    check_output_folder(args.out)
    if is_onnx_file(args.model):
        raise UsageError(
            f"{args.model}: explain reads the attention of the PyTorch model; give its weights "
            "file, run directory or 'default' (an exported .onnx file cannot be explained)"
        )
    boxes = given_boxes(args)
    model, network = args.model, None
    if args.reference:  # the whole training graph, read once; the recognizer runs its base
        from ..inference.backends import LoadedModel, TorchBackend
        from ..models.weights import load_weights
        from ..pretrained import resolve_weights

        network, card = load_weights(resolve_weights(args.model))
        if not hasattr(network, "csa"):
            raise WeightsError(
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
        from ..inference.explain import explain_csa

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
    from ..serve import ServeSettings, serve

    settings = ServeSettings.resolve(vars(args))
    serve(settings)
    return 0
