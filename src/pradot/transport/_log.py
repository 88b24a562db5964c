"""Log-domain Sinkhorn (paper Eq. 4): the reference solver."""

from __future__ import annotations

import torch

from ._result import SinkhornResult, _check, _uniform_logs


def sinkhorn_log(
    M: torch.Tensor,
    eps: float,
    n_iter: int = 100,
    *,
    tol: float | None = None,
    warm_start: tuple[torch.Tensor, torch.Tensor] | None = None,
    dtype: torch.dtype | None = None,
    return_result: bool = False,
):
    """Log-domain Sinkhorn for Eq. 4 with uniform marginals (the authors' solver, POT order).

    Iteration (potentials f: (N,), g: (P,), log a = -log N, log b = -log P):
        g = eps * (log b - LSE_i((f_i - M_ij) / eps))    # column (prototype) update first
        f = eps * (log a - LSE_j((g_j - M_ij) / eps))    # then row (embedding) update
    and T = exp((f_i + g_j - M_ij) / eps).

    Args:
        M: (N, P) cost matrix.
        eps: entropic regularisation (> 0).
        n_iter: number of iterations (the paper: 100, fixed).
        tol: optional early stop when the column-marginal L1 error drops below it (checked every
            10 iterations, like POT); ``None`` runs exactly ``n_iter`` iterations.
        warm_start: optional (f, g) potentials from an earlier solve of a similar problem.
        dtype: computation dtype (default: M's dtype).
        return_result: return a :class:`SinkhornResult` instead of the plan.
    Returns:
        the (N, P) plan, or a :class:`SinkhornResult`.

    References
    ----------
    .. [1] M. Cuturi, "Sinkhorn Distances: Lightspeed Computation of Optimal Transport", NeurIPS 26, 2013.
    .. [2] R. Trombetta and C. Lartizien, "Learning local and global prototypes with optimal transport for
       unsupervised anomaly detection and localization", 2025, Eq. 4 (solved with POT's ``sinkhorn_log``).
    """
    _check(M, eps, n_iter)
    dtype = dtype or M.dtype
    M = M.to(dtype)
    N, P = M.shape
    log_a, log_b = _uniform_logs(N, P, dtype, M.device)
    Mr = -M / eps  # (N, P)
    if warm_start is None:
        u = torch.zeros(N, dtype=dtype, device=M.device)
    else:
        u = warm_start[0].to(dtype) / eps
    v = torch.zeros(P, dtype=dtype, device=M.device)
    it = 0
    err = float("nan")
    for it in range(1, int(n_iter) + 1):
        v = log_b - torch.logsumexp(Mr + u[:, None], dim=0)
        u = log_a - torch.logsumexp(Mr + v[None, :], dim=1)
        if tol is not None and it % 10 == 0:
            col = torch.exp(Mr + u[:, None] + v[None, :]).sum(0)
            err = float((col - log_b.exp()).abs().sum())
            if err < tol:
                break
    plan = torch.exp(Mr + u[:, None] + v[None, :])
    if not return_result:
        return plan
    err = float((plan.sum(0) - 1.0 / P).abs().sum())
    return SinkhornResult(plan, u * eps, v * eps, it, 0, err)
