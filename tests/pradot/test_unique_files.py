"""Files that are not unique by stem: maps are written as ``<type>/<stem>.tiff`` and AD-style masks found
by stem, so an index never lets two test images share a map file or a mask; it refuses with an error that
names both files (and training images, which have no map or mask, are allowed to share a stem)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pradot.data import DatasetError, load_dataset


def _img(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)
    return path


def _mask(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.zeros((8, 8), np.uint8)
    m[2:4, 2:4] = 255
    Image.fromarray(m).save(path)
    return path


def _category(root: Path) -> Path:
    cat = root / "part"
    for i in range(3):
        _img(cat / "train" / "good" / f"{i:03d}.png", i)
    _img(cat / "test" / "good" / "000.png", 10)
    _img(cat / "test" / "scratch" / "000.png", 11)
    _mask(cat / "ground_truth" / "scratch" / "000_mask.png")
    return cat


@pytest.mark.parametrize("kind", ["mvtec_ad", "mpdd", "folder"])
def test_two_anomalies_sharing_a_stem_are_refused_naming_both(tmp_path, kind):
    cat = _category(tmp_path)
    other = _img(cat / "test" / "scratch" / "000.jpg", 12)  # a second export of another part
    with pytest.raises(DatasetError) as err:
        load_dataset(kind, tmp_path, "part").samples("test")
    msg = str(err.value)
    assert str(other) in msg and str(cat / "test" / "scratch" / "000.png") in msg
    assert "scratch/000.tiff" in msg and "_mask.png" in msg and "Rename one" in msg


def test_good_images_sharing_a_stem_are_refused(tmp_path):
    cat = _category(tmp_path)
    _img(cat / "test" / "good" / "000.bmp", 13)
    with pytest.raises(DatasetError, match=r"000\.bmp and .*000\.png|000\.png and .*000\.bmp"):
        load_dataset("mvtec_ad", tmp_path, "part")


def test_same_stem_in_different_types_or_in_train_is_fine(tmp_path):
    cat = _category(tmp_path)
    _img(cat / "test" / "dent" / "000.png", 14)
    _mask(cat / "ground_truth" / "dent" / "000_mask.png")
    _img(cat / "train" / "good" / "000.jpg", 15)  # training images get no map and no mask
    ds = load_dataset("mvtec_ad", tmp_path, "part")
    test = ds.samples("test")
    assert [s.relative_id for s in test] == ["good/000", "dent/000", "scratch/000"]
    masks = [d.mask_path for s in test for d in s.defects]
    assert len(set(masks)) == len(masks) == 2
    assert len(ds.samples("train")) == 4


def test_two_anomalies_resolving_to_one_mask_are_refused(tmp_path):
    # folder layout: "<stem>_*" masks are accepted when unique; 000 has none of its own, so the prefix
    # rule would hand it 000_a's mask
    cat = tmp_path / "widgets"
    for i in range(2):
        _img(cat / "train" / "good" / f"{i}.png", i)
    _img(cat / "test" / "crack" / "000.png", 20)
    _img(cat / "test" / "crack" / "000_a.png", 21)
    _mask(cat / "ground_truth" / "crack" / "000_a_mask.png")
    with pytest.raises(DatasetError, match=r"resolve to the same ground-truth mask .*000_a_mask\.png"):
        load_dataset("folder", tmp_path, "widgets")


def test_loco_test_split_is_checked_when_it_is_built(tmp_path):
    from tests.pradot.test_data_loaders import make_loco

    root = make_loco(tmp_path)
    _img(root / "screw_bag" / "test" / "good" / "000.jpg", 30)
    ds = load_dataset("mvtec_loco", root, "screw_bag")  # the anomalies' channels are indexed lazily
    with pytest.raises(DatasetError, match="share the file stem '000'"):
        ds.samples("test")
