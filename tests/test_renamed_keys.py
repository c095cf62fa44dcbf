"""Renamed configuration keys: old recipes, run directories and checkpoints stay readable.

`optim.reference_weight_decay` became `optim.ignore_weight_decay` (True meant no weight decay
at all, which the old name did not say); the old name is read with a deprecation line.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from qcsfer.config import TrainConfig, load_config, save_config
from qcsfer.engine.checkpoint import run_config
from qcsfer.engine.resume import keep_edited_config
from qcsfer.errors import ConfigError
from qcsfer.typed_data import from_dict, to_dict


def test_a_recipe_with_the_old_name_still_drops_weight_decay(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    recipe = tmp_path / "old.yaml"
    recipe.write_text("optim: {name: adam, weight_decay: 1.0e-4, reference_weight_decay: true}\n")
    with caplog.at_level(logging.WARNING, logger="qcsfer.typed_data"):
        config = load_config(recipe)
    assert config.optim.ignore_weight_decay and config.optim.weight_decay == 1e-4
    assert "config.optim.reference_weight_decay is deprecated" in caplog.text
    assert "config.optim.ignore_weight_decay" in caplog.text
    assert load_config(None, ["optim.reference_weight_decay=true"]).optim.ignore_weight_decay


def test_the_new_name_is_written_and_both_names_together_are_refused(tmp_path: Path) -> None:
    save_config(load_config(None, ["optim.ignore_weight_decay=true"]), tmp_path / "c.yaml")
    optim = yaml.safe_load((tmp_path / "c.yaml").read_text())["optim"]
    assert optim["ignore_weight_decay"] is True and "reference_weight_decay" not in optim
    both = ["optim.ignore_weight_decay=true", "optim.reference_weight_decay=true"]
    with pytest.raises(ConfigError, match="reference_weight_decay is the old name"):
        load_config(None, both)


def test_an_old_run_resumes_without_its_config_yaml_counting_as_edited(tmp_path: Path) -> None:
    old = to_dict(TrainConfig())
    old["optim"]["reference_weight_decay"] = old["optim"].pop("ignore_weight_decay")
    config = run_config({"config": old})  # as an old checkpoint holds it
    assert config == from_dict(TrainConfig, old)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old, sort_keys=False))
    assert keep_edited_config(tmp_path, config) == []
    assert (tmp_path / "config.yaml").is_file()  # not moved aside as an edit
