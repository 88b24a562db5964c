"""The multi-class setting in the library (pradot.multiclass) on tiny embedded data: union of features, unified
models against independent constructions, per-category metrics, thresholds, the table."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pradot import multiclass as mc
from pradot.engine import DataSpec
from pradot.memory_bank import MemoryBankConfig
from pradot.metrics.classification import image_auroc, pixel_auroc
from pradot.model import PRADOTConfig

CATS = ("woven_fabric", "screw_bag")
GEN = dict(image_size=96, n_train=4, n_validation=3, n_test_good=3, n_test_logical=2, n_test_structural=2)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("mc")
    spec = DataSpec("synthetic", str(root), CATS[0], 96, generator=GEN)
    return spec, mc.open_categories(spec, CATS)


def _bank(**kw):
    base = dict(backbone="efficientnet_lite0", stages=(2,), image_size=96, aggregation=1, smoothing_sigma=0.0)
    return mc.Method("memory_bank", MemoryBankConfig(**{**base, **kw}))


def test_union_features_stack_categories_in_order_and_refuse_mismatches():
    a = {2: np.ones((2, 3, 4, 4)), 3: np.zeros((2, 5, 2, 2))}
    b = {2: np.full((1, 3, 4, 4), 2.0), 3: np.ones((1, 5, 2, 2))}
    u = mc.union_features({"a": a, "b": b})
    np.testing.assert_array_equal(u[2], np.concatenate([a[2], b[2]]))
    assert u[3].shape == (3, 5, 2, 2)
    with pytest.raises(ValueError, match="stages"):
        mc.union_features({"a": a, "b": {2: b[2]}})
    with pytest.raises(ValueError, match="image size"):
        mc.union_features({"a": a, "b": {2: np.ones((1, 3, 8, 8)), 3: b[3]}})
    with pytest.raises(ValueError, match="unknown multi-class method"):
        mc.Method("patchcore", None)


def test_open_categories_refuses_duplicates_and_reads_both_layouts(data):
    spec, cats = data
    with pytest.raises(ValueError, match="more than once"):
        mc.open_categories(spec, ["screw_bag", "screw_bag"])
    assert not cats["woven_fabric"].dataset.has_saturation and cats["screw_bag"].dataset.has_saturation


def test_unified_memory_bank_is_the_minimum_of_the_per_category_banks(data):
    """Nearest neighbour in a union of banks = the nearer of the two nearest neighbours: the unified memory
    bank's patch scores equal the element-wise minimum of the per-category banks' scores."""
    spec, cats = data
    method = _bank()
    unified = mc.fit_unified(method, spec, cats, progress=False)
    per = mc.fit_per_category(method, spec, cats, progress=False)
    assert len(unified.memory[2]) == sum(len(m.memory[2]) for m in per.values())
    images = torch.rand(3, 3, 96, 96)
    feats = unified.backbone(unified.prepare(images))
    got = unified.stage_maps(feats)[2]
    want = torch.minimum(*[m.stage_maps(feats)[2] for m in per.values()])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_unified_pradot_equals_a_model_fitted_on_all_training_images_directly(data):
    """fit_unified (features per category, concatenated) = PRADOT.fit on one dataset of every category's
    training images in the same order (features extracted in one pass, no cache)."""
    from pradot.data import ImageDataset
    from pradot.model import PRADOT

    spec, cats = data
    cfg = PRADOTConfig(backbone="efficientnet_lite0", stages=(2,), image_size=96, n=1, epochs=2, batch_size=4)
    unified = mc.fit_unified(mc.Method("pradot", cfg), spec, cats, progress=False)
    direct = PRADOT(cfg, backbone=unified.backbone)
    direct.fit(ImageDataset([s for c in CATS for s in cats[c].train], 96), progress=False)
    a, b = unified.state(include_backbone=False)["banks"], direct.state(include_backbone=False)["banks"]
    _assert_same(a, b)


def _assert_same(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    else:
        assert a == b


def test_evaluate_per_category_metrics_thresholds_and_table(data):
    spec, cats = data
    method = _bank()
    model = mc.fit_unified(method, spec, cats, progress=False)
    res = mc.evaluate("memory_bank", "unified", {c: model for c in cats}, cats, quantile=0.9, progress=False)
    for c, r in res.categories.items():
        labels = [s.label for s in r.test.samples]
        # image AUROC of the AD-layout category from the map maxima (LOCO: the project's mean over types)
        if c == "woven_fabric":
            assert r.metrics["image_auroc"] == pytest.approx(
                image_auroc(labels, r.test.maps.reshape(len(labels), -1).max(1))
            )
            assert "au_pro_0.3" in r.metrics
        else:
            assert "au_spro_0.05" in r.metrics
        masks = [
            np.asarray(cats[c].dataset.load_channels(s, 96), bool).any(0) if s.label else np.zeros((96, 96), bool)
            for s in r.test.samples
        ]
        assert r.metrics["pixel_auroc"] == pytest.approx(pixel_auroc(masks, list(r.test.maps)))
        assert r.calibration is not None and "test_fpr_at_threshold" in r.global_threshold_metrics
    # the global threshold: calibrated on every category's validation normals pooled
    pooled = np.concatenate([r.validation.scores for r in res.categories.values()])
    assert res.calibration.n_images == len(pooled) == 6
    assert pooled.min() <= res.calibration.threshold <= pooled.max()
    mean = res.mean()
    assert mean["image_auroc"] == pytest.approx(np.mean([r.metrics["image_auroc"] for r in res.categories.values()]))
    assert mean["au_pro_0.3"] == res.categories["woven_fabric"].metrics["au_pro_0.3"]
    rows = mc.comparison_rows([res])
    assert [r["category"] for r in rows] == [*CATS, "mean"]
    assert rows[0]["au_spro_0.05"] is None and rows[1]["au_pro_0.3"] is None
    table = mc.format_table(rows)
    assert "| mean | memory_bank (unified) |" in table and f"{100 * mean['image_auroc']:.1f}" in table
    assert all(math.isfinite(v) for v in mean.values())


def test_unified_vpdm_plugs_in_as_one_more_method(data, tmp_path):
    """VPDM in the setting: fit_unified equals VPDM.fit on every category's training images in one dataset, it
    is evaluated per category like the others, and its file loads as a servable scorer."""
    vpdm = pytest.importorskip("pradot.vpdm")
    from pradot.data import ImageDataset
    from pradot.persistence import load_scoring_model

    spec, cats = data
    cfg = vpdm.VPDMConfig.recipe(
        "cpu", image_size=96, grid=8, n_prototypes=4, width=16, blocks=1, epochs=1, sampling_steps=2, batch_size=8
    )
    unified = mc.fit_unified(mc.Method("vpdm", cfg), spec, cats, progress=False)
    direct = vpdm.VPDM(cfg, backbone=unified.backbone).fit(
        ImageDataset([s for c in CATS for s in cats[c].train], 96), progress=False
    )
    torch.testing.assert_close(unified.prototypes, direct.prototypes, rtol=1e-4, atol=1e-5)
    _assert_same(dict(unified.denoiser.state_dict()), dict(direct.denoiser.state_dict()))
    res = mc.evaluate("vpdm", "unified", {c: unified for c in cats}, cats, quantile=0.9, progress=False)
    assert {"image_auroc", "pixel_auroc"} <= set(res.categories["woven_fabric"].metrics)
    loaded = load_scoring_model(unified.save(tmp_path / "vpdm.pt"))
    x = torch.rand(2, 3, 96, 96)
    torch.testing.assert_close(loaded.score(x)[1], unified.score(x)[1])
