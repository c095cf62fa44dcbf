"""Ordinary mistakes end in a message, not a traceback (issue 12, items 7-11 and the small ones).

Each test reproduces one reported failure: output paths that cannot be written, an unusable
image cache, file names that are not UTF-8, signals and closed pipes, unvalidated options.
Tiny random networks and synthetic images keep them fast and independent of ../shared.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from qcsfer.cli import main
from qcsfer.config import load_config
from qcsfer.data.csv import read_csv_list
from qcsfer.data.folder import read_folder
from qcsfer.data.images import default_cache_dir, load_images
from qcsfer.engine.evaluate import evaluate
from qcsfer.inference import ExpressionRecognizer
from qcsfer.inference.runner import run_predict

from .conftest import REPO
from .test_inference import CLASSES, save_tiny

NOT_UTF8 = os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes: a name the OS gives, not valid UTF-8
ALL_CLASSES = {"classes": CLASSES}  # folder reader option: the model's classes, some empty
ALL_CLASSES_OPTION = ["--option", "classes=" + ",".join(CLASSES)]


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("weights") / "tiny.safetensors")


def gray_face(path: Path, seed: int = 0) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, (48, 48), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="PNG")
    return path


@pytest.fixture
def faces(tmp_path: Path) -> Path:
    """A folder dataset with two of the model's classes (three 48 px gray images)."""
    for i, name in enumerate(["happiness", "happiness", "sadness"]):
        (tmp_path / "faces" / name).mkdir(parents=True, exist_ok=True)
        gray_face(tmp_path / "faces" / name / f"{i}.png", i)
    return tmp_path / "faces"


def cli(args: list[object], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["-q", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def subprocess_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO / "src"), **extra}


# ---------------------------------------------------------------------------- 7: output paths


