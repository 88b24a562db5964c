"""End-to-end tests of ``python -m pradot.evaluate`` on tiny MVTec LOCO / MVTec AD layouts
written to tmp_path (PNG images and masks, defects_config.json, float TIFF maps)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from pradot.evaluate import MissingMapsError, evaluate, main, resize_bilinear
from pradot.metrics import ad_metrics, loco_metrics

H, W = 16, 20
CAT = "tiny"

DEFECTS_CONFIG = [
    {"defect_name": "missing_part", "pixel_value": 255, "saturation_threshold": 12, "relative_saturation": False},
    {"defect_name": "scratch", "pixel_value": 200, "saturation_threshold": 0.5, "relative_saturation": True},
]

# (anomaly type, image id) -> list of (pixel value, (y0, y1, x0, x1)) channels
GT = {
    ("logical_anomalies", "000"): [(255, (2, 8, 3, 9)), (200, (10, 14, 12, 18))],
    ("logical_anomalies", "001"): [(255, (5, 12, 5, 10))],
    ("structural_anomalies", "000"): [(200, (1, 4, 1, 16))],
    ("structural_anomalies", "001"): [(200, (8, 15, 2, 6)), (255, (9, 13, 4, 12))],  # overlapping channels
}
GOOD_IDS = ("000", "001", "002")


def _write_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _rgb(rng) -> np.ndarray:
    return rng.integers(0, 255, (H, W, 3), dtype=np.uint8)


def make_loco(root: Path, seed: int = 0) -> dict:
    """Write a LOCO layout; return {(type, id): (C, H, W) bool channels} for the test images."""
    rng = np.random.default_rng(seed)
    cat = root / CAT
    for i in range(2):
        _write_png(cat / "train" / "good" / f"{i:03d}.png", _rgb(rng))
    _write_png(cat / "validation" / "good" / "000.png", _rgb(rng))
    (cat / "defects_config.json").write_text(json.dumps(DEFECTS_CONFIG))
    truth = {}
    for gid in GOOD_IDS:
        _write_png(cat / "test" / "good" / f"{gid}.png", _rgb(rng))
        truth[("good", gid)] = np.zeros((0, H, W), bool)
    for (atype, iid), chans in GT.items():
        _write_png(cat / "test" / atype / f"{iid}.png", _rgb(rng))
        arr = np.zeros((len(chans), H, W), bool)
        for c, (value, (y0, y1, x0, x1)) in enumerate(chans):
            mask = np.zeros((H, W), np.uint8)
            mask[y0:y1, x0:x1] = value
            _write_png(cat / "ground_truth" / atype / iid / f"{c:03d}.png", mask)
            arr[c] = mask > 0
        truth[(atype, iid)] = arr
    return truth


def _saturations(atype: str, iid: str):
    if atype == "good":
        return []
    by_value = {d["pixel_value"]: d for d in DEFECTS_CONFIG}
    return [(by_value[v]["saturation_threshold"], by_value[v]["relative_saturation"]) for v, _ in GT[(atype, iid)]]


def write_maps(maps_root: Path, maps: dict, ext: str = ".tiff") -> None:
    for (atype, iid), m in maps.items():
        path = maps_root / CAT / "test" / atype / f"{iid}{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(path, np.asarray(m, dtype=np.float32))


def _cli(root, maps_root, out, *extra):
    return main(
        [
            "--dataset-root",
            str(root),
            "--category",
            CAT,
            "--anomaly-maps",
            str(maps_root),
            "--output-dir",
            str(out),
            "--no-progress",
            *extra,
        ]
    )


def test_loco_perfect_maps_give_one(tmp_path, capsys):
    truth = make_loco(tmp_path / "data")
    maps = {k: (ch.any(axis=0) if len(ch) else np.zeros((H, W), bool)).astype(np.float32) for k, ch in truth.items()}
    write_maps(tmp_path / "maps", maps)
    assert _cli(tmp_path / "data", tmp_path / "maps", tmp_path / "out") == 0
    res = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert res["classification"]["auc_roc"] == {"logical_anomalies": 1.0, "structural_anomalies": 1.0, "mean": 1.0}
    spro = res["localization"]["auc_spro"]
    assert set(spro) == {"logical_anomalies", "structural_anomalies", "mean"}
    for t in spro:
        assert set(spro[t]) == {"0.01", "0.05", "0.1", "0.3", "1.0"}
        assert all(v == pytest.approx(1.0) for v in spro[t].values())
    assert res["resized_maps"] == 0 and res["notes"] == []
    assert res["num_test_images"] == 7
    assert "wrote" in capsys.readouterr().out


def test_loco_random_maps_resized_map_reported_and_values_match(tmp_path, caplog):
    truth = make_loco(tmp_path / "data")
    rng = np.random.default_rng(1)
    maps = {}
    for k, ch in truth.items():
        m = rng.normal(size=(H, W)).astype(np.float32)
        if len(ch):
            m += 1.5 * ch.any(axis=0)
        maps[k] = m
    small = rng.normal(size=(H // 2, W // 2)).astype(np.float32)  # another size -> resized
    maps[("good", "001")] = small
    write_maps(tmp_path / "maps", maps)
    res = evaluate(tmp_path / "data", CAT, tmp_path / "maps", tmp_path / "out", max_fprs=(0.05, 0.3), progress=False)
    warned = [r for r in caplog.records if r.levelname == "WARNING" and r.name == "pradot.evaluate"]
    assert warned and "resized" in warned[0].getMessage()
    assert res["resized_maps"] == 1
    assert len(res["notes"]) == 1 and "001" in res["notes"][0] and "8x10" in res["notes"][0]
    on_disk = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(res))
    assert set(res["localization"]["auc_spro"]["mean"]) == {"0.05", "0.3"}

    # the same metrics computed in memory from the arrays we wrote
    keys = sorted(truth, key=lambda k: (k[0] != "good", k[0], k[1]))
    in_mem = [resize_bilinear(maps[k], (H, W)) for k in keys]
    want = loco_metrics(
        in_mem, [k[0] for k in keys], [truth[k] for k in keys], [_saturations(*k) for k in keys], max_fprs=(0.05, 0.3)
    )
    for t, v in want["classification"]["auc_roc"].items():
        assert res["classification"]["auc_roc"][t] == pytest.approx(v)
    for t, d in want["localization"]["auc_spro"].items():
        for f, v in d.items():
            assert res["localization"]["auc_spro"][t][f] == pytest.approx(v, abs=1e-9)


def test_missing_map_is_a_clear_error(tmp_path, capsys):
    truth = make_loco(tmp_path / "data")
    maps = {k: np.zeros((H, W), np.float32) for k in truth}
    write_maps(tmp_path / "maps", maps)
    (tmp_path / "maps" / CAT / "test" / "structural_anomalies" / "001.tiff").unlink()
    assert _cli(tmp_path / "data", tmp_path / "maps", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "1 of 7 anomaly maps are missing" in err
    assert str(tmp_path / "maps" / CAT / "test" / "structural_anomalies" / "001.tiff") in err
    assert not (tmp_path / "out" / "metrics.json").exists()
    with pytest.raises(MissingMapsError, match="1 of 7"):
        evaluate(tmp_path / "data", CAT, tmp_path / "maps", progress=False)
    # every map missing: the count and only the first few paths are listed
    with pytest.raises(MissingMapsError, match=r"7 of 7 .*\n(.*\n){5}  \.\.\. and 2 more"):
        evaluate(tmp_path / "data", CAT, tmp_path / "nowhere", progress=False)


def test_tif_extension_and_3d_singleton_maps_accepted(tmp_path):
    truth = make_loco(tmp_path / "data")
    maps = {k: (ch.any(axis=0) if len(ch) else np.zeros((H, W)))[None].astype(np.float32) for k, ch in truth.items()}
    write_maps(tmp_path / "maps", maps, ext=".tif")
    res = evaluate(tmp_path / "data", CAT, tmp_path / "maps", progress=False)
    assert res["classification"]["auc_roc"]["mean"] == 1.0


def make_ad(root: Path) -> tuple[list, list, list]:
    rng = np.random.default_rng(3)
    cat = root / CAT
    _write_png(cat / "train" / "good" / "000.png", _rgb(rng))
    masks, maps, keys = [], [], []
    for i in range(3):
        _write_png(cat / "test" / "good" / f"{i:03d}.png", _rgb(rng))
        masks.append(np.zeros((H, W), bool))
        keys.append(("good", f"{i:03d}"))
    for i, (y0, y1, x0, x1) in enumerate([(2, 6, 2, 6), (8, 14, 10, 19)]):
        _write_png(cat / "test" / "broken" / f"{i:03d}.png", _rgb(rng))
        mk = np.zeros((H, W), np.uint8)
        mk[y0:y1, x0:x1] = 255
        mk[0, W - 1] = 255  # a second, 1-pixel region
        _write_png(cat / "ground_truth" / "broken" / f"{i:03d}_mask.png", mk)
        masks.append(mk > 0)
        keys.append(("broken", f"{i:03d}"))
    for mk in masks:
        maps.append((rng.normal(size=(H, W)) + 1.2 * mk).astype(np.float32))
    return masks, maps, keys


def test_ad_layout_gives_ad_keys(tmp_path):
    masks, maps, keys = make_ad(tmp_path / "data")
    write_maps(tmp_path / "maps", dict(zip(keys, maps)))
    assert _cli(tmp_path / "data", tmp_path / "maps", tmp_path / "out", "--dataset", "mvtec_ad") == 0
    res = json.loads((tmp_path / "out" / "metrics.json").read_text())
    want = ad_metrics(maps, masks)
    assert set(want) == {"image_auroc", "pixel_auroc", "au_pro_0.3"}
    for k, v in want.items():
        assert res[k] == pytest.approx(v, abs=1e-9)
    assert "classification" not in res and res["resized_maps"] == 0


def test_resize_bilinear_half_pixel_centres():
    a = np.array([[0.0, 1.0]], dtype=np.float32)
    np.testing.assert_allclose(resize_bilinear(a, (1, 4)), [[0.0, 0.25, 0.75, 1.0]])
    b = np.arange(16, dtype=np.float64).reshape(4, 4)
    np.testing.assert_allclose(resize_bilinear(b, (2, 2)), [[2.5, 4.5], [10.5, 12.5]])
    assert resize_bilinear(a, (3, 5)).dtype == np.float32
