"""The data layer: dataset readers, safe image decoding, branch sampling and batched transforms.

Real FERPlus counts are checked against its README; every other dataset is a tiny synthetic
copy of its on-disk layout built in tmp_path, so the readers' rules and error messages are
exercised without the real data.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from qcsfer import imaging
from qcsfer.data import images as images_module
from qcsfer.data.affectnet import read_affectnet
from qcsfer.data.csv import read_csv_list
from qcsfer.data.datasets import READERS, parse_spec, read_dataset, stratified_split
from qcsfer.data.ferplus import CLASSES as FERPLUS_CLASSES
from qcsfer.data.ferplus import process_votes, read_ferplus
from qcsfer.data.folder import read_folder
from qcsfer.data.images import DiskImages, load_images
from qcsfer.data.rafdb import CLASSES as RAFDB_CLASSES
from qcsfer.data.rafdb import read_rafdb
from qcsfer.data.records import DatasetError, LabeledImages
from qcsfer.data.sampling import BranchSampler, SamplerConfig
from qcsfer.data.transforms import Augmentation, eval_transform, train_transform
from qcsfer.imaging import ImageError, open_image
from qcsfer.io import atomic_write
from qcsfer.preprocessing import Preprocessing

FERPLUS_ROOT = Path(__file__).parents[1] / ".." / "shared" / "datasets" / "ferplus"

# README of the shared FERPlus copy: kept images per class under the majority rule.
FERPLUS_MAJORITY = {
    "train": (25_045, [8733, 7284, 3136, 3022, 2098, 116, 536, 120]),
    "valid": (3_191, [1180, 862, 411, 348, 289, 25, 60, 16]),
}


@pytest.fixture(scope="module")
def ferplus_root() -> Path:
    if not FERPLUS_ROOT.is_dir():
        pytest.skip(f"FERPlus not found at {FERPLUS_ROOT}")
    return FERPLUS_ROOT


def write_image(
    path: Path, size: int = 8, mode: str = "RGB", color: object = None, fmt: str | None = None
) -> Path:
    """A tiny solid image; the folder is created on the way."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if color is None:
        color = {
            "L": 128,
            "RGB": (200, 100, 50),
            "RGBA": (200, 100, 50, 255),
            "CMYK": (0, 0, 0, 0),
        }[mode]
    Image.new(mode, (size, size), color).save(path, format=fmt)
    return path


