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
import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch

from .buffers import empty_matrix

__all__ = [
    "SinkhornResult",
    "numba_available",
    "sinkhorn",
    "sinkhorn_backend",
    "sinkhorn_log",
    "sinkhorn_profile",
    "transport_cost",
]


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


_BACKENDS = ("auto", "numba", "torch", "torch-blocked")


def numba_available() -> bool:
    """Whether numba's CPU kernels compile here, i.e. whether :func:`sinkhorn` can use ``backend="numba"``
    (and ``"auto"`` picks it for large CPU matrices)."""
    return _numba_kernels() is not None


def sinkhorn_backend(M: torch.Tensor, backend: str = "auto") -> str:
    """The backend :func:`sinkhorn` runs on ``M`` when asked for ``backend``: ``"auto"`` resolves to
    ``"numba"`` (CPU, at least :data:`NUMBA_MIN_ELEMENTS` entries, numba available), ``"torch-blocked"``
    (other CPU matrices) or ``"torch"`` (other devices); an explicit backend is returned as is.

    Raises:
        ValueError: an unknown backend, a CPU-only backend for a GPU tensor, or ``"numba"`` without numba.
    """
    return _pick_backend(backend, M)


def sinkhorn_profile(
    M: torch.Tensor,
    eps: float,
    *,
    backend: str = "auto",
    block_rows: int = 256,
    threads: int | None = None,
    repeats: int = 3,
) -> dict:
    """Milliseconds spent in each phase of a :func:`sinkhorn` solve of ``M``, each phase run on its own
    exactly as the solver runs it (a profile: where a solve's time goes, without a profiler).

    Keys (float, ms; the median of ``repeats`` runs, of ``max(10, repeats)`` runs after a warm-up for the
    per-iteration phases; the first kernel build is run once, as a solve pays it once):

    - ``input_check``: validation of ``M`` (shape, eps, finiteness: one pass over M);
    - ``initial_column_min``: the starting column potential ``min_i M_ij`` (one pass over M);
    - ``kernel_build``: allocation and first build of the (N, P) kernel ``exp((f + g - M) / eps)``;
    - ``kernel_rebuild``: its rebuild in place, which each absorption pays;
    - ``iteration_pass``: one iteration's pass over the kernel (row half and the next column half);
    - ``iteration_check``: the per-iteration stability check of the scalings (one host sync);
    - ``final_scaling``: the plan built in place on the kernel, with its column sums;

    and ``backend`` (str): the backend profiled (:func:`sinkhorn_backend`). A solve of ``n_iter``
    iterations costs about ``input_check + initial_column_min + kernel_build + n_iter * (iteration_pass +
    iteration_check) + n_absorb * kernel_rebuild + final_scaling``. ``M`` is not modified.
    """
    _check(M, eps, 1)
    M = M.detach()
    backend = _pick_backend(backend, M)
    nb = backend == "numba"
    N, P = M.shape
    dev = M.device
    reps, iter_reps = max(1, int(repeats)), max(10, int(repeats))
    prof = {
        "input_check": _median_ms(lambda: _check(M, eps, 1), dev, reps),
        "initial_column_min": _median_ms(lambda: _colmin(M, None, None, threads, nb), dev, reps),
    }
    f = torch.zeros(N, dtype=M.dtype, device=dev)
    g = _colmin(M, None, None, threads, nb) + eps * math.log(1.0 / P)
    built = []
    prof["kernel_build"] = _median_ms(
        lambda: built.append(_build_kernel(M, f, g, eps, None, None, threads, nb)), dev, 1
    )
    K = built.pop()
    prof["kernel_rebuild"] = _median_ms(lambda: _build_kernel(M, f, g, eps, K, None, threads, nb), dev, reps)
    passes = _Passes(K, backend, block_rows, threads)
    u = torch.ones(N, dtype=M.dtype, device=dev)
    v = torch.ones(P, dtype=M.dtype, device=dev)
    prof["iteration_pass"] = _median_ms(
        lambda: passes.row_then_col(v, 1.0 / N, 1.0 / P, True), dev, iter_reps, warmup=1
    )
    prof["iteration_check"] = _median_ms(lambda: _worst(u, v), dev, iter_reps)
    prof["final_scaling"] = _median_ms(lambda: passes.scale(u, v), dev, reps)  # u = v = 1: K unchanged
    prof["backend"] = backend
    return prof