def test_output_paths_are_checked_before_any_work(
    weights: Path, faces: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("in the way")
    image = faces / "sadness" / "2.png"
    for args in (
        ["predict", image, "--no-detect", "--model", weights, "--out", a_file],
        ["predict", image, "--no-detect", "--model", weights, "--out", a_file / "below"],
        ["explain", image, "--no-detect", "--model", weights, "--out", a_file],
        ["export", weights, "--out", tmp_path],  # a folder where a file is wanted
    ):
        code, _, err = cli(args, capsys)
        assert code == 2 and str(args[-1]) in err and "Traceback" not in err, err

    def never(*_: object, **__: object) -> None:
        raise AssertionError("the work started before the output path was checked")

    monkeypatch.setattr("qcsfer.engine.evaluate.load_model", never)
    code, _, err = cli(
        ["evaluate", weights, "--data", f"folder:{faces}", *ALL_CLASSES_OPTION, "--out", a_file],
        capsys,
    )
    assert code == 2 and f"{a_file}: exists and is not a folder" in err
    assert a_file.read_text() == "in the way"


def test_a_full_disk_is_refused_up_front(
    weights: Path, faces: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    full = shutil._ntuple_diskusage(10**9, 10**9, 0)  # total, used, free
    monkeypatch.setattr("qcsfer.outputs.shutil.disk_usage", lambda _: full)
    code, _, err = cli(
        ["predict", faces, "--no-detect", "--model", weights, "--out", tmp_path / "out"], capsys
    )
    assert code == 2 and "disk full" in err and str(tmp_path / "out") in err
    assert not (tmp_path / "out").exists()  # the check creates nothing


def test_a_failed_write_names_the_file_and_leaves_no_half_file(
    weights: Path, faces: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    def full(self: Image.Image, fp: object, *args: object, **kwargs: object) -> None:
        Path(fp).write_bytes(b"\x89PNG half")  # type: ignore[arg-type]
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Image.Image, "save", full)
    out = tmp_path / "annotated"
    code, _, err = cli(["predict", faces, "--no-detect", "--model", weights, "--out", out], capsys)
    assert code == 2 and "No space left on device" in err and "Traceback" not in err
    assert f"{out}{os.sep}" in err and ".png: cannot write" in err
    assert list(out.iterdir()) == []  # no half-written PNG, no temporary file


def test_json_results_are_streamed_not_lost_when_the_run_stops_late(
    weights: Path, faces: Path, monkeypatch
) -> None:
    recognizer = ExpressionRecognizer(weights, detect=False)
    predictions = recognizer.iter_predictions

    def stopped_at_the_last_image(paths, **kwargs):  # Ctrl-C (or a full disk) on the last one
        for i, result in enumerate(predictions(paths, **kwargs)):
            if i == 2:
                raise KeyboardInterrupt
            yield result

    monkeypatch.setattr(recognizer, "iter_predictions", stopped_at_the_last_image)
    stream = io.StringIO()
    with pytest.raises(KeyboardInterrupt):
        run_predict(recognizer, [str(faces)], fmt="json", stdout=stream, progress=False)
    first, second, _ = sorted(faces.rglob("*.png"))
    assert f'"file": "{first}"' in stream.getvalue()
    assert f'"file": "{second}"' in stream.getvalue()


def test_out_folder_inside_the_input_folder_is_not_read_back(
    weights: Path, faces: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = faces / "annotated"
    args = ["predict", faces, "--no-detect", "--model", weights, "--format", "json", "--out", out]
    for _ in range(2):
        code, stdout, err = cli(args, capsys)
        assert code == 0, err
        assert len(json.loads(stdout)["results"]) == 3


# ---------------------------------------------------------------------------- 8: image cache


def test_an_unwritable_cache_falls_back_to_decoding_with_a_warning(
    faces: Path, tmp_path: Path, monkeypatch, caplog: pytest.LogCaptureFixture
) -> None:
    paths = sorted(faces.rglob("*.png"))
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    with caplog.at_level(logging.WARNING):
        store = load_images(paths, 48, True, cache_dir=a_file / "cache")  # cannot be created
    assert store.valid.all() and "continuing without a cache" in caplog.text

    def full(file: object, **arrays: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("qcsfer.data.images.np.savez", full)
    cache = tmp_path / "cache"
    again = load_images(paths, 48, True, cache_dir=cache)
    assert torch.equal(again.images, store.images)
    assert list(cache.iterdir()) == []  # no partial cache file left behind


def test_the_cache_can_be_turned_off(
    weights: Path, faces: Path, tmp_path: Path, monkeypatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("QCSFER_CACHE", str(cache))
    args = ["evaluate", weights, "--data", f"folder:{faces}", *ALL_CLASSES_OPTION]
    args += ["--out", tmp_path / "ev"]
    code, _, err = cli([*args, "--no-cache"], capsys)
    assert code == 0, err
    assert not cache.exists()
    monkeypatch.setenv("QCSFER_CACHE", "off")
    assert default_cache_dir() is None


# ---------------------------------------------------------------------------- 9: file names


def test_names_that_are_not_utf8_train_evaluate_and_list(
    weights: Path, faces: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    odd = gray_face(faces / "sadness" / NOT_UTF8, 7)
    data = read_folder(faces)
    assert odd in data.paths
    store = load_images(data.paths, 48, True, cache_dir=tmp_path / "cache")  # keyed by bytes
    assert store.valid.all()
    args = ["evaluate", weights, "--data", f"folder:{faces}", *ALL_CLASSES_OPTION]
    code, _, err = cli([*args, "--out", tmp_path / "ev"], capsys)
    assert code == 0, err

    listing = tmp_path / "list.csv"
    listing.write_bytes(b"path,label\n" + os.fsencode(odd) + b",sadness\n")
    assert read_csv_list(listing).paths == (odd,)


def test_list_file_errors_name_the_line(tmp_path: Path, faces: Path) -> None:
    listing = tmp_path / "list.csv"
    listing.write_text(f"{faces}/happiness/0.png,happiness\n{faces}/sadness/2.png,sadness\nbad\n")
    with pytest.raises(ValueError, match=f"{listing}:3: no tab, comma or semicolon"):
        read_csv_list(listing)


def test_predict_prints_names_that_are_not_utf8(weights: Path, faces: Path) -> None:
    CSV = ["--no-detect", "--model", weights, "--format", "csv"]
    odd = gray_face(faces / NOT_UTF8)
    run = subprocess.run(
        [sys.executable, "-m", "qcsfer", "-q", "predict", odd, faces / "sadness" / "2.png", *CSV],
        capture_output=True,
        env=subprocess_env(PYTHONIOENCODING="utf-8"),
        timeout=900,
    )
    assert run.returncode == 0, run.stderr.decode(errors="replace")
    assert os.fsencode(odd) in run.stdout and b"2.png" in run.stdout  # the bytes as given


# ---------------------------------------------------------------------------- 10: devices, signals


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a CPU-only install")
@pytest.mark.parametrize("command", ["predict", "explain"])
def test_cuda_on_a_cpu_only_install_is_a_message(
    command: str, weights: Path, faces: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = faces / "sadness" / "2.png"
    args = [command, image, "--no-detect", "--model", weights, "--device", "cuda"]
    code, _, err = cli([*args, "--out", tmp_path], capsys)
    assert code == 2 and "CUDA is not available" in err


def test_a_detector_file_that_is_not_a_cascade_is_a_message(
    weights: Path, faces: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = faces / "sadness" / "2.png"
    code, _, err = cli(["predict", image, "--model", weights, "--detector", weights], capsys)
    assert code == 2 and f"{weights}: not a loadable OpenCV Haar cascade" in err


SLOW_COMMAND = """
import sys, time
import qcsfer.cli as cli
import qcsfer.cli.training as commands
def slow(args):
    print("started", flush=True)
    for i in range(10**6):
        print(f"line {i}")
        time.sleep(0.001 if args.spec == "sleepy" else 0)
    return 0
commands._data = slow
sys.exit(cli.main(["data", sys.argv[1]]))
"""


@pytest.mark.parametrize(
    ("sig", "code", "word"), [("SIGINT", 130, "interrupted"), ("SIGTERM", 143, "terminated")]
)
def test_ctrl_c_and_sigterm_stop_quietly_with_the_usual_codes(
    sig: str, code: int, word: str
) -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_COMMAND, "sleepy"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=subprocess_env(),
        # Ctrl-C reaches a program as in a terminal, even where this test runs as a background
        # job (whose shell ignores SIGINT, which its children would inherit).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert process.stdout.readline() == b"started\n"
    time.sleep(0.2)
    process.send_signal(getattr(signal, sig))
    _, err = process.communicate(timeout=60)
    assert process.returncode == code, err
    assert b"Traceback" not in err and f"qcsfer data: {word}".encode() in err


def test_a_closed_pipe_ends_quietly() -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_COMMAND, "fast"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=subprocess_env(),
    )
    process.stdout.readline()
    process.stdout.close()  # like `| head -1`
    err = process.stderr.read()
    assert process.wait(timeout=60) == 141 and err == b"", err


# ---------------------------------------------------------------------------- 6: evaluation sets


def test_evaluating_a_set_with_no_readable_image_is_refused(
    weights: Path, faces: Path, tmp_path: Path
) -> None:
    for image in faces.rglob("*.png"):
        image.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="none of its 3 images could be read"):
        evaluate(weights, "folder", faces, "test", options=ALL_CLASSES, out_dir=tmp_path / "ev")
    assert not (tmp_path / "ev").exists()
    with pytest.raises(ValueError, match="no images to evaluate"):
        evaluate(
            weights, "folder", faces, "test", options=ALL_CLASSES, mapping={"neutral": "neutral"}
        )


# ---------------------------------------------------------------------------- smaller ones


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("augmentation.zoom=[2, 1]", "augmentation.zoom needs 0 < low <= hi"),
        ("augmentation.erasing=5", "augmentation.erasing is a probability"),
        ("schedule.warmup_epochs=-1", "schedule.warmup_epochs must be 0 or more"),
        ("sampler.anchors_per_epoch=0", "sampler.anchors_per_epoch must be >= 1"),
        ("optim.lr=.inf", "config.optim.lr: expected a finite number, got inf"),
        ("augmentation.rotation=.nan", "config.augmentation.rotation: expected a finite number"),
        ("optim.lr=1e400", "config.optim.lr: expected a finite number, got '1e400'"),
    ],
)
def test_out_of_range_options_are_refused(setting: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        load_config(None, [setting])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["predict", "x.png", "--batch-size", "0"], "--batch-size: must be at least 1, got 0"),
        (["predict", "x.png", "--batch-size", "-3"], "--batch-size: must be at least 1, got -3"),
        (["evaluate", "--data", "x", "--batch-size", "0"], "--batch-size: must be at least 1"),
        (["data", "x", "--check", "-5"], "--check: must be at least 0, got -5"),
        (["export", "w", "--opset", "5"], "--opset: must be at least 11, got 5"),
        (["info", "paper", "--classes", "-3"], "--classes: must be at least 1, got -3"),
        (["serve", "--max-upload-mb", "-1"], "--max-upload-mb: must be at least 1, got -1"),
        (["serve", "--workers", "0"], "--workers: must be at least 1, got 0"),
    ],
)
def test_bad_numbers_on_the_command_line_are_named(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_explain_refuses_onnx_and_align_without_landmarks(
    weights: Path, faces: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = faces / "sadness" / "2.png"
    code, _, err = cli(
        ["explain", image, "--model", tmp_path / "m.onnx", "--out", tmp_path], capsys
    )
    assert code == 2 and "cannot be explained" in err and "backend" not in err
    code, _, err = cli(["predict", image, "--model", weights, "--align"], capsys)
    assert code == 2 and "--align needs faces found by --detector mtcnn" in err


# ---------------------------------------------------------------------------- 11: video


def test_a_truncated_video_is_reported(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import cv2

    whole = tmp_path / "whole.avi"
    writer = cv2.VideoWriter(str(whole), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 64))
    for i in range(20):
        writer.write(np.full((64, 64, 3), i * 10, np.uint8))
    writer.release()
    data = whole.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: int(len(data) * 0.6)])  # the header still declares 20 frames
    code, out, err = cli(
        ["predict", cut, "--no-detect", "--model", weights, "--format", "csv"], capsys
    )
    frames = out.count(str(cut))
    assert code == 0 and 0 < frames < 20
    assert f"{cut}: ended after {frames} of the 20 frames its header declares" in err
    code, _, err = cli(["predict", whole, "--no-detect", "--model", weights], capsys)
    assert code == 0 and "ended after" not in err


# ---------------------------------------------------------------------------- 12: init.weights


def test_info_and_init_weights_take_a_run_directory_and_a_shipped_name(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from qcsfer.config import InitConfig
    from qcsfer.engine.warm_start import initialize
    from qcsfer.models import QCSModel, get_config
    from qcsfer.pretrained import load_model

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copy(weights, run_dir / "best.safetensors")
    shutil.copy(weights.with_suffix(".json"), run_dir / "best.json")
    code, out, _ = cli(["info", run_dir], capsys)
    assert code == 0 and f"classes ({len(CLASSES)})" in out
    model = QCSModel(get_config("tiny", num_classes=len(CLASSES)), "qcs")
    initialize(model, InitConfig(weights=str(run_dir)))
    expected = load_model(weights)[0].state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in model.base.state_dict().items())

    shipped, _ = load_model("ferplus")  # a shipped model by name
    model = QCSModel(shipped.config, "qcs")
    initialize(model, InitConfig(backbone_from="ferplus", weights="ferplus"))
    assert all(torch.equal(v, shipped.state_dict()[k]) for k, v in model.base.state_dict().items())


def test_a_relative_data_root_that_is_not_found_says_where_it_was_looked_for(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("data:\n  root: ../no-such-folder/ferplus\n")
    with caplog.at_level(logging.WARNING):
        config = load_config(recipe)
    assert config.data.root == "../no-such-folder/ferplus"
    assert "is relative to the current folder" in caplog.text and str(recipe) in caplog.text


# ---------------------------------------------------------------------------- audit: YAML input


def test_bad_yaml_in_a_recipe_set_or_option_is_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = tmp_path / "broken.yaml"
    recipe.write_text("mode: qcs\nmodel: [tiny\n")
    binary = tmp_path / "photo.yaml"
    binary.write_bytes(b"\xff\xd8\xff\xe0 a JPEG")
    cases = [
        (["train", recipe], f"{recipe}: not valid YAML (expected ',' or ']'"),
        (["train", binary], f"{binary}: not a YAML text file"),
        (["train", tmp_path], f"config file {tmp_path} is a folder, not a YAML file"),
        (["train", tmp_path / "absent.yaml"], f"config file {tmp_path / 'absent.yaml'} does not"),
        (["data", f"folder:{tmp_path}", "--option", "classes=[a,b"], "--option classes=[a,b: "),
    ]
    for args, message in cases:
        code, _, err = cli(args, capsys)
        assert code == 2 and message in err and "Traceback" not in err, (args, err)
    with pytest.raises(ValueError, match=r"--set epochs=\[1: not a valid YAML value .*column 3"):
        load_config(None, ["epochs=[1"])


def test_bare_train_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """No recipe, no --set, no --resume: refused rather than hours on the defaults (a recipe
    built from --set alone, as the engine tests do, still trains)."""
    code, _, err = cli(["train"], capsys)
    assert code == 2 and "give a recipe to train" in err


def test_convert_checks_its_output_before_reading_the_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["convert", tmp_path / "absent.pth", "--dataset", "rafdb", "--out", tmp_path]
    code, _, err = cli(args, capsys)
    assert code == 2 and f"{tmp_path}: is a folder" in err


def test_a_run_directory_that_is_a_file_is_named(tmp_path: Path) -> None:
    from qcsfer.engine.trainer import train
    from qcsfer.outputs import OutputError

    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    config = load_config(None, [f"data.root={tmp_path / 'no-data'}", "device=cpu"])
    with pytest.raises(OutputError, match=r"notes\.txt: exists and is not a folder"):
        train(config, a_file)
    assert a_file.read_text() == "mine"


def test_a_box_may_start_left_of_or_above_the_image(
    weights: Path, faces: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """'--box -10,...' was read by argparse as an unknown option; it is clipped like any box."""
    image = faces / "happiness" / "0.png"
    code, out, err = cli(["predict", image, "--model", weights, "--box", "-10,-5,40,40"], capsys)
    assert code == 0 and "0,0,40,40" in out and "1 face," in err


@pytest.mark.parametrize(
    ("size", "options", "message"),
    [
        ((1, 1), ["--no-detect"], "a 1x1 image is too small to be a face"),
        ((48, 5), ["--no-detect"], "a 48x5 image is too small to be a face"),
        ((48, 48), ["--box", "0,0,4,30"], "is 4x30 pixels in the image: too small"),
        ((48, 48), ["--box", "44,0,60,20"], "is 4x20 pixels in the image: too small"),
    ],
)
def test_a_face_too_small_to_read_is_skipped_not_guessed(
    weights: Path,
    tmp_path: Path,
    size: tuple[int, int],
    options: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A 1x1 image with --no-detect used to get a confident-looking label from 112 px of one
    upscaled pixel; now it is a counted skip that says why."""
    image = tmp_path / "small.png"
    Image.new("L", size).save(image)
    code, out, err = cli(["predict", image, "--model", weights, *options], capsys)
    assert code == 1 and message in err and "1 skipped" in err
    assert "small.png" not in out  # no row with a label for it


def test_a_legacy_pickle_checkpoint_is_refused_in_one_line_without_torch_warnings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    legacy = tmp_path / "old.pth"
    state = {"state_dict": {"w": torch.zeros(2)}}
    torch.save(state, legacy, _use_new_zipfile_serialization=False, pickle_protocol=4)
    args = ["convert", legacy, "--dataset", "rafdb", "--out", tmp_path / "out.safetensors"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, _, err = cli(args, capsys)
    assert code == 2 and "a legacy (non-zip) PyTorch checkpoint" in err
    assert len(err.strip().splitlines()) == 1
    assert not [w for w in caught if "pickle protocol" in str(w.message)]  # torch's, before
