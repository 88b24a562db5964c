"""Tests of pradot.metrics against sklearn, a slow direct implementation of the official
MVTec LOCO sPRO definition, and hand-computed AU-PRO values."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from pradot.metrics import (
    Saturation,
    ad_metrics,
    area_under_curve,
    au_pro,
    au_spro,
    connected_regions,
    image_auroc,
    loco_image_auroc,
    loco_metrics,
    pixel_auroc,
    pixel_roc_curve,
    pro_curve,
    roc_curve_points,
    spro_curve,
)

MAX_FPRS = (0.01, 0.05, 0.1, 0.3, 1.0)


# ----------------------------------------------------------------------------------------------
# slow reference: a literal transcription of the definition (loop over thresholds)


def _ref_saturation_area(area: int, threshold: float, relative: bool) -> float:
    s = int(threshold * area) if relative else min(threshold, area)
    return s if s > 0 else 1  # documented edge-case rule: s == 0 -> 1


def ref_spro_points(maps, channels, sats):
    """Official convention: predicted = score > t, thresholds = every unique value plus one
    above the max and one below the min, in decreasing order."""
    values = np.unique(np.concatenate([m.ravel() for m in maps]))
    thresholds = [values.max() + 1.0] + list(values[::-1]) + [values.min() - 1.0]
    normal = [~ch.any(axis=0) if len(ch) else np.ones(m.shape, bool) for m, ch in zip(maps, channels)]
    n_normal = sum(int(nm.sum()) for nm in normal)
    fprs, spros = [], []
    for t in thresholds:
        fp = 0
        per_defect = []
        for m, ch, nm, sat in zip(maps, channels, normal, sats):
            pred = m > t
            fp += int(np.sum(pred & nm))
            for c in range(len(ch)):
                area = int(ch[c].sum())
                if area == 0:
                    continue
                s = _ref_saturation_area(area, *sat[c])
                tp = int(np.sum(pred & ch[c]))
                per_defect.append(min(tp / s, 1.0))
        fprs.append(fp / n_normal)
        spros.append(float(np.mean(per_defect)))
    return fprs, spros


def ref_auc(fprs, ys, max_fpr):
    area = 0.0
    for j in range(1, len(fprs)):
        x0, x1, y0, y1 = fprs[j - 1], fprs[j], ys[j - 1], ys[j]
        if x1 <= max_fpr:
            area += (x1 - x0) * (y0 + y1) / 2.0
        else:
            if x0 < max_fpr:
                y_at = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
                area += (max_fpr - x0) * (y0 + y_at) / 2.0
            break
    return area / max_fpr


def _random_loco_set(rng, n_good=3, n_bad=4, shape=(12, 10), quantize=None):
    maps, channels, sats = [], [], []
    specs = [(3, False), (10, False), (1000, False), (0.5, True), (1.0, True), (0.05, True), (0, False)]
    for i in range(n_good + n_bad):
        m = rng.normal(size=shape)
        if quantize:
            m = np.round(m * quantize) / quantize
        if i < n_good:
            ch = np.zeros((0,) + shape, bool)
            sat = []
        else:
            n_ch = int(rng.integers(1, 4))
            ch = np.zeros((n_ch,) + shape, bool)
            sat = []
            for c in range(n_ch):
                y0, x0 = rng.integers(0, shape[0] - 2), rng.integers(0, shape[1] - 2)
                h, w = rng.integers(1, 6), rng.integers(1, 6)
                ch[c, y0 : y0 + h, x0 : x0 + w] = True
                m[ch[c]] += rng.uniform(0, 2)  # defects tend to score higher
                sat.append(specs[int(rng.integers(len(specs)))])
        maps.append(m)
        channels.append(ch)
        sats.append(sat)
    return maps, channels, sats


@pytest.mark.parametrize("seed,quantize", [(0, None), (1, None), (2, 4), (3, 2), (4, 10)])
def test_au_spro_matches_direct_definition(seed, quantize):
    rng = np.random.default_rng(seed)
    maps, channels, sats = _random_loco_set(rng, quantize=quantize)
    kinds = {rel for s in sats for _, rel in s}
    assert sum(len(c) for c in channels) >= 3
    ref_f, ref_y = ref_spro_points(maps, channels, sats)
    got = au_spro(maps, channels, [[Saturation(t, r) for t, r in s] for s in sats], max_fprs=MAX_FPRS)
    assert set(got) == set(MAX_FPRS)
    for f in MAX_FPRS + (0.0123, 0.5):
        want = ref_auc(ref_f, ref_y, f)
        have = got[f] if f in got else spro_curve(maps, channels, sats).auc(f)
        assert have == pytest.approx(want, abs=1e-6), (seed, f, kinds)
    # the exact curve has one point per distinct score, plus the "nothing predicted" point
    curve = spro_curve(maps, channels, sats)
    n_unique = np.unique(np.concatenate([m.ravel() for m in maps])).size
    assert curve.fpr.size == n_unique + 1
    assert curve.fpr[0] == 0 and curve.spro[0] == 0
    assert curve.fpr[-1] == 1 and curve.spro[-1] == pytest.approx(1.0)
    assert np.all(np.diff(curve.fpr) >= 0) and np.all(np.diff(curve.spro) >= -1e-12)
    # same points as the official ">" convention, which repeats the "nothing predicted" point
    np.testing.assert_allclose(curve.fpr, ref_f[1:], atol=1e-12)
    np.testing.assert_allclose(curve.spro, ref_y[1:], atol=1e-9)


def test_au_spro_both_saturation_kinds_differ_from_plain_pro():
    """Saturation must actually matter: a defect half-detected scores 1.0 with relative 0.5
    (or absolute <= half its area) but 0.5 with plain PRO."""
    shape = (6, 6)
    ch = np.zeros((1,) + shape, bool)
    ch[0, 0:2, 0:4] = True  # 8 pixels
    m = np.ones(shape)
    m[0, 0:4] = 2.0  # 4 of 8 defect pixels above every normal pixel
    m[1, 0:4] = 0.0  # the other 4 below every normal pixel
    good = np.ones(shape)
    maps, channels = [m, good], [ch, None]
    assert au_spro(maps, channels, [[Saturation(0.5, True)], None], (0.3,))[0.3] == pytest.approx(1.0)
    assert au_spro(maps, channels, [[Saturation(4, False)], None], (0.3,))[0.3] == pytest.approx(1.0)
    assert au_spro(maps, channels, [[Saturation(8, False)], None], (0.3,))[0.3] == pytest.approx(0.5)
    assert au_spro(maps, channels, [[Saturation(1.0, True)], None], (0.3,))[0.3] == pytest.approx(0.5)
    assert au_spro(maps, channels, None, (0.3,))[0.3] == pytest.approx(0.5)


def test_zero_saturation_area_counts_after_first_detected_pixel():
    shape = (5, 5)
    ch = np.zeros((1,) + shape, bool)
    ch[0, 0, 0:3] = True  # area 3, relative 0.2 -> int(0.6) = 0
    m = np.zeros(shape)
    m[0, 0] = 1.0
    curve = spro_curve([m], [ch], [[(0.2, True)]])
    # nothing predicted -> 0; first pixel detected at FPR 0 -> saturated
    assert curve.spro[0] == 0.0
    assert curve.fpr[1] == 0.0 and curve.spro[1] == 1.0
    assert curve.auc(0.05) == pytest.approx(1.0)


def test_empty_channel_is_skipped_with_warning():
    shape = (4, 4)
    ch = np.zeros((2,) + shape, bool)
    ch[0, 0, 0] = True
    m = np.zeros(shape)
    m[0, 0] = 1.0
    with pytest.warns(RuntimeWarning, match="empty ground-truth channel"):
        curve = spro_curve([m], [ch], [[(1.0, True), (5, False)]])
    assert curve.num_regions == 1
    assert curve.auc(1.0) == pytest.approx(1.0)


def test_spro_undefined_cases_raise():
    m = np.zeros((3, 3))
    with pytest.raises(ValueError, match="no anomalous region"):
        spro_curve([m], [None], None)
    full = np.ones((1, 3, 3), bool)
    with pytest.raises(ValueError, match="no defect-free pixel"):
        spro_curve([m], [full], [[(1.0, True)]])
    with pytest.raises(ValueError, match="channels but"):
        spro_curve([m], [full], [[]])
    with pytest.raises(ValueError, match="non-finite"):
        spro_curve([np.full((3, 3), np.nan)], [full], None)


def test_saturation_coerce_and_validation():
    class Defect:
        saturation_threshold = 0.5
        relative_saturation = True

    assert Saturation.coerce(Defect()) == Saturation(0.5, True)
    assert Saturation.coerce({"saturation_threshold": 100, "relative_saturation": False}) == Saturation(100)
    assert Saturation.coerce((3, False)) == Saturation(3.0, False)
    assert Saturation(2000).area(150) == 150 and Saturation(20).area(150) == 20
    assert Saturation(0.5, True).area(7) == 3
    with pytest.raises(ValueError):
        Saturation(1.5, True)
    with pytest.raises(ValueError):
        Saturation(-1)


def test_perfect_map_gives_one_and_constant_map_gives_half():
    rng = np.random.default_rng(5)
    maps, channels, sats = _random_loco_set(rng)
    perfect = [ch.any(axis=0).astype(float) if len(ch) else np.zeros(m.shape) for m, ch in zip(maps, channels)]
    res = au_spro(perfect, channels, sats, MAX_FPRS)
    for f in MAX_FPRS:
        assert res[f] == pytest.approx(1.0, abs=1e-12)
    labels = [int(len(ch) > 0) for ch in channels]
    assert image_auroc(labels, [p.max() for p in perfect]) == 1.0
    masks = [p > 0 for p in perfect]
    assert pixel_auroc(masks, perfect) == 1.0
    assert au_pro(masks, perfect, 0.3) == pytest.approx(1.0)
    const = [np.full(m.shape, 0.7) for m in maps]
    assert image_auroc(labels, [c.max() for c in const]) == 0.5
    assert pixel_auroc(masks, const) == 0.5
    # constant map: the curve jumps from (0, 0) straight to (1, 1) -> area of the diagonal
    assert au_spro(const, channels, sats, (1.0, 0.3))[1.0] == pytest.approx(0.5)
    assert au_spro(const, channels, sats, (1.0, 0.3))[0.3] == pytest.approx(0.15)


# ----------------------------------------------------------------------------------------------
# AU-PRO on hand-made masks


def _two_regions():
    mask = np.zeros((10, 10), bool)
    mask[1:3, 1:3] = True  # region A, 4 px
    mask[6:8, 6:8] = True  # region B, 4 px, far from A
    return mask


def test_au_pro_hand_computed_values():
    mask = _two_regions()
    # A above every normal pixel, B below: curve (0,0) (0,.5) (1,.5) (1,1)
    m = np.ones((10, 10))
    m[1:3, 1:3] = 2.0
    m[6:8, 6:8] = 0.0
    assert au_pro([mask], [m], 0.3) == pytest.approx(0.5)
    assert au_pro([mask], [m], 1.0) == pytest.approx(0.5)
    fpr, pro = pro_curve([mask], [m])
    np.testing.assert_allclose(fpr, [0, 0, 1, 1])
    np.testing.assert_allclose(pro, [0, 0.5, 0.5, 1])

    # half of B above all normals, normals graded: PRO 0.75 from FPR 0 to FPR 1
    m2 = np.zeros((10, 10))
    normal_idx = np.flatnonzero(~mask)
    m2.flat[normal_idx] = np.linspace(1, 9, normal_idx.size)
    m2[1:3, 1:3] = 10.0
    m2[6, 6:8] = 9.5
    m2[7, 6:8] = 0.0
    assert au_pro([mask], [m2], 0.3) == pytest.approx(0.75)

    # normals above A, A above B: PRO only rises after all false positives -> (0,0)...(1,0),(1,.5),(1,1)
    m3 = np.full((10, 10), 5.0)
    m3[1:3, 1:3] = 1.0
    m3[6:8, 6:8] = 0.0
    assert au_pro([mask], [m3], 0.3) == pytest.approx(0.0)
    assert au_pro([mask], [mask.astype(float)], 0.3) == pytest.approx(1.0)


def test_au_pro_interpolates_at_max_fpr():
    # one region of 1 px, 10 normal px with distinct scores; region pixel ranked 4th of 11:
    # FP count before it enters = 3 -> curve (0,0),(.1,0),(.2,0),(.3,0),(.3,1),...,(1,1)
    mask = np.zeros((1, 11), bool)
    mask[0, 5] = True
    m = np.zeros((1, 11))
    m[0, ~mask[0]] = np.arange(10, 0, -1)  # normals 10..1
    m[0, 5] = 7.5  # between the 3rd (8) and 4th (7) normal
    assert au_pro([mask], [m], 0.3) == pytest.approx(0.0)
    assert au_pro([mask], [m], 0.35) == pytest.approx(0.05 / 0.35)
    assert au_pro([mask], [m], 1.0) == pytest.approx(0.7)
    # PRO curve truncated for plotting ends exactly at max_fpr
    c = pro_curve([mask], [m], max_fpr=0.35)
    assert c.fpr[-1] == pytest.approx(0.35) and c.spro[-1] == pytest.approx(1.0)
    assert area_under_curve(c.fpr, c.spro, 0.35) == pytest.approx(0.05 / 0.35)


def test_au_pro_connectivity():
    # (0,0) touches (1,1) only diagonally: 8-connectivity -> one 3-px region, 4 -> two regions
    mask = np.zeros((6, 6), bool)
    mask[0, 0] = mask[1, 1] = mask[1, 2] = True
    m = np.ones((6, 6))
    m[0, 0] = 2.0
    m[1, 1] = m[1, 2] = 0.0
    assert au_pro([mask], [m], 0.3) == pytest.approx(1 / 3)  # default = 8 (official MVTec AD)
    assert au_pro([mask], [m], 0.3, connectivity=8) == pytest.approx(1 / 3)
    assert au_pro([mask], [m], 0.3, connectivity=4) == pytest.approx(0.5)
    assert connected_regions(mask).shape == (1, 6, 6)
    assert connected_regions(mask, connectivity=4).shape == (2, 6, 6)


def test_au_pro_equals_spro_with_component_channels():
    rng = np.random.default_rng(11)
    masks, maps = [], []
    for i in range(5):
        mk = rng.random((9, 9)) > 0.8 if i else np.zeros((9, 9), bool)
        masks.append(mk)
        maps.append(rng.normal(size=(9, 9)) + mk)
    channels = [connected_regions(mk) for mk in masks]
    ref_f, ref_y = ref_spro_points(maps, channels, [[(1.0, True)] * len(c) for c in channels])
    for f in (0.05, 0.3, 1.0):
        assert au_pro(masks, maps, f) == pytest.approx(ref_auc(ref_f, ref_y, f), abs=1e-9)


# ----------------------------------------------------------------------------------------------
# ROC metrics


def test_image_auroc_matches_sklearn():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    s = rng.normal(size=200) + 0.8 * y
    s[:50] = np.round(s[:50])  # ties
    assert image_auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    fpr, tpr, _ = roc_curve_points(y, s)
    assert fpr[0] == 0 and tpr[-1] == 1
    with pytest.raises(ValueError, match="only one class"):
        image_auroc(np.zeros(5), np.arange(5))
    with pytest.raises(ValueError, match="only one class"):
        image_auroc(np.ones(5), np.arange(5))


def test_loco_image_auroc_per_type_and_mean():
    rng = np.random.default_rng(2)
    types = np.array(["good"] * 20 + ["logical_anomalies"] * 15 + ["structural_anomalies"] * 10)
    s = rng.normal(size=types.size) + (types != "good")
    res = loco_image_auroc(types, s)
    assert list(res) == ["logical_anomalies", "structural_anomalies", "mean"]
    for t in ("logical_anomalies", "structural_anomalies"):
        sel = (types == "good") | (types == t)
        assert res[t] == pytest.approx(roc_auc_score(types[sel] == t, s[sel]))
    assert res["mean"] == pytest.approx((res["logical_anomalies"] + res["structural_anomalies"]) / 2)
    with pytest.raises(ValueError, match="no 'good'"):
        loco_image_auroc(types[types != "good"], s[types != "good"])


def test_pixel_auroc_matches_sklearn():
    rng = np.random.default_rng(3)
    masks = rng.random((4, 16, 16)) > 0.9
    maps = rng.normal(size=(4, 16, 16)) + masks
    assert pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)
    # lists of different sizes are concatenated
    ml = [masks[0], masks[1, :8]]
    al = [maps[0], maps[1, :8]]
    want = roc_auc_score(np.concatenate([m.ravel() for m in ml]), np.concatenate([a.ravel() for a in al]))
    assert pixel_auroc(ml, al) == pytest.approx(want)
    fpr, tpr, thr = pixel_roc_curve(masks, maps)
    assert fpr.shape == tpr.shape == thr.shape


# ----------------------------------------------------------------------------------------------
# bundles


def test_loco_metrics_shape_and_consistency():
    rng = np.random.default_rng(7)
    maps, channels, sats = _random_loco_set(rng, n_good=3, n_bad=6)
    types = ["good"] * 3 + ["logical_anomalies"] * 3 + ["structural_anomalies"] * 3
    out = loco_metrics(maps, types, channels, sats)
    assert set(out) == {"classification", "localization"}
    auc_roc = out["classification"]["auc_roc"]
    assert set(auc_roc) == {"logical_anomalies", "structural_anomalies", "mean"}
    spro = out["localization"]["auc_spro"]
    assert set(spro) == {"logical_anomalies", "structural_anomalies", "mean"}
    for t in ("logical_anomalies", "structural_anomalies"):
        assert set(spro[t]) == {"0.01", "0.05", "0.1", "0.3", "1.0"}
        idx = [i for i, ti in enumerate(types) if ti in ("good", t)]
        ref_f, ref_y = ref_spro_points([maps[i] for i in idx], [channels[i] for i in idx], [sats[i] for i in idx])
        for f in MAX_FPRS:
            assert spro[t][str(f)] == pytest.approx(ref_auc(ref_f, ref_y, f), abs=1e-6)
        sel = [i for i in idx]
        want = roc_auc_score([types[i] == t for i in sel], [maps[i].max() for i in sel])
        assert auc_roc[t] == pytest.approx(want)
    for f in MAX_FPRS:
        k = str(f)
        assert spro["mean"][k] == pytest.approx((spro["logical_anomalies"][k] + spro["structural_anomalies"][k]) / 2)
    # explicit image scores override the max
    out2 = loco_metrics(maps, types, channels, sats, image_scores=[-m.max() for m in maps])
    assert out2["classification"]["auc_roc"]["mean"] == pytest.approx(1 - auc_roc["mean"])


def test_ad_metrics_keys_and_values():
    rng = np.random.default_rng(8)
    masks = [np.zeros((10, 10), bool) for _ in range(3)] + [rng.random((10, 10)) > 0.85 for _ in range(3)]
    maps = [rng.normal(size=(10, 10)) + 1.5 * mk for mk in masks]
    out = ad_metrics(maps, masks)
    assert set(out) == {"image_auroc", "pixel_auroc", "au_pro_0.3"}
    assert out["image_auroc"] == pytest.approx(image_auroc([0, 0, 0, 1, 1, 1], [m.max() for m in maps]))
    assert out["pixel_auroc"] == pytest.approx(pixel_auroc(masks, maps))
    assert out["au_pro_0.3"] == pytest.approx(au_pro(masks, maps, 0.3))
    multi = ad_metrics(maps, masks, max_fprs=(0.05, 0.3))
    assert multi["au_pro_0.3"] == pytest.approx(out["au_pro_0.3"])
    assert "au_pro_0.05" in multi
