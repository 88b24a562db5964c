"""Section ``ot``: the OT solver of a training step against the authors' solver.

On the Eq. 3 cost matrix of the first training batch (backbone stage 2 of the synthetic screw_bag, the
initial prototypes; :func:`first_batch_cost`) it measures

- ``pradot.transport.sinkhorn`` in float32, 100 iterations, eps 0.01: first call (numba JIT or cache load,
  first touch of the kernel's pages), then the median of ``--repeats``; on CPU also its ``torch-blocked``
  and ``torch`` (two matrix-vector products) backends;
- the memory-bandwidth floor: one ``torch.mv`` over the (N, P) kernel per iteration;
- the share of plan entries above 1e-6 / 1e-8 / 1e-10 of their row's maximum (does a sparse kernel pay?);
- ``pradot.transport.sinkhorn_profile``: the milliseconds of each phase of a solve;
- POT's ``ot.bregman.sinkhorn(..., method="sinkhorn_log", numItermax=100)`` on float64 (as the authors run
  it) and float32: time, and plan agreement ``max |ours - POT| / max POT`` with NaN/inf checks for eps in
  {0.001, 0.01, 0.1}. With ``--skip-pot`` (or too little memory for POT) our log-domain ``sinkhorn_log``
  on a row subsample is the oracle instead, and no speedup is reported.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import torch

from benchmarks.harness import available_memory_gb, log, med, sync, timed
from pradot.backbone import load_backbone
from pradot.data import ImageDataset
from pradot.prototypes import BankConfig, PrototypeBank
from pradot.transport import sinkhorn, sinkhorn_backend, sinkhorn_log, sinkhorn_profile

EPSILONS = (0.001, 0.01, 0.1)
MAIN_EPS = 0.01  # the paper's epsilon
N_ITER = 100  # the paper's fixed number of iterations

# sinkhorn_profile's keys -> the keys of profile_ms in the JSON (kept from the first benchmark runs)
PROFILE_KEYS = {
    "input_check": "input_check",
    "initial_column_min": "initial_column_min",
    "kernel_build": "kernel_alloc_and_build",
    "kernel_rebuild": "kernel_rebuild_in_place (absorption)",
    "iteration_pass": "iteration_pass (row+next column)",
    "iteration_check": "per_iteration_check_and_host_sync",
    "final_scaling": "final_plan_scaling",
    "backend": "backend",
}


def pot_sinkhorn(M, eps: float, n_iter: int = N_ITER):
    """POT's log-domain Sinkhorn as the authors call it, forced to run exactly ``n_iter`` iterations."""
    import ot

    N, P = M.shape
    if isinstance(M, torch.Tensor):
        a = torch.full((N,), 1.0 / N, dtype=M.dtype, device=M.device)
        b = torch.full((P,), 1.0 / P, dtype=M.dtype, device=M.device)
    else:
        a, b = np.full(N, 1.0 / N, dtype=M.dtype), np.full(P, 1.0 / P, dtype=M.dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "did not converge": expected at a fixed iteration count
        return ot.bregman.sinkhorn(a, b, M, reg=eps, method="sinkhorn_log", numItermax=n_iter, stopThr=0.0)


def as_f64(T) -> torch.Tensor:
    return (T if isinstance(T, torch.Tensor) else torch.from_numpy(np.asarray(T))).detach().double().cpu()


def agreement(T, ref) -> float:
    """max |T - ref| / max ref."""
    T, ref = as_f64(T), as_f64(ref)
    return float((T - ref).abs().max() / ref.abs().max())


def finite(T) -> bool:
    return bool(torch.isfinite(T if isinstance(T, torch.Tensor) else as_f64(T)).all())


def first_batch_cost(ds, args, device: torch.device, batch: int, n: int) -> tuple[torch.Tensor, dict]:
    """The Eq. 3 cost matrix of the first training batch (as training builds it) and the times of its two
    builders: ``PrototypeBank.grid_cost`` (in place, used by training) and, where it fits, the direct
    formula ``PrototypeBank.cost`` with their largest difference."""
    bb = load_backbone(args.backbone, (2,), device=device)
    train = ImageDataset(ds.samples("train")[:batch], args.image_size)
    x = torch.stack([train[i]["image"] for i in range(len(train))]).to(device)
    with torch.no_grad():
        f2 = torch.cat([bb(x[i : i + 16])[2] for i in range(0, len(x), 16)])
    cfg = BankConfig(
        stage=2,
        alpha=0.3,
        n=n,
        grid=tuple(f2.shape[2:]),
        dim=f2.shape[1],
        backbone=args.backbone,
        image_size=args.image_size,
    )
    bank = PrototypeBank(cfg, seed=0, device=device)
    z, c = bank.embeddings(f2)
    M, tc = timed(lambda: bank.grid_cost(z), device, 3)
    info = {"grid_cost_s (PrototypeBank.grid_cost, used by training)": med(tc)}
    if not args.paper_scale:  # the in-place builder is Eq. 3 (checked where the direct formula fits)
        direct, td = timed(lambda: bank.cost(z, c), device, 3)
        info["direct_cost_s (PrototypeBank.cost, the formula)"] = med(td)
        info["max_abs_diff"] = float((M - direct).abs().max())
        log(
            f"[ot] cost matrix: direct formula {med(td):.2f} s, in-place grid_cost {med(tc):.2f} s "
            f"(max abs diff {info['max_abs_diff']:.1e})"
        )
    return M, info


def ot_section(M: torch.Tensor, args, device: torch.device) -> dict:
    """All the measurements of the section on the cost matrix ``M`` (see the module docstring)."""
    N, P = M.shape
    out: dict = {"shape": [N, P], "n_iter": N_ITER, "eps": MAIN_EPS, "dtype_ours": "float32"}
    gb = N * P / 2**30
    est = {
        "cost_matrix_float32_gb": round(4 * gb, 2),
        "ours_float32_gb (M + kernel/plan)": round(8 * gb, 2),
        "pot_float64_gb (M64 + plan + log-domain temporaries, approx.)": round(8 * gb * 4, 2),
    }
    out["memory_estimate"] = est
    log(f"[ot] cost matrix {N} x {P}; memory estimate: " + ", ".join(f"{k} {v}" for k, v in est.items()))
    plan = time_ours(M, args, device, out)
    bandwidth_floor(plan, device, out)
    del plan
    out["profile_ms"] = {PROFILE_KEYS.get(k, k): v for k, v in sinkhorn_profile(M, MAIN_EPS).items()}
    out["oracle"] = choose_oracle(M, args, device, out)
    if out["oracle"] == "pot_sinkhorn_log":
        compare_with_pot(M, args, device, out)
    else:
        compare_with_subsample(M, args, out)
    return out


def time_ours(M: torch.Tensor, args, device: torch.device, out: dict) -> torch.Tensor:
    """Our solver: first call, median of ``--repeats``, backend, absorptions, marginal error, plan density,
    and on CPU the two torch backends. Returns the plan."""
    t = time.perf_counter()
    sinkhorn(M, MAIN_EPS, N_ITER)  # numba JIT compile (or cache load) + huge-page first touch
    sync(device)
    out["ours_first_call_s"] = time.perf_counter() - t
    res, times = timed(lambda: sinkhorn(M, MAIN_EPS, N_ITER, return_result=True), device, args.repeats)
    plan = res.plan
    out["ours_s"] = med(times)
    out["ours_times_s"] = times
    out["ours_backend"] = sinkhorn_backend(M)
    out["ours_n_absorb"] = res.n_absorb
    out["ours_marginal_error"] = res.marginal_error
    # how sparse is the plan? (a truncated-kernel solver only pays off if most entries are negligible)
    row_max = plan.amax(dim=1, keepdim=True)
    out["plan_density"] = {
        f"entries_above_{th:g}_of_row_max": float((plan > th * row_max).float().mean()) for th in (1e-6, 1e-8, 1e-10)
    }
    del row_max
    log(
        f"[ot] ours ({out['ours_backend']}, float32): {out['ours_s']:.3f} s (median of {len(times)}; "
        f"first call {out['ours_first_call_s']:.2f} s)"
    )
    if device.type == "cpu":  # the other solver variants on the same input (what the fused pass buys)
        for backend in ("torch-blocked", "torch"):
            _, tb = timed(lambda b=backend: sinkhorn(M, MAIN_EPS, N_ITER, backend=b), device, max(1, args.repeats // 2))
            out[f"ours_{backend.replace('-', '_')}_s"] = med(tb)
            log(f"[ot] ours, backend={backend}: {med(tb):.3f} s")
    return plan


def bandwidth_floor(plan: torch.Tensor, device: torch.device, out: dict) -> None:
    """The memory-bandwidth floor: one ``torch.mv`` over an (N, P) matrix per iteration (two for the
    solvers that read the kernel twice per iteration); the least disturbed run is the machine's bandwidth."""
    v = torch.ones(plan.shape[1], dtype=plan.dtype, device=device)
    _, tmv = timed(lambda: torch.mv(plan, v), device, 30, warmup=2)
    out["mv_ms"] = 1e3 * med(tmv)
    out["mv_ms_min"] = 1e3 * min(tmv)
    out["floor_1pass_s"] = N_ITER * min(tmv)
    out["floor_2pass_s"] = 2 * N_ITER * min(tmv)
    out["ours_over_floor_1pass"] = out["ours_s"] / out["floor_1pass_s"]
    log(
        f"[ot] torch.mv on the kernel: {out['mv_ms']:.1f} ms median, {out['mv_ms_min']:.1f} ms min -> floor "
        f"{out['floor_1pass_s']:.2f} s (1 pass/iter), {out['floor_2pass_s']:.2f} s (2 passes/iter)"
    )


def choose_oracle(M: torch.Tensor, args, device: torch.device, out: dict) -> str:
    """POT, unless ``--skip-pot`` or its float64 temporaries would not fit in the available memory."""
    if args.skip_pot:
        return "pradot_sinkhorn_log_subsample"
    need = 8 * M.numel() * 4 / 2**30
    avail = available_memory_gb() if device.type == "cpu" else None
    if avail is not None and need > 0.8 * avail:
        log(f"[ot] POT float64 would need ~{need:.1f} GB, {avail:.1f} GB available: using the subsample oracle")
        out["pot_skipped_reason"] = f"memory: needs ~{need:.1f} GB, {avail:.1f} GB available"
        return "pradot_sinkhorn_log_subsample"
    return "pot_sinkhorn_log"


def compare_with_pot(M: torch.Tensor, args, device: torch.device, out: dict) -> None:
    """POT float64 per eps (time, finiteness, agreement), POT float32 at eps 0.01, then our solver again
    right after POT (the load of a shared machine drifts: both medians are reported) and the speedups.

    POT's backend follows its inputs: torch tensors (the authors' PyTorch code) give its TorchBackend
    (multi-threaded torch ops), numpy arrays its NumpyBackend (single-threaded numpy/scipy)."""
    out["pot_backend"] = args.pot_backend
    M64 = M.double() if args.pot_backend == "torch" else M.double().cpu().numpy()
    per_eps = {}
    for eps in EPSILONS:
        ref, tp = timed(lambda e=eps: pot_sinkhorn(M64, e), device, args.pot_repeats if eps == MAIN_EPS else 1)
        ours = sinkhorn(M, eps, N_ITER)
        per_eps[str(eps)] = {
            "pot_float64_s": med(tp),
            "pot_finite": finite(ref),
            "ours_finite": finite(ours),
            "agreement": agreement(ours, ref),
        }
        log(
            f"[ot] eps={eps}: POT ({args.pot_backend}) float64 {med(tp):.2f} s; ours finite="
            f"{per_eps[str(eps)]['ours_finite']}, agreement {per_eps[str(eps)]['agreement']:.2e}"
        )
        if eps == MAIN_EPS:
            out["pot_float64_s"] = med(tp)
            out["pot_float64_times_s"] = tp
            out["agreement"] = per_eps[str(eps)]["agreement"]
        del ref, ours
    M64 = None  # free POT's float64 input before the next measurements
    if args.pot_numpy_too and args.pot_backend == "torch":  # POT on numpy arrays too (single thread: slow)
        _, tp = timed(lambda: pot_sinkhorn(M.double().cpu().numpy(), MAIN_EPS), device, 1)
        out["pot_numpy_float64_s"] = med(tp)
        out["speedup_vs_pot_numpy_float64"] = med(tp) / out["ours_s"]
        log(f"[ot] POT (numpy) float64: {med(tp):.2f} s")
    if not args.skip_pot_float32:
        pot_float32(M if args.pot_backend == "torch" else M.cpu().numpy(), args, device, out)
    _, t2 = timed(lambda: sinkhorn(M, MAIN_EPS, N_ITER), device, args.repeats)
    out["ours_after_pot_s"] = med(t2)
    out["ours_s_all_runs_median"] = med(out["ours_times_s"] + t2)
    out["speedup_vs_pot_float64"] = out["pot_float64_s"] / out["ours_s_all_runs_median"]
    if "pot_float32_s" in out:
        out["speedup_vs_pot_float32"] = out["pot_float32_s"] / out["ours_s_all_runs_median"]
    out["per_eps"] = per_eps


def pot_float32(M32, args, device: torch.device, out: dict) -> None:
    """POT on float32 at eps 0.01 (one run): its time and whether its plan stays finite."""
    try:
        ref32, tp32 = timed(lambda: pot_sinkhorn(M32, MAIN_EPS), device, 1)
        out["pot_float32_s"] = med(tp32)
        out["pot_float32_finite"] = finite(ref32)
        log(f"[ot] POT ({args.pot_backend}) float32: {med(tp32):.2f} s (finite: {out['pot_float32_finite']})")
    except Exception as e:  # noqa: BLE001 - recorded in the JSON
        out["pot_float32_error"] = f"{type(e).__name__}: {e}"
        log(f"[ot] POT float32 failed: {out['pot_float32_error']}")


def compare_with_subsample(M: torch.Tensor, args, out: dict) -> None:
    """Without POT: our log-domain ``sinkhorn_log`` (float64) on the first ``--subsample-rows`` rows (same
    columns) is the oracle of our fast solver on the same rows, per eps. No time of POT, so no speedup."""
    N, P = M.shape
    rows = min(N, args.subsample_rows)
    Ms = M[:rows].contiguous()
    out["subsample_shape"] = [rows, P]
    per_eps = {}
    for eps in EPSILONS:
        ref = sinkhorn_log(Ms.double(), eps, N_ITER)
        ours = sinkhorn(Ms, eps, N_ITER)
        per_eps[str(eps)] = {
            "ours_finite": finite(ours),
            "oracle_finite": finite(ref),
            "agreement": agreement(ours, ref),
        }
        log(
            f"[ot] eps={eps} (subsample {rows} x {P}): ours finite={per_eps[str(eps)]['ours_finite']}, "
            f"agreement vs sinkhorn_log {per_eps[str(eps)]['agreement']:.2e}"
        )
        if eps == MAIN_EPS:
            out["agreement"] = per_eps[str(eps)]["agreement"]
    out["per_eps"] = per_eps
