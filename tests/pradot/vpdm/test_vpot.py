"""VPOT (Eq. 7-11) against independent computations: POT's Sinkhorn, finite differences, direct formulas."""

import numpy as np
import ot
import pytest
import torch

from pradot.vpdm.vpot import (
    cost_matrix,
    low_pass_downsample,
    nearest_plan,
    ot_loss,
    upsample,
    vague_condition,
    vague_plan,
)


def _points(seed=0, n=12, k=5, c=6):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g, dtype=torch.float64), torch.randn(k, c, generator=g, dtype=torch.float64)


def test_cost_is_the_euclidean_distance():
    f, beta = _points()
    assert torch.allclose(cost_matrix(f, beta), torch.cdist(f, beta), atol=1e-9)


@pytest.mark.parametrize("eps", [0.3, 1.0])
def test_vague_plan_matches_pot_sinkhorn(eps):
    f, beta = _points(1)
    C = cost_matrix(f, beta)
    plan = vague_plan(C, eps, n_iter=5000)
    a, b = np.full(len(f), 1 / len(f)), np.full(len(beta), 1 / len(beta))
    ref = ot.sinkhorn(a, b, C.numpy(), reg=eps, numItermax=100_000, stopThr=1e-13)
    assert np.allclose(plan.numpy(), ref, atol=1e-10)
    assert torch.allclose(plan.sum(1), torch.full((len(f),), 1 / len(f), dtype=plan.dtype), atol=1e-12)


def test_ot_loss_gradient_matches_finite_differences():
    """Eq. 11's gradient in the prototypes with the plan held fixed (envelope theorem) against central finite
    differences of the entropic OT value, the plan re-solved at each perturbed point (float64)."""
    f, beta = _points(2, n=6, k=3, c=2)
    eps = 0.5

    def value(prototypes):
        C = cost_matrix(f, prototypes)
        return ot_loss(vague_plan(C, eps, n_iter=1000), C, eps)

    assert torch.autograd.gradcheck(value, (beta.clone().requires_grad_(),), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_vague_condition_is_the_barycentric_projection():
    """With the points equal to the prototypes (shuffled) and a small eps, the plan is the matching and
    y = K_f T beta gives back each point; with equal prototypes y is that prototype everywhere."""
    g = torch.Generator().manual_seed(3)
    beta = torch.randn(6, 4, generator=g, dtype=torch.float64) * 3
    perm = torch.randperm(6, generator=g)
    f = beta[perm]
    y = vague_condition(vague_plan(cost_matrix(f, beta), 0.01, 2000), beta)
    assert torch.allclose(y, f, atol=1e-6)
    same = beta[:1].expand(6, 4)
    y2 = vague_condition(vague_plan(cost_matrix(f, same), 1.0), same)
    assert torch.allclose(y2, same[:1].expand(6, 4), atol=1e-9)


def test_nearest_plan_puts_each_point_on_its_nearest_prototype():
    f, beta = _points(4)
    C = cost_matrix(f, beta)
    plan = nearest_plan(C)
    assert torch.equal(plan.argmax(1), torch.cdist(f, beta).argmin(1))
    assert torch.allclose(plan.sum(1), torch.full((len(f),), 1 / len(f), dtype=plan.dtype))


def test_low_pass_downsample_is_the_block_mean():
    x = torch.randn(2, 3, 8, 8)
    ref = x.reshape(2, 3, 2, 4, 2, 4).mean((3, 5))
    assert torch.allclose(low_pass_downsample(x, 4), ref, atol=1e-6)
    assert low_pass_downsample(x, 1) is x
    with pytest.raises(ValueError, match="divide"):
        low_pass_downsample(x, 3)


def test_upsample_keeps_constant_maps():
    y = torch.full((1, 2, 4, 4), 2.5)
    assert torch.allclose(upsample(y, (16, 16)), torch.full((1, 2, 16, 16), 2.5))
