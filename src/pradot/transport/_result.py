"""The result of a Sinkhorn solve, the checks every solver runs on its input, and ``<M, T>``."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ._cpu import NUMBA_MIN_ELEMENTS, _all_finite, _numba_kernels, _run_parts, _split_rows


@dataclass
class SinkhornResult:
    """A transport plan with the potentials that produced it (usable as a warm start)."""

    plan: torch.Tensor  # (N, P)
    f: torch.Tensor  # (N,) row potential, plan = exp((f_i + g_j - M_ij) / eps)
    g: torch.Tensor  # (P,) column potential
    n_iter: int  # iterations actually run
    n_absorb: int  # number of absorptions (0 for the log-domain solver)
    marginal_error: float  # L1 error of the column marginal at the end


def _check(M: torch.Tensor, eps: float, n_iter: int) -> None:
    if M.ndim != 2:
        raise ValueError(f"cost matrix must be 2-D (N, P), got shape {tuple(M.shape)}")
    if M.shape[0] == 0 or M.shape[1] == 0:
        raise ValueError(f"cost matrix is empty: shape {tuple(M.shape)}")
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
        raise ValueError(f"entropic regularisation eps must be a finite number > 0, got {eps!r}")
    if int(n_iter) < 1:
        raise ValueError(f"n_iter must be >= 1, got {n_iter!r}")
    if not _all_finite(M):
        raise ValueError("cost matrix contains NaN or inf; check the features (zero-norm or NaN inputs)")


def transport_cost(M: torch.Tensor, plan: torch.Tensor) -> float:
    """<M, T>, the transport part of the objective of Eq. 2 (logged as the OT loss).

    On CPU with numba, a one-pass kernel with double-precision accumulation (no (N, P) temporary, which
    the product ``M * T`` would be); otherwise the direct formula.
    """
    if M.shape != plan.shape:
        raise ValueError(f"cost {tuple(M.shape)} and plan {tuple(plan.shape)} differ in shape")
    if (
        M.device.type == "cpu"
        and plan.device.type == "cpu"
        and M.dtype == plan.dtype
        and M.ndim == 2
        and M.numel() >= NUMBA_MIN_ELEMENTS
        and M.is_contiguous()
        and plan.is_contiguous()
        and M.dtype in (torch.float32, torch.float64)
        and _numba_kernels() is not None
    ):
        kern = _numba_kernels()["dot"]
        Mn, Tn = M.detach().numpy(), plan.detach().numpy()
        parts = _split_rows(M.shape[0], None)
        sums = np.zeros(len(parts))
        _run_parts(kern, [(Mn[s:e], Tn[s:e], sums[k : k + 1]) for k, (s, e) in enumerate(parts)])
        return float(sums.sum())
    return float((M * plan).sum())


def _uniform_logs(N: int, P: int, dtype, device):
    return (
        torch.full((N,), -math.log(N), dtype=dtype, device=device),
        torch.full((P,), -math.log(P), dtype=dtype, device=device),
    )
