"""Multi-source training data (class mapping, file selection, framing, weights, sampling) and the
image-quality degradations."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from qcsfer.config import load_config
from qcsfer.data.degradations import Degradation, degrade
from qcsfer.data.images import decode, reframe
from qcsfer.data.records import DatasetError, LabeledImages
from qcsfer.data.sampling import BranchSampler
from qcsfer.data.sources import SourceConfig, combine, map_classes, read_source
from qcsfer.data.splits import Split
from qcsfer.preprocessing import Preprocessing

MODEL_CLASSES = ("neutral", "happiness", "anger", "contempt")


def make_folder(root: Path, counts: dict[str, int], prefix: str = "img") -> Path:
    for name, n in counts.items():
        (root / "train" / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("L", (8, 8), 10 * i).save(root / "train" / name / f"{prefix}_{i}.png")
    return root


def test_class_mapping_renames_drops_and_refuses_unknown(tmp_path: Path) -> None:
    root = make_folder(tmp_path, {"angry": 3, "happy": 2, "fear": 4, "neutral": 1})
    source = SourceConfig(
        format="folder",
        root=str(root),
        class_map={"angry": "anger", "happy": "happiness", "fear": None},
    )
    records, held_out = read_source(source, MODEL_CLASSES, seed=0)
    assert held_out is None
    assert records.classes == MODEL_CLASSES
    assert records.class_counts().tolist() == [1, 2, 3, 0]
    assert records.notes["dropped: class mapped to nothing"] == 4
    with pytest.raises(DatasetError, match="not model classes"):
        read_source(SourceConfig(format="folder", root=str(root)), MODEL_CLASSES, seed=0)
    with pytest.raises(DatasetError, match="unknown class"):
        map_classes(records, MODEL_CLASSES, {"sadness": None}, "x")


def test_file_patterns_and_held_out_slice(tmp_path: Path) -> None:
    make_folder(tmp_path, {"neutral": 10, "happiness": 10})
    make_folder(tmp_path, {"neutral": 5}, prefix="ffhq")
    without = SourceConfig(format="folder", root=str(tmp_path), exclude=["ffhq_*"])
    records, _ = read_source(without, MODEL_CLASSES, seed=0)
    assert len(records) == 20 and not any(p.name.startswith("ffhq") for p in records.paths)
    only = SourceConfig(format="folder", root=str(tmp_path), include=["ffhq_*"])
    assert len(read_source(only, MODEL_CLASSES, seed=0)[0]) == 5
    sliced = SourceConfig(format="folder", root=str(tmp_path), val_fraction=0.2, exclude=["ffhq*"])
    train, held = read_source(sliced, MODEL_CLASSES, seed=3)
    assert held is not None and held.class_counts().tolist() == [2, 2, 0, 0]
    assert not set(train.paths) & set(held.paths)
    assert read_source(sliced, MODEL_CLASSES, seed=3)[1].paths == held.paths  # seeded


def test_combine_turns_hard_labels_into_one_hot_beside_soft_labels() -> None:
    soft = np.array([[0.5, 0.5, 0, 0], [0, 0, 1, 0]], dtype=np.float32)
    main = LabeledImages(
        "ferplus", "train", MODEL_CLASSES, (Path("a"), Path("b")), np.array([0, 2]), soft
    )
    extra = LabeledImages("web", "train", MODEL_CLASSES, (Path("c"),), np.array([3]))
    both = combine([main, extra])
    assert both.labels.tolist() == [0, 2, 3]
    assert both.soft_labels is not None
    assert both.soft_labels[2].tolist() == [0, 0, 0, 1]
    assert both.soft_labels[0].tolist() == [0.5, 0.5, 0, 0]
    other = LabeledImages("x", "train", ("a", "b"), (Path("d"),), np.array([0]))
    with pytest.raises(DatasetError):
        combine([main, other])


def test_reframe_crops_tighter_and_widens_with_edges() -> None:
    image = Image.fromarray(np.arange(100 * 80, dtype=np.uint32).reshape(100, 80).astype(np.uint8))
    tight = reframe(image, 0.5)
    assert tight.size == (40, 40)
    assert np.array_equal(np.asarray(tight), np.asarray(image)[30:70, 20:60])
    wide = np.asarray(reframe(image, 1.5))
    assert wide.shape == (120, 120)
    centre = wide[10:110, 20:100]
    assert np.array_equal(centre, np.asarray(image))  # the image, unchanged, in the middle
    assert (wide[:, 0] == wide[:, 20]).all()  # replicated edge


def test_framing_reaches_the_decoded_pixels(tmp_path: Path) -> None:
    pixels = np.zeros((40, 40), dtype=np.uint8)
    pixels[10:30, 10:30] = 255  # a bright centre square on black
    Image.fromarray(pixels).save(tmp_path / "face.png")
    full = decode(tmp_path / "face.png", 8, grayscale=True)
    tight = decode(tmp_path / "face.png", 8, grayscale=True, framing=0.5)
    assert full is not None and tight is not None
    assert tight.mean() == 255 and full.mean() < 128
    # a split decoded per batch from disk is framed as one held in memory
    records = LabeledImages(
        name="x",
        split="train",
        classes=("a",),
        paths=(tmp_path / "face.png",),
        labels=np.array([0]),
    )
    prep = Preprocessing(image_size=8, load_size=8, grayscale=True)
    for storage in ("memory", "disk"):
        split = Split.load(records, prep, storage, None, framing=0.5)
        assert split.images.load(np.array([0]))[0].float().mean() == 255, storage


def test_sampler_weights_shift_anchors_and_quadruplets_stay_valid() -> None:
    labels = np.array([0] * 50 + [1] * 50 + [0] * 50 + [1] * 50)  # two sources of 100
    source = np.repeat([0, 1], 100)
    weights = np.where(source == 0, 1.0, 0.25)
    sampler = BranchSampler(labels, 4, 20, seed=0, weights=weights)
    batches = sampler.epoch(0)  # batches x 4 x batch
    anchors = batches[:, 0].ravel()
    share = (source[anchors] == 1).mean()
    assert 0.1 < share < 0.3  # 0.25 / 1.25 = 0.2 expected
    a, p, n, n2 = (batches[:, i].ravel() for i in range(4))
    assert (labels[a] == labels[p]).all() and (labels[n] == labels[n2]).all()
    assert (labels[a] != labels[n]).all()
    assert (a != p).all()
    assert set(source[p]) == {0, 1}  # positives come from either source
    assert np.array_equal(batches, BranchSampler(labels, 4, 20, seed=0, weights=weights).epoch(0))
    with pytest.raises(ValueError, match="positive"):
        BranchSampler(labels, 4, 20, weights=np.zeros(len(labels)))


def test_sources_in_a_config_file(tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text(
        "data:\n  sources:\n    - {format: folder, root: web, weight: 0.5, framing: 0.8,"
        " class_map: {contempt: null}}\n"
    )
    config = load_config(path)
    (source,) = config.data.sources
    assert isinstance(source, SourceConfig)
    assert (source.weight, source.framing, source.class_map) == (0.5, 0.8, {"contempt": None})
    path.write_text("data:\n  sources:\n    - {format: folder, root: web, weight: 0}\n")
    with pytest.raises(ValueError, match="weight must be positive"):
        load_config(path)
    # A misspelt detector is refused when the recipe is read, not an hour into the run.
    path.write_text("data:\n  sources:\n    - {format: folder, root: web, detector: mtcn}\n")
    with pytest.raises(ValueError, match="unknown detector 'mtcn': give one of auto, mtcnn"):
        load_config(path)


@pytest.mark.parametrize("name", ["gamma", "blur", "low_resolution", "jpeg", "noise"])
def test_each_degradation_changes_images_and_is_seeded(name: str) -> None:
    x = torch.rand(6, 1, 48, 48)
    d = Degradation(**{name: 1.0})
    out = degrade(x, d, torch.Generator().manual_seed(0))
    again = degrade(x, d, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and torch.equal(out, again)
    assert (out - x).abs().mean() > 1e-3
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(degrade(x, Degradation(), torch.Generator()), x)  # off by default


def test_jpeg_degradation_loses_as_much_as_a_real_jpeg() -> None:
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 255, (6, 6)), np.ones((8, 8))).astype(np.uint8)
    picture = np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)
    x = torch.from_numpy(picture).float().div(255).view(1, 1, 48, 48)
    ours = degrade(x, Degradation(jpeg=1.0, jpeg_quality=(20, 20)), torch.Generator())
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, "JPEG", quality=20)
    real = np.asarray(Image.open(buffer), dtype=np.float32) / 255
    ours_error = (ours[0, 0].numpy() - picture / 255).__abs__().mean()
    real_error = np.abs(real - picture / 255).mean()
    assert 0.5 * real_error < ours_error < 2 * real_error


def test_degradation_options_are_validated() -> None:
    with pytest.raises(ValueError, match="probability"):
        Degradation(blur=1.5)
    with pytest.raises(ValueError, match="jpeg_quality"):
        Degradation(jpeg_quality=(0, 50))


def test_ratings_become_soft_targets_blended_with_the_posed_label(tmp_path: Path) -> None:
    root = make_folder(tmp_path, {"happiness": 2, "anger": 1, "neutral": 1})
    (root / "ratings.csv").write_text(
        "file,posed,happiness,anger\n"
        "img_0.png,happiness,3,1\n"  # rows are matched by file name, in every class folder
        "img_1.png,happiness,0,0\n"  # an all-zero row is no rating
    )
    source = SourceConfig(
        format="folder", root=str(root), ratings="ratings.csv", ratings_weight=0.5
    )
    records, _ = read_source(source, MODEL_CLASSES, seed=0)
    soft = {
        (p.parent.name, p.name): s for p, s in zip(records.paths, records.soft_labels, strict=True)
    }
    happy = MODEL_CLASSES.index("happiness")
    anger = MODEL_CLASSES.index("anger")
    rated = soft[("happiness", "img_0.png")]
    assert rated[happy] == pytest.approx(0.5 * 0.75 + 0.5) and rated[anger] == pytest.approx(0.125)
    assert soft[("happiness", "img_1.png")][happy] == 1.0  # no usable rating: hard
    # anger's img_0 is rated (3 happiness, 1 anger): blended towards what observers saw
    assert soft[("anger", "img_0.png")][anger] == pytest.approx(0.5 * 0.25 + 0.5)
    assert soft[("neutral", "img_0.png")][MODEL_CLASSES.index("neutral")] == 1.0  # not rated
    assert records.notes["hard label: posed class not rated"] == 1
    assert np.allclose(records.soft_labels.sum(axis=1), 1)
    (root / "ratings.csv").write_text("name,happiness\nimg_0.png,1\n")
    with pytest.raises(DatasetError, match="needs a 'file' column"):
        read_source(source, MODEL_CLASSES, seed=0)
