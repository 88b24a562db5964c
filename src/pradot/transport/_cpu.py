"""CPU machinery of the fast solver: backend choice, numba kernels compiled on first use, a thread pool,
the passes over the kernel matrix, its in-place build and the chunked log-sum-exps."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..buffers import empty_matrix
from ._kernels import _affine_py, _colmin_py, _dot_py, _fused_rows_py, _scale_py

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
        e_ = np.asarray(eps, dtype=Kn.dtype)[()]
        _run_parts(kernels["affine"], [(Mn[s:t], fn[s:t], gn, e_, Kn[s:t]) for s, t in _split_rows(N, threads)])
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
