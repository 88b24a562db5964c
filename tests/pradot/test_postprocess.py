"""Post-processing (pradot.postprocess) against direct formulas: Gaussian smoothing vs scipy, standardisation,
weighted fusion; and in the models (smoothing_sigma) and ensembles (weights), saved with them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from pradot import PRADOT, PRADOTConfig
from pradot.backbone import load_backbone
from pradot.ensemble import Ensemble
from pradot.postprocess import gaussian_kernel1d, gaussian_smooth, standardise, weighted_fusion


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.5, 4.0, 9.0])
def test_gaussian_smoothing_equals_scipy_gaussian_filter(sigma):
    maps = torch.rand(3, 20, 17, generator=torch.Generator().manual_seed(int(sigma * 10)))
    got = gaussian_smooth(maps, sigma).numpy()
    for b in range(3):  # scipy: one 2-D map at a time, float64, half-sample symmetric borders
        ref = ndimage.gaussian_filter(maps[b].double().numpy(), sigma, mode="reflect", truncate=4.0)
        np.testing.assert_allclose(got[b], ref, rtol=1e-5, atol=1e-6)
    # a 2-D map works too; sigma 0 is the map itself
    np.testing.assert_allclose(gaussian_smooth(maps[0], sigma).numpy(), got[0], rtol=0, atol=1e-6)
    assert gaussian_smooth(maps, 0.0) is maps


def test_gaussian_kernel_is_the_normalised_formula():
    k = gaussian_kernel1d(2.0)
    x = np.arange(-8, 9)
    ref = np.exp(-(x**2) / 8.0)
    np.testing.assert_allclose(k.numpy(), ref / ref.sum(), rtol=1e-12)
    with pytest.raises(ValueError, match=">= 0"):
        gaussian_smooth(torch.zeros(1, 4, 4), -1)
    with pytest.raises(ValueError, match=">= 0"):
        PRADOTConfig(smoothing_sigma=float("nan"))


def test_standardise_and_weighted_fusion_formulas():
    g = torch.Generator().manual_seed(0)
    a, b, c = (torch.rand(2, 5, 5, generator=g) for _ in range(3))
    torch.testing.assert_close(standardise(a, 0.5, 2.0), (a - 0.5) / 2.0)
    torch.testing.assert_close(standardise(a, 0.5, 0.0), (a - 0.5) / 1e-12)  # a constant member does not divide by 0
    torch.testing.assert_close(weighted_fusion([a, b, c], [1, 3, 0]), (1 * a + 3 * b) / 4, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(weighted_fusion([a, b], [1, 1]), (a + b) / 2, rtol=1e-6, atol=1e-7)
    for bad in ([1, -1, 0], [0, 0, 0], [1, float("nan"), 1], [1, 1]):
        with pytest.raises(ValueError, match="weights"):
            weighted_fusion([a, b, c], bad)


def _member(stages, alpha, sigma=0.0, seed=0, bb=None):
    bb = bb or load_backbone("tiny_random", stages)
    cfg = PRADOTConfig(
        backbone="tiny_random",
        stages=stages,
        image_size=32,
        alpha=alpha,
        n=1,
        batch_size=4,
        epochs=1,
        eta=0.5,
        seed=seed,
        smoothing_sigma=sigma,
    )
    m = PRADOT(cfg, backbone=bb)
    m.fit_features(bb(torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(seed))), progress=False)
    return m.eval()


def test_model_smoothing_is_applied_to_the_map_and_saved(tmp_path):
    bb = load_backbone("tiny_random", (1,))
    plain = _member((1,), 0.3, bb=bb)
    smooth = PRADOT.from_state(
        {**plain.state(), "config": {**plain.state()["config"], "smoothing_sigma": 3.0}}, backbone=bb
    )
    images = torch.rand(2, 3, 32, 32)
    raw, _ = plain.score(images)
    maps, scores = smooth.score(images)
    for b in range(2):
        ref = ndimage.gaussian_filter(raw[b].double().numpy(), 3.0, mode="reflect")
        np.testing.assert_allclose(maps[b].numpy(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(scores, maps.flatten(1).amax(1))  # the image score is the smoothed map's max
    back = PRADOT.load(smooth.save(tmp_path / "s.pt"))
    assert back.config.smoothing_sigma == 3.0
    torch.testing.assert_close(back.score(images)[0], maps, rtol=0, atol=0)


def test_ensemble_weights_normalisation_and_member_smoothing_saved_and_served(tmp_path):
    from pradot.persistence import load_scoring_model

    bb = load_backbone("tiny_random", (1,))
    members = [
        _member((1,), 0.0, bb=bb),
        _member((1,), 0.3, sigma=2.0, seed=1, bb=bb),
        _member((1,), 0.5, seed=2, bb=bb),
    ]
    val = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    ens = Ensemble(members, normalisation="per_member", weights=[0.2, 0.8, 0.0])
    stats = ens.fit_normalisation(val)
    maps, scores = ens.score(images)
    own = [m.score(images)[0] for m in members]  # each member's map, its own smoothing included
    z = [(o - s["mean"]) / s["std"] for o, s in zip(own, stats)]
    torch.testing.assert_close(maps, 0.2 * z[0] + 0.8 * z[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(scores, maps.flatten(1).amax(1))
    assert ens.config.weights == [0.2, 0.8, 0.0] and ens.config.members[1]["smoothing_sigma"] == 2.0
    back = load_scoring_model(ens.save(tmp_path / "e.pt"))
    assert back.weights == [0.2, 0.8, 0.0]
    torch.testing.assert_close(back.score(images)[0], maps, rtol=0, atol=0)
    with pytest.raises(ValueError, match="weights"):
        Ensemble(members, weights=[1, 2])
