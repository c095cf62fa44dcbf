"""The affectnet-web development carve (data/carves.py): 5% of every class, seeded, stable, and
never read by training, whichever way training reaches the dataset."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qcsfer.config import DataConfig, TrainConfig
from qcsfer.data.carves import CARVES, find_carve
from qcsfer.data.datasets import read_dataset
from qcsfer.data.sources import SourceConfig, read_source
from qcsfer.data.splits import load_splits, read_main_records

from .conftest import SHARED
from .synthetic import write_folder_dataset

CLASSES = ("anger", "happiness", "neutral", "sadness")  # tests/synthetic.py's classes


def web_tree(root: Path, counts: dict[str, int]) -> Path:
    """root/train/<class>/web_<n>.png, 8 px gray, each file different."""
    for name, n in counts.items():
        folder = root / "train" / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("L", (8, 8), i % 256).save(folder / f"web_{i:03d}.png")
    return root


@pytest.fixture()
def web(tmp_path: Path) -> Path:
    return web_tree(tmp_path / "affectnet-web", {"anger": 40, "happiness": 100, "neutral": 61})


def test_dev_is_five_percent_of_every_class_and_train_is_the_rest(web: Path) -> None:
    (carve,) = CARVES
    assert (carve.dataset, carve.split, carve.fraction) == ("affectnet-web", "dev", 0.05)
    everything = read_dataset("folder", web / "train", "train")  # no carve: another name
    dev = read_dataset("folder", web, "dev")
    train = read_dataset("folder", web, "train")
    assert dev.split == "dev" and dev.class_counts().tolist() == [2, 5, 3]
    assert train.class_counts().tolist() == [38, 95, 58]
    assert not set(dev.paths) & set(train.paths)
    assert set(dev.paths) | set(train.paths) == set(everything.paths)
    assert train.notes["held out as the 'dev' split (data/carves.py)"] == 10
    assert read_dataset("folder", web, "dev").paths == dev.paths  # the same carve every time


def test_carve_does_not_move_when_other_files_arrive(web: Path) -> None:
    before = read_dataset("folder", web, "dev")
    web_tree(web, {"sadness": 30})  # a new class: 1 more dev face, none of the old ones moves
    after = read_dataset("folder", web, "dev")
    assert set(before.paths) < set(after.paths) and len(after) == len(before) + 2


def test_recognised_by_name_or_readme_title_only(web: Path, tmp_path: Path) -> None:
    renamed = shutil.copytree(web, tmp_path / "copy")
    assert find_carve("folder", renamed) is None
    (renamed / "README.md").write_text("# affectnet-web: in-the-wild faces\n")
    assert find_carve("folder", renamed) is CARVES[0]
    assert find_carve("csv", web) is None  # the carve belongs to the folder reader
    names = [p.relative_to(renamed) for p in read_dataset("folder", renamed, "dev").paths]
    assert names == [p.relative_to(web) for p in read_dataset("folder", web, "dev").paths]


def test_training_never_reads_the_carve(web: Path, tmp_path: Path) -> None:
    """As a main dataset (train and a validation split carved from it) and as a source."""
    dev = set(read_dataset("folder", web, "dev").paths)
    as_main = TrainConfig(
        data=DataConfig(format="folder", root=str(web), val_split=None, val_fraction=0.2)
    )
    train, val = read_main_records(as_main)
    assert len(train) + len(val) == 201 - len(dev)
    assert not dev & (set(train.paths) | set(val.paths))

    source = SourceConfig(format="folder", root=str(web), val_fraction=0.1)
    records, held = read_source(source, ("anger", "happiness", "neutral"), seed=0)
    assert held is not None and not dev & (set(records.paths) | set(held.paths))

    main = write_folder_dataset(tmp_path / "main", {"train": 4, "valid": 2})
    config = TrainConfig(
        model="tiny",
        data=DataConfig(
            format="folder",
            root=str(main),
            storage="memory",
            cache_dir=None,
            options={"classes": list(CLASSES)},
            sources=[SourceConfig(format="folder", root=str(web), val_fraction=0.1)],
        ),
    )
    combined, _, held_out = load_splits(config, None)
    read = set(combined.records.paths) | set(held_out["folder"].records.paths)
    assert len(read) == 16 + 201 - len(dev) and not dev & read


def test_the_real_affectnet_web_carve() -> None:
    root = SHARED / "datasets" / "affectnet-web"
    if not (root / "train").is_dir():
        pytest.skip(f"affectnet-web not found at {root}")
    dev, train = (read_dataset("folder", root, split) for split in ("dev", "train"))
    total = dev.class_counts() + train.class_counts()
    assert np.array_equal(dev.class_counts(), np.round(total * 0.05).astype(int))
    assert not set(dev.paths) & set(train.paths)
