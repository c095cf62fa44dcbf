"""Recipes by name (issue 28 item 8): `qcsfer train NAME` finds the recipes shipped in the wheel,
`qcsfer recipes` lists them, a path still wins, and a packaged recipe whose data.root is not
there says how to give it. The wheel itself is built and installed once, in a slow test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qcsfer.cli import main
from qcsfer.config import load_config
from qcsfer.errors import ConfigError, NotFoundError
from qcsfer.recipes import PACKAGED, find_recipe, packaged_recipes

from .conftest import REPO

CONFIGS = sorted(p.stem for p in (REPO / "configs").glob("*.yaml"))


def test_the_packaged_recipes_are_the_repositorys_configs() -> None:
    """One copy of the recipes: the package's configs/ is the repository's."""
    assert PACKAGED.resolve() == (REPO / "configs").resolve()
    recipes = packaged_recipes()
    assert [r.name for r in recipes] == CONFIGS
    assert all(r.packaged and r.summary() != "(no comment)" for r in recipes)


def test_a_name_finds_a_packaged_recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for spec in ("ferplus_tiny_cpu", "ferplus_tiny_cpu.yaml"):
        recipe = find_recipe(spec)
        assert recipe.packaged and recipe.path == PACKAGED / "ferplus_tiny_cpu.yaml"
    own = tmp_path / "ferplus_tiny_cpu.yaml"  # a file the user names wins over the package's
    own.write_text("mode: baseline\n")
    assert find_recipe("ferplus_tiny_cpu.yaml") == find_recipe(own.name)
    assert not find_recipe("ferplus_tiny_cpu.yaml").packaged


def test_unknown_names_and_paths_are_refused_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(NotFoundError, match=r"did you mean ferplus_tiny_cpu.*qcsfer recipes"):
        find_recipe("ferplus_tiny")
    with pytest.raises(NotFoundError, match=r"config file sub/ferplus_tiny_cpu.yaml does not"):
        find_recipe("sub/ferplus_tiny_cpu.yaml")  # a path is never looked up by name
    (tmp_path / "ferplus_tiny_cpu").mkdir()
    with pytest.raises(NotFoundError, match="is a folder, not a YAML file"):
        find_recipe("ferplus_tiny_cpu")


def test_a_packaged_recipe_without_its_data_says_to_give_the_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the recipe's relative data.root does not exist (any folder of a wheel user), stop
    before any work with the option to pass, not later with the reader's complaint."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"ferplus_tiny_cpu .*--set data.root=PATH"):
        load_config("ferplus_tiny_cpu")
    given = [f"data.root={tmp_path}"]
    by_name = load_config("ferplus_tiny_cpu", given)
    assert by_name == load_config(REPO / "configs" / "ferplus_tiny_cpu.yaml", given)
    assert by_name.model == "tiny" and by_name.data.root == str(tmp_path)


def test_the_recipes_command_lists_and_prints(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    listed = [line.split()[0] for line in lines[: len(CONFIGS)]]
    assert listed == CONFIGS
    assert "the recipe of the shipped model" in lines[CONFIGS.index("ferplus_small_cpu")]
    assert main(["recipes", "ferplus_tiny_cpu"]) == 0
    text = (REPO / "configs" / "ferplus_tiny_cpu.yaml").read_text(encoding="utf-8")
    assert capsys.readouterr().out == text


@pytest.mark.slow
def test_the_wheel_ships_the_recipes(ferplus_root: Path, tmp_path: Path) -> None:
    """Build the wheel, install it in a fresh virtual environment (this environment's torch
    first, so pip never pulls another build) and train a packaged recipe by name from a folder
    that is not the repository."""

    def run(*command: object, cwd: Path = tmp_path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True
        )

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    built = run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", "wheels", REPO)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "wheels").glob("qcsfer-*.whl")
    venv = tmp_path / "venv"
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    assert run(sys.executable, "-m", "venv", venv).returncode == 0
    torch_pin = f"torch=={torch.__version__.split('+')[0]}"
    for requirement in (torch_pin, wheel):
        installed = run(bin_dir / "python", "-m", "pip", "install", "-q", requirement)
        assert installed.returncode == 0, installed.stderr[-3000:]
    where = run(bin_dir / "python", "-c", "import qcsfer; print(qcsfer.__file__)")
    assert Path(where.stdout.strip()).is_relative_to(venv)  # the wheel, not the checkout

    listed = run(bin_dir / "qcsfer", "recipes")
    assert listed.returncode == 0, listed.stderr
    assert {line.split()[0] for line in listed.stdout.splitlines() if line} >= set(CONFIGS)

    no_root = run(bin_dir / "qcsfer", "train", "ferplus_tiny_cpu")
    assert no_root.returncode == 2 and "--set data.root=PATH" in no_root.stderr

    settings = [f"data.root={ferplus_root}", "max_steps=1", "data.limit=384", "eval_flip=false"]
    command: list[object] = [bin_dir / "qcsfer", "-q", "train", "ferplus_tiny_cpu"]
    for item in settings:
        command += ["--set", item]
    trained = run(*command, "--run-dir", tmp_path / "run")
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert (tmp_path / "run" / "last.pt").is_file()