def _median_ms(fn, device: torch.device, repeats: int, warmup: int = 0) -> float:
    """Median wall time of ``fn()`` in milliseconds (GPU work synchronised before and after each call)."""

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, repeats)):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def _pick_backend(backend: str, M: torch.Tensor) -> str:
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    cpu = M.device.type == "cpu"
    if backend == "auto":
        if not cpu:
            return "torch"
        if M.numel() >= NUMBA_MIN_ELEMENTS and _numba_kernels() is not None:
            return "numba"
        return "torch-blocked"
    if backend in ("numba", "torch-blocked") and not cpu:
        raise ValueError(f"backend {backend!r} runs on CPU tensors only (got {M.device})")
    if backend == "numba" and _numba_kernels() is None:
        raise ValueError("backend 'numba' needs the numba package (pip install numba)")
    return backend


def _worst(u: torch.Tensor, v: torch.Tensor | None) -> float:
    """max(u, 1/u, v, 1/v) over all entries, as one float (inf/nan when a scaling is not finite)."""
    w = torch.maximum(u.amax(), u.amin().reciprocal())
    if v is not None:
        w = torch.maximum(w, torch.maximum(v.amax(), v.amin().reciprocal()))
    return float(w)  # amax/maximum propagate NaN, and 1/0 = inf: both take the log-domain branch


# ----------------------------------------------------------------------------------------------------
# CPU performance helpers. Sinkhorn on a large (N, P) matrix is memory-bound: every iteration streams the
# kernel K (N*P floats) through the CPU. The fast path therefore (1) reads K once per iteration (a fused
# row-then-column pass, done by a small numba kernel when numba is importable: it is a dependency of
# umap-learn), (2) builds K in one cache-blocked pass over M without temporaries, (3) avoids fresh large
# allocations inside loops (on a VM each first touch of a 4 KiB page costs microseconds; freeing large
# blocks costs TLB shootdowns) and backs the (N, P) kernel with transparent huge pages where available.
# None of this changes the iterates: the same products are computed in a different order of summation.
# ----------------------------------------------------------------------------------------------------

#: CPU matrices with at least this many entries use the fused numba pass (when numba is available)
NUMBA_MIN_ELEMENTS = 1 << 20
#: target size in elements of a row chunk of the chunked torch passes
_CHUNK_ELEMENTS = 1 << 20

_numba_state: dict = {}
_pool_state: dict = {}


def _auto_rows(P: int, chunk_rows: int | None) -> int:
    if chunk_rows is not None:
        if int(chunk_rows) < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows!r}")
        return int(chunk_rows)
    return max(1, _CHUNK_ELEMENTS // max(P, 1))


def _numba_kernels():
    """The jitted CPU kernels, or None when numba is missing or fails (then plain torch is used)."""
    if "kernels" not in _numba_state:
        try:
            import numba

            # error_model="numpy": x / 0 gives inf (an underflowed kernel row must yield a non-finite scaling,
            # which sends the solver to its log-domain step) instead of raising ZeroDivisionError
            opts = dict(nogil=True, cache=True, error_model="numpy", fastmath={"reassoc", "contract", "arcp"})
            exact = dict(nogil=True, cache=True, error_model="numpy")  # elementwise: IEEE arithmetic, as torch's
            _numba_state["kernels"] = {
                "fused": numba.njit(**opts)(_fused_rows_py),
                "scale": numba.njit(**exact)(_scale_py),
                "affine": numba.njit(**exact)(_affine_py),
                "colmin": numba.njit(**exact)(_colmin_py),
                "dot": numba.njit(**opts)(_dot_py),
            }
        except Exception:  # noqa: BLE001 - any failure means: use the torch path
            _numba_state["kernels"] = None
    return _numba_state["kernels"]


def _pool(n: int):
    from concurrent.futures import ThreadPoolExecutor

    pool = _pool_state.get("pool")
    if pool is None or _pool_state.get("size", 0) < n:
        pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="pradot-sinkhorn")
        _pool_state.update(pool=pool, size=n)
    return pool


