"""The synthetic MVTec LOCO-style generator (``pradot.data.synthetic``)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pradot.data import DatasetError, load_dataset
from pradot.data import synthetic as syn

SMALL = dict(n_train=3, n_validation=1, n_test_good=2, n_test_logical=8, n_test_structural=8)
TINY = dict(n_train=2, n_validation=1, n_test_good=1, n_test_logical=4, n_test_structural=4)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    syn.generate(root, "screw_bag", seed=0, **SMALL)
    return root


def test_layout_loads_with_the_loco_loader(small):
    for kind in ("mvtec_loco", "synthetic"):
        ds = load_dataset(kind, small, "screw_bag")
        assert ds.has_saturation is True and ds.has_masks is True
        assert len(ds.samples("train")) == 3 and len(ds.samples("validation")) == 1
        test = ds.samples("test")
        assert [s.anomaly_type for s in test] == ["good"] * 2 + ["logical_anomalies"] * 8 + ["structural_anomalies"] * 8
    img = Image.open(ds.samples("train")[0].image_path)
    assert img.mode == "RGB" and img.size == (128, 128)


def test_every_anomaly_has_nonempty_channels_and_goods_have_none(small):
    ds = load_dataset("synthetic", small, "screw_bag")
    config = {e["pixel_value"]: e for e in json.loads((small / "screw_bag" / "defects_config.json").read_text())}
    names = set()
    for s in ds.samples("test") + ds.samples("train") + ds.samples("validation"):
        if s.label == 0:
            assert s.defects == () and not (small / "screw_bag" / "ground_truth" / s.anomaly_type / s.image_id).exists()
            continue
        assert len(s.defects) >= 1
        channels = ds.load_channels(s)
        assert channels.shape == (len(s.defects), 128, 128)
        for d, ch in zip(s.defects, channels):
            raw = np.asarray(Image.open(d.mask_path))
            assert set(np.unique(raw).tolist()) == {0, d.pixel_value}  # one value per PNG, in the config
            assert d.pixel_value in config and config[d.pixel_value]["defect_name"] == d.defect_name
            assert ch.sum() > 0
            names.add(d.defect_name)
    # the cycling of anomaly kinds covers every structural defect and every logical rule
    assert {"scratch", "broken_part", "dent", "colour_blotch"} <= names
    assert {"additional_part", "screw_wrong_length", "part_in_wrong_region"} <= names
    assert any(n.startswith("missing_") for n in names)
    swapped = [s for s in ds.samples("test") if s.defects and s.defects[0].defect_name == "part_in_wrong_region"]
    assert swapped and all(len(s.defects) == 2 for s in swapped)


def test_config_entries_and_saturation(small):
    entries = json.loads((small / "screw_bag" / "defects_config.json").read_text())
    assert {e["defect_name"] for e in entries} == set(syn.DEFECTS)
    values = [e["pixel_value"] for e in entries]
    assert len(set(values)) == len(values) and all(0 < v <= 255 for v in values)
    areas = syn.part_areas(128)
    assert 15 * 15 * 0.3 < areas["nut"] < 20 * 20 and areas["long_screw"] > areas["short_screw"]
    for e in entries:
        if e["defect_name"].startswith("missing_"):
            # official LOCO convention: a missing object saturates at the object's area (absolute)
            assert e["relative_saturation"] is False
            assert e["saturation_threshold"] == areas[e["defect_name"][len("missing_") :]]
        else:
            assert e["relative_saturation"] is True and e["saturation_threshold"] == 1.0
    ds = load_dataset("synthetic", small, "screw_bag")
    for s in ds.samples("test"):
        for d, ch in zip(s.defects, ds.load_channels(s)):
            if not d.relative_saturation:  # the missing region is larger than the part itself
                assert ch.sum() > d.saturation_threshold


def test_logical_anomalies_keep_normal_appearance_outside_their_masks(small):
    """A missing part leaves plain tray: the image differs from normal scenes only by layout."""
    ds = load_dataset("synthetic", small, "screw_bag")
    meta = json.loads((small / "screw_bag" / "metadata.json").read_text())
    missing = [s for s in ds.samples("test") if s.defects and s.defects[0].defect_name.startswith("missing_")][0]
    assert meta[missing.relative_id]["anomaly"] == "missing"
    img = np.asarray(Image.open(missing.image_path)).astype(float)
    region = ds.load_channels(missing)[0]
    tray = img[region].mean(axis=0)
    # the empty region looks like the tray around it (no part there), not like a dark/metallic part
    ring = np.zeros_like(region)
    ys, xs = np.nonzero(region)
    ring[max(ys.min() - 4, 0) : ys.max() + 5, max(xs.min() - 4, 0) : xs.max() + 5] = True
    ring &= ~region
    assert np.abs(tray - img[ring].mean(axis=0)).max() < 25


def test_deterministic_per_seed(tmp_path):
    a = _files(syn.generate(tmp_path / "a", seed=5, **TINY))
    b = _files(syn.generate(tmp_path / "b", seed=5, **TINY))
    c = _files(syn.generate(tmp_path / "c", seed=6, **TINY))
    assert a == b
    assert sum(1 for k in a if not k.startswith("ground_truth")) == 2 + 1 + 1 + 4 + 4
    differing = [k for k in a if k.startswith(("train", "test")) and c.get(k) != a[k]]
    assert len(differing) == sum(1 for k in a if k.startswith(("train", "test")))  # every image changes
    cfg = lambda root: (root / "screw_bag" / "defects_config.json").read_bytes()  # noqa: E731
    assert cfg(tmp_path / "a") == cfg(tmp_path / "c")


def test_train_images_vary(small):
    imgs = [np.asarray(Image.open(p)) for p in sorted((small / "screw_bag" / "train" / "good").glob("*.png"))]
    assert not np.array_equal(imgs[0], imgs[1])
    assert np.abs(imgs[0].astype(int) - imgs[1].astype(int)).mean() > 1.0


def test_ensure_synthetic_generates_only_when_needed(tmp_path, monkeypatch, caplog):
    path = syn.ensure_synthetic(tmp_path, "screw_bag", seed=1, image_size=64, **TINY)
    assert path == tmp_path / "screw_bag" and (path / "defects_config.json").is_file()
    stamp = json.loads((path / syn.STAMP_NAME).read_text())
    assert stamp["seed"] == 1 and stamp["image_size"] == 64

    def boom(*args, **kwargs):
        raise AssertionError("regenerated although the stamp matches")

    monkeypatch.setattr(syn, "generate", boom)
    assert syn.ensure_synthetic(tmp_path, "screw_bag", seed=1, image_size=64, **TINY) == path
    monkeypatch.undo()
    with caplog.at_level("WARNING", logger="pradot.data.synthetic"):
        syn.ensure_synthetic(tmp_path, "screw_bag", seed=2, image_size=64, **TINY)  # other parameters: regenerate
    assert "regenerating" in caplog.text and "seed: 1 -> 2" in caplog.text  # said, not silent
    assert json.loads((path / syn.STAMP_NAME).read_text())["seed"] == 2
    assert Image.open(path / "train" / "good" / "000.png").size == (64, 64)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_load_dataset_synthetic_generate(tmp_path):
    with pytest.raises(DatasetError, match="generate=True"):
        load_dataset("synthetic", tmp_path, "screw_bag")
    ds = load_dataset("synthetic", tmp_path, "screw_bag", generate=True, seed=3, image_size=64, **TINY)
    assert ds.kind == "synthetic" and len(ds.samples("test")) == 9
    # without generate=True, options are checked against the folder's stamp
    assert len(load_dataset("synthetic", tmp_path, "screw_bag", seed=3, image_size=64, **TINY).samples("train")) == 2
    with pytest.raises(DatasetError, match="seed: folder 3 vs requested 4"):
        load_dataset("synthetic", tmp_path, "screw_bag", seed=4, image_size=64, **TINY)


def test_generate_creates_its_root_only_where_that_is_plausibly_meant(tmp_path, monkeypatch):
    """A mistyped data_root must not become a chain of new folders somewhere on disk: the root and its parent
    may be new (the project default data/synthetic in a fresh checkout), not more."""
    monkeypatch.chdir(tmp_path)
    far = tmp_path / "no" / "such" / "dir"
    with pytest.raises(DatasetError, match=r"nor its parents .*no/such and .*/no exist: a mistyped data_root"):
        load_dataset("synthetic", far, "screw_bag", generate=True, image_size=64, **TINY)
    assert not (tmp_path / "no").exists()
    assert load_dataset("synthetic", "data/synthetic", "screw_bag", generate=True, image_size=64, **TINY).kind
    assert (tmp_path / "data" / "synthetic" / "screw_bag").is_dir()


def test_generate_refuses_foreign_folder_and_bad_args(tmp_path):
    (tmp_path / "screw_bag").mkdir()
    (tmp_path / "screw_bag" / "mine.txt").write_text("user data")
    with pytest.raises(ValueError, match="refusing to overwrite"):
        syn.generate(tmp_path, **TINY)
    assert (tmp_path / "screw_bag" / "mine.txt").is_file()
    with pytest.raises(ValueError, match="screw_bag"):
        syn.generate(tmp_path / "x", category="breakfast_box", **TINY)
    with pytest.raises(ValueError, match="n_train"):
        syn.generate(tmp_path / "x", n_train=0)


def test_cli(tmp_path, capsys):
    argv = [
        "--root",
        str(tmp_path),
        "--seed",
        "4",
        "--image-size",
        "64",
        "--n-train",
        "2",
        "--n-validation",
        "0",
        "--n-test-good",
        "1",
        "--n-test-logical",
        "1",
        "--n-test-structural",
        "1",
    ]
    assert syn.main(argv) == 0
    out = capsys.readouterr().out
    assert "5 images" in out and str(tmp_path / "screw_bag") in out
    ds = load_dataset("mvtec_loco", tmp_path, "screw_bag")
    assert len(ds.samples("train")) == 2 and ds.samples("validation") == []


def test_default_generation_time(tmp_path):
    start = time.perf_counter()
    path = syn.generate(tmp_path)
    elapsed = time.perf_counter() - start
    n = sum(v for k, v in syn.DEFAULTS.items() if k.startswith("n_"))
    print(f"synthetic generation at defaults ({n} images, 128 px): {elapsed:.1f}s")
    assert len(list((path / "test").rglob("*.png"))) == 60
    assert elapsed < 60
