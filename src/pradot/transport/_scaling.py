"""Scaling-domain Sinkhorn with log-domain absorption (paper Eq. 4): the fast solver."""

from __future__ import annotations

import math

import torch

from ._cpu import _build_kernel, _colmin, _lse_cols_out, _lse_rows_out, _Passes, _pick_backend
from ._result import SinkhornResult, _check, _uniform_logs


def sinkhorn(
    M: torch.Tensor,
    eps: float,
    n_iter: int = 100,
    *,
    tol: float | None = None,
    warm_start: tuple[torch.Tensor, torch.Tensor] | None = None,
    dtype: torch.dtype | None = None,
    absorb_threshold: float = 1e6,
    chunk_rows: int | None = None,
    block_rows: int = 256,
    backend: str = "auto",
    threads: int | None = None,
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
    the log-domain plan to rounding error, at the cost of matrix-vector products instead of 2
    log-sum-exps over the matrix.

    Cost per iteration on CPU: one pass over K (the row half of an iteration and the column half of the
    next are fused, row by row, so K is read from memory once); Sinkhorn is memory-bound, so one
    iteration costs about one ``torch.mv`` on K. The plan is built in place on the kernel's storage.

    Args:
        M: (N, P) cost matrix (float32 or float64, any device). Not modified.
        eps: entropic regularisation (> 0).
        n_iter: number of iterations (paper: 100, fixed).
        tol: optional early stop on the column-marginal L1 error (checked every 10 iterations);
            ``None`` (default) runs exactly ``n_iter`` iterations as the paper does.
        warm_start: optional (f, g) potentials (e.g. ``result.f, result.g`` of the previous batch).
        dtype: computation dtype, default M's dtype (float32 is accurate to ~1e-5 relative here).
        absorb_threshold: bound on the scalings before absorption.
        chunk_rows: rows per chunk of the kernel build and of the rare log-domain steps (default: the
            kernel is built in place with no (N, P) temporaries; log-domain steps use chunks of about
            1M entries, which bounds their temporaries at paper scale).
        block_rows: rows per block of the torch CPU fallback's fused pass.
        backend: ``"auto"`` (numba's fused pass on CPU for matrices of at least
            :data:`NUMBA_MIN_ELEMENTS` entries when numba imports, else torch), ``"numba"``, ``"torch"``
            (two matrix-vector products per iteration) or ``"torch-blocked"`` (CPU, one blocked pass).
        threads: CPU threads of the numba pass (default ``torch.get_num_threads()``).
        return_result: return a :class:`SinkhornResult` (plan, potentials, stats) instead of the plan.
    Returns:
        the (N, P) plan, or a :class:`SinkhornResult`.

    References
    ----------
    .. [1] M. Cuturi, "Sinkhorn Distances: Lightspeed Computation of Optimal Transport", NeurIPS 26, 2013
       (the scaling iteration ``u = a / (K v)``, ``v = b / (K^T u)``).
    .. [2] B. Schmitzer, "Stabilized Sparse Scaling Algorithms for Entropy Regularized Transport Problems",
       SIAM Journal on Scientific Computing 41(3), A1443-A1481, 2019 (absorption of large
       scalings into the log-domain potentials).
    .. [3] R. Trombetta and C. Lartizien, "Learning local and global prototypes with optimal transport for
       unsupervised anomaly detection and localization", 2025, Eq. 4.
    """
    _check(M, eps, n_iter)
    dtype = dtype or M.dtype
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating type, got {dtype}")
    M = M.detach().to(dtype)  # the solver is not differentiable (in-place kernel): no graph
    N, P = M.shape
    dev = M.device
    log_a, log_b = _uniform_logs(N, P, dtype, dev)
    a, b = 1.0 / N, 1.0 / P
    backend = _pick_backend(backend, M)

    if warm_start is None:
        f = torch.zeros(N, dtype=dtype, device=dev)
    else:
        f = warm_start[0].to(device=dev, dtype=dtype).clone()
    # Column potential from the hard c-transform: every column of K then has an entry of size b, so
    # no column underflows whatever eps is. The iterates do not depend on this choice (v absorbs it).
    nb = backend == "numba"
    g = _colmin(M, None if warm_start is None else f, chunk_rows, threads, nb) + eps * math.log(b)
    K = _build_kernel(M, f, g, eps, None, chunk_rows, threads, nb)
    passes = _Passes(K, backend, block_rows, threads)
    ones_n = torch.ones(N, dtype=dtype, device=dev)
    u = ones_n.clone()
    v = b / torch.mv(K.T, u)  # column (prototype) half of iteration 1
    n_absorb = 0
    it = 0
    while it < int(n_iter):
        last = it + 1 == int(n_iter)
        stop = False
        # Row half of this iteration and the column half of the next one, in one pass over K on CPU.
        u_new, v_next = passes.row_then_col(v, a, b, need_col=not last)
        worst = _worst(u_new, v_next)  # one host sync per iteration
        if not math.isfinite(worst):
            # Kernel under/overflow: absorb the last good scalings, finish this iteration and the column
            # half of the next one exactly in the log domain, and rebuild the kernel around them.
            f.add_(eps * torch.log(u))
            g.add_(eps * torch.log(v))
            f = eps * (log_a - _lse_cols_out(M, g, eps, chunk_rows))
            u = ones_n.clone()
            if not last:
                g = eps * (log_b - _lse_rows_out(M, f, eps, chunk_rows))
            _build_kernel(M, f, g, eps, K, chunk_rows, threads, nb)
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
                    _build_kernel(M, f, g, eps, K, chunk_rows, threads, nb)
                    u = ones_n.clone()
                    v = torch.ones(P, dtype=dtype, device=dev)
                    n_absorb += 1
        it += 1
        if stop:
            break
    # The last pass computed no next column update, so v is the column scaling of iteration n_iter.
    # plan = diag(u) K diag(v), built in place on the kernel's storage (one pass, with its column sums).
    colsum = passes.scale(u, v)
    if not return_result:
        return K
    f = f + eps * torch.log(u)
    g = g + eps * torch.log(v)
    err = float((colsum - b).abs().sum())
    return SinkhornResult(K, f, g, it, n_absorb, err)


def _worst(u: torch.Tensor, v: torch.Tensor | None) -> float:
    """max(u, 1/u, v, 1/v) over all entries, as one float (inf/nan when a scaling is not finite)."""
    w = torch.maximum(u.amax(), u.amin().reciprocal())
    if v is not None:
        w = torch.maximum(w, torch.maximum(v.amax(), v.amin().reciprocal()))
    return float(w)  # amax/maximum propagate NaN, and 1/0 = inf: both take the log-domain branch
