"""Recognising faces: `qcsfer predict`, `explain` and `serve`."""

from __future__ import annotations

import argparse
import sys

from ..errors import MissingDependencyError
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
    model_options(p)
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
    p.add_argument(
        "--workers", type=positive, default=1, help="model threads (and decoding threads)"
    )
    p.add_argument(
        "--threads",
        type=positive,
        default=1,
        help="threads inside each model call (CPU use: workers x threads)",
    )
    p.add_argument(
        "--batch-window-ms",
        type=float,
        default=5.0,
        help="how long to wait for faces of other requests to batch with (0: no batching)",
    )
    p.add_argument("--max-batch-faces", type=positive, default=64)
    p.add_argument(
        "--max-pending", type=positive, default=32, help="requests in progress before 503 busy"
    )
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request (504 after)")
    p.add_argument("--max-upload-mb", type=positive, default=20, help="largest request body (413)")
    p.add_argument("--max-images", type=positive, default=16, help="images per request (413)")
    p.add_argument("--max-faces", type=positive, default=32, help="faces per image")
    p.add_argument(
        "--token", help="require 'Authorization: Bearer TOKEN' (default: $QCSFER_TOKEN if set)"
    )
    p.add_argument(
        "--cors", action="append", default=[], metavar="ORIGIN", help="allow this web origin"
    )
    p.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also answer requests sent to this host name (default: localhost and the --host "
        "address only, against DNS rebinding; '*': any)",
    )
    p.set_defaults(func=_serve)


def _predict(args: argparse.Namespace) -> int:
    from ..inference.recognizer import ExpressionRecognizer
    from ..inference.runner import run_predict

    boxes = given_boxes(args)
    if args.fps is not None and args.every != 1:
        raise ValueError("give --every or --fps, not both")
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
        video={"fps": args.fps, "start": args.start, "end": args.end, "tau": args.smooth},
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
        raise ValueError(
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
    from ..serve.settings import token_from

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
        allowed_hosts=tuple(args.allowed_host),
    )
    serve(settings)
    return 0