def _fused_rows_py(K, v, a, u, acc):  # pragma: no cover - compiled by numba
    """u_i = a / (K_i . v) and acc += u_i K_i for the rows of K, four rows per sweep over the columns.

    Each row is read from memory once (the second use hits the cache), which halves the memory traffic
    of ``u = a / (K v); K^T u``. ``a`` must have K's dtype (float32 stays float32).
    """
    n, P = K.shape
    zero = a - a
    i = 0
    while i + 4 <= n:
        r0 = K[i]
        r1 = K[i + 1]
        r2 = K[i + 2]
        r3 = K[i + 3]
        s0 = zero
        s1 = zero
        s2 = zero
        s3 = zero
        for j in range(P):
            vj = v[j]
            s0 += r0[j] * vj
            s1 += r1[j] * vj
            s2 += r2[j] * vj
            s3 += r3[j] * vj
        u0 = a / s0
        u1 = a / s1
        u2 = a / s2
        u3 = a / s3
        u[i] = u0
        u[i + 1] = u1
        u[i + 2] = u2
        u[i + 3] = u3
        for j in range(P):
            acc[j] += u0 * r0[j] + u1 * r1[j] + u2 * r2[j] + u3 * r3[j]
        i += 4
    while i < n:
        r0 = K[i]
        s0 = zero
        for j in range(P):
            s0 += r0[j] * v[j]
        u0 = a / s0
        u[i] = u0
        for j in range(P):
            acc[j] += u0 * r0[j]
        i += 1


def _scale_py(K, u, v, colsum):  # pragma: no cover - compiled by numba
    """K <- diag(u) K diag(v) in place, and colsum += its column sums (one pass)."""
    n, P = K.shape
    for i in range(n):
        r = K[i]
        ui = u[i]
        for j in range(P):
            x = (r[j] * ui) * v[j]
            r[j] = x
            colsum[j] += x


def _affine_py(M, f, g, eps, K):  # pragma: no cover - compiled by numba
    """K_ij = ((g_j - M_ij) + f_i) / eps (the exponent of the kernel, in torch's order of operations)."""
    n, P = M.shape
    for i in range(n):
        m = M[i]
        k = K[i]
        fi = f[i]
        for j in range(P):
            k[j] = ((g[j] - m[j]) + fi) / eps


def _colmin_py(M, f, out):  # pragma: no cover - compiled by numba
    """out_j = min(out_j, min_i (M_ij - f_i))."""
    n, P = M.shape
    for i in range(n):
        m = M[i]
        fi = f[i]
        for j in range(P):
            x = m[j] - fi
            if x < out[j]:
                out[j] = x


def _dot_py(A, B, out):  # pragma: no cover - compiled by numba
    """out[0] = sum_ij A_ij B_ij, accumulated in double precision per row."""
    n, P = A.shape
    total = 0.0
    for i in range(n):
        a = A[i]
        b = B[i]
        row = 0.0
        for j in range(P):
            row += np.float64(a[j]) * np.float64(b[j])
        total += row
    out[0] = total


