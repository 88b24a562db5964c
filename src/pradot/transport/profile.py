"""Where a :func:`~pradot.transport.sinkhorn` solve spends its time, phase by phase (no profiler needed)."""

from __future__ import annotations

import math
import statistics
import time

import torch

from ._cpu import _build_kernel, _colmin, _Passes, _pick_backend
from ._result import _check
from ._scaling import _worst

__all__ = ["sinkhorn_profile"]


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
    prof: dict[str, float | str] = {
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
