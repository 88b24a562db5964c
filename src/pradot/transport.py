"""Entropic optimal transport with uniform marginals (paper Eq. 2 and Eq. 4).

Two solvers of the same problem

    T* = argmin_{T in Pi(mu, nu)} <M, T> - eps * H(T),   mu = 1/N, nu = 1/P  (Eq. 4)

- :func:`sinkhorn_log` is the log-domain iteration the authors use (POT's ``sinkhorn_log``): each
  iteration updates the column (prototype) potential first and the row (embedding) potential second,
  so after a fixed number of iterations the row marginals are exact. It is the reference.
- :func:`sinkhorn` is the fast solver: the same iteration in the scaling domain (two matrix-vector
  products on the kernel ``K = exp((f + g - M) / eps)`` per iteration, no per-iteration log-sum-exp),
  stabilised by absorbing the scalings into log-domain potentials whenever they grow large or stop
  being finite (Schmitzer's absorption). Because the absorbed iteration is mathematically the same
  sequence of updates, it returns the same plan as :func:`sinkhorn_log` up to rounding.

Both accept torch tensors on any device; shapes are ``M: (N, P)`` (N embeddings, P prototypes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["SinkhornResult", "sinkhorn", "sinkhorn_log", "transport_cost"]


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
    if not torch.isfinite(M).all():
        raise ValueError("cost matrix contains NaN or inf; check the features (zero-norm or NaN inputs)")


def transport_cost(M: torch.Tensor, plan: torch.Tensor) -> float:
    """<M, T>, the transport part of the objective of Eq. 2 (logged as the OT loss)."""
    return float((M * plan).sum())


def _uniform_logs(N: int, P: int, dtype, device):
    return (
        torch.full((N,), -math.log(N), dtype=dtype, device=device),
        torch.full((P,), -math.log(P), dtype=dtype, device=device),
    )


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


def _build_kernel(M: torch.Tensor, f: torch.Tensor, g: torch.Tensor, eps: float, out: torch.Tensor | None,
                  chunk_rows: int) -> torch.Tensor:
    """K = exp((f_i + g_j - M_ij) / eps), built in row chunks to bound temporaries."""
    N = M.shape[0]
    if out is None:
        out = torch.empty_like(M)
    for s in range(0, N, chunk_rows):
        e = min(N, s + chunk_rows)
        blk = out[s:e]
        torch.sub(g[None, :], M[s:e], out=blk)
        blk.add_(f[s:e, None]).div_(eps).exp_()
    return out


def sinkhorn(
    M: torch.Tensor,
    eps: float,
    n_iter: int = 100,
    *,
    tol: float | None = None,
    warm_start: tuple[torch.Tensor, torch.Tensor] | None = None,
    dtype: torch.dtype | None = None,
    absorb_threshold: float = 1e6,
    chunk_rows: int = 256,
    block_rows: int = 512,
    return_result: bool = False,
):
    """Fast entropic OT plan with uniform marginals for Eq. 4 (same iterates as :func:`sinkhorn_log`).

    Scaling-domain Sinkhorn with log-domain absorption. With potentials (f, g) and the kernel
    ``K = exp((f_i + g_j - M_ij) / eps)``, each iteration is

        v = b / (K^T u)     # column (prototype) scaling first, as POT's sinkhorn_log
        u = a / (K v)       # row (embedding) scaling second

    When a scaling leaves ``[1/absorb_threshold, absorb_threshold]``, it is absorbed into the
    potentials (f += eps log u, g += eps log v) and the kernel is rebuilt. When a scaling stops being
    finite (kernel underflow for small eps, e.g. a row far from every prototype), the last finite
    scalings are absorbed and that iteration is done exactly in the log domain instead. The column
    potential starts at the hard c-transform ``g_j = min_i (M_ij - f_i) + eps log b``, so every column of
    K has an O(b) entry for any eps. The potentials only reparametrise the iterates, so the result is
    the log-domain plan to rounding error, at the cost of matrix-vector products (on CPU, one blocked
    pass over K per iteration doing both products) instead of 2 log-sum-exps over the matrix.

    Args:
        M: (N, P) cost matrix (float32 or float64, any device).
        eps: entropic regularisation (> 0).
        n_iter: number of iterations (paper: 100, fixed).
        tol: optional early stop on the column-marginal L1 error (checked every 10 iterations);
            ``None`` (default) runs exactly ``n_iter`` iterations as the paper does.
        warm_start: optional (f, g) potentials (e.g. ``result.f, result.g`` of the previous batch).
        dtype: computation dtype, default M's dtype (float32 is accurate to ~1e-5 relative here).
        absorb_threshold: bound on the scalings before absorption.
        chunk_rows: rows per chunk when building the kernel (bounds temporary memory at paper scale).
        return_result: return a :class:`SinkhornResult` (plan, potentials, stats) instead of the plan.
    Returns:
        the (N, P) plan, or a :class:`SinkhornResult`.
    """
    _check(M, eps, n_iter)
    dtype = dtype or M.dtype
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating type, got {dtype}")
    M = M.to(dtype)
    N, P = M.shape
    dev = M.device
    log_a, log_b = _uniform_logs(N, P, dtype, dev)
    a, b = 1.0 / N, 1.0 / P

    if warm_start is None:
        f = torch.zeros(N, dtype=dtype, device=dev)
    else:
        f = warm_start[0].to(device=dev, dtype=dtype).clone()
    # Column potential from the hard c-transform: every column of K then has an entry of size b, so
    # no column underflows whatever eps is. The iterates do not depend on this choice (v absorbs it).
    g = _colmin(M, f, chunk_rows) + eps * math.log(b)
    K = _build_kernel(M, f, g, eps, None, chunk_rows)
    ones_n = torch.ones(N, dtype=dtype, device=dev)
    u = ones_n.clone()
    v = b / torch.mv(K.T, u)  # column (prototype) half of iteration 1
    blocked = dev.type == "cpu"
    n_absorb = 0
    it = 0
    while it < int(n_iter):
        last = it + 1 == int(n_iter)
        stop = False
        # Row half of this iteration and the column half of the next one, in one pass over K on CPU.
        u_new, v_next = _row_then_col(K, v, a, b, need_col=not last, blocked=blocked, block_rows=block_rows)
        check = [u_new.max(), 1.0 / u_new.min()]
        if v_next is not None:
            check += [v_next.max(), 1.0 / v_next.min()]
        worst = float(torch.stack(check).max())  # one host sync per iteration
        if not math.isfinite(worst):
            # Kernel under/overflow: absorb the last good scalings, finish this iteration and the column
            # half of the next one exactly in the log domain, and rebuild the kernel around them.
            f.add_(eps * torch.log(u))
            g.add_(eps * torch.log(v))
            f = eps * (log_a - _lse_cols_out(M, g, eps, chunk_rows))
            u = ones_n.clone()
            if not last:
                g = eps * (log_b - _lse_rows_out(M, f, eps, chunk_rows))
            _build_kernel(M, f, g, eps, K, chunk_rows)
            v = torch.ones(P, dtype=dtype, device=dev)
            n_absorb += 1
        else:
            # Column sums of the current plan diag(u_new) K diag(v) are v * (K^T u_new) = v * b / v_next.
            if tol is not None and v_next is not None and (it + 1) % 10 == 0:
                stop = float((v * b / v_next - b).abs().sum()) < tol
            u = u_new
            if v_next is not None and not stop:
                v = v_next
                if worst > absorb_threshold:
                    f.add_(eps * torch.log(u))
                    g.add_(eps * torch.log(v))
                    _build_kernel(M, f, g, eps, K, chunk_rows)
                    u = ones_n.clone()
                    v = torch.ones(P, dtype=dtype, device=dev)
                    n_absorb += 1
        it += 1
        if stop:
            break
    # The last pass computed no next column update, so v is the column scaling of iteration n_iter.
    # plan = diag(u) K diag(v), built in place on the kernel's storage.
    K.mul_(u[:, None]).mul_(v[None, :])
    if not return_result:
        return K
    f = f + eps * torch.log(u)
    g = g + eps * torch.log(v)
    err = float((K.sum(0) - b).abs().sum())
    return SinkhornResult(K, f, g, it, n_absorb, err)


def _row_then_col(K: torch.Tensor, v: torch.Tensor, a: float, b: float, need_col: bool, blocked: bool,
                  block_rows: int):
    """u = a / (K v) and, if need_col, v' = b / (K^T u).

    On CPU both products are done block by block so each block of K is read from memory once while
    it is in cache (Sinkhorn is memory-bound: this halves the traffic). Same arithmetic as two mv's.
    """
    if not blocked or not need_col:
        u = a / torch.mv(K, v)
        return u, (b / torch.mv(K.T, u) if need_col else None)
    N, P = K.shape
    u = torch.empty(N, dtype=K.dtype, device=K.device)
    acc = torch.zeros(P, dtype=K.dtype, device=K.device)
    for s in range(0, N, block_rows):
        Kr = K[s:s + block_rows]
        ur = torch.mv(Kr, v).reciprocal_().mul_(a)
        u[s:s + block_rows] = ur
        acc.addmv_(Kr.T, ur)
    return u, acc.reciprocal_().mul_(b)


def _colmin(M: torch.Tensor, f: torch.Tensor, chunk_rows: int) -> torch.Tensor:
    """min_i (M_ij - f_i): (P,), chunked over rows."""
    N = M.shape[0]
    parts = [(M[s:s + chunk_rows] - f[s:s + chunk_rows, None]).amin(dim=0) for s in range(0, N, chunk_rows)]
    return torch.stack(parts).amin(dim=0)


def _lse_rows_out(M: torch.Tensor, f: torch.Tensor, eps: float, chunk_rows: int) -> torch.Tensor:
    """LSE_i((f_i - M_ij) / eps), reducing over the rows in chunks: (P,)."""
    N = M.shape[0]
    parts = [torch.logsumexp((f[s:s + chunk_rows, None] - M[s:s + chunk_rows]) / eps, dim=0)
             for s in range(0, N, chunk_rows)]
    return torch.logsumexp(torch.stack(parts), dim=0)


def _lse_cols_out(M: torch.Tensor, g: torch.Tensor, eps: float, chunk_rows: int) -> torch.Tensor:
    """LSE_j((g_j - M_ij) / eps), reducing over the columns, rows in chunks: (N,)."""
    N = M.shape[0]
    return torch.cat([torch.logsumexp((g[None, :] - M[s:s + chunk_rows]) / eps, dim=1)
                      for s in range(0, N, chunk_rows)])
