"""MVTec AD 2 on a small generated copy in its exact layout: the loader (public test split with masks as
``test``, private splits for scoring only), its official metrics (AU-PRO_0.05, SegF1) through
``dataset_metrics``, and the submission writer (float16 TIFF maps + thresholded PNGs at image resolution)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from pradot.calibration import Calibration
from pradot.data import DatasetError, ImageDataset, load_dataset
from pradot.metrics import au_pro
from pradot.metrics.dataset import dataset_metrics
from pradot.metrics.segmentation import seg_f1
from pradot.submission import main as submission_main
from pradot.submission import write_mvtec_ad2_submission
from tests.helpers import FakeModel

H, W = 20, 30  # non-square, like the dataset's images
LIGHT = ("regular", "overexposed")


def _png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _good(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(20, 60, (H, W, 3), dtype=np.uint8)


def _bad(seed: int) -> tuple[np.ndarray, np.ndarray]:
    img, mask = _good(seed), np.zeros((H, W), np.uint8)
    img[4:10, 2 + seed % 5 : 12 + seed % 5] = 240  # a bright defect: a mean-colour map finds it
    mask[4:10, 2 + seed % 5 : 12 + seed % 5] = 255
    return img, mask


def make_mvtec_ad2(root: Path, category: str = "can") -> Path:
    """<root>/<category>/{train,validation}/good, test_public/{good,bad,ground_truth/bad}, test_private(_mixed)."""
    cat = root / category
    for i in range(4):
        _png(cat / "train" / "good" / f"{i:03d}_regular.png", _good(i))
    for i in range(2):
        _png(cat / "validation" / "good" / f"{i:03d}_regular.png", _good(10 + i))
    for i, light in enumerate(LIGHT):
        _png(cat / "test_public" / "good" / f"{i:03d}_{light}.png", _good(20 + i))
        img, mask = _bad(30 + i)
        _png(cat / "test_public" / "bad" / f"{i:03d}_{light}.png", img)
        _png(cat / "test_public" / "ground_truth" / "bad" / f"{i:03d}_{light}_mask.png", mask)
    for split in ("test_private", "test_private_mixed"):
        _png(cat / split / "000_regular.png", _good(40))
        _png(cat / split / "001_regular.png", _bad(41)[0])
    return root


def test_loader_reads_the_public_test_split_with_masks(tmp_path):
    ds = load_dataset("mvtec_ad2", make_mvtec_ad2(tmp_path), "can")
    assert load_dataset("mvtec-ad2", tmp_path, "can").kind == load_dataset("mvtec_ad_2", tmp_path, "can").kind
    assert [s.image_id for s in ds.samples("train")] == ["000_regular", "001_regular", "002_regular", "003_regular"]
    assert len(ds.samples("validation")) == 2 and all(s.split == "validation" for s in ds.samples("validation"))
    test = ds.samples("test")
    assert [(s.relative_id, s.label) for s in test] == [
        ("good/000_regular", 0),
        ("good/001_overexposed", 0),
        ("bad/000_regular", 1),
        ("bad/001_overexposed", 1),
    ]
    assert (
        test[2].defects[0].mask_path
        == tmp_path / "can" / "test_public" / "ground_truth" / "bad" / "000_regular_mask.png"
    )
    assert np.array_equal(ds.load_channels(test[2])[0], _bad(30)[1] > 0)
    private = ds.private_samples("test_private_mixed")
    assert [(s.image_id, s.split, s.label) for s in private] == [
        ("000_regular", "test_private_mixed", -1),
        ("001_regular", "test_private_mixed", -1),
    ]
    with pytest.raises(ValueError, match="unknown private split"):
        ds.private_samples("test_public")


def test_loader_errors(tmp_path):
    make_mvtec_ad2(tmp_path)
    (tmp_path / "can" / "test_public" / "ground_truth" / "bad" / "001_overexposed_mask.png").unlink()
    with pytest.raises(
        DatasetError,
        match=r"001_overexposed\.png has no ground-truth mask: expected .*"
        r"001_overexposed_mask\.png",
    ):
        load_dataset("mvtec_ad2", tmp_path, "can")
    with pytest.raises(DatasetError, match="Known mvtec_ad2 categories: can, fabric, fruit_jelly"):
        load_dataset("mvtec_ad2", tmp_path, "cans")


def test_official_metrics_au_pro_005_and_seg_f1(tmp_path):
    ds = load_dataset("mvtec_ad2", make_mvtec_ad2(tmp_path), "can")
    test = ds.samples("test")
    rng = np.random.default_rng(0)
    maps = [rng.random((H, W)) + (ds.load_channels(s)[0] if s.defects else 0) for s in test]
    metrics, notes = dataset_metrics(ds, test, maps, threshold=0.9)
    masks = [ds.load_channels(s)[0] if s.defects else np.zeros((H, W), bool) for s in test]
    assert metrics["au_pro_0.05"] == pytest.approx(au_pro(masks, maps, 0.05)) and "au_pro_0.3" not in metrics
    assert metrics["seg_f1"] == pytest.approx(seg_f1(masks, maps, 0.9)) and notes == []


def test_submission_files_at_image_resolution(tmp_path):
    ds = load_dataset("mvtec_ad2", make_mvtec_ad2(tmp_path / "data"), "can")
    model = FakeModel(size=16)  # map = mean colour: high on the bright defect
    cal = Calibration(threshold=0.5, low=0.1, high=0.3, quantile=0.99, n_images=100)
    out = tmp_path / "submission"
    summary = write_mvtec_ad2_submission(
        model, cal, ds, out, splits=("test_private", "test_private_mixed", "test_public")
    )
    assert summary.images == {"test_private": 2, "test_private_mixed": 2, "test_public": 4}
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    expected = []
    for split in ("test_private", "test_private_mixed"):
        for stem in ("000_regular", "001_regular"):
            expected += [
                f"anomaly_images/can/{split}/{stem}.tiff",
                f"anomaly_images_thresholded/can/{split}/{stem}.png",
            ]
    for rel in ("good/000_regular", "good/001_overexposed", "bad/000_regular", "bad/001_overexposed"):
        expected += [
            f"anomaly_images/can/test_public/{rel}.tiff",
            f"anomaly_images_thresholded/can/test_public/{rel}.png",
        ]
    assert written == sorted(expected)
    amap = tifffile.imread(out / "anomaly_images" / "can" / "test_private" / "001_regular.tiff")
    assert amap.dtype == np.float16 and amap.shape == (H, W)
    binary = np.asarray(Image.open(out / "anomaly_images_thresholded" / "can" / "test_private" / "001_regular.png"))
    assert binary.shape == (H, W) and set(np.unique(binary)) <= {0, 255}
    defect = _bad(41)[1] > 0
    inner = np.zeros_like(defect)
    inner[5:9, 5:10] = True  # away from the blurred border of the upsampled map
    assert binary[inner].min() == 255 and (binary[~defect] == 0).mean() > 0.9
    disagree = (binary > 0) != (amap.astype(np.float32) > 0.5)  # the PNG is the TIFF's map above the threshold,
    assert np.all(np.abs(amap[disagree].astype(np.float32) - 0.5) < 1e-3)  # up to float16 rounding at 0.5
    good = np.asarray(Image.open(out / "anomaly_images_thresholded" / "can" / "test_private" / "000_regular.png"))
    assert good.max() == 0  # a normal image: nothing above the threshold


def test_submission_entry_point_with_a_trained_model(tmp_path, tiny_backbone, capsys):
    from pradot import PRADOT, PRADOTConfig

    ds = load_dataset("mvtec_ad2", make_mvtec_ad2(tmp_path / "data"), "can")
    cfg = PRADOTConfig(backbone="tiny_random", stages=(2,), image_size=32, n=1, batch_size=2, epochs=1)
    model = PRADOT(cfg, backbone=tiny_backbone)
    model.fit(ImageDataset(ds.samples("train"), 32), progress=False)
    model_path = model.save(tmp_path / "model.pt")
    _, val_scores = model.score(torch.stack([x["image"] for x in ImageDataset(ds.samples("validation"), 32)]))
    cal_path = Calibration.calibrate(val_scores, 0.5).save(tmp_path / "calibration.json")
    out = tmp_path / "submission"
    rc = submission_main(
        [
            "--model",
            str(model_path),
            "--calibration",
            str(cal_path),
            "--dataset-root",
            str(tmp_path / "data"),
            "--category",
            "can",
            "--output-dir",
            str(out),
            "--evaluate-public",
            "--device",
            "cpu",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    assert len(list((out / "anomaly_images" / "can").rglob("*.tiff"))) == 4  # the two private splits
    public = json.loads((out / "public_metrics.json").read_text())
    assert {"image_auroc", "pixel_auroc", "au_pro_0.05", "seg_f1"} <= set(public)
    assert public["threshold"] == pytest.approx(Calibration.load(cal_path).threshold)
    rc = submission_main(
        [
            "--model",
            str(model_path),
            "--calibration",
            str(cal_path),
            "--dataset-root",
            str(tmp_path / "nope"),
            "--category",
            "can",
            "--output-dir",
            str(out),
        ]
    )
    assert rc == 2 and "does not exist" in capsys.readouterr().err
