"""The last tracebacks of training and evaluation become one-line messages, and settings that
cannot work are refused (issue 27, items 7, 8, 11, 14, 16 and 17)."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from qcsfer.cli import main
from qcsfer.config import load_config
from qcsfer.engine.trainer import train
from qcsfer.errors import ConfigError, TrainingError
from qcsfer.models.weights import network_card, save_weights
from qcsfer.preprocessing import Preprocessing
from qcsfer.typed_data import to_dict

from .model_builders import tiny_model
from .test_fault_injection import config, overrides, write_faces
from .test_inference import save_tiny


@pytest.fixture
def faces(tmp_path: Path) -> Path:
    return write_faces(tmp_path / "faces", {"train": 8, "valid": 2})


def as_set_options(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def one_line_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the command line; it must fail with exit code 2 and one line, which is returned."""
    code = main(["-q", *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


# ---------------------------------------------------------------------------- 7: init.weights


def saved_model(path: Path, model: str = "tiny", classes: int = 8) -> Path:
    network = tiny_model("baseline", num_classes=classes) if model == "tiny" else None
    if network is None:
        from qcsfer.models.configs import get_config
        from qcsfer.models.qcs import QCSModel

        network = QCSModel(get_config(model, num_classes=classes), "baseline")
    return save_weights(
        network,
        path,
        network_card(
            network,
            classes=[f"class{i}" for i in range(classes)],
            preprocessing=to_dict(Preprocessing(image_size=48, load_size=48)),
            mode="baseline",
        ),
    )


def test_init_weights_of_another_class_count_says_what_differs_and_what_to_do(
    faces: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = saved_model(tmp_path / "eight.safetensors", classes=8)
    settings = overrides(faces, max_steps=1)
    err = one_line_error(
        [
            "train",
            "--run-dir",
            str(tmp_path / "run"),
            *as_set_options([*settings, f"init.weights={weights}"]),
        ],
        capsys,
    )
    assert "does not fit this run's model" in err
    assert "num_classes: 8 in the file, 4 in this run" in err
    assert "2 tensors differ, in vit.head (2);" in err  # only the head differs
    assert f"--set init.backbone_from={weights}" in err
    # the suggestion works: the backbone alone starts the run
    train(config(faces, max_steps=1, **{"init.backbone_from": weights}), tmp_path / "run2")


def test_init_weights_of_another_architecture_says_nothing_of_it_fits(
    faces: Path, tmp_path: Path
) -> None:
    weights = saved_model(tmp_path / "small.safetensors", model="small", classes=4)
    with pytest.raises(TrainingError, match="does not fit this run's model") as info:
        train(config(faces, max_steps=1, **{"init.weights": weights}), tmp_path / "run")
    message = str(info.value)
    assert "name: 'small' in the file, 'tiny' in this run" in message
    assert "its backbone differs too" in message and "\n" not in message
    with pytest.raises(TrainingError, match=r"init\.backbone_from=.* does not fit"):
        train(config(faces, max_steps=1, **{"init.backbone_from": weights}), tmp_path / "run")


# ---------------------------------------------------------------------------- 8: --device mps


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="needs a machine without MPS")
def test_mps_where_there_is_none_is_one_line_for_train_evaluate_and_predict(
    faces: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = save_tiny(tmp_path / "tiny.safetensors")
    image = faces / "valid" / "anger" / "0.png"
    commands = [
        [
            "train",
            "--run-dir",
            str(tmp_path / "run"),
            *as_set_options(overrides(faces, device="mps")),
        ],
        [
            "evaluate",
            str(weights),
            "--data",
            f"folder:{faces}",
            "--split",
            "valid",
            "--device",
            "mps",
            "--out",
            str(tmp_path / "eval"),
        ],
        ["predict", str(image), "--no-detect", "--model", str(weights), "--device", "mps"],
    ]
    for args in commands:
        err = one_line_error(args, capsys)
        assert "'mps' requested but MPS (Apple silicon GPU) is not available" in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "eval").exists()


def test_devices_are_checked_before_any_work(monkeypatch: pytest.MonkeyPatch) -> None:
    from qcsfer.engine.device import select_device
    from qcsfer.errors import DeviceError

    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert select_device("mps").type == "mps"  # taken as given where MPS exists
    for name in ("meta", "xpu"):
        with pytest.raises(DeviceError, match=f"qcsfer does not run on {name}"):
            select_device(name)
    with pytest.raises(DeviceError, match="unknown device 'gpu'"):
        select_device("gpu")


# ---------------------------------------------------------------------------- 11: augmentation


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ("augmentation.translate=-1", "augmentation.translate is the largest extra shift"),
        ("augmentation.translate=0.8", "augmentation.translate"),
        ("augmentation.rotation=-10", "augmentation.rotation"),
        ("augmentation.brightness=-0.2", "augmentation.brightness"),
        ("augmentation.contrast=1.5", "augmentation.contrast"),
        ("augmentation.saturation=-1", "augmentation.saturation"),
        ("augmentation.hue=0.7", "augmentation.hue"),
        ("augmentation.erasing_scale=[0.2,0.1]", "augmentation.erasing_scale needs"),
        ("augmentation.erasing_ratio=[0,2]", "augmentation.erasing_ratio needs"),
    ],
)
def test_augmentation_strengths_out_of_range_are_refused(
    setting: str, named: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigError, match=named):
        load_config(None, [setting])
    err = one_line_error(
        [
            "train",
            "--set",
            setting,
            "--set",
            f"data.root={tmp_path}",
            "--run-dir",
            str(tmp_path / "r"),
        ],
        capsys,
    )
    assert named in err and not (tmp_path / "r").exists()


