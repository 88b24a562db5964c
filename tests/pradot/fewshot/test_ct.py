"""Conditional transport (FOCT Eq. 4, 5, 8) and the navigators' distance, each against a direct formula
written with explicit loops on small tensors."""

import math

import pytest
import torch

from pradot.fewshot.ct import anomaly_scores, backward_transport, ct_cost, euclidean_cost, forward_transport
from pradot.fewshot.distance import NavigatorDistance, fit_distance


@pytest.fixture
def small():
    g = torch.Generator().manual_seed(3)
    q = torch.randn(5, 4, generator=g, dtype=torch.float64)  # m = 5 query features
    mem = torch.randn(3, 4, generator=g, dtype=torch.float64)  # n = 3 memory items
    d = torch.rand(5, 3, generator=g, dtype=torch.float64) * 3
    return q, mem, d


def test_cost_is_the_euclidean_distance(small):
    q, mem, _ = small
    c = euclidean_cost(q, mem)
    for j in range(5):
        for i in range(3):
            assert float(c[j, i]) == pytest.approx(
                math.sqrt(sum((float(q[j, k]) - float(mem[i, k])) ** 2 for k in range(4))), rel=1e-5
            )


def test_forward_and_backward_transport_eq5(small):
    _, _, d = small
    pn, pm = forward_transport(d), backward_transport(d)
    assert pn.shape == (5, 3) and pm.shape == (3, 5)
    for j in range(5):
        for i in range(3):
            # pi_n(M_i | f_j) = exp(-d(M_i, f_j)) / sum_r exp(-d(M_r, f_j))
            assert float(pn[j, i]) == pytest.approx(math.exp(-d[j, i]) / sum(math.exp(-d[j, r]) for r in range(3)))
            # pi_m(f_j | M_i) = exp(-d(f_j, M_i)) / sum_r exp(-d(f_r, M_i))
            assert float(pm[i, j]) == pytest.approx(math.exp(-d[j, i]) / sum(math.exp(-d[r, i]) for r in range(5)))
    torch.testing.assert_close(pn.sum(1), torch.ones(5, dtype=d.dtype))
    torch.testing.assert_close(pm.sum(1), torch.ones(3, dtype=d.dtype))


@pytest.mark.parametrize("rho", [0.0, 0.3, 0.5, 1.0])
def test_ct_cost_eq4(small, rho):
    q, mem, d = small
    c = euclidean_cost(q, mem).double()
    m, n = 5, 3
    direct = 0.0
    for i in range(n):
        for j in range(m):
            pn = math.exp(-d[j, i]) / sum(math.exp(-d[j, r]) for r in range(n))
            pm = math.exp(-d[j, i]) / sum(math.exp(-d[r, i]) for r in range(m))
            direct += rho / m * pn * float(c[j, i]) + (1 - rho) / n * pm * float(c[j, i])
    assert float(ct_cost(c, d, rho)) == pytest.approx(direct, rel=1e-9)


def test_ct_cost_refuses_bad_input(small):
    _, _, d = small
    with pytest.raises(ValueError, match="rho"):
        ct_cost(d, d, 1.5)
    with pytest.raises(ValueError, match="same"):
        ct_cost(d, d[:, :2], 0.5)


def test_anomaly_scores_eq8(small):
    q, mem, d = small
    c = euclidean_cost(q, mem).double()
    s = anomaly_scores(c, d)
    for j in range(5):
        z = sum(math.exp(-d[j, r]) for r in range(3))
        assert float(s[j]) == pytest.approx(sum(math.exp(-d[j, i]) / z * float(c[j, i]) for i in range(3)))
    # a sharp navigator gives the nearest-neighbour distance, a flat one the mean cost
    assert torch.allclose(anomaly_scores(c, 1e4 * c), c.min(1).values, atol=1e-6)
    assert torch.allclose(anomaly_scores(c, torch.zeros_like(c)), c.mean(1))


def test_linear_distance_is_the_scaled_euclidean_distance(small):
    q, mem, _ = small
    lin = NavigatorDistance(4, kind="linear", scale=2.0)
    torch.testing.assert_close(lin(q, mem).double(), torch.cdist(q, mem) / 2.0, rtol=1e-4, atol=1e-3)
    assert not list(lin.parameters())


def test_learned_distance_starts_linear_and_adam_lowers_the_ct_cost(small):
    q, mem, _ = small
    q, mem = q.float(), mem.float()
    base = NavigatorDistance(4, hidden=8, kind="learned", scale=0.5, seed=1)
    lin = NavigatorDistance(4, kind="linear", scale=0.5)
    torch.testing.assert_close(base(q, mem), lin(q, mem))  # W2 = 0 at initialisation
    c = euclidean_cost(q, mem)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    phi = fit_distance(base, mem, q, c, steps=50, lr=1e-2, rho=0.5)
    with torch.no_grad():
        assert float(ct_cost(c, phi(q, mem))) < float(ct_cost(c, base(q, mem)))
    for k, v in base.state_dict().items():  # every query starts from the same phi
        assert torch.equal(v, before[k])
    same = fit_distance(lin, mem, q, c, steps=50)
    torch.testing.assert_close(same(q, mem), lin(q, mem))


def test_distance_refuses_bad_settings():
    with pytest.raises(ValueError, match="learned"):
        NavigatorDistance(4, kind="cosine")
    with pytest.raises(ValueError, match="positive"):
        NavigatorDistance(4, scale=0.0)