def write_lines(path: Path, lines: Iterable[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def raises_at(where: Path, line: int | None = None, match: str = ""):
    """DatasetError whose message names the file (and line) and then says `match`."""
    location = str(where) if line is None else f"{where}:{line}:"
    return pytest.raises(DatasetError, match=f"{re.escape(location)}.*{match}")


# ---------------------------------------------------------------------------- FERPlus


@pytest.mark.parametrize("split", ["train", "valid"])
def test_ferplus_majority_counts_match_readme(ferplus_root: Path, split: str) -> None:
    data = read_ferplus(ferplus_root, split)
    total, per_class = FERPLUS_MAJORITY[split]
    assert len(data) == total
    assert data.class_counts().tolist() == per_class
    assert data.classes == FERPLUS_CLASSES
    assert data.soft_labels is None
    data.check_classes()


def test_ferplus_probability_mode(ferplus_root: Path) -> None:
    data = read_ferplus(ferplus_root, "valid", label_mode="probability")
    assert data.soft_labels is not None and data.soft_labels.shape == (len(data), 8)
    np.testing.assert_allclose(data.soft_labels.sum(axis=1), 1.0, atol=1e-6)
    assert (data.soft_labels.argmax(axis=1) == data.labels).all()
    assert len(data) >= FERPLUS_MAJORITY["valid"][0]  # the soft rule keeps more images


def votes(**counts: int) -> np.ndarray:
    """A 10-vote row from names (neutral ... contempt, unknown, nf)."""
    order = [*FERPLUS_CLASSES, "unknown", "nf"]
    row = np.zeros(10, dtype=np.int64)
    for name, n in counts.items():
        row[order.index(name)] = n
    return row


@pytest.mark.parametrize(
    ("row", "majority", "probability"),
    [
        # single votes are outliers: 5 of 10 is not a majority, but 5 of 5 after removal is
        (
            votes(neutral=5, happiness=1, surprise=1, sadness=1, anger=1, fear=1),
            0,
            [1, 0, 0, 0, 0, 0, 0, 0],
        ),
        # exactly half is not more than half; the soft label stops once it holds 75%
        (votes(neutral=5, happiness=3, surprise=2), None, [0.625, 0.375, 0, 0, 0, 0, 0, 0]),
        (votes(neutral=6, happiness=2, surprise=2), 0, [0.6, 0.2, 0.2, 0, 0, 0, 0, 0]),
        # a tie: no majority; the soft label holds both
        (votes(sadness=4, anger=4, fear=2), None, [0, 0, 0, 0.5, 0.5, 0, 0, 0]),
        (votes(sadness=4, anger=2, fear=2, disgust=2), None, None),  # a 3-way tie after the top
        (votes(sadness=5, anger=5), None, [0, 0, 0, 0.5, 0.5, 0, 0, 0]),
        # four emotions needed to reach 75%: discarded
        (votes(neutral=3, happiness=3, surprise=2, sadness=2), None, None),
        # unknown / not-a-face on top: discarded
        (votes(neutral=2, unknown=8), None, None),
        (votes(happiness=3, nf=7), None, None),
        # unknown below an emotion: the emotion alone
        (votes(contempt=6, unknown=4), 7, [0, 0, 0, 0, 0, 0, 0, 1]),
        # nothing left after outlier removal
        (np.ones(10, dtype=np.int64), None, None),
    ],
)
def test_ferplus_vote_rules(
    row: np.ndarray, majority: int | None, probability: list[float] | None
) -> None:
    hard = process_votes(row.copy(), "majority")
    if majority is None:
        assert hard is None
    else:
        assert hard is not None and int(hard.argmax()) == majority and hard.max() == 1.0
    soft = process_votes(row.copy(), "probability")
    if probability is None:
        assert soft is None
    else:
        np.testing.assert_allclose(soft, probability)


def make_ferplus_split(root: Path, folder: str, rows: list[tuple[str, np.ndarray]]) -> Path:
    lines = [f'{name},"(0, 0, 48, 48)",' + ",".join(str(int(v)) for v in row) for name, row in rows]
    for name, _ in rows:
        write_image(root / folder / name, 48, "L")
    return write_lines(root / folder / "label.csv", lines)


def test_ferplus_test_split_from_synthetic_folder(tmp_path: Path) -> None:
    rows = [
        ("fer0000001.png", votes(neutral=10)),
        ("fer0000002.png", votes(happiness=6, surprise=4)),
        ("fer0000003.png", votes(fear=5, anger=5)),  # tie: dropped
        ("fer0000004.png", votes(unknown=9, neutral=1)),  # unknown: dropped
        ("fer0000005.png", votes(contempt=7, disgust=3)),
    ]
    make_ferplus_split(tmp_path, "FER2013Test", rows)
    data = read_dataset("ferplus", tmp_path, "test")
    assert data.split == "test"
    assert [p.name for p in data.paths] == ["fer0000001.png", "fer0000002.png", "fer0000005.png"]
    assert data.labels.tolist() == [0, 1, 7]
    assert data.notes == {"discarded by the FER+ rule": 2}
    soft = read_ferplus(tmp_path, "test", "probability")
    assert len(soft) == 4  # the tie becomes a two-class distribution
    np.testing.assert_allclose(soft.soft_labels[1], [0, 0.6, 0.4, 0, 0, 0, 0, 0])


@pytest.mark.parametrize("reader", [read_ferplus, read_rafdb, read_affectnet, read_folder])
def test_a_file_given_as_the_dataset_root_is_named_as_a_file(reader, tmp_path: Path) -> None:
    (tmp_path / "labels.csv").write_text("path,label\n")
    with raises_at(tmp_path / "labels.csv", match="is a file, not a folder"):
        reader(tmp_path / "labels.csv")


def test_ferplus_errors(tmp_path: Path) -> None:
    with raises_at(tmp_path / "nowhere", match="does not exist"):
        read_ferplus(tmp_path / "nowhere", "train")
    with raises_at(tmp_path / "FER2013Train" / "label.csv", match=""):
        read_ferplus(tmp_path, "train")
    with pytest.raises(DatasetError, match="split"):
        read_ferplus(tmp_path, "validation")
    with pytest.raises(DatasetError, match="label mode"):
        read_ferplus(tmp_path, "train", label_mode="soft")  # type: ignore[arg-type]

    label = make_ferplus_split(
        tmp_path, "FER2013Train", [("a.png", votes(neutral=9)), ("b.png", votes(anger=9))]
    )
    (tmp_path / "FER2013Train" / "b.png").unlink()
    with pytest.raises(DatasetError, match=r"1 of 2 images are missing, e\.g\. .*b\.png") as info:
        read_ferplus(tmp_path, "train")
    assert str(label) in str(info.value)

    good = 'a.png,"(0, 0, 48, 48)",9,0,0,0,0,0,0,0,0,1'
    for bad, reason in [
        ('b.png,"(0, 0, 48, 48)",9,0,0', "expected 12 fields"),
        ('b.png,"(0, 0, 48, 48)",9,0,0,0,0,0,0,0,x,1', "integers"),
        ('b.png,"(0, 0, 48, 48)",9,0,0,0,0,0,0,0,-1,1', "negative"),
    ]:
        write_lines(label, [good, bad])
        with raises_at(label, 2, reason):
            read_ferplus(tmp_path, "train")


# ---------------------------------------------------------------------------- RAF-DB

RAFDB_LINES = [f"train_{i:05d}.jpg {(i % 7) + 1}" for i in range(1, 15)] + [
    f"test_{i:04d}.jpg {(i % 7) + 1}" for i in range(1, 5)
]


def make_rafdb(root: Path, lines: list[str] = RAFDB_LINES) -> Path:
    for line in lines:
        name = line.split()[0]
        write_image(root / "Image" / "aligned" / f"{Path(name).stem}_aligned.jpg", 10, fmt="JPEG")
        write_image(root / "Image" / "original" / name, 20, fmt="JPEG")
    return write_lines(root / "EmoLabel" / "list_patition_label.txt", lines)


@pytest.mark.parametrize("variant", ["aligned", "original"])
def test_rafdb_reader(tmp_path: Path, variant: str) -> None:
    make_rafdb(tmp_path)
    train = read_dataset("rafdb", tmp_path, "train", variant=variant)
    test = read_rafdb(tmp_path, "test", variant=variant)  # type: ignore[arg-type]
    assert (
        train.classes
        == RAFDB_CLASSES
        == (
            "surprise",
            "fear",
            "disgust",
            "happiness",
            "sadness",
            "anger",
            "neutral",
        )
    )
    assert len(train) == 14 and len(test) == 4
    assert train.labels.tolist() == [i % 7 for i in range(1, 15)]  # label L -> id L - 1
    folder = "aligned" if variant == "aligned" else "original"
    expected = "train_00001_aligned.jpg" if variant == "aligned" else "train_00001.jpg"
    assert train.paths[0] == tmp_path / "Image" / folder / expected
    assert all(p.name.startswith("test_") for p in test.paths)
    train.check_classes()
    with pytest.raises(DatasetError, match=r"no images for class\(es\) \['surprise'"):
        test.check_classes()  # the tiny test split misses classes: detectable, not hidden


def test_rafdb_errors(tmp_path: Path) -> None:
    with raises_at(tmp_path / "nowhere", match="does not exist"):
        read_rafdb(tmp_path / "nowhere")
    label = tmp_path / "EmoLabel" / "list_patition_label.txt"
    with raises_at(label, match=""):
        read_rafdb(tmp_path)
    with pytest.raises(DatasetError, match="val_split: null"):
        read_rafdb(tmp_path, "valid")
    with pytest.raises(DatasetError, match="variant"):
        read_rafdb(tmp_path, variant="cropped")  # type: ignore[arg-type]

    make_rafdb(tmp_path)
    for name in ("train_00002_aligned.jpg", "train_00005_aligned.jpg"):
        (tmp_path / "Image" / "aligned" / name).unlink()
    with pytest.raises(
        DatasetError, match=r"2 of 14 images are missing, e\.g\. .*train_00002_aligned"
    ) as info:
        read_rafdb(tmp_path)
    assert str(label) in str(info.value)
    read_rafdb(tmp_path, "train", variant="original")  # the original images are all there

    for bad, reason in [
        ("train_00099.jpg 8", "outside 1..7"),
        ("train_00099.jpg 0", "outside 1..7"),
        ("train_00099.jpg five", "not an integer"),
        ("train_00099.jpg 5 extra", "expected"),
        ("val_00099.jpg 5", "neither train_ nor test_"),
    ]:
        write_lines(label, [RAFDB_LINES[0], "", bad])
        with raises_at(label, 3, reason):
            read_rafdb(tmp_path, "test")  # the whole file is validated, whatever the split


# ---------------------------------------------------------------------------- AffectNet

OFFICIAL_HEADER = (
    "subDirectory_filePath,face_x,face_y,face_width,face_height,"
    "facial_landmarks,expression,valence,arousal"
)


def official_row(path: str, expression: int) -> str:
    return f'{path},10,10,80,80,"1.0;2.0;3.0;4.0",{expression},0.1,-0.2'


# One image per expression id 0..10, plus a second happy one.
AFFECTNET_ITEMS = [(f"{i // 2 + 1}/img{i:02d}.jpg", i) for i in range(11)] + [("1/extra.jpg", 1)]


def make_affectnet_images(root: Path) -> None:
    for path, _ in AFFECTNET_ITEMS:
        write_image(root / path, 12, fmt="JPEG")


@pytest.mark.parametrize("style", ["official", "official-headerless", "whitespace", "comma-pairs"])
@pytest.mark.parametrize("num_classes", [7, 8])
def test_affectnet_list_styles(tmp_path: Path, style: str, num_classes: int) -> None:
    make_affectnet_images(tmp_path)
    rows = {
        "official": [OFFICIAL_HEADER] + [official_row(p, e) for p, e in AFFECTNET_ITEMS],
        "official-headerless": [official_row(p, e) for p, e in AFFECTNET_ITEMS],
        "whitespace": [f"{p} {e}" for p, e in AFFECTNET_ITEMS],
        "comma-pairs": [f"{p},{e}" for p, e in AFFECTNET_ITEMS],
    }[style]
    write_lines(tmp_path / "training.csv", rows)
    data = read_dataset("affectnet", tmp_path, "train", num_classes=num_classes)
    assert data.num_classes == num_classes
    assert data.classes[:7] == ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger")
    kept = [(p, e) for p, e in AFFECTNET_ITEMS if e < num_classes]
    assert [p for p in data.paths] == [tmp_path / p for p, _ in kept]
    assert data.labels.tolist() == [e for _, e in kept]
    assert data.notes["dropped as none (8)"] == 1
    assert data.notes["dropped as uncertain (9)"] == 1
    assert data.notes["dropped as no-face (10)"] == 1
    assert ("dropped as contempt (7) for 7 classes" in data.notes) == (num_classes == 7)
    if num_classes == 8:
        data.check_classes()


def test_affectnet_list_file_options(tmp_path: Path) -> None:
    images = tmp_path / "images"
    make_affectnet_images(images)
    write_image(images / "dir with space" / "a b.jpg", 12, fmt="JPEG")
    write_lines(images / "validation.csv", [official_row(p, e) for p, e in AFFECTNET_ITEMS[:3]])
    assert len(read_affectnet(images, "valid")) == 3
    assert len(read_affectnet(images, "val")) == 3
    lists = tmp_path / "lists"
    write_lines(lists / "test.txt", ["dir with space/a b.jpg 3", "", "./1/extra.jpg 1"])
    data = read_affectnet(images, "test", list_file=str(lists / "{split}.txt"))
    assert data.paths[0] == images / "dir with space" / "a b.jpg" and data.labels.tolist() == [3, 1]
    assert len(read_affectnet(images, "test", list_file={"test": lists / "test.txt"})) == 2
    assert len(read_affectnet(images, "valid", list_file="validation.csv")) == 3  # under ROOT


def test_affectnet_errors(tmp_path: Path) -> None:
    with raises_at(tmp_path / "nowhere", match="does not exist"):
        read_affectnet(tmp_path / "nowhere")
    with raises_at(tmp_path / "training.csv", match=""):
        read_affectnet(tmp_path)
    with pytest.raises(DatasetError, match="no default list file"):
        read_affectnet(tmp_path, "test")
    with pytest.raises(DatasetError, match="no entry for split"):
        read_affectnet(tmp_path, "test", list_file={"train": "x.txt"})
    with pytest.raises(DatasetError, match="7 or 8"):
        read_affectnet(tmp_path, num_classes=6)

    make_affectnet_images(tmp_path)
    listing = tmp_path / "training.csv"
    write_lines(
        listing, [OFFICIAL_HEADER, official_row("1/img00.jpg", 0), official_row("9/gone.jpg", 2)]
    )
    with pytest.raises(
        DatasetError, match=r"1 of 2 images are missing, e\.g\. .*gone\.jpg"
    ) as info:
        read_affectnet(tmp_path)
    assert str(listing) in str(info.value)

    for lines, line_no, reason in [
        ([OFFICIAL_HEADER, official_row("1/img00.jpg", 11)], 2, "outside 0..10"),
        ([OFFICIAL_HEADER, official_row("1/img00.jpg", -1)], 2, "outside 0..10"),
        ([OFFICIAL_HEADER, "1/img00.jpg,1,2"], 2, "expected 9 fields"),
        ([OFFICIAL_HEADER.replace("expression", "emotion")], 1, "no 'expression' column"),
        (["1/img00.jpg 1", "1/img01.jpg"], 2, "expected `relative/path label`"),
        (["1/img00.jpg 1", "1/img01.jpg happy"], 2, "not an integer"),
        (["1/img00.jpg,1", "1/img01.jpg,1,2"], 2, "expected 2 fields"),
        (["1/img00.jpg,1,2"], 1, "got 3 fields"),
        ([official_row("1/img00.jpg", 0), official_row(" ", 1)], 2, "empty image path"),
    ]:
        write_lines(listing, lines)
        with raises_at(listing, line_no, reason):
            read_affectnet(tmp_path)


# ---------------------------------------------------------------------------- folder tree


def make_tree(root: Path, counts: dict[str, int]) -> None:
    for name, n in counts.items():
        for i in range(n):
            sub = "nested/" if i % 2 else ""
            write_image(
                root / name / f"{sub}{i}.{'PNG' if i == 0 else 'jpg'}",
                6,
                fmt="PNG" if i == 0 else "JPEG",
            )


def test_folder_reader(tmp_path: Path) -> None:
    make_tree(tmp_path, {"sad": 2, "happy": 3, "angry": 1})
    (tmp_path / "happy" / "notes.txt").write_text("not an image")
    write_image(tmp_path / "happy" / ".hidden.png")
    write_image(tmp_path / ".thumbs" / "x.png")
    write_image(tmp_path / "loose.png")
    data = read_dataset("folder", tmp_path, "train")
    assert data.classes == ("angry", "happy", "sad")
    assert data.class_counts().tolist() == [1, 3, 2]
    assert all(
        p.suffix.lower() in (".png", ".jpg") and not p.name.startswith(".") for p in data.paths
    )
    assert data.notes == {"images outside class folders, ignored": 1}

    ordered = read_folder(tmp_path, "train", classes="sad, happy,angry,surprised")
    assert ordered.classes == ("sad", "happy", "angry", "surprised")
    assert ordered.class_counts().tolist() == [2, 3, 1, 0]
    with pytest.raises(
        DatasetError, match=r"folder/train: no images for class\(es\) \['surprised'\]"
    ):
        ordered.check_classes()  # an empty class is detectable before training


def test_folder_split_subfolders(tmp_path: Path) -> None:
    make_tree(tmp_path / "train", {"a": 2, "b": 2})
    make_tree(tmp_path / "test", {"a": 1, "b": 1})
    assert len(read_folder(tmp_path, "train")) == 4
    test = read_folder(tmp_path, "test", classes=["b", "a"])
    assert test.classes == ("b", "a") and test.split == "test"
    with pytest.raises(
        DatasetError, match=r"no 'valid' folder \(split folders present: \['test', 'train'\]\)"
    ):
        read_folder(tmp_path, "valid")


def test_folder_errors(tmp_path: Path) -> None:
    with raises_at(tmp_path / "nowhere", match="does not exist"):
        read_folder(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match=f"{re.escape(str(tmp_path))}: no class folders"):
        read_folder(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        read_folder(tmp_path)
    make_tree(tmp_path, {"a": 1, "b": 1})
    with pytest.raises(DatasetError, match=r"\['b', 'empty'\] are not in classes \['a'\]"):
        read_folder(tmp_path, classes=["a"])
    with pytest.raises(DatasetError, match="listed twice"):
        read_folder(tmp_path, classes=["a", "b", "a"])


# ---------------------------------------------------------------------------- CSV list


def make_csv_images(folder: Path, names: Iterable[str]) -> None:
    for name in names:
        write_image(folder / name, 6, fmt="PNG")


def test_csv_names_with_header(tmp_path: Path) -> None:
    make_csv_images(tmp_path / "img", ["a.png", "b.png", "c.png"])
    listing = write_lines(
        tmp_path / "train.csv",
        ["path,label", "img/a.png,sad", "img/b.png,happy", "", "img/c.png,sad"],
    )
    data = read_dataset("csv", listing, "train")
    assert data.classes == ("happy", "sad") and data.labels.tolist() == [1, 0, 1]
    assert (
        data.paths[0] == tmp_path / "img" / "a.png" and data.split == "train" and data.name == "csv"
    )
    fixed = read_csv_list(listing, "train", classes=["sad", "happy", "fear"])
    assert fixed.labels.tolist() == [0, 1, 0] and fixed.class_counts().tolist() == [2, 1, 0]


def test_csv_ids_tsv_and_options(tmp_path: Path) -> None:
    images = tmp_path / "pics"
    make_csv_images(images, ["a.png", "b.png", "sub/c.png"])
    listing = write_lines(
        tmp_path / "lists" / "valid.tsv", ["a.png\t0", "b.png\t2", "sub/c.png\t1"]
    )
    with raises_at(listing, 1, "pass the classes option"):
        read_csv_list(listing, "valid", image_root=images)
    data = read_csv_list(
        str(tmp_path / "lists" / "{split}.tsv"), "valid", classes="x,y,z", image_root=images
    )
    assert data.labels.tolist() == [0, 2, 1] and data.paths[2] == images / "sub" / "c.png"
    semicolons = write_lines(tmp_path / "s.csv", [f"{images / 'a.png'};y", f"{images / 'b.png'};0"])
    mixed = read_csv_list(semicolons, "train", classes=["x", "y"])  # names and ids, absolute paths
    assert mixed.labels.tolist() == [1, 0]
    extra = write_lines(
        images / "meta.csv", ["id,file,emotion,source", "1,a.png,y,web", "2,b.png,x,lab"]
    )
    assert read_csv_list(extra, "train").labels.tolist() == [1, 0]
    forced = write_lines(images / "noext.csv", ["a.png,y", "b.png,x"])
    assert len(read_csv_list(forced, "train", header=True)) == 1


def test_csv_errors(tmp_path: Path) -> None:
    with pytest.raises(
        DatasetError, match=f"missing list file {re.escape(str(tmp_path / 'missing.csv'))}"
    ):
        read_csv_list(tmp_path / "missing.csv")
    make_csv_images(tmp_path, ["a.png", "b.png"])
    listing = tmp_path / "list.csv"
    for lines, line_no, kwargs, reason in [
        (["a.png,x", "b.png,z"], 2, {"classes": ["x", "y"]}, "unknown class 'z'"),
        (["a.png,0", "b.png,2"], 2, {"classes": ["x", "y"]}, "outside 0..1"),
        (["a.png,x", "b.png,1"], 2, {}, "integer id"),
        (["a.png,x", "b.png,y,extra"], 2, {}, "expected 2 fields"),
        (["a.png,x", ",y"], 2, {}, "empty path or label"),
        (["id,source,notes", "a.png,x,1"], 1, {}, "cannot tell the path and label columns"),
    ]:
        write_lines(listing, lines)
        with raises_at(listing, line_no, reason):
            read_csv_list(listing, "train", **kwargs)
    write_lines(listing, ["a.png x"])
    with raises_at(listing, 1, "no tab, comma or semicolon"):
        read_csv_list(listing)
    write_lines(listing, ["path,label"])
    with raises_at(listing, match="no image rows"):
        read_csv_list(listing)
    write_lines(listing, ["a.png,x", "gone.png,y", "b.png,x"])
    with pytest.raises(
        DatasetError, match=rf"{re.escape(str(listing))}.*1 of 3 images are missing, e\.g\. .*gone"
    ):
        read_csv_list(listing)
    with pytest.raises(DatasetError, match="image_root"):
        read_csv_list(listing, image_root=tmp_path / "nowhere")


# ---------------------------------------------------------------------------- registry and splits


def test_registry(tmp_path: Path) -> None:
    assert {"ferplus", "rafdb", "affectnet", "folder", "csv"} <= set(READERS)
    with pytest.raises(DatasetError, match="unknown dataset format"):
        read_dataset("imagenet", tmp_path, "train")
    with pytest.raises(DatasetError, match=r"unknown option\(s\) \['varaint'\]"):
        read_dataset("rafdb", tmp_path, "train", varaint="aligned")


def test_stratified_split_keeps_every_class_in_train() -> None:
    labels = np.array([0] * 20 + [1] * 3 + [2] * 1, dtype=np.int64)
    data = LabeledImages(
        "toy", "train", ("a", "b", "c"), tuple(Path(f"{i}.png") for i in range(24)), labels
    )
    train, val = stratified_split(data, 0.9, seed=0)
    assert train.class_counts().tolist() == [2, 1, 1]
    assert val.class_counts().tolist() == [18, 2, 0] and val.split == "train-heldout"
    assert not set(train.paths) & set(val.paths)
    again, _ = stratified_split(data, 0.9, seed=0)
    assert again.paths == train.paths


# ---------------------------------------------------------------------------- images


@pytest.fixture
def odd_images(tmp_path: Path) -> dict[str, Path]:
    """One file per decoding hazard, named by it."""
    files: dict[str, Path] = {}
    files["rgb"] = write_image(tmp_path / "rgb.png", 16)
    files["corrupt"] = tmp_path / "corrupt.jpg"
    files["corrupt"].write_bytes(os.urandom(64) + b"not an image")
    files["empty"] = tmp_path / "empty.png"
    files["empty"].write_bytes(b"")
    noisy = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(noisy).save(tmp_path / "whole.png")
    files["truncated"] = tmp_path / "truncated.png"
    files["truncated"].write_bytes((tmp_path / "whole.png").read_bytes()[:300])
    deep = np.full((16, 16), 65535, dtype=np.uint16)
    deep[:, 8:] = 32768
    files["16bit"] = tmp_path / "16bit.png"
    Image.fromarray(deep).save(files["16bit"])
    files["cmyk"] = write_image(tmp_path / "cmyk.jpg", 16, "CMYK", (0, 0, 0, 0), "JPEG")
    rgba = Image.new("RGBA", (16, 16), (0, 0, 0, 0))  # fully transparent: white on compositing
    files["rgba"] = tmp_path / "rgba.png"
    rgba.save(files["rgba"])
    palette = Image.new("P", (16, 16), 1)
    palette.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    files["palette"] = tmp_path / "palette.png"
    palette.save(files["palette"])
    files["palette-alpha"] = tmp_path / "palette_alpha.png"
    palette.save(files["palette-alpha"], transparency=1)
    files["tiny"] = write_image(tmp_path / "tiny.png", 1, "RGB", (9, 99, 199))
    return files


def test_load_images_skips_unreadable(
    odd_images: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    names = list(odd_images)
    with caplog.at_level(logging.WARNING, logger="qcsfer.data.images"):
        store = load_images([odd_images[n] for n in names], 8, grayscale=False, workers=2)
    unreadable = {"corrupt", "empty", "truncated"}
    assert store.valid.tolist() == [n not in unreadable for n in names]
    assert store.skipped == 3
    assert store.images.shape == (len(names), 3, 8, 8) and store.images.dtype == torch.uint8
    got = {n: store.images[i] for i, n in enumerate(names)}
    assert got["rgb"][:, 0, 0].tolist() == [200, 100, 50]
    assert (
        got["16bit"][0, :, 0].tolist() == [255] * 8 and got["16bit"][0, :, 7].tolist() == [128] * 8
    )
    assert (got["cmyk"] >= 250).all()  # no ink is white
    assert (got["rgba"] == 255).all()
    assert got["palette"][:, 0, 0].tolist() == [10, 20, 30]
    assert (got["palette-alpha"] == 255).all()
    assert got["tiny"][:, 4, 4].tolist() == [9, 99, 199]
    assert (
        f"3 of {len(names)} images could not be read" in caplog.text
        and "truncated.png" in caplog.text
    )

    gray = load_images([odd_images["rgb"], odd_images["cmyk"]], 5, grayscale=True, workers=1)
    assert gray.images.shape == (2, 1, 5, 5) and gray.valid.all()


def test_decompression_bomb_guard(
    odd_images: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(imaging, "MAX_PIXELS", 100)  # the 16x16 images are now too large
    with pytest.raises(ImageError, match="too large"):
        open_image(odd_images["rgb"])
    store = load_images([odd_images["rgb"], odd_images["tiny"]], 4, grayscale=False, workers=1)
    assert store.valid.tolist() == [False, True] and store.skipped == 1


def test_image_cache_returns_identical_tensors(
    odd_images: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = list(odd_images.values())
    first = load_images(paths, 8, grayscale=False, cache_dir=tmp_path / "cache", workers=2)
    assert len(list((tmp_path / "cache").glob("images-*.npz"))) == 1

    def no_decoding(*args: object) -> None:
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(images_module, "decode", no_decoding)
    second = load_images(paths, 8, grayscale=False, cache_dir=tmp_path / "cache", workers=2)
    assert torch.equal(first.images, second.images) and (first.valid == second.valid).all()
    assert second.skipped == first.skipped == 3


def test_image_cache_is_checked_before_use(
    odd_images: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    paths, cache = list(odd_images.values()), tmp_path / "cache"
    first = load_images(paths, 8, grayscale=False, cache_dir=cache, workers=1)
    (cache_file,) = cache.glob("images-*.npz")
    wrong = {
        "truncated": None,
        "shape": {"images": first.images.numpy()[:, :, :4], "valid": first.valid},
        "dtype": {"images": first.images.numpy().astype(np.float32), "valid": first.valid},
        "valid": {"images": first.images.numpy(), "valid": first.valid[:-1]},
        "keys": {"pixels": first.images.numpy()},
    }
    for problem, content in wrong.items():
        if content is None:
            cache_file.write_bytes(cache_file.read_bytes()[:100])
        else:
            np.savez(cache_file, **content)
        with caplog.at_level(logging.WARNING, logger="qcsfer.data.images"):
            again = load_images(paths, 8, grayscale=False, cache_dir=cache, workers=1)
        assert "ignoring" in caplog.text and str(cache_file) in caplog.text, problem
        caplog.clear()
        assert torch.equal(again.images, first.images) and (again.valid == first.valid).all()
        with np.load(cache_file) as rewritten:  # decoded again and cached afresh
            assert rewritten["images"].shape == tuple(first.images.shape), problem
    assert sorted(p.name for p in cache.iterdir()) == [cache_file.name]  # no temporaries


def test_atomic_write_replaces_whole_files_or_nothing(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "file.bin"
    assert atomic_write(target, lambda tmp: tmp.write_bytes(b"first")) == target
    assert target.read_bytes() == b"first" and (target.stat().st_mode & 0o777) == 0o644

    def failing(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, failing)
    assert target.read_bytes() == b"first"  # the old file is untouched
    assert [p.name for p in target.parent.iterdir()] == ["file.bin"]  # temporary removed


def test_disk_images_close_their_threads(odd_images: dict[str, Path]) -> None:
    with DiskImages([odd_images["rgb"], odd_images["corrupt"]], 4, grayscale=True) as disk:
        images, valid = disk.load(np.array([0, 1]))
        assert images.shape == (2, 1, 4, 4) and valid.tolist() == [True, False]
        assert disk.skipped == 1
    with pytest.raises(RuntimeError, match="shutdown"):  # its threads stopped with the block
        disk.load(np.array([0]))
    disk.close()  # idempotent


# ---------------------------------------------------------------------------- sampling

SAMPLING_COUNTS = [60, 30, 20, 10]
SAMPLING_LABELS = np.repeat(np.arange(4), SAMPLING_COUNTS)[
    np.random.default_rng(7).permutation(120)
]


def quadruplets(sampler: BranchSampler, epoch: int) -> np.ndarray:
    """branches x examples, in batch order."""
    table = sampler.epoch(epoch)
    return table.transpose(1, 0, 2).reshape(table.shape[1], -1)


@pytest.mark.parametrize("rule", ["frequency", "uniform-class"])
def test_quadruplet_roles(rule: str) -> None:
    labels = SAMPLING_LABELS
    config = SamplerConfig(negative_rule=rule, anchors_per_epoch=24_000)  # type: ignore[arg-type]
    sampler = BranchSampler(labels, 4, 16, config, seed=3)
    anchor, positive, negative, negative2 = quadruplets(sampler, 0)
    assert (labels[positive] == labels[anchor]).all() and (positive != anchor).all()
    assert (labels[negative] != labels[anchor]).all()
    assert (labels[negative2] == labels[negative]).all() and (negative2 != negative).all()

    # Negatives of class-0 anchors: by class frequency, or uniform over the other classes.
    share = np.bincount(labels[negative[labels[anchor] == 0]], minlength=4)[1:]
    share = share / share.sum()
    expected = (
        np.array(SAMPLING_COUNTS[1:]) / sum(SAMPLING_COUNTS[1:])
        if rule == "frequency"
        else np.full(3, 1 / 3)
    )
    np.testing.assert_allclose(share, expected, atol=0.03)


def test_balanced_epochs_and_reproducibility() -> None:
    config = SamplerConfig(balanced=True, anchors_per_epoch=8_000)
    sampler = BranchSampler(SAMPLING_LABELS, 4, 20, config, seed=1)
    anchors = quadruplets(sampler, 0)[0]
    share = np.bincount(SAMPLING_LABELS[anchors], minlength=4) / len(anchors)
    np.testing.assert_allclose(share, 0.25, atol=0.03)

    again = BranchSampler(SAMPLING_LABELS, 4, 20, config, seed=1)
    assert np.array_equal(sampler.epoch(5), again.epoch(5))
    assert not np.array_equal(sampler.epoch(5), sampler.epoch(6))
    other_seed = BranchSampler(SAMPLING_LABELS, 4, 20, config, seed=2)
    assert not np.array_equal(sampler.epoch(5), other_seed.epoch(5))


@pytest.mark.parametrize("world_size", [2, 3])
def test_rank_shards(world_size: int) -> None:
    batch = 7
    single = quadruplets(BranchSampler(SAMPLING_LABELS, 4, batch, seed=11), 2)
    shards = [
        BranchSampler(SAMPLING_LABELS, 4, batch, seed=11, rank=r, world_size=world_size).epoch(2)
        for r in range(world_size)
    ]
    anchor_sets = [set(s[:, 0].ravel().tolist()) for s in shards]
    for i in range(world_size):
        for j in range(i + 1, world_size):
            assert not anchor_sets[i] & anchor_sets[j]
    used = sum(len(s) for s in anchor_sets)
    assert used == len(SAMPLING_LABELS) // (batch * world_size) * batch * world_size
    assert set().union(*anchor_sets) == set(single[0, :used].tolist())
    # Batch b of rank r is the single-process stream's block b * world_size + r, all branches.
    interleaved = np.stack(shards, axis=1).transpose(2, 0, 1, 3).reshape(4, -1)
    assert np.array_equal(interleaved, single[:, :used])


def test_one_image_class_warns_and_works(caplog: pytest.LogCaptureFixture) -> None:
    labels = np.array([0] * 10 + [1] * 6 + [2], dtype=np.int64)
    names = ("calm", "glad", "lonely")
    for rule in ("frequency", "uniform-class"):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="qcsfer.data.sampling"):
            sampler = BranchSampler(
                labels,
                4,
                8,
                SamplerConfig(negative_rule=rule, anchors_per_epoch=400),  # type: ignore[arg-type]
                class_names=names,
            )
        assert "'lonely' has a single image" in caplog.text
        anchor, positive, negative, negative2 = quadruplets(sampler, 0)
        alone = labels[anchor] == 2
        assert alone.any() and (positive[alone] == anchor[alone]).all()
        lonely_negative = labels[negative] == 2
        assert (
            lonely_negative.any()
            and (negative2[lonely_negative] == negative[lonely_negative]).all()
        )
        assert (labels[negative] != labels[anchor]).all()


def test_plain_and_pair_shapes() -> None:
    for branches in (1, 2):
        sampler = BranchSampler(SAMPLING_LABELS, branches, 16)
        table = sampler.epoch(0)
        assert table.shape == (120 // 16, branches, 16) and len(sampler) == 7
        assert len(set(table[:, 0].ravel().tolist())) == 112  # anchors: no repeats within an epoch
        if branches == 2:
            assert (SAMPLING_LABELS[table[:, 1]] == SAMPLING_LABELS[table[:, 0]]).all()
    with pytest.raises(ValueError, match="branches"):
        BranchSampler(SAMPLING_LABELS, 3, 4)
    with pytest.raises(ValueError, match="two classes"):
        BranchSampler(np.zeros(5, dtype=np.int64), 4, 2)


# ---------------------------------------------------------------------------- transforms

PLAIN = Preprocessing(image_size=4, load_size=8, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
NO_AUGMENTATION = Augmentation(
    hflip=0, rotation=0, brightness=0, contrast=0, saturation=0, hue=0, erasing=0
)


def test_augmentation_checks_its_values_however_it_is_built() -> None:
    for change in ({"hflip": 1.5}, {"erasing": -0.1}, {"zoom": (1.2, 1.0)}):
        with pytest.raises(ValueError, match=rf"augmentation\.{next(iter(change))}"):
            Augmentation(**change)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"sampler\.epoch_fraction must be positive"):
        SamplerConfig(epoch_fraction=0)


def test_train_transform_shape_dtype_and_determinism() -> None:
    prep = Preprocessing(image_size=24, load_size=28)
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    out = train_transform(images, prep, Augmentation(), torch.Generator().manual_seed(0))
    assert out.shape == (5, 3, 24, 24) and out.dtype == torch.float32 and torch.isfinite(out).all()
    same = train_transform(images, prep, Augmentation(), torch.Generator().manual_seed(0))
    other = train_transform(images, prep, Augmentation(), torch.Generator().manual_seed(1))
    assert torch.equal(out, same) and not torch.equal(out, other)
    gray = train_transform(
        images[:, :1, :20, :28], prep, Augmentation(), torch.Generator().manual_seed(0)
    )
    assert gray.shape == (5, 3, 24, 24)


def test_train_transform_without_augmentation_is_identity_or_flip() -> None:
    prep = Preprocessing(image_size=8, load_size=8, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    images = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    expected = images.float() / 255
    out = train_transform(images, prep, NO_AUGMENTATION, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    mirrored = Augmentation(**{**NO_AUGMENTATION.__dict__, "hflip": 1.0})
    out = train_transform(images, prep, mirrored, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, expected.flip(-1), atol=1e-5, rtol=0)


def test_eval_transform_centre_crop_and_flip() -> None:
    images = (
        torch.arange(2 * 3 * 64, dtype=torch.int64)
        .reshape(2, 3, 8, 8)
        .remainder(256)
        .to(torch.uint8)
    )
    out = eval_transform(images, PLAIN)
    expected = images.float()[..., 2:6, 2:6] / 255
    assert out.shape == (2, 3, 4, 4) and out.dtype == torch.float32
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(eval_transform(images, PLAIN, flip=True), expected.flip(-1))
    normalised = eval_transform(images[:, :1], Preprocessing(image_size=4, load_size=8))
    mean = torch.tensor(Preprocessing().mean).view(1, 3, 1, 1)
    std = torch.tensor(Preprocessing().std).view(1, 3, 1, 1)
    torch.testing.assert_close(normalised, (expected[:, :1] - mean) / std)  # gray repeated


def test_data_command_prints_counts_sizes_and_absent_splits(
    ferplus_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from qcsfer.cli import main

    assert main(["data", f"ferplus:{ferplus_root}", "--check", "50"]) == 0
    out = capsys.readouterr().out
    assert "ferplus / train: 25045 images" in out and "ferplus / valid: 3191 images" in out
    assert "contempt          16" in out and "48x48 (50)" in out
    assert "ferplus / test: not available" in out
    # A split asked for by name must exist.
    assert main(["data", str(ferplus_root), "--format", "ferplus", "--split", "test"]) == 2
    with pytest.raises(DatasetError, match="FORMAT:ROOT"):
        parse_spec("no-format-here")
    assert parse_spec("csv:lists/train.csv") == ("csv", "lists/train.csv")