def test_augmentation_strengths_in_range_are_kept() -> None:
    values = ["augmentation.translate=0.5", "augmentation.rotation=0", "augmentation.hue=0.5"]
    augmentation = load_config(None, values).augmentation
    assert (augmentation.translate, augmentation.rotation, augmentation.hue) == (0.5, 0.0, 0.5)


# ---------------------------------------------------------------------------- 14, 16: recipes


def test_the_relative_root_warning_is_not_given_when_set_names_the_root(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("data:\n  root: not/here/ferplus\nepochs: 2\n")
    with caplog.at_level(logging.WARNING, logger="qcsfer"):
        config = load_config(recipe, [f"data.root={tmp_path}"])
    assert config.data.root == str(tmp_path)
    assert "data.root" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="qcsfer"):
        load_config(recipe)  # the recipe's own root, not found: still said
    assert "data.root 'not/here/ferplus'" in caplog.text


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("epochs: 30\nseed: 1\nepochs: 3\n", "duplicate key 'epochs' (first at line 1) at line 3"),
        ("optim:\n  lr: 0.001\n  lr: 0.01\n", "duplicate key 'lr' (first at line 2) at line 3"),
        ("data: {root: a, root: b}\n", "duplicate key 'root'"),
        ("", "the recipe is empty"),
        ("# only a comment\n\n", "the recipe is empty"),
    ],
)
def test_duplicate_keys_and_empty_recipes_are_refused(
    text: str, problem: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(recipe)
    assert problem in str(info.value) and str(recipe) in str(info.value)
    assert problem in one_line_error(["train", str(recipe)], capsys)


def test_a_duplicate_key_in_a_set_value_is_refused() -> None:
    with pytest.raises(ConfigError, match="duplicate key 'root'"):
        load_config(None, ["data={root: a, root: b}"])


# ---------------------------------------------------------------------------- 17: classes by name


def test_dataset_classes_that_are_model_classes_are_matched_by_name() -> None:
    from qcsfer.data.records import DatasetError, LabeledImages
    from qcsfer.engine.evaluate import map_labels

    model_classes = ("neutral", "happiness", "surprise", "sadness")
    data = LabeledImages(
        name="toy",
        split="test",
        classes=("sadness", "neutral", "happiness"),  # another order, one model class absent
        paths=tuple(Path(f"{i}.png") for i in range(4)),
        labels=np.array([0, 1, 2, 0]),
    )
    kept, labels = map_labels(data, model_classes, None)
    assert kept.tolist() == [0, 1, 2, 3]
    assert [model_classes[i] for i in labels] == ["sadness", "neutral", "happiness", "sadness"]

    other = dataclasses.replace(data, classes=("sad", "neutral", "happy"))
    with pytest.raises(DatasetError, match=r"\['sad', 'happy'\] are not model classes"):
        map_labels(other, model_classes, None)


def test_evaluate_a_folder_named_by_the_models_classes_without_a_class_map(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from .test_cli_failures import gray_face

    weights = save_tiny(tmp_path / "tiny.safetensors")
    for i, name in enumerate(["sadness", "happiness", "sadness"]):  # the folder reader sorts
        (tmp_path / "faces" / name).mkdir(parents=True, exist_ok=True)
        gray_face(tmp_path / "faces" / name / f"{i}.png", i)
    args = ["evaluate", weights, "--data", f"folder:{tmp_path / 'faces'}", "--device", "cpu"]
    code = main(["-q", *map(str, [*args, "--out", tmp_path / "eval"])])
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert report["excluded_by_mapping"] == 0
    assert report["images"] == 3
    support = {name: c["support"] for name, c in report["per_class"].items() if c["support"]}
    assert support == {"happiness": 1, "sadness": 2}  # each image under its own class


def test_a_run_leaves_no_log_handler_behind(faces: Path, tmp_path: Path) -> None:
    """A run's train.log handler goes with the run, failed or finished: a later log line of the
    same process must not go to it (its folder may be gone: that raised in a later test)."""
    import logging

    def run_logs() -> list[logging.Handler]:
        return [
            h for h in logging.getLogger("qcsfer").handlers if isinstance(h, logging.FileHandler)
        ]

    weights = saved_model(tmp_path / "small.safetensors", model="small", classes=4)
    with pytest.raises(TrainingError):
        train(config(faces, max_steps=1, **{"init.weights": weights}), tmp_path / "failed")
    assert run_logs() == []
    train(config(faces, max_steps=1), tmp_path / "finished")
    assert run_logs() == []
    logging.getLogger("qcsfer.video").warning("after the runs")  # nowhere to fail
