"""Metrics that are partly undefined: the defined ones are reported (equal to the metric functions on the
same data), the undefined ones skipped with a note naming the cause -- blank masks (by file), a missing
class at image level, no test images -- by ``dataset_metrics`` (training) and by ``python -m pradot.evaluate``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from pradot.data import load_dataset
from pradot.evaluate import main as evaluate_main
from pradot.metrics import au_pro, image_auroc, pixel_auroc
from pradot.metrics.dataset import dataset_metrics

H = W = 16


def _png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def make_ad(root: Path, n_good: int = 3, bad_masks: tuple[str, ...] = ("box", "box", "box"), seed: int = 0):
    """An MVTec AD category ``part``: ``n_good`` good and len(bad_masks) ``scratch`` test images whose masks
    are a box ("box"), all zero ("blank") or absent (folder layout only: "none"). Returns (root, maps)."""
    rng = np.random.default_rng(seed)
    cat = root / "part"
    for i in range(2):
        _png(cat / "train" / "good" / f"{i:03d}.png", rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
    maps = {}
    (cat / "test").mkdir(parents=True, exist_ok=True)
    for i in range(n_good):
        _png(cat / "test" / "good" / f"{i:03d}.png", rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
        maps[("good", f"{i:03d}")] = rng.random((H, W)).astype(np.float32)
    for i, kind in enumerate(bad_masks):
        _png(cat / "test" / "scratch" / f"{i:03d}.png", rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
        m = np.zeros((H, W), np.uint8)
        if kind == "box":
            m[4 + i : 9 + i, 3:8] = 255
        if kind != "none":
            _png(cat / "ground_truth" / "scratch" / f"{i:03d}_mask.png", m)
        a = rng.random((H, W)).astype(np.float32)
        a[4 + i : 9 + i, 3:8] += 0.8
        maps[("scratch", f"{i:03d}")] = a
    return root, maps


def _metrics(root, maps, kind="mvtec_ad"):
    ds = load_dataset(kind, root, "part")
    samples = ds.samples("test")
    return ds, samples, dataset_metrics(ds, samples, [maps[(s.anomaly_type, s.image_id)] for s in samples])


def test_all_masks_blank_reports_image_auroc_and_names_the_blank_masks(tmp_path):
    root, maps = make_ad(tmp_path, bad_masks=("blank", "blank", "blank"))
    ds, samples, (metrics, notes) = _metrics(root, maps)
    labels = [s.label for s in samples]
    expected = image_auroc(labels, [maps[(s.anomaly_type, s.image_id)].max() for s in samples])
    assert metrics == {"image_auroc": pytest.approx(expected)}
    (note,) = notes
    assert note.startswith("pixel metrics (pixel_auroc, au_pro) skipped: no ground-truth pixel is anomalous")
    for i in range(3):
        assert str(root / "part" / "ground_truth" / "scratch" / f"{i:03d}_mask.png") in note


def test_some_blank_masks_keep_pixel_metrics_with_a_note(tmp_path):
    root, maps = make_ad(tmp_path, bad_masks=("box", "blank", "box"))
    ds, samples, (metrics, notes) = _metrics(root, maps)
    m = [maps[(s.anomaly_type, s.image_id)] for s in samples]
    gt = [ds.load_channels(s).any(0) if s.defects else np.zeros((H, W), bool) for s in samples]
    assert metrics["pixel_auroc"] == pytest.approx(pixel_auroc(gt, m))
    assert metrics["au_pro_0.3"] == pytest.approx(au_pro(gt, m, 0.3))
    (note,) = notes
    assert "1 anomalous test images have blank masks" in note and "001_mask.png" in note


@pytest.mark.parametrize(
    "n_good, bad, cause",
    [
        (3, (), "no anomalous images (all 3 are good)"),
        (0, ("box", "box"), "no good images (all 2 are anomalous)"),
    ],
)
def test_one_class_at_image_level(tmp_path, n_good, bad, cause):
    root, maps = make_ad(tmp_path, n_good=n_good, bad_masks=bad)
    ds, samples, (metrics, notes) = _metrics(root, maps)
    assert "image_auroc" not in metrics
    assert f"image_auroc skipped: the test split has {cause}" in notes[0]
    if n_good:  # only good images: nothing anomalous at pixel level either
        assert metrics == {} and "pixel metrics (pixel_auroc, au_pro) skipped" in notes[1]
    else:  # only anomalous images: pixels of both classes exist, so the pixel metrics are defined
        m = [maps[(s.anomaly_type, s.image_id)] for s in samples]
        assert metrics["pixel_auroc"] == pytest.approx(pixel_auroc([ds.load_channels(s).any(0) for s in samples], m))


def test_unannotated_anomalies_and_empty_splits(tmp_path):
    root, maps = make_ad(tmp_path, bad_masks=("box", "none"))
    ds, samples, (metrics, notes) = _metrics(root, maps, kind="folder")
    assert set(metrics) == {"image_auroc"} and "1 anomalous test images have no ground-truth mask" in notes[0]
    assert dataset_metrics(ds, [], []) == (
        {},
        ["test metrics skipped: the test split is empty (no test images), so no metric is defined"],
    )


def test_loco_style_data_without_anomalies_is_skipped_with_a_note(tmp_path):
    from tests.pradot.test_data_loaders import make_loco

    ds = load_dataset("mvtec_loco", make_loco(tmp_path), "screw_bag")
    good = [s for s in ds.samples("test") if s.label == 0]
    metrics, notes = dataset_metrics(ds, good, [np.zeros((12, 16))] * len(good))
    assert metrics == {} and "no anomalous images" in notes[0]


def _write_maps(maps_root: Path, maps: dict) -> None:
    for (t, i), a in maps.items():
        p = maps_root / "part" / "test" / t / f"{i}.tiff"
        p.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(p, a)


@pytest.mark.parametrize(
    "bad_masks, expected_keys, phrase",
    [
        (("blank", "blank", "blank"), {"image_auroc"}, "masks of all 3 anomalous test images are blank"),
        ((), set(), "no anomalous images"),
    ],
)
def test_evaluator_writes_metrics_json_with_notes(tmp_path, bad_masks, expected_keys, phrase, capsys):
    root, maps = make_ad(tmp_path / "data", bad_masks=bad_masks)
    _write_maps(tmp_path / "maps", maps)
    rc = evaluate_main(
        [
            "--dataset",
            "mvtec_ad",
            "--dataset-root",
            str(root),
            "--category",
            "part",
            "--anomaly-maps",
            str(tmp_path / "maps"),
            "--output-dir",
            str(tmp_path / "out"),
            "--no-progress",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    result = json.loads((tmp_path / "out" / "metrics.json").read_text())
    numbers = {k for k, v in result.items() if isinstance(v, float) and k != "resized_maps"}
    assert numbers == expected_keys
    assert any(phrase in n for n in result["notes"])


def test_segmentation_f1_of_a_split_is_the_pooled_pixel_f1_at_the_threshold(tmp_path):
    """engine.split_metrics with a pixel threshold (what training logs as seg_f1 at the calibrated one)
    against 2 TP / (2 TP + FP + FN) counted directly; without anomalous ground-truth pixels there is none."""
    from pradot.engine import Scored, split_metrics

    root, maps = make_ad(tmp_path)
    ds = load_dataset("mvtec_ad", root, "part")
    samples = ds.samples("test")
    stack = np.stack([maps[(s.anomaly_type, s.image_id)] for s in samples])
    scored = Scored(samples, stack, stack.reshape(len(stack), -1).max(1), 0.0)
    gt = np.stack([ds.load_channels(s).any(axis=0) if s.label else np.zeros((H, W), bool) for s in samples])
    for t in (0.5, 0.9, 1.2):
        pred = stack > t
        tp, fp, fn = (pred & gt).sum(), (pred & ~gt).sum(), (~pred & gt).sum()
        assert split_metrics(ds, scored, threshold=t)[0]["seg_f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert "seg_f1" not in split_metrics(ds, scored)[0]  # no threshold, no SegF1
    root2, maps2 = make_ad(tmp_path / "blank", bad_masks=("blank", "blank", "blank"))
    ds2 = load_dataset("mvtec_ad", root2, "part")
    s2 = ds2.samples("test")
    st2 = np.stack([maps2[(s.anomaly_type, s.image_id)] for s in s2])
    assert "seg_f1" not in split_metrics(ds2, Scored(s2, st2, st2.max((1, 2)), 0.0), threshold=0.5)[0]
