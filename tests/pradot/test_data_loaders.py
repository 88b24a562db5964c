"""Dataset indexes, ground-truth channels, image conversions and errors of ``pradot.data``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pradot.data import (
    DATASET_KINDS,
    DatasetError,
    DefectChannel,
    ImageDataset,
    Sample,
    build_train_augmentation,
    load_dataset,
    read_image,
    split_validation,
)

H, W = 12, 16  # non-square on purpose: catches (H, W) / (W, H) mix-ups


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    img.save(path)
    return path


def _rgb(seed: int, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _mask(value: int, box: tuple[int, int, int, int], h: int = H, w: int = W) -> np.ndarray:
    m = np.zeros((h, w), dtype=np.uint8)
    y0, y1, x0, x1 = box
    m[y0:y1, x0:x1] = value
    return m


LOCO_CONFIG = [
    {"defect_name": "missing_nut", "pixel_value": 255, "saturation_threshold": 40, "relative_saturation": False},
    {"defect_name": "additional_screw", "pixel_value": 120, "saturation_threshold": 1.0, "relative_saturation": True},
    {"defect_name": "scratch", "pixel_value": 50, "saturation_threshold": 0.5, "relative_saturation": True},
]


def make_loco(root: Path, category: str = "screw_bag") -> Path:
    cat = root / category
    for i in (0, 1, 10, 2):  # natural order: 0, 1, 2, 10
        _png(cat / "train" / "good" / f"{i:d}.png", _rgb(i))
    _png(cat / "validation" / "good" / "000.png", _rgb(20))
    _png(cat / "test" / "good" / "000.png", _rgb(30))
    _png(cat / "test" / "logical_anomalies" / "000.png", _rgb(31))
    _png(cat / "ground_truth" / "logical_anomalies" / "000" / "000.png", _mask(255, (0, 4, 0, 5)))
    _png(cat / "ground_truth" / "logical_anomalies" / "000" / "001.png", _mask(120, (6, 12, 8, 16)))
    _png(cat / "test" / "structural_anomalies" / "000.png", _rgb(32))
    _png(cat / "ground_truth" / "structural_anomalies" / "000" / "000.png", _mask(50, (2, 5, 2, 9)))
    (cat / "defects_config.json").write_text(json.dumps(LOCO_CONFIG))
    return root


def make_ad(root: Path, category: str = "bottle") -> Path:
    cat = root / category
    for i in range(5):
        _png(cat / "train" / "good" / f"{i:03d}.png", _rgb(i))
    _png(cat / "test" / "good" / "000.png", _rgb(10))
    _png(cat / "test" / "broken_large" / "000.png", _rgb(11))
    _png(cat / "test" / "broken_large" / "001.png", _rgb(12))
    _png(cat / "test" / "contamination" / "000.png", _rgb(13))
    two_values = _mask(255, (0, 3, 0, 3))
    two_values[8:10, 10:14] = 1  # any non-zero pixel is anomalous in AD-style masks
    _png(cat / "ground_truth" / "broken_large" / "000_mask.png", two_values)
    _png(cat / "ground_truth" / "broken_large" / "001_mask.png", _mask(255, (5, 7, 5, 7)))
    _png(cat / "ground_truth" / "contamination" / "000_mask.png", _mask(255, (1, 2, 1, 2)))
    return root


# ---------------------------------------------------------------------------------------------
# MVTec LOCO
# ---------------------------------------------------------------------------------------------


def test_loco_index(tmp_path):
    ds = load_dataset("mvtec_loco", make_loco(tmp_path), "screw_bag")
    assert (ds.kind, ds.category, ds.root) == ("mvtec_loco", "screw_bag", tmp_path)
    assert ds.has_saturation is True and ds.has_masks is True
    train = ds.samples("train")
    assert [s.image_id for s in train] == ["0", "1", "2", "10"]
    assert all(s.split == "train" and s.label == 0 and s.anomaly_type == "good" and s.defects == () for s in train)
    assert [s.image_id for s in ds.samples("validation")] == ["000"]
    test = ds.samples("test")
    assert [s.relative_id for s in test] == ["good/000", "logical_anomalies/000", "structural_anomalies/000"]
    assert [s.label for s in test] == [0, 1, 1]
    logical = test[1]
    assert [(d.defect_name, d.pixel_value) for d in logical.defects] == [
        ("missing_nut", 255),
        ("additional_screw", 120),
    ]
    assert logical.defects[0].saturation_threshold == 40.0 and logical.defects[0].relative_saturation is False
    assert logical.defects[1].relative_saturation is True
    assert test[2].defects[0] == DefectChannel(
        mask_path=tmp_path / "screw_bag" / "ground_truth" / "structural_anomalies" / "000" / "000.png",
        defect_name="scratch",
        pixel_value=50,
        saturation_threshold=0.5,
        relative_saturation=True,
    )
    # samples() returns a copy: mutating it does not change the index
    test.clear()
    assert len(ds.samples("test")) == 3
    with pytest.raises(ValueError, match="unknown split"):
        ds.samples("val")


def test_loco_channels_and_resize(tmp_path):
    ds = load_dataset("mvtec_loco", make_loco(tmp_path), "screw_bag")
    good, logical, structural = ds.samples("test")
    assert ds.load_channels(good).shape == (0, H, W)
    ch = ds.load_channels(logical)
    assert ch.dtype == bool and ch.shape == (2, H, W)
    np.testing.assert_array_equal(ch[0], _mask(255, (0, 4, 0, 5)) > 0)
    np.testing.assert_array_equal(ch[1], _mask(120, (6, 12, 8, 16)) > 0)
    # nearest-neighbour resize, (H, W) order
    big = ds.load_channels(logical, size=(24, 32))
    assert big.shape == (2, 24, 32)
    np.testing.assert_array_equal(big[0], np.kron(ch[0], np.ones((2, 2), dtype=bool)))
    assert ds.load_channels(structural, size=8).shape == (1, 8, 8)
    assert ds.load_channels(good, size=8).shape == (0, 8, 8)


def test_loco_only_the_configured_value_is_selected(tmp_path):
    """A channel is mask == pixel_value, not mask > 0."""
    make_loco(tmp_path)
    ds = load_dataset("mvtec_loco", tmp_path, "screw_bag")
    sample = ds.samples("test")[2]
    # same file, pretend another pixel value was configured: nothing matches
    other = Sample(
        sample.image_path,
        "test",
        sample.anomaly_type,
        1,
        (DefectChannel(sample.defects[0].mask_path, "x", 51, 1.0, True),),
    )
    assert not ds.load_channels(other).any()


def test_loco_unknown_pixel_value(tmp_path):
    make_loco(tmp_path)
    bad = tmp_path / "screw_bag" / "ground_truth" / "structural_anomalies" / "000" / "000.png"
    _png(bad, _mask(77, (0, 2, 0, 2)))
    ds = load_dataset("mvtec_loco", tmp_path, "screw_bag")
    with pytest.raises(DatasetError) as err:
        ds.samples("test")
    msg = str(err.value)
    assert str(bad) in msg and "77" in msg and "[50, 120, 255]" in msg


def test_loco_missing_ground_truth_folder(tmp_path):
    make_loco(tmp_path)
    _png(tmp_path / "screw_bag" / "test" / "logical_anomalies" / "001.png", _rgb(40))
    with pytest.raises(DatasetError) as err:
        load_dataset("mvtec_loco", tmp_path, "screw_bag")
    msg = str(err.value)
    assert "001.png" in msg
    assert str(tmp_path / "screw_bag" / "ground_truth" / "logical_anomalies" / "001") in msg
    assert "does not exist" in msg


def test_loco_missing_defects_config(tmp_path):
    make_loco(tmp_path)
    (tmp_path / "screw_bag" / "defects_config.json").unlink()
    with pytest.raises(DatasetError, match="defects_config.json"):
        load_dataset("mvtec_loco", tmp_path, "screw_bag")


def test_mask_size_mismatch(tmp_path):
    make_loco(tmp_path)
    _png(
        tmp_path / "screw_bag" / "ground_truth" / "structural_anomalies" / "000" / "000.png",
        _mask(50, (0, 2, 0, 2), h=10, w=10),
    )
    ds = load_dataset("mvtec_loco", tmp_path, "screw_bag")
    with pytest.raises(DatasetError) as err:
        ds.load_channels(ds.samples("test")[2])
    msg = str(err.value)
    assert "10x10" in msg and f"{W}x{H}" in msg and "000.png" in msg


def test_empty_train_set(tmp_path):
    make_loco(tmp_path)
    for p in (tmp_path / "screw_bag" / "train" / "good").iterdir():
        p.unlink()
    with pytest.raises(DatasetError, match="no training images"):
        load_dataset("mvtec_loco", tmp_path, "screw_bag")


def test_missing_category_lists_what_is_there(tmp_path):
    make_loco(tmp_path)
    (tmp_path / "juice_bottle").mkdir()
    with pytest.raises(DatasetError) as err:
        load_dataset("mvtec_loco", tmp_path, "pushpins")
    msg = str(err.value)
    assert "'pushpins'" in msg and "juice_bottle, screw_bag" in msg
    assert "ground_truth" in msg and "defects_config.json" in msg  # the expected layout


def test_root_that_is_a_category_folder_gets_a_hint(tmp_path):
    make_loco(tmp_path)
    with pytest.raises(DatasetError, match="root must be its parent"):
        load_dataset("mvtec_loco", tmp_path / "screw_bag", "screw_bag")


def test_missing_root_mentions_env_and_synthetic(tmp_path, monkeypatch):
    monkeypatch.delenv("PRADOT_DATA_ROOT", raising=False)
    for root in (tmp_path / "nope", None):
        with pytest.raises(DatasetError) as err:
            load_dataset("mvtec_ad", root, "bottle")
        msg = str(err.value)
        assert "PRADOT_DATA_ROOT" in msg and "dataset=synthetic" in msg and "_mask.png" in msg


def test_root_from_environment(tmp_path, monkeypatch):
    make_loco(tmp_path)
    monkeypatch.setenv("PRADOT_DATA_ROOT", str(tmp_path))
    ds = load_dataset("mvtec_loco", None, "screw_bag")
    assert ds.root == tmp_path and len(ds.samples("train")) == 4


def test_unknown_kind():
    with pytest.raises(DatasetError, match="mvtec_loco, mvtec_ad, visa, mpdd, folder, synthetic, mvtec_ad2, real_iad"):
        load_dataset("kitti", "/tmp", "x")
    assert DATASET_KINDS == ("mvtec_loco", "mvtec_ad", "visa", "mpdd", "folder", "synthetic", "mvtec_ad2", "real_iad")


# ---------------------------------------------------------------------------------------------
# MVTec AD / MPDD
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["mvtec_ad", "mpdd"])
def test_ad_layout(tmp_path, kind):
    ds = load_dataset(kind, make_ad(tmp_path), "bottle")
    assert ds.kind == kind and ds.has_saturation is False and ds.has_masks is True
    assert len(ds.samples("train")) == 5 and ds.samples("validation") == []
    test = ds.samples("test")
    assert [s.relative_id for s in test] == ["good/000", "broken_large/000", "broken_large/001", "contamination/000"]
    s = test[1]
    assert s.label == 1 and len(s.defects) == 1
    d = s.defects[0]
    assert (d.defect_name, d.pixel_value, d.saturation_threshold, d.relative_saturation) == (
        "broken_large",
        None,
        1.0,
        True,
    )
    assert d.mask_path.name == "000_mask.png"
    ch = ds.load_channels(s)
    assert ch.shape == (1, H, W) and ch.sum() == 9 + 8  # both the 255 and the 1 pixels


def test_ad_missing_mask(tmp_path):
    make_ad(tmp_path)
    (tmp_path / "bottle" / "ground_truth" / "contamination" / "000_mask.png").unlink()
    with pytest.raises(DatasetError) as err:
        load_dataset("mvtec_ad", tmp_path, "bottle")
    msg = str(err.value)
    assert str(tmp_path / "bottle" / "test" / "contamination" / "000.png") in msg
    assert str(tmp_path / "bottle" / "ground_truth" / "contamination" / "000_mask.png") in msg


def test_split_validation(tmp_path):
    make_ad(tmp_path)
    for i in range(5, 20):
        _png(tmp_path / "bottle" / "train" / "good" / f"{i:03d}.png", _rgb(i))
    train = load_dataset("mvtec_ad", tmp_path, "bottle").samples("train")
    tr, va = split_validation(train, 0.25, seed=3)
    assert len(tr) == 15 and len(va) == 5
    assert {s.image_path for s in tr} | {s.image_path for s in va} == {s.image_path for s in train}
    assert not {s.image_path for s in tr} & {s.image_path for s in va}
    assert all(s.split == "validation" for s in va) and all(s.split == "train" for s in tr)
    assert split_validation(list(reversed(train)), 0.25, seed=3) == (tr, va)  # order-independent, deterministic
    others = {tuple(s.image_id for s in split_validation(train, 0.25, seed=k)[1]) for k in range(4)}
    assert len(others) > 1  # the seed matters
    assert split_validation(train, 0.0)[1] == []
    assert len(split_validation(train[:2], 0.01)[1]) == 1  # a positive fraction holds out at least one
    with pytest.raises(ValueError):
        split_validation(train, 1.0)


# ---------------------------------------------------------------------------------------------
# VisA
# ---------------------------------------------------------------------------------------------


def make_visa(root: Path) -> Path:
    rows = ["object,split,label,image,mask"]
    for obj in ("candle", "pcb1"):
        for i in range(3):
            rel = f"{obj}/Data/Images/Normal/{i:04d}.JPG"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(_rgb(i)).save(root / rel)
            rows.append(f"{obj},train,normal,{rel},")
        rel = f"{obj}/Data/Images/Normal/0009.JPG"
        Image.fromarray(_rgb(9)).save(root / rel)
        rows.append(f"{obj},test,normal,{rel},")
        rel = f"{obj}/Data/Images/Anomaly/000.JPG"
        mrel = f"{obj}/Data/Masks/Anomaly/000.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_rgb(5)).save(root / rel)
        _png(root / mrel, _mask(1, (0, 6, 0, 6)))  # VisA masks are small integers
        rows.append(f"{obj},test,anomaly,{rel},{mrel}")
    (root / "split_csv").mkdir()
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    return root


def test_visa_csv(tmp_path):
    ds = load_dataset("visa", make_visa(tmp_path), "candle")
    assert ds.kind == "visa" and ds.has_saturation is False
    train = ds.samples("train")
    assert [s.image_id for s in train] == ["0000", "0001", "0002"]
    assert all("candle" in str(s.image_path) for s in train)
    assert ds.samples("validation") == []
    test = ds.samples("test")
    assert [(s.relative_id, s.label) for s in test] == [("good/0009", 0), ("bad/000", 1)]
    ch = ds.load_channels(test[1])
    assert ch.shape == (1, H, W) and ch.sum() == 36
    assert read_image(test[1].image_path).shape == (H, W, 3)  # JPEG


def test_visa_errors(tmp_path):
    make_visa(tmp_path)
    with pytest.raises(DatasetError) as err:
        load_dataset("visa", tmp_path, "cashew")
    assert "candle, pcb1" in str(err.value) and "1cls.csv" in str(err.value)
    csv_path = tmp_path / "split_csv" / "1cls.csv"
    text = csv_path.read_text()
    csv_path.write_text(text.replace("candle/Data/Masks/Anomaly/000.png", ""))
    with pytest.raises(DatasetError, match=r"000\.JPG has no ground-truth mask"):
        load_dataset("visa", tmp_path, "candle")
    csv_path.unlink()
    with pytest.raises(DatasetError, match="split_csv"):
        load_dataset("visa", tmp_path, "candle")


# ---------------------------------------------------------------------------------------------
# generic folders
# ---------------------------------------------------------------------------------------------


def make_folder(root: Path, with_all_masks: bool) -> Path:
    cat = root / "widgets"
    for i in range(3):
        _png(cat / "train" / "good" / f"img{i}.png", _rgb(i))
    _png(cat / "validation" / "good" / "v0.png", _rgb(7))
    _png(cat / "test" / "good" / "t0.png", _rgb(8))
    _png(cat / "test" / "crack" / "c1.png", _rgb(9))
    _png(cat / "test" / "crack" / "c10.png", _rgb(10))
    _png(cat / "ground_truth" / "crack" / "c1.png", _mask(255, (0, 2, 0, 2)))  # <stem>.png
    _png(cat / "ground_truth" / "crack" / "c10_mask.png", _mask(255, (0, 3, 0, 3)))  # <stem>_mask.png
    _png(cat / "test" / "stain" / "s0.png", _rgb(11))
    if with_all_masks:
        _png(cat / "ground_truth" / "stain" / "s0_mask.png", _mask(9, (1, 2, 1, 3)))
    return root


def test_folder_layout(tmp_path):
    ds = load_dataset("folder", make_folder(tmp_path, with_all_masks=True), "widgets")
    assert ds.kind == "folder" and ds.has_masks is True and ds.has_saturation is False
    assert [s.image_id for s in ds.samples("validation")] == ["v0"]
    test = ds.samples("test")
    assert [s.relative_id for s in test] == ["good/t0", "crack/c1", "crack/c10", "stain/s0"]
    # c1 must not pick up c10's mask (stem prefix)
    assert test[1].defects[0].mask_path.name == "c1.png"
    assert test[2].defects[0].mask_path.name == "c10_mask.png"
    assert [int(ds.load_channels(s).sum()) for s in test] == [0, 4, 9, 2]


def test_folder_without_some_masks(tmp_path):
    ds = load_dataset("folder", make_folder(tmp_path, with_all_masks=False), "widgets")
    assert ds.has_masks is False
    stain = [s for s in ds.samples("test") if s.anomaly_type == "stain"][0]
    assert stain.label == 1 and stain.defects == ()
    assert ds.load_channels(stain).shape == (0, H, W)


# ---------------------------------------------------------------------------------------------
# read_image conversions
# ---------------------------------------------------------------------------------------------


def test_read_image_rgb_and_resize(tmp_path):
    arr = _rgb(1)
    p = _png(tmp_path / "rgb.png", arr)
    out = read_image(p)
    assert out.dtype == np.uint8 and out.shape == (H, W, 3)
    np.testing.assert_array_equal(out, arr)
    assert read_image(p, 8).shape == (8, 8, 3)
    assert read_image(p, (6, 20)).shape == (6, 20, 3)
    flat = _png(tmp_path / "flat.png", np.full((H, W, 3), 77, np.uint8))
    assert (read_image(flat, (5, 7)) == 77).all()  # bilinear keeps constants


def test_read_image_gray(tmp_path):
    gray = np.arange(H * W, dtype=np.uint8).reshape(H, W)
    out = read_image(_png(tmp_path / "g.png", gray))
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)
    binary = Image.fromarray(gray > 100).convert("1")
    binary.save(tmp_path / "b.png")
    out = read_image(tmp_path / "b.png")
    assert set(np.unique(out).tolist()) == {0, 255} and (out[..., 0] == np.where(gray > 100, 255, 0)).all()


def test_read_image_16bit(tmp_path):
    arr = np.zeros((H, W), dtype=np.uint16)
    arr[0, :4] = [0, 257, 32768, 65535]
    arr[1, 0] = 1000  # a dark 16-bit image is NOT stretched to its own max
    Image.fromarray(arr).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    out = read_image(tmp_path / "g16.png")
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    assert out[0, :4, 0].tolist() == [0, 1, 128, 255]
    assert out[1, 0].tolist() == [4, 4, 4]
    Image.fromarray(arr.astype(np.int32)).save(tmp_path / "g32.tiff")  # mode I
    assert read_image(tmp_path / "g32.tiff")[0, :4, 1].tolist() == [0, 1, 128, 255]


def test_read_image_rgba_composites_on_black(tmp_path):
    rgba = np.zeros((H, W, 4), dtype=np.uint8)
    rgba[..., :3] = [200, 100, 50]
    rgba[0, 0, 3] = 255
    rgba[0, 1, 3] = 0
    rgba[0, 2, 3] = 128
    out = read_image(_png(tmp_path / "a.png", rgba))
    assert out.shape == (H, W, 3)
    assert out[0, 0].tolist() == [200, 100, 50]
    assert out[0, 1].tolist() == [0, 0, 0]
    assert out[0, 2].tolist() == [100, 50, 25]
    la = Image.fromarray(np.stack([np.full((H, W), 200, np.uint8), np.full((H, W), 255, np.uint8)], -1), mode="LA")
    la.save(tmp_path / "la.png")
    assert (read_image(tmp_path / "la.png") == 200).all()


def test_read_image_palette(tmp_path):
    idx = np.zeros((H, W), dtype=np.uint8)
    idx[:, W // 2 :] = 1
    img = Image.fromarray(idx, mode="P")
    img.putpalette([10, 20, 30, 250, 0, 5] + [0] * (256 * 3 - 6))
    img.save(tmp_path / "p.png")
    out = read_image(tmp_path / "p.png")
    assert out.shape == (H, W, 3)
    assert out[0, 0].tolist() == [10, 20, 30] and out[0, -1].tolist() == [250, 0, 5]
    img.info["transparency"] = 1  # index 1 transparent -> black
    img.save(tmp_path / "pt.png", transparency=1)
    out = read_image(tmp_path / "pt.png")
    assert out[0, 0].tolist() == [10, 20, 30] and out[0, -1].tolist() == [0, 0, 0]


def test_read_image_errors(tmp_path):
    corrupt = tmp_path / "corrupt.png"
    good = _png(tmp_path / "ok.png", _rgb(0, 64, 64))
    corrupt.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])  # truncated
    with pytest.raises(DatasetError, match="corrupt.png"):
        read_image(corrupt)
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not a png at all")
    with pytest.raises(DatasetError, match="garbage.png"):
        read_image(garbage)
    with pytest.raises(DatasetError, match="missing.png"):
        read_image(tmp_path / "missing.png")
    assert issubclass(DatasetError, ValueError)


# ---------------------------------------------------------------------------------------------
# ImageDataset and augmentation
# ---------------------------------------------------------------------------------------------


def test_image_dataset(tmp_path):
    ds = load_dataset("mvtec_loco", make_loco(tmp_path), "screw_bag")
    test = ds.samples("test")
    data = ImageDataset(test, 20)
    assert len(data) == 3
    item = data[1]
    assert set(item) == {"image", "label", "index"}
    img = item["image"]
    assert img.shape == (3, 20, 20) and str(img.dtype) == "torch.float32"
    assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0
    assert item["label"] == 1 and item["index"] == 1 and data[0]["label"] == 0
    expected = read_image(test[1].image_path, 20).astype(np.float32) / 255.0
    np.testing.assert_allclose(img.permute(1, 2, 0).numpy(), expected, atol=1e-6)


def test_augmentation():
    assert build_train_augmentation(None) is None
    assert build_train_augmentation("none") is None
    with pytest.raises(ValueError, match="light"):
        build_train_augmentation("heavy")
    image = _rgb(3, 32, 32)
    aug = build_train_augmentation("light", seed=0)
    outs = [aug(image=image)["image"] for _ in range(6)]
    assert all(o.shape == (32, 32, 3) and o.dtype == np.uint8 for o in outs)
    assert any(not np.array_equal(o, image) for o in outs)  # it does something
    again = build_train_augmentation("light", seed=0)
    assert all(np.array_equal(a, again(image=image)["image"]) for a in outs)  # seeded


def test_image_dataset_with_augmentation(tmp_path):
    ds = load_dataset("mvtec_loco", make_loco(tmp_path), "screw_bag")
    data = ImageDataset(ds.samples("train"), 16, augment=build_train_augmentation("light", seed=1))
    assert data[0]["image"].shape == (3, 16, 16)
