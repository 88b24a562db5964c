"""Conditional transport (CT) between a memory bank and the features of one query image (FOCT, sections
3.2, 4.2 and 4.3).

Notation (FOCT Eq. 4-8): memory ``M`` (n, C), query features ``f`` (m, C); ``c(M_i, f_j)`` the Euclidean
distance; ``d_phi(M_i, f_j)`` the navigators' (learnable) distance, given here as an (m, n) matrix
``d[j, i]`` (row j = query feature, column i = memory item), the layout of the forward transport matrix
``pi_n`` in R^{m x n}.

* :func:`forward_transport`  pi_n(M_i | f_j) = softmax_i(-d_phi(M_i, f_j))            Eq. 5 (first), Eq. 2
* :func:`backward_transport` pi_m(f_j | M_i) = softmax_j(-d_phi(f_j, M_i))            Eq. 5 (second)
* :func:`ct_cost`            rho/m sum pi_n c + (1 - rho)/n sum pi_m c                Eq. 4 (Eq. 1 on two sets)
* :func:`anomaly_scores`     s_j = sum_i pi_n(M_i | f_j) c(M_i, f_j)                    Eq. 8

The distance ``d_phi`` is symmetric here (see :mod:`pradot.fewshot.distance`), so one (m, n) matrix serves
both navigators.
"""

from __future__ import annotations

import torch

__all__ = ["euclidean_cost", "forward_transport", "backward_transport", "ct_cost", "anomaly_scores"]


def euclidean_cost(queries: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """The transport cost ``c[j, i] = ||f_j - M_i||_2`` (FOCT Eq. 2: "c is Euclidean distance").

    Args:
        queries: (m, C) query features; memory: (n, C) memory items.
    Returns:
        (m, n) float tensor, >= 0.
    """
    return torch.cdist(queries.float(), memory.float()).clamp_min_(0.0)


def forward_transport(d: torch.Tensor) -> torch.Tensor:
    """Forward transport matrix (FOCT Eq. 5, first line; the forward navigator of Eq. 2):
    ``pi_n[j, i] = exp(-d[j, i]) / sum_r exp(-d[j, r])``, the probability of transporting query feature
    ``f_j`` to memory item ``M_i``.

    Args:
        d: (m, n) navigator distances ``d_phi(M_i, f_j)``.
    Returns:
        (m, n); every row sums to 1.
    """
    return torch.softmax(-d, dim=1)


def backward_transport(d: torch.Tensor) -> torch.Tensor:
    """Backward transport matrix (FOCT Eq. 5, second line): ``pi_m[i, j] = exp(-d[j, i]) /
    sum_r exp(-d[r, i])``, the probability of transporting memory item ``M_i`` to query feature ``f_j``.

    Args:
        d: (m, n) navigator distances (``d[j, i] = d_phi(f_j, M_i)``).
    Returns:
        (n, m); every row sums to 1.
    """
    return torch.softmax(-d.t(), dim=1)


def ct_cost(cost: torch.Tensor, d: torch.Tensor, rho: float = 0.5) -> torch.Tensor:
    """The CT distance between a memory and a query's features for one value of phi (FOCT Eq. 4, the
    two-set form of Eq. 1 with uniform weights):

        L = sum_i sum_j [ rho/m pi_n(M_i | f_j) c(M_i, f_j) + (1 - rho)/n pi_m(f_j | M_i) c(f_j, M_i) ]

    i.e. ``rho`` x the mean over query features of their expected forward cost plus ``(1 - rho)`` x the
    mean over memory items of their expected backward cost. Minimised over phi (Adam) by
    :func:`pradot.fewshot.distance.fit_distance`.

    Args:
        cost: (m, n) Euclidean costs ``c``; d: (m, n) navigator distances; rho in [0, 1] (paper: 0.5).
    Returns:
        scalar tensor (differentiable in ``d``).
    Raises:
        ValueError: shapes differ or rho outside [0, 1].
    """
    if cost.shape != d.shape or cost.ndim != 2:
        raise ValueError(f"cost and d must be the same (m, n) matrix, got {tuple(cost.shape)} and {tuple(d.shape)}")
    if not 0.0 <= float(rho) <= 1.0:
        raise ValueError(
            f"rho (the CT trade-off between forward and backward navigators) must lie in [0, 1], got {rho!r}"
        )
    m, n = cost.shape
    forward = (forward_transport(d) * cost).sum() / m
    backward = (backward_transport(d) * cost.t()).sum() / n
    return float(rho) * forward + (1.0 - float(rho)) * backward


def anomaly_scores(cost: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Patch anomaly scores from the forward transport (FOCT Eq. 8):
    ``s_j = sum_i pi_n(M_i | f_j; phi*) c(M_i, f_j)``, the expected cost of transporting query feature
    ``f_j`` to the memory.

    Args:
        cost: (m, n) Euclidean costs; d: (m, n) navigator distances at the optimised phi*.
    Returns:
        (m,) scores, in the units of the features (>= 0).
    """
    return (forward_transport(d) * cost).sum(dim=1)
