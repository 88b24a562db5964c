"""Cost (Eq. 1/3), EMA update (Eq. 5) and scores (Eq. 6) against direct formulas."""

import math

import pytest
import torch

from pradot.cost import feature_cost, fused_cost, grid_coordinates, normalised_cost, spatial_cost
from pradot.prototypes import BankConfig, PrototypeBank, ema_update, prototype_coordinates
from pradot.scoring import assignment_scores, assignment_scores_reference, image_scores, upsample_maps
from pradot.transport import sinkhorn


def test_costs_match_direct_formulas():
    g = torch.Generator().manual_seed(0)
    z, p = torch.randn(7, 5, generator=g), torch.randn(4, 5, generator=g)
    c, rho = torch.rand(7, 2, generator=g), torch.rand(4, 2, generator=g)
    for i in range(7):
        for j in range(4):
            cos = float(z[i] @ p[j] / (z[i].norm() * p[j].norm()))
            d = math.dist(c[i].tolist(), rho[j].tolist())
            assert feature_cost(z, p)[i, j] == pytest.approx(1 - cos, abs=1e-6)
            assert spatial_cost(c, rho)[i, j] == pytest.approx(d, abs=1e-6)  # authors: unsquared
            assert fused_cost(z, c, p, rho, 0.3)[i, j] == pytest.approx(0.7 * (1 - cos) + 0.3 * d * d, abs=1e-6)
    mf, ms = feature_cost(z, p), spatial_cost(c, rho)
    M = normalised_cost(mf, ms, 0.3)
    assert torch.allclose(M, 0.7 * mf / mf.max() + 0.3 * ms / ms.max())
    assert float(M.max()) <= 1.0 + 1e-6


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan"), "x"])
def test_alpha_outside_unit_interval_is_refused(alpha):
    """The model's settings are alpha's one range check (the cost functions, run per batch, rely on it)."""
    from pradot.model import PRADOTConfig
    from pradot.ranges import SettingError

    with pytest.raises(SettingError, match=r"alpha=.* it must be a number in \[0, 1\]") as err:
        PRADOTConfig(alpha=alpha)
    assert err.value.setting == "alpha"


def test_zero_norm_features_give_no_nan():
    """An all-black region gives zero features after ReLU: defined as cosine 0 (feature cost 1)."""
    z = torch.zeros(3, 8)
    p = torch.rand(5, 8)
    mf = feature_cost(z, p)
    assert torch.isfinite(mf).all() and torch.allclose(mf, torch.ones(3, 5))
    M = normalised_cost(torch.zeros(3, 5), torch.zeros(3, 5), 0.5)  # all-zero terms: no 0/0
    assert torch.isfinite(M).all()


def test_coordinates_follow_the_authors_layout():
    c = grid_coordinates(3, 4)
    assert c.shape == (12, 2)
    assert torch.allclose(c[5], torch.tensor([0.5, 1 / 3]))  # row 1, col 1 of linspace grids
    rho = prototype_coordinates(3, 4, 2)
    assert rho.shape == (24, 2) and torch.equal(rho[12:], c)  # index k*H*W + cell
    coarse = prototype_coordinates(8, 8, 0.5)  # n < 1: int(8*0.5)^2 cell-centred prototypes
    assert coarse.shape == (16, 2) and torch.allclose(coarse[0], torch.tensor([0.125, 0.125]))
    with pytest.raises(ValueError, match="integer"):
        prototype_coordinates(3, 4, 2.5)


def test_ema_step_equals_eq5_direct_formula():
    g = torch.Generator().manual_seed(1)
    p = torch.rand(6, 4, generator=g, dtype=torch.float64)
    z = torch.randn(10, 4, generator=g, dtype=torch.float64)
    T = sinkhorn(torch.rand(10, 6, generator=g, dtype=torch.float64), 0.1)
    eta, Np = 0.95, 6
    expected = torch.empty_like(p)
    for i in range(Np):
        acc = sum(T[k, i] * z[k] for k in range(10))
        expected[i] = eta * p[i] + (1 - eta) * Np * acc
    assert torch.allclose(ema_update(p, T, z, eta), expected, atol=1e-12)


def make_bank(alpha, n=2, grid=(4, 4), dim=6, seed=0):
    cfg = BankConfig(stage=2, alpha=alpha, n=n, grid=grid, dim=dim, backbone="test", image_size=32)
    return PrototypeBank(cfg, seed=seed)


def test_bank_step_is_algorithm1():
    """One bank step = Eq. 3 cost on the batch, Eq. 4 plan, Eq. 5 update."""
    bank = make_bank(0.3)
    feats = torch.randn(3, 6, 4, 4, generator=torch.Generator().manual_seed(2))
    p0 = bank.features.clone()
    z = feats.permute(0, 2, 3, 1).reshape(-1, 6)
    c = grid_coordinates(4, 4).repeat(3, 1)
    M = normalised_cost(feature_cost(z, p0), spatial_cost(c, bank.coords), 0.3)
    expected = ema_update(p0, sinkhorn(M, 0.01, 100), z, 0.95)
    stats = bank.step(feats)
    assert torch.allclose(bank.features, expected, atol=1e-5)
    assert stats.ot_loss > 0 and stats.change > 0


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_batched_scores_equal_the_direct_eq6(alpha):
    bank = make_bank(alpha)
    bank.features.copy_(torch.randn_like(bank.features))
    feats = torch.randn(5, 6, 4, 4, generator=torch.Generator().manual_seed(3))
    feats[1] = 0.0  # an all-black image: zero features
    s, j = assignment_scores(bank, feats, chunk=2)
    s_ref, j_ref = assignment_scores_reference(bank, feats)
    assert torch.isfinite(s).all()
    assert torch.allclose(s, s_ref, atol=1e-5)
    if alpha > 0:  # ties are broken the same way except for exactly equal costs
        assert (j == j_ref).float().mean() > 0.95


def test_maps_are_upsampled_align_corners_and_image_score_is_max():
    m = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]])
    up = upsample_maps(m, 3)
    assert torch.allclose(up[0], torch.tensor([[0.0, 0.5, 1.0], [1.0, 1.5, 2.0], [2.0, 2.5, 3.0]]))
    assert float(image_scores(up)[0]) == 3.0
