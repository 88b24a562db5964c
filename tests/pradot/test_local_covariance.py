"""The per-cell covariance feature term (pradot.local_covariance) against direct formulas: the residual
precisions against NumPy per cell, the fast scores against the pair-by-pair reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pradot.errors import InputError
from pradot.local_covariance import (
    cell_residual_covariance,
    fit_cell_metrics,
    mahalanobis_scores,
    mahalanobis_scores_reference,
    training_normaliser,
)
from pradot.prototypes import BankConfig, PrototypeBank


def _bank(alpha: float, n: int = 2, grid=(3, 4), dim: int = 5) -> PrototypeBank:
    cfg = BankConfig(stage=2, alpha=alpha, n=n, grid=grid, dim=dim, backbone="x", image_size=32)
    bank = PrototypeBank(cfg, seed=0)
    bank.features.copy_(torch.randn(bank.features.shape, generator=torch.Generator().manual_seed(1)))
    return bank


def test_residual_precision_matches_numpy_per_cell():
    bank = _bank(0.3)
    g = torch.Generator().manual_seed(2)
    feats = torch.randn(7, 5, 3, 4, generator=g) + 0.5
    prec = cell_residual_covariance(bank, feats, eps=0.05).numpy()
    z = feats.permute(0, 2, 3, 1).reshape(7, 12, 5).double().numpy()
    p = bank.features.double().numpy().reshape(2, 12, 5)
    for i in range(12):
        r = np.stack([z[b, i] - min(p[:, i], key=lambda q: np.sum((z[b, i] - q) ** 2)) for b in range(7)])
        expected = np.linalg.inv(r.T @ r / 7 + 0.05 * np.eye(5))
        np.testing.assert_allclose(prec[i], expected, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.9])
def test_scores_equal_the_pair_by_pair_formula(alpha):
    bank = _bank(alpha)
    g = torch.Generator().manual_seed(3)
    train = torch.randn(6, 5, 3, 4, generator=g)
    test = torch.randn(3, 5, 3, 4, generator=g) * 1.5
    prec = cell_residual_covariance(bank, train)
    tau = training_normaliser(bank, prec, train)
    for norm in (None, tau):
        fast = mahalanobis_scores(bank, prec, test, normaliser=norm, chunk=2)
        ref = mahalanobis_scores_reference(bank, prec, test, normaliser=norm)
        np.testing.assert_allclose(fast.double().numpy(), ref.numpy(), rtol=1e-5, atol=1e-6)
    # tau is the training images' mean of the per-image maximum of the feature term, every pair written out
    z = train.permute(0, 2, 3, 1).reshape(6, 12, 5).double().numpy()
    p, L = bank.features.double().numpy(), prec.numpy()
    maxima = [max(np.sqrt(max(d @ L[i] @ d, 0.0)) for i in range(12) for d in z[b, i] - p) for b in range(6)]
    assert tau == pytest.approx(float(np.mean(maxima)), rel=1e-9)


def test_bad_input_is_refused_before_work():
    bank = _bank(0.3)
    feats = torch.randn(4, 5, 3, 4)
    with pytest.raises(InputError, match="at least 2"):
        cell_residual_covariance(bank, feats[:1])
    with pytest.raises(InputError, match="eps"):
        cell_residual_covariance(bank, feats, eps=0)
    prec = cell_residual_covariance(bank, feats)
    with pytest.raises(InputError, match="normaliser"):
        mahalanobis_scores(bank, prec, feats, normaliser=0.0)
    with pytest.raises(InputError, match="precision"):
        mahalanobis_scores(bank, prec[:3], feats)
    coarse = PrototypeBank(BankConfig(stage=2, alpha=0.3, n=0.5, grid=(4, 4), dim=5, backbone="x", image_size=32))
    with pytest.raises(InputError, match="n copies"):
        cell_residual_covariance(coarse, torch.randn(3, 5, 4, 4))


def test_streamed_fit_equals_the_whole_set_formulas():
    """fit_cell_metrics over batches (3 + 4 images) = cell_residual_covariance and training_normaliser on all 7."""
    bank = _bank(0.3)
    feats = torch.randn(7, 5, 3, 4, generator=torch.Generator().manual_seed(4)) + 0.5
    got = fit_cell_metrics({2: bank}, lambda: iter([{2: feats[:3]}, {2: feats[3:]}]), eps=0.05)[2]
    whole = cell_residual_covariance(bank, feats, eps=0.05)
    torch.testing.assert_close(got["precision"], whole.float(), rtol=1e-5, atol=1e-6)
    assert got["precision"].dtype == torch.float32
    assert got["normaliser"] == pytest.approx(training_normaliser(bank, got["precision"], feats), rel=1e-12)
    with pytest.raises(InputError, match="at least 2"):
        fit_cell_metrics({2: bank}, lambda: iter([{2: feats[:1]}]))
