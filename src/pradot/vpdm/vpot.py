"""Vague Prototype-Oriented Optimal Transport, VPOT (``vpdm-paper.md`` Sec. 3.1, Eq. 7-11).

From an image's feature map ``f`` (C, H, W) on the paper's grid:

1. **low-pass downsampler** ``T_down``: ``N x N`` box average with stride ``N`` (the paper's "downsample
   multiplier", 4; a box filter is a low-pass filter followed by decimation), giving ``f_down`` (C, H/N, W/N);
2. **empirical measures** (Eq. 7-8): the ``K_f = (H/N)(W/N)`` downsampled feature vectors of the image, each of
   mass ``1/K_f``, and the ``K`` learnable vague prototypes ``beta`` (K, C), each of mass ``1/K``;
3. **cost** (Eq. 9): the Euclidean distance ``C_ij = ||f_down^i - beta^j||_2``;
4. **entropic plan** ``T`` (K_f, K) with the project's Sinkhorn (:func:`pradot.transport.sinkhorn_log`);
5. **vague condition** (Eq. 10): ``y = K_f T beta`` (each row of ``T`` sums to ``1/K_f``; the factor ``K_f``
   makes every location a convex combination of prototypes, the barycentric projection);
6. **upsampler** ``T_up``: bilinear interpolation of ``y`` back to (H, W), giving ``y_hat``;
7. **OT loss** (Eq. 11): ``<T, C> + eps sum T ln T`` at the plan, averaged over the images; its gradient in
   ``beta`` is ``sum_ij T_ij dC_ij/dbeta`` (envelope theorem: the plan is optimal, so its own variation does
   not count), which is what autograd gives with the plan held fixed. The paper prints the entropy with
   weight 1, i.e. ``eps = 1``.

**The points of the measures.** The paper gives the prototypes the dimension ``d = w h c / N^2`` (a whole
downsampled image per point) and the measure over a set of images. Read that way, the plan of a single test
image is forced by the marginals (one row of mass 1 against K columns of mass 1/K: ``T = 1/K`` whatever the
image), and a score would depend on which other images share the batch. Here the points are the image's own
downsampled locations (dimension ``c``), so each image has its own plan and its score depends on it alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pradot.transport import sinkhorn_log

__all__ = [
    "low_pass_downsample",
    "upsample",
    "cost_matrix",
    "vague_plan",
    "vague_condition",
    "ot_loss",
    "nearest_plan",
]


def low_pass_downsample(f: torch.Tensor, factor: int) -> torch.Tensor:
    """``T_down`` (Sec. 3.1): (B, C, H, W) -> (B, C, H/N, W/N), the mean of each ``N x N`` block.

    Raises:
        ValueError: ``factor`` < 1 or not dividing H and W.
    """
    factor = int(factor)
    if factor < 1 or f.shape[-1] % factor or f.shape[-2] % factor:
        raise ValueError(
            f"the downsample factor must be >= 1 and divide the feature grid {tuple(f.shape[-2:])}, got {factor}; "
            f"choose grid and downsample so that grid % downsample == 0 (paper: 32 and 4)"
        )
    return f if factor == 1 else F.avg_pool2d(f, factor)


def upsample(y: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``T_up`` (Sec. 3.1): (B, C, h, w) -> (B, C, H, W), bilinear (align_corners=False)."""
    if tuple(y.shape[-2:]) == tuple(size):
        return y
    return F.interpolate(y, size=size, mode="bilinear", align_corners=False)


def cost_matrix(points: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Eq. 9's cost ``C_ij = ||f^i - beta^j||_2``: (K_f, C) and (K, C) -> (K_f, K).

    Computed from the differences (not the Gram expansion) so that it is exact near 0; the norm is taken of
    ``d^2 + 1e-12`` so that its gradient stays finite when a point sits on a prototype.
    """
    diff = points[:, None, :] - prototypes[None, :, :]
    return torch.sqrt((diff * diff).sum(-1) + 1e-12)


def vague_plan(cost: torch.Tensor, eps: float, n_iter: int = 100) -> torch.Tensor:
    """The entropic plan of Eq. 9/11 with uniform marginals (Eq. 7-8): (K_f, K) -> (K_f, K), rows summing
    to ``1/K_f`` and columns to ``1/K``; :func:`pradot.transport.sinkhorn_log` in float64, no gradient."""
    with torch.no_grad():
        return sinkhorn_log(cost.detach().double(), float(eps), int(n_iter)).to(cost.dtype)


def nearest_plan(cost: torch.Tensor) -> torch.Tensor:
    """The plan of the "prototypes without OT" ablation (Table 3, row 2): each point's whole mass ``1/K_f``
    on its nearest prototype. (K_f, K) -> (K_f, K)."""
    plan = torch.zeros_like(cost)
    plan[torch.arange(cost.shape[0]), cost.argmin(1)] = 1.0 / cost.shape[0]
    return plan


def vague_condition(plan: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Eq. 10, ``y = K_f T beta``: (K_f, K) and (K, C) -> (K_f, C) (module docstring, step 5)."""
    return plan.shape[0] * (plan @ prototypes)


def ot_loss(plan: torch.Tensor, cost: torch.Tensor, eps: float) -> torch.Tensor:
    """Eq. 11 for one image: ``<T, C> + eps sum_ij T_ij ln T_ij`` (a scalar), with ``T`` held fixed (its
    gradient flows through ``C`` only: the envelope theorem, module docstring)."""
    T = plan.detach()
    return (T * cost).sum() + float(eps) * torch.special.xlogy(T, T).sum()
