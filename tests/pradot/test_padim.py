"""The PaDiM-style model (pradot.padim): covariances against numpy / scikit-learn, the Mahalanobis map against
scipy's distance computed one patch at a time, files, and the model as an ensemble member."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from scipy.spatial.distance import mahalanobis

from pradot.backbone import load_backbone
from pradot.checkpoint import file_format
from pradot.ensemble import Ensemble
from pradot.memory_bank import MemoryBankConfig, MemoryBankModel
from pradot.padim import PADIM_FORMAT, PaDiMConfig, PaDiMModel, gaussian_parameters
from pradot.persistence import load_scoring_model


@pytest.fixture(scope="module")
def bb():
    return load_backbone("tiny_random", (1, 2))


@pytest.fixture(scope="module")
def train_images():
    return torch.rand(12, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def test_images():
    return torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _embed(bb, images) -> np.ndarray:
    """The paper's embedding written directly: stage 2 interpolated onto stage 1's grid, concatenated: (B, H, W, d)."""
    f = bb(images)
    up = torch.nn.functional.interpolate(f[2], size=f[1].shape[-2:], mode="bilinear")
    return torch.cat([f[1], up], 1).permute(0, 2, 3, 1).double().numpy()


def _direct(train: np.ndarray, test: np.ndarray, eps: float, size: int, sigma: float, lw: bool = False):
    """Slow PaDiM: per position np.cov (or scikit-learn's LedoitWolf) + eps I, scipy's mahalanobis per patch,
    bilinear upsampling, scipy's Gaussian filter, max."""
    from sklearn.covariance import LedoitWolf

    B, H, W, d = test.shape
    dist = np.zeros((B, H, W))
    for i in range(H):
        for j in range(W):
            x = train[:, i, j]
            cov = (LedoitWolf().fit(x).covariance_ if lw else np.cov(x, rowvar=False)) + eps * np.eye(d)
            vi = np.linalg.inv(cov)
            for b in range(B):
                dist[b, i, j] = mahalanobis(test[b, i, j], x.mean(0), vi)
    up = torch.nn.functional.interpolate(torch.from_numpy(dist)[:, None], size=(size, size), mode="bilinear")
    maps = np.stack([gaussian_filter(m, sigma, mode="reflect") for m in up[:, 0].numpy()])
    return maps, maps.reshape(B, -1).max(1)


def test_covariances_are_numpy_and_sklearn_ones():
    from sklearn.covariance import EmpiricalCovariance, LedoitWolf

    x = torch.randn(9, 4, 5, generator=torch.Generator().manual_seed(2))
    mean, cov = gaussian_parameters(x, "eps", eps=0.01)
    lw_mean, lw_cov = gaussian_parameters(x, "ledoit_wolf", eps=0.0)
    for p in range(4):
        a = x[:, p].double().numpy()
        np.testing.assert_allclose(mean[p].numpy(), a.mean(0), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(cov[p].numpy(), np.cov(a, rowvar=False) + 0.01 * np.eye(5), rtol=1e-10, atol=1e-12)
        biased = EmpiricalCovariance().fit(a).covariance_  # the unbiased estimate is N/(N-1) times it
        np.testing.assert_allclose(cov[p].numpy() - 0.01 * np.eye(5), biased * 9 / 8, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(lw_cov[p].numpy(), LedoitWolf().fit(a).covariance_, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(lw_mean.numpy(), mean.numpy())
    with pytest.raises(ValueError, match="at least 2"):
        gaussian_parameters(x[:1])
    with pytest.raises(ValueError, match="covariance"):
        gaussian_parameters(x, "graphical_lasso")


@pytest.mark.parametrize("covariance,eps,sigma", [("eps", 0.01, 4.0), ("ledoit_wolf", 0.0, 0.0)])
def test_maps_are_the_direct_mahalanobis_distances(bb, train_images, test_images, covariance, eps, sigma):
    cfg = PaDiMConfig(
        backbone="tiny_random", stages=(1, 2), image_size=32, covariance=covariance, eps=eps, smoothing_sigma=sigma
    )
    pd = PaDiMModel(cfg, backbone=bb).fit_features(bb(train_images), chunk=5)
    maps, scores = pd.score(test_images, batch_size=2)
    ref_maps, ref_scores = _direct(
        _embed(bb, train_images), _embed(bb, test_images), eps, 32, sigma, lw=covariance == "ledoit_wolf"
    )
    np.testing.assert_allclose(maps.numpy(), ref_maps, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(scores.numpy(), ref_scores, rtol=1e-3, atol=1e-3)
    assert pd.grid == (8, 8) and pd.mean.shape == (64, 40) and pd.precision.shape == (64, 40, 40)
    # a far-off image scores above every normal one
    far = pd.score(test_images.flip(-1).mul(0.2))[1]
    assert float(pd.score(train_images)[1].max()) < float(far.min())


def test_random_channel_subset(bb, train_images, test_images):
    cfg = PaDiMConfig(backbone="tiny_random", stages=(1, 2), image_size=32, n_channels=7, seed=5)
    pd = PaDiMModel(cfg, backbone=bb).fit_features(bb(train_images), chunk=5)  # the subset applies to every chunk
    again = PaDiMModel(cfg, backbone=bb).fit_features(bb(train_images))
    assert pd.channels is not None and len(pd.channels) == 7 and len(set(pd.channels.tolist())) == 7
    assert torch.equal(pd.channels, again.channels)  # drawn from the seed
    keep = pd.channels.numpy()
    ref, _ = _direct(_embed(bb, train_images)[..., keep], _embed(bb, test_images)[..., keep], 0.01, 32, 4.0)
    np.testing.assert_allclose(pd.score(test_images)[0].numpy(), ref, rtol=1e-3, atol=1e-3)
    full = PaDiMModel(PaDiMConfig(backbone="tiny_random", stages=(1, 2), image_size=32, n_channels=999), backbone=bb)
    assert full.fit_features(bb(train_images)).channels is None  # more than there are: all of them


def test_files_errors_and_ensemble_member(bb, train_images, test_images, tmp_path):
    cfg = PaDiMConfig(backbone="tiny_random", stages=(1, 2), image_size=32, n_channels=10)
    pd = PaDiMModel(cfg, backbone=bb).fit_features(bb(train_images))
    maps, scores = pd.score(test_images)
    path = pd.save(tmp_path / "padim.pt")
    assert file_format(path) == PADIM_FORMAT
    back = load_scoring_model(path)  # weights_only read; the backbone comes from the file
    assert isinstance(back, PaDiMModel) and back.config == cfg and not back.training
    torch.testing.assert_close(back.score(test_images)[0], maps, rtol=0, atol=0)
    torch.testing.assert_close(back.maps_from_features(bb(test_images))[1], scores, rtol=0, atol=0)

    mb = MemoryBankModel(MemoryBankConfig(backbone="tiny_random", stages=(1, 2), image_size=32), backbone=bb)
    mb.fit_features(bb(train_images))
    ens = Ensemble([pd, mb], normalisation="per_member", weights=[0.5, 0.5], labels=["padim/1", "mb/1"])
    ens.fit_normalisation(train_images)
    assert len(ens._groups) == 1  # one backbone pass serves both
    fused = ens.score(test_images)[0]
    z = [(m.score(test_images)[0] - s["mean"]) / s["std"] for m, s in zip([pd, mb], ens.stats)]
    torch.testing.assert_close(fused, (z[0] + z[1]) / 2, rtol=1e-5, atol=1e-5)
    again = load_scoring_model(ens.save(tmp_path / "ens.pt"))
    torch.testing.assert_close(again.score(test_images)[0], fused, rtol=1e-6, atol=1e-6)
    assert ens.config.members[0]["kind"] == "padim"

    with pytest.raises(RuntimeError, match="not fitted"):
        PaDiMModel(cfg, backbone=bb).score(test_images)
    with pytest.raises(ValueError, match="at least 2"):
        PaDiMModel(cfg, backbone=bb).fit_features({s: f[:1] for s, f in bb(train_images).items()})
    with pytest.raises(ValueError, match="grid"):
        pd.maps_from_features(bb(torch.rand(1, 3, 64, 64)))
    with pytest.raises(ValueError, match="covariance"):
        PaDiMConfig(covariance="oas")
    with pytest.raises(ValueError, match="n_channels"):
        PaDiMConfig(n_channels=0)
    with pytest.raises(ValueError, match="not a PaDiM model file"):
        PaDiMModel.load(mb.save(tmp_path / "mb.pt"))
