from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from .synthetic import write_folder_dataset

if TYPE_CHECKING:
    from qcsfer.models.qcs import QCSModel

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("QCSFER_SHARED", REPO.parent / "shared"))  # data beside the clone
FERPLUS = SHARED / "datasets" / "ferplus"
PHOTOS = SHARED / "photos"


@pytest.fixture(scope="session")
def ferplus_root() -> Path:
    if not (FERPLUS / "FER2013Train" / "label.csv").is_file():
        pytest.skip(f"FERPlus not found at {FERPLUS}")
    return FERPLUS


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated folder dataset (4 classes, 48 px grayscale): 256 training and 128
    validation images, made once per test session, needing nothing from ../shared."""
    root = tmp_path_factory.mktemp("synthetic-faces")
    return write_folder_dataset(root, {"train": 64, "valid": 32})


@pytest.fixture(scope="module")
def paper() -> QCSModel:
    """The paper-size QCS model (seeded), built once per test module that uses it."""
    from .model_builders import paper_model

    return paper_model()


@pytest.fixture(autouse=True)
def _isolated_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Decoded-image caches go to one temporary folder per test session, never to $HOME."""
    monkeypatch.setenv("QCSFER_CACHE", str(tmp_path_factory.getbasetemp() / "qcsfer-cache"))