def _split_rows(N: int, threads: int | None) -> list[tuple[int, int]]:
    nt = max(1, min(int(threads or torch.get_num_threads()), N // 256 or 1))
    edges = [round(k * N / nt) for k in range(nt + 1)]
    return [(edges[k], edges[k + 1]) for k in range(nt) if edges[k + 1] > edges[k]]


def _run_parts(fn, args_per_part: list) -> None:
    """Run ``fn(*args)`` for each part: the calling thread does the first, pool threads the others (the
    kernels release the GIL)."""
    if len(args_per_part) == 1:
        fn(*args_per_part[0])
        return
    pool = _pool(len(args_per_part) - 1)
    futures = [pool.submit(fn, *args) for args in args_per_part[1:]]
    fn(*args_per_part[0])
    for fut in futures:
        fut.result()


class _Passes:
    """The passes over the kernel K of one solve: ``u = a / (K v)`` (+ ``v' = b / (K^T u)``), and the final
    ``diag(u) K diag(v)`` with its column sums.

    backends: ``numba`` (CPU: one read of K per iteration, rows split over threads), ``torch-blocked``
    (CPU without numba: each row block is multiplied twice while it is in cache), ``torch`` (two
    matrix-vector products; GPUs, small matrices).
    """

    def __init__(self, K: torch.Tensor, backend: str, block_rows: int, threads: int | None):
        self.K = K
        self.backend = backend
        self.block_rows = int(block_rows)
        if backend == "numba":
            kernels = _numba_kernels()
            self.fused, self.scale_kernel = kernels["fused"], kernels["scale"]
            self.parts = _split_rows(K.shape[0], threads)
            self.Kn = K.numpy()
            self.accs = [torch.zeros(K.shape[1], dtype=K.dtype) for _ in self.parts]

    def row_then_col(self, v: torch.Tensor, a: float, b: float, need_col: bool):
        K = self.K
        if not need_col or self.backend == "torch":
            u = torch.mv(K, v).reciprocal_().mul_(a)
            return u, (torch.mv(K.T, u).reciprocal_().mul_(b) if need_col else None)
        N, P = K.shape
        u = torch.empty(N, dtype=K.dtype, device=K.device)
        if self.backend == "numba":
            a_ = np.asarray(a, dtype=self.Kn.dtype)[()]
            vn, un = v.numpy(), u.numpy()
            for acc in self.accs:
                acc.zero_()
            _run_parts(
                self.fused, [(self.Kn[s:e], vn, a_, un[s:e], acc.numpy()) for (s, e), acc in zip(self.parts, self.accs)]
            )
            acc = self.accs[0] if len(self.accs) == 1 else torch.stack(self.accs).sum(0)
            return u, acc.reciprocal().mul_(b)
        acc = torch.zeros(P, dtype=K.dtype, device=K.device)
        for s in range(0, N, self.block_rows):
            Kr = K[s : s + self.block_rows]
            ur = u[s : s + self.block_rows]
            torch.mv(Kr, v, out=ur)
            ur.reciprocal_().mul_(a)
            acc.addmv_(Kr.T, ur)
        return u, acc.reciprocal_().mul_(b)

    def scale(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """K <- diag(u) K diag(v) in place; returns the column sums of the result."""
        K = self.K
        if self.backend == "numba":
            for acc in self.accs:
                acc.zero_()
            un, vn = u.numpy(), v.numpy()
            _run_parts(
                self.scale_kernel,
                [(self.Kn[s:e], un[s:e], vn, acc.numpy()) for (s, e), acc in zip(self.parts, self.accs)],
            )
            return self.accs[0].clone() if len(self.accs) == 1 else torch.stack(self.accs).sum(0)
        K.mul_(u[:, None]).mul_(v[None, :])
        return K.sum(0)


def _build_kernel(
    M: torch.Tensor,
    f: torch.Tensor,
    g: torch.Tensor,
    eps: float,
    out: torch.Tensor | None,
    chunk_rows: int | None,
    threads: int | None = None,
    use_numba: bool = False,
) -> torch.Tensor:
    """K = exp((f_i + g_j - M_ij) / eps) with no (N, P) temporaries (in place on ``out``).

    With numba (CPU, large matrices) the exponent is written in one pass over M and exponentiated in
    place by torch (vectorised exp); otherwise four in-place torch passes, optionally in row chunks.
    The arithmetic is the same in every path: ``exp(((g_j - M_ij) + f_i) / eps)``.
    """
    N, P = M.shape
    if out is None:
        out = empty_matrix((N, P), M.dtype, M.device)
    kernels = _numba_kernels() if (use_numba and M.device.type == "cpu" and chunk_rows is None) else None
    if kernels is not None and M.is_contiguous():
        Mn, fn, gn, Kn = M.numpy(), f.contiguous().numpy(), g.contiguous().numpy(), out.numpy()
        e = np.asarray(eps, dtype=Kn.dtype)[()]
        _run_parts(kernels["affine"], [(Mn[s:t], fn[s:t], gn, e, Kn[s:t]) for s, t in _split_rows(N, threads)])
        return out.exp_()
    rows = N if chunk_rows is None else int(chunk_rows)  # in place: no temporaries to bound
    g_row = g[None, :]
    for s in range(0, N, rows):
        e = min(N, s + rows)
        blk = out[s:e]
        torch.sub(g_row, M[s:e], out=blk)
        blk.add_(f[s:e, None]).div_(eps).exp_()
    return out


def _colmin(
    M: torch.Tensor, f: torch.Tensor | None, chunk_rows: int | None, threads: int | None = None, use_numba: bool = False
) -> torch.Tensor:
    """min_i (M_ij - f_i): (P,) without (N, P) temporaries (``f=None``: f = 0)."""
    N, P = M.shape
    if f is None:
        return M.amin(dim=0)
    kernels = _numba_kernels() if (use_numba and M.device.type == "cpu") else None
    if kernels is not None and M.is_contiguous():
        parts = _split_rows(N, threads)
        outs = [torch.full((P,), math.inf, dtype=M.dtype) for _ in parts]
        Mn, fn = M.numpy(), f.contiguous().numpy()
        _run_parts(kernels["colmin"], [(Mn[s:e], fn[s:e], o.numpy()) for (s, e), o in zip(parts, outs)])
        return torch.stack(outs).amin(0)
    if M.device.type != "cpu" and chunk_rows is None:
        return (M - f[:, None]).amin(dim=0)
    rows = _auto_rows(P, chunk_rows)
    out = torch.empty(P, dtype=M.dtype, device=M.device)
    part = torch.empty(P, dtype=M.dtype, device=M.device)
    buf = torch.empty(min(rows, N), P, dtype=M.dtype, device=M.device)  # reused: no allocation per chunk
    for s in range(0, N, rows):
        e = min(N, s + rows)
        blk = torch.sub(M[s:e], f[s:e, None], out=buf[: e - s])
        torch.amin(blk, dim=0, out=part if s else out)
        if s:
            torch.minimum(out, part, out=out)
    return out


def _all_finite(M: torch.Tensor) -> bool:
    """All entries finite, without a (N, P) boolean temporary: a finite sum implies finite entries."""
    if math.isfinite(float(M.sum())):
        return True
    return bool(torch.isfinite(M).all())


def _lse_rows_out(M: torch.Tensor, f: torch.Tensor, eps: float, chunk_rows: int | None) -> torch.Tensor:
    """LSE_i((f_i - M_ij) / eps), reducing over the rows in chunks: (P,)."""
    N, P = M.shape
    rows = _auto_rows(P, chunk_rows) if M.device.type == "cpu" else (int(chunk_rows) if chunk_rows else N)
    parts = [torch.logsumexp((f[s : s + rows, None] - M[s : s + rows]) / eps, dim=0) for s in range(0, N, rows)]
    return torch.logsumexp(torch.stack(parts), dim=0)


def _lse_cols_out(M: torch.Tensor, g: torch.Tensor, eps: float, chunk_rows: int | None) -> torch.Tensor:
    """LSE_j((g_j - M_ij) / eps), reducing over the columns, rows in chunks: (N,)."""
    N, P = M.shape
    rows = _auto_rows(P, chunk_rows) if M.device.type == "cpu" else (int(chunk_rows) if chunk_rows else N)
    return torch.cat([torch.logsumexp((g[None, :] - M[s : s + rows]) / eps, dim=1) for s in range(0, N, rows)])
