"""Performance benchmark of PRADOT (issue 6): OT solver, training epoch with/without the feature cache,
scoring overhead, peak memory. One run, the same inputs for every comparison, one JSON file.

    python pipelines/benchmark.py                                   # CPU-sized (the 12,544 x 3,136 OT case)
    python pipelines/benchmark.py --device cuda --paper-scale       # batch 64, n=16: 50,176 x 12,544
    python pipelines/benchmark.py --skip-pot --repeats 5 --output benchmarks/results/mine.json

Sections (``--sections ot,epoch,scoring`` to run a subset):

- ``ot``: ``pradot.transport.sinkhorn`` (float32, 100 iterations) against POT's
  ``ot.bregman.sinkhorn(..., method="sinkhorn_log", numItermax=100)`` on float64 (as the authors run it)
  and on float32, on the cost matrix of the first training batch (Eq. 3, efficientnet_lite0 stage 2 of
  the synthetic screw_bag, initial prototypes). Plan agreement = max |ours - POT| / max POT; per eps in
  {0.001, 0.01, 0.1}: NaN/inf check and agreement. Also the memory-bandwidth floor (one ``torch.mv`` on
  the kernel per iteration) and a profile of our solver's phases. ``--skip-pot``: our log-domain
  ``sinkhorn_log`` on a row subsample is the oracle instead.
- ``epoch``: seconds per training epoch recomputing features (``PRADOT.fit``: image decoding + backbone +
  OT) vs from the memory-mapped cache (``FeatureCache`` + ``PRADOT.fit_features``), same schedule.
- ``scoring``: ``assignment_scores`` (Eq. 6) per image vs the backbone forward per image (n=16, stage 2).

The MLproject entry point passes everything as one string (``python pipelines/benchmark.py {args}``):
arguments containing spaces are split, empty ones ignored.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
try:  # the project installed, or its src/ folder
    import pradot  # noqa: F401
except ImportError:
    sys.path.insert(0, str(REPO / "src"))

import numpy as np
import torch

from pradot.backbone import load_backbone
from pradot.cost import spatial_cost
from pradot.data import ImageDataset, load_dataset
from pradot.features import FeatureCache
from pradot.model import PRADOT, PRADOTConfig
from pradot.prototypes import BankConfig, PrototypeBank
from pradot.scoring import assignment_scores, cell_copies, fuse_maps, image_scores, stage_maps, upsample_maps
from pradot import transport
from pradot.transport import sinkhorn, sinkhorn_log

EPSILONS = (0.001, 0.01, 0.1)
MAIN_EPS = 0.01  # the paper's epsilon


# -------------------------------------------------------------------------------------------- helpers

def log(msg: str) -> None:
    print(msg, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int = 1, warmup: int = 0):
    """(result of the last call, list of seconds per call)."""
    out = None
    for _ in range(warmup):
        out = fn()
        sync(device)
    times = []
    for _ in range(max(1, repeats)):
        sync(device)
        t = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return out, times


def med(xs) -> float:
    return float(statistics.median(xs))


def rss_peak_mb() -> float:
    """Peak resident set size of this process (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def memory_section(device: torch.device) -> dict:
    out = {"process_peak_rss_mb": round(rss_peak_mb(), 1)}
    if device.type == "cuda":
        out["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1)
        torch.cuda.reset_peak_memory_stats(device)
    return out


def available_memory_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2 ** 20
    except OSError:
        pass
    return None


def machine_info(device: torch.device) -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
        "memory_gb": None, "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    try:
        info["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    for mod in ("ot", "numba", "timm"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            info[mod] = None
    info["numba_kernels"] = transport._numba_kernels() is not None
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                            timeout=10).stdout.strip() or None
        info["git_dirty"] = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                                                capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = None
    return info


def pot_sinkhorn(M, eps: float, n_iter: int = 100):
    """POT's log-domain Sinkhorn as the authors call it, forced to run exactly n_iter iterations."""
    import warnings

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
    return bool(torch.isfinite(as_f64(T)).all()) if not isinstance(T, torch.Tensor) else bool(torch.isfinite(T).all())


# ------------------------------------------------------------------------------------------- sections

def ot_section(M: torch.Tensor, args, device: torch.device) -> dict:
    N, P = M.shape
    out: dict = {"shape": [N, P], "n_iter": 100, "eps": MAIN_EPS, "dtype_ours": "float32"}
    gb = N * P / 2 ** 30
    est = {"cost_matrix_float32_gb": round(4 * gb, 2), "ours_float32_gb (M + kernel/plan)": round(8 * gb, 2),
           "pot_float64_gb (M64 + plan + log-domain temporaries, approx.)": round(8 * gb * 4, 2)}
    out["memory_estimate"] = est
    log(f"[ot] cost matrix {N} x {P}; memory estimate: " + ", ".join(f"{k} {v}" for k, v in est.items()))

    # first call: numba JIT compile (or cache load) + huge-page first touch
    t = time.perf_counter()
    sinkhorn(M, MAIN_EPS, 100)
    sync(device)
    out["ours_first_call_s"] = time.perf_counter() - t
    res, times = timed(lambda: sinkhorn(M, MAIN_EPS, 100, return_result=True), device, args.repeats)
    ours = res.plan
    out["ours_s"] = med(times)
    out["ours_times_s"] = times
    out["ours_backend"] = transport._pick_backend("auto", M)
    out["ours_n_absorb"] = res.n_absorb
    out["ours_marginal_error"] = res.marginal_error
    # how sparse is the plan? (a truncated-kernel solver only pays off if most entries are negligible)
    row_max = ours.amax(dim=1, keepdim=True)
    out["plan_density"] = {f"entries_above_{th:g}_of_row_max": float((ours > th * row_max).float().mean())
                           for th in (1e-6, 1e-8, 1e-10)}
    del row_max
    log(f"[ot] ours ({out['ours_backend']}, float32): {out['ours_s']:.3f} s (median of {len(times)}; "
        f"first call {out['ours_first_call_s']:.2f} s)")

    if device.type == "cpu":  # the other solver variants on the same input (what the fused pass buys)
        for backend in ("torch-blocked", "torch"):
            _, tb = timed(lambda: sinkhorn(M, MAIN_EPS, 100, backend=backend), device, max(1, args.repeats // 2))
            out[f"ours_{backend.replace('-', '_')}_s"] = med(tb)
            log(f"[ot] ours, backend={backend}: {med(tb):.3f} s")

    # memory-bandwidth floor: one torch.mv over the (N, P) kernel per iteration (2 for two passes)
    v = torch.ones(P, dtype=M.dtype, device=device)
    _, tmv = timed(lambda: torch.mv(ours, v), device, 30, warmup=2)
    out["mv_ms"] = 1e3 * med(tmv)
    out["mv_ms_min"] = 1e3 * min(tmv)  # the least disturbed run: the bandwidth of the machine
    out["floor_1pass_s"] = 100 * min(tmv)
    out["floor_2pass_s"] = 200 * min(tmv)
    out["ours_over_floor_1pass"] = out["ours_s"] / out["floor_1pass_s"]
    log(f"[ot] torch.mv on the kernel: {out['mv_ms']:.1f} ms median, {out['mv_ms_min']:.1f} ms min -> floor "
        f"{out['floor_1pass_s']:.2f} s (1 pass/iter), {out['floor_2pass_s']:.2f} s (2 passes/iter)")
    out["profile_ms"] = profile_solver(M, device)
    del ours, res

    oracle = "pot_sinkhorn_log"
    if args.skip_pot:
        oracle = "pradot_sinkhorn_log_subsample"
    else:
        need = 8 * N * P * 4 / 2 ** 30
        avail = available_memory_gb() if device.type == "cpu" else None
        if avail is not None and need > 0.8 * avail:
            log(f"[ot] POT float64 would need ~{need:.1f} GB, {avail:.1f} GB available: using the subsample oracle")
            oracle = "pradot_sinkhorn_log_subsample"
            out["pot_skipped_reason"] = f"memory: needs ~{need:.1f} GB, {avail:.1f} GB available"
    out["oracle"] = oracle

    per_eps = {}
    if oracle == "pot_sinkhorn_log":
        # POT's backend follows its inputs: torch tensors (the authors' PyTorch code) -> TorchBackend
        # (multi-threaded torch ops), numpy arrays -> NumpyBackend (single-threaded numpy/scipy)
        out["pot_backend"] = args.pot_backend
        M64 = M.double() if args.pot_backend == "torch" else M.double().cpu().numpy()
        for eps in EPSILONS:
            reps = args.pot_repeats if eps == MAIN_EPS else 1
            ref, tp = timed(lambda: pot_sinkhorn(M64, eps), device, reps)
            ours_e = sinkhorn(M, eps, 100)
            per_eps[str(eps)] = {"pot_float64_s": med(tp), "pot_finite": finite(ref), "ours_finite": finite(ours_e),
                                 "agreement": agreement(ours_e, ref)}
            log(f"[ot] eps={eps}: POT ({args.pot_backend}) float64 {med(tp):.2f} s; ours finite="
                f"{per_eps[str(eps)]['ours_finite']}, agreement {per_eps[str(eps)]['agreement']:.2e}")
            if eps == MAIN_EPS:
                out["pot_float64_s"] = med(tp)
                out["pot_float64_times_s"] = tp
                out["agreement"] = per_eps[str(eps)]["agreement"]
            del ref, ours_e
        if args.pot_numpy_too and args.pot_backend == "torch":  # also POT on numpy arrays (slow: single thread)
            ref, tp = timed(lambda: pot_sinkhorn(M.double().cpu().numpy(), MAIN_EPS), device, 1)
            out["pot_numpy_float64_s"] = med(tp)
            out["speedup_vs_pot_numpy_float64"] = med(tp) / out["ours_s"]
            log(f"[ot] POT (numpy) float64: {med(tp):.2f} s")
            del ref
        del M64
        if not args.skip_pot_float32:
            M32 = M if args.pot_backend == "torch" else M.cpu().numpy()
            try:
                ref32, tp32 = timed(lambda: pot_sinkhorn(M32, MAIN_EPS), device, 1)
                out["pot_float32_s"] = med(tp32)
                out["pot_float32_finite"] = finite(ref32)
                log(f"[ot] POT ({args.pot_backend}) float32: {med(tp32):.2f} s (finite: {out['pot_float32_finite']})")
            except Exception as e:  # noqa: BLE001
                out["pot_float32_error"] = f"{type(e).__name__}: {e}"
                log(f"[ot] POT float32 failed: {out['pot_float32_error']}")
        # our solver again, right after POT (the load of a shared machine drifts): report both medians
        _, t2 = timed(lambda: sinkhorn(M, MAIN_EPS, 100), device, args.repeats)
        out["ours_after_pot_s"] = med(t2)
        out["ours_s_all_runs_median"] = med(out["ours_times_s"] + t2)
        out["speedup_vs_pot_float64"] = out["pot_float64_s"] / out["ours_s_all_runs_median"]
        if "pot_float32_s" in out:
            out["speedup_vs_pot_float32"] = out["pot_float32_s"] / out["ours_s_all_runs_median"]
    else:  # our own log-domain solver on a row subsample (same columns) is the oracle
        rows = min(N, args.subsample_rows)
        Ms = M[:rows].contiguous()
        out["subsample_shape"] = [rows, P]
        for eps in EPSILONS:
            ref = sinkhorn_log(Ms.double(), eps, 100)
            ours_e = sinkhorn(Ms, eps, 100)
            per_eps[str(eps)] = {"ours_finite": finite(ours_e), "oracle_finite": finite(ref),
                                 "agreement": agreement(ours_e, ref)}
            log(f"[ot] eps={eps} (subsample {rows} x {P}): ours finite={per_eps[str(eps)]['ours_finite']}, "
                f"agreement vs sinkhorn_log {per_eps[str(eps)]['agreement']:.2e}")
            if eps == MAIN_EPS:
                out["agreement"] = per_eps[str(eps)]["agreement"]
        # time of POT on this machine is not measured: no ratio
    out["per_eps"] = per_eps
    return out


def profile_solver(M: torch.Tensor, device: torch.device) -> dict:
    """Milliseconds of the phases of one solve (median of a few runs of each)."""
    N, P = M.shape
    backend = transport._pick_backend("auto", M)
    nb = backend == "numba"
    eps = MAIN_EPS
    prof = {}
    _, t = timed(lambda: transport._check(M, eps, 100), device, 3)
    prof["input_check"] = 1e3 * med(t)
    g, t = timed(lambda: transport._colmin(M, None, None, None, nb), device, 3)
    prof["initial_column_min"] = 1e3 * med(t)
    g = g + eps * math.log(1.0 / P)
    f = torch.zeros(N, dtype=M.dtype, device=device)
    K, t = timed(lambda: transport._build_kernel(M, f, g, eps, None, None, None, nb), device, 1)
    prof["kernel_alloc_and_build"] = 1e3 * med(t)
    _, t = timed(lambda: transport._build_kernel(M, f, g, eps, K, None, None, nb), device, 3)
    prof["kernel_rebuild_in_place (absorption)"] = 1e3 * med(t)
    passes = transport._Passes(K, backend, 256, None)
    v = torch.ones(P, dtype=M.dtype, device=device)
    _, t = timed(lambda: passes.row_then_col(v, 1.0 / N, 1.0 / P, True), device, 10, warmup=1)
    prof["iteration_pass (row+next column)"] = 1e3 * med(t)
    u = torch.ones(N, dtype=M.dtype, device=device)
    _, t = timed(lambda: transport._worst(u, v), device, 10)
    prof["per_iteration_check_and_host_sync"] = 1e3 * med(t)
    _, t = timed(lambda: passes.scale(u, v), device, 3)
    prof["final_plan_scaling"] = 1e3 * med(t)
    prof["backend"] = backend
    del K, passes
    return prof


def synthetic_data(args, n_train: int):
    root = Path(args.data_root).expanduser()
    ds = load_dataset("synthetic", root, "screw_bag", generate=True, image_size=args.image_size,
                      n_train=max(60, n_train))
    return ds


def stage_label(stages) -> str:
    return "stages " + "+".join(str(s) for s in stages) if len(stages) > 1 else f"stage {stages[0]}"


def epoch_section(ds, args, device: torch.device, cfg_kw: dict, stages: list[int]) -> dict:
    """Training epochs of a model with banks for ``stages``: alternates one epoch recomputing features and one
    from the cache, ``--epochs`` times each (the load of a shared machine drifts: alternating exposes both to
    the same conditions)."""
    n_images = args.train_images
    train = ds.samples("train")[:n_images]
    dataset = ImageDataset(train, args.image_size)
    cfg = PRADOTConfig(backbone=args.backbone, stages=tuple(stages), image_size=args.image_size,
                       alpha=0.3, n=cfg_kw["n"], batch_size=cfg_kw["batch"], epochs=1, eta=0.95,
                       epsilon=MAIN_EPS)
    backbone = load_backbone(args.backbone, tuple(stages), device=device)
    out = {"train_images": len(dataset), "batch_size": cfg.batch_size, "n": cfg.n, "stages": list(cfg.stages),
           "epochs_timed_each": args.epochs, "image_size": cfg.image_size, "backbone": args.backbone}
    unc, cac = [], []
    with tempfile.TemporaryDirectory(prefix="pradot-bench-cache-", dir=args.work_dir) as tmp:
        cache = FeatureCache(tmp)
        identity = {"bench": "screw_bag", "backbone": args.backbone, "stages": list(stages),
                    "size": args.image_size, "n": len(dataset)}
        t = time.perf_counter()
        cache.get_or_compute(identity, backbone, dataset, batch_size=cfg.batch_size, device=device, progress=False)
        out["cache_build_s"] = time.perf_counter() - t
        for _ in range(max(1, args.epochs)):
            model = PRADOT(cfg, backbone=backbone, device=device)
            unc.append(model.fit(dataset, progress=False)[0])
            feats = cache.get_or_compute(identity, backbone, dataset, batch_size=cfg.batch_size, device=device,
                                         progress=False)  # a hit: the memory-mapped arrays
            model2 = PRADOT(cfg, backbone=backbone, device=device)
            cac.append(model2.fit_features(feats, progress=False)[0])
            del feats
        out["cache_hits_misses"] = [cache.hits, cache.misses]
        out["prototypes_max_abs_diff_cached_vs_uncached"] = max(
            float((model.banks[str(s)].features - model2.banks[str(s)].features).abs().max()) for s in cfg.stages)
    for name, hist in (("uncached", unc), ("cached", cac)):
        out[f"{name}_epoch_s"] = med([h.seconds for h in hist])
        out[f"{name}_epoch_times_s"] = [h.seconds for h in hist]
        out[f"{name}_feature_s"] = med([h.feature_seconds for h in hist])
        out[f"{name}_ot_s"] = med([h.ot_seconds for h in hist])
    out["speedup_cached_vs_uncached"] = out["uncached_epoch_s"] / out["cached_epoch_s"]
    out["speedup_per_pair"] = [u.seconds / c.seconds for u, c in zip(unc, cac)]
    out["speedup_best_epochs"] = min(h.seconds for h in unc) / min(h.seconds for h in cac)
    out["feature_time_speedup"] = out["uncached_feature_s"] / max(out["cached_feature_s"], 1e-9)
    # with the cache the epoch is the OT steps: the speedup cannot exceed 1 + feature time / OT time
    out["speedup_bound_1_plus_features_over_ot"] = 1.0 + out["uncached_feature_s"] / max(out["cached_ot_s"], 1e-9)
    log(f"[epoch] recomputing features: {out['uncached_epoch_s']:.2f} s/epoch (features+I/O "
        f"{out['uncached_feature_s']:.2f} s, OT steps {out['uncached_ot_s']:.2f} s)")
    log(f"[epoch] feature cache: {out['cached_epoch_s']:.2f} s/epoch (features {out['cached_feature_s']:.3f} s, "
        f"OT {out['cached_ot_s']:.2f} s); cache build {out['cache_build_s']:.2f} s once -> "
        f"{out['speedup_cached_vs_uncached']:.2f}x per epoch (best epochs {out['speedup_best_epochs']:.2f}x)")
    return out


def scoring_section(ds, args, device: torch.device, n_score: int) -> dict:
    stage = 2
    images = torch.stack([ImageDataset(ds.samples("test")[:args.score_images], args.image_size)[i]["image"]
                          for i in range(min(args.score_images, len(ds.samples("test"))))]).to(device)
    B = images.shape[0]
    backbone = load_backbone(args.backbone, (stage,), device=device)
    feats = backbone(images)[stage]
    grid = tuple(feats.shape[2:])
    cfg = BankConfig(stage=stage, alpha=0.3, n=n_score, grid=grid, dim=feats.shape[1], backbone=args.backbone,
                     image_size=args.image_size)
    bank = PrototypeBank(cfg, seed=0, device=device)
    out = {"images": B, "n": n_score, "stage": stage, "grid": list(grid), "dim": int(feats.shape[1]),
           "prototypes": bank.n_prototypes, "fast_path": cell_copies(bank) is not None, "backbone": args.backbone}

    def full():  # Eq. 6 maps + upsampling to the input size + image scores (one stage)
        maps = fuse_maps([upsample_maps(stage_maps(bank, feats), args.image_size)])
        return image_scores(maps)

    assignment_scores(bank, feats)  # warm-up (scratch buffers)
    tb, ts, tf = [], [], []
    for _ in range(max(3, args.repeats)):  # interleaved: the three see the same load of the machine
        tb += timed(lambda: backbone(images), device, 1)[1]
        ts += timed(lambda: assignment_scores(bank, feats), device, 1)[1]
        tf += timed(full, device, 1)[1]
    out["backbone_forward_ms_per_image"] = 1e3 * med(tb) / B
    out["assignment_scores_ms_per_image"] = 1e3 * med(ts) / B
    out["scoring_total_ms_per_image"] = 1e3 * med(tf) / B
    out["ratio_scoring_to_backbone"] = med([f / b for f, b in zip(tf, tb)])
    out["ratio_scoring_to_backbone_best_runs"] = min(tf) / min(tb)
    out["times_ms_per_image"] = {"backbone": [1e3 * t / B for t in tb], "scores": [1e3 * t / B for t in ts],
                                 "scores_and_upsampling": [1e3 * t / B for t in tf]}
    # the general path (all prototypes; used for learnt coordinates) on the same input, for comparison
    from pradot.cost import _unit
    from pradot.scoring import _scores_general

    zn = _unit(feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1]))
    ms = spatial_cost(bank.grid_coords, bank.coords)
    ms = ms * (0.3 / float(ms.max()))
    _, tg = timed(lambda: _scores_general(zn, _unit(bank.features), ms, 0.3, B, grid[0] * grid[1], 8), device,
                  max(1, args.repeats // 2))
    out["general_path_ms_per_image"] = 1e3 * med(tg) / B
    log(f"[scoring] {args.backbone} stage {stage} n={n_score} ({bank.n_prototypes} prototypes): backbone "
        f"{out['backbone_forward_ms_per_image']:.1f} ms/image, Eq. 6 scores "
        f"{out['assignment_scores_ms_per_image']:.1f} ms/image (general path "
        f"{out['general_path_ms_per_image']:.1f}), with upsampling {out['scoring_total_ms_per_image']:.1f} "
        f"-> {out['ratio_scoring_to_backbone']:.2f}x the backbone (median of paired runs; best runs "
        f"{out['ratio_scoring_to_backbone_best_runs']:.2f}x)")

    if not args.skip_resnet:  # ResNet50-shaped stage 2 (512 x 28 x 28): random weights / features
        try:
            import timm

            net = timm.create_model("resnet50", pretrained=False, features_only=True, out_indices=(2,)).eval()
            net = net.to(device)
            with torch.no_grad():
                f50, tr = timed(lambda: net(images)[0], device, max(1, args.repeats // 2), warmup=1)
            cfg50 = BankConfig(stage=stage, alpha=0.3, n=n_score, grid=tuple(f50.shape[2:]), dim=f50.shape[1],
                               backbone="resnet50", image_size=args.image_size)
            bank50 = PrototypeBank(cfg50, seed=0, device=device)
            _, t50 = timed(lambda: assignment_scores(bank50, f50), device, max(1, args.repeats // 2), warmup=1)
            out["resnet50"] = {"dim": int(f50.shape[1]), "grid": list(f50.shape[2:]),
                               "backbone_forward_ms_per_image (random weights, same cost)": 1e3 * med(tr) / B,
                               "assignment_scores_ms_per_image": 1e3 * med(t50) / B,
                               "ratio_scores_to_backbone": med(t50) / med(tr)}
            log(f"[scoring] resnet50 shape (D={f50.shape[1]}): backbone {1e3 * med(tr) / B:.1f} ms/image, "
                f"scores {1e3 * med(t50) / B:.1f} ms/image -> {med(t50) / med(tr):.2f}x")
        except Exception as e:  # noqa: BLE001
            out["resnet50_error"] = f"{type(e).__name__}: {e}"
    return out


# ---------------------------------------------------------------------------------------------- main

def parse_args(argv) -> argparse.Namespace:
    # MLflow substitutes {args} as one (quoted) string: split items with spaces, drop empty ones
    argv = [tok for item in argv for tok in shlex.split(item)]
    p = argparse.ArgumentParser(prog="benchmark.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--paper-scale", action="store_true",
                   help="batch 64, n=16, 28x28 grid (50,176 x 12,544 OT): for GPU machines")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--output", default=None, help="JSON file (default benchmarks/results/<device>-<name>.json)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats of our solver / scoring (median)")
    p.add_argument("--pot-repeats", type=int, default=1, help="timed repeats of POT at eps=0.01")
    p.add_argument("--skip-pot", action="store_true", help="no POT: our sinkhorn_log on a row subsample is the oracle")
    p.add_argument("--skip-pot-float32", action="store_true")
    p.add_argument("--pot-backend", default="torch", choices=["torch", "numpy"],
                   help="inputs given to POT: torch tensors (the authors' code; POT's TorchBackend) or numpy")
    p.add_argument("--pot-numpy-too", action="store_true",
                   help="also time POT on numpy arrays at eps=0.01 (single-threaded: minutes on CPU)")
    p.add_argument("--skip-resnet", action="store_true", help="skip the ResNet50-shaped scoring measurement")
    p.add_argument("--sections", default="ot,epoch,scoring", help="comma-separated subset of ot,epoch,scoring")
    p.add_argument("--subsample-rows", type=int, default=4096, help="rows of the --skip-pot oracle problem")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--stages", default="2,3;2;3",
                   help="models timed in the epoch section, ';'-separated stage sets (default: a stages-2+3 "
                        "model, then the paper's single-stage members: a stage-2 bank, a stage-3 bank)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--train-images", type=int, default=None, help="default 32 (CPU) / 128 (paper scale)")
    p.add_argument("--score-images", type=int, default=16)
    p.add_argument("--epochs", type=int, default=3,
                   help="epochs timed with and without the cache, alternately (median over them)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--data-root", default=str(REPO / "outputs" / "benchmark" / "data"))
    p.add_argument("--work-dir", default=str(REPO / "outputs" / "benchmark"))
    p.add_argument("--mlflow", action="store_true", help="also log params, metrics and the JSON to MLflow")
    args = p.parse_args(argv)
    args.stage_sets = [[int(s) for s in part.split(",") if s]
                       for part in str(args.stages).replace(" ", "").split(";") if part]
    if args.train_images is None:
        args.train_images = 128 if args.paper_scale else 32
    return args


def flat_metrics(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}".replace(" ", "_").replace("(", "").replace(")", "").replace("+", "_").replace("/", "_")
        if isinstance(v, dict):
            out.update(flat_metrics(v, key + "."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[key] = float(v)
    return out


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device is available", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    scale = {"batch": 64, "n": 16, "n_score": 16} if args.paper_scale else {"batch": 16, "n": 4, "n_score": 16}
    info = machine_info(device)
    if args.output is None:
        name = (f"cpu-{os.cpu_count()}core" if device.type == "cpu"
                else "cuda-" + "".join(ch if ch.isalnum() else "-" for ch in info["device_name"].lower()).strip("-"))
        args.output = str(REPO / "benchmarks" / "results" / f"{name}{'-paper' if args.paper_scale else ''}.json")
    result = {
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "argv": sys.argv[1:], "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "setting": "paper-scale" if args.paper_scale else "cpu", "scale": scale, "machine": info, "memory": {},
    }
    log(f"PRADOT benchmark ({result['setting']}) on {info['device_name']} ({info['cpu_count']} CPUs, "
        f"{info['torch_threads']} torch threads, torch {info['torch']}), load {info['load_average_start']}")
    t_all = time.perf_counter()
    n_train = max(args.train_images, scale["batch"])
    ds = synthetic_data(args, n_train)

    if "ot" in sections:
        # the cost matrix of the first training batch: backbone stage 2 features, initial prototypes, Eq. 3
        bb = load_backbone(args.backbone, (2,), device=device)
        train = ImageDataset(ds.samples("train")[:scale["batch"]], args.image_size)
        x = torch.stack([train[i]["image"] for i in range(len(train))]).to(device)
        with torch.no_grad():
            f2 = torch.cat([bb(x[i:i + 16])[2] for i in range(0, len(x), 16)])
        cfg = BankConfig(stage=2, alpha=0.3, n=scale["n"], grid=tuple(f2.shape[2:]), dim=f2.shape[1],
                         backbone=args.backbone, image_size=args.image_size)
        bank = PrototypeBank(cfg, seed=0, device=device)
        z, c = bank.embeddings(f2)
        M, tc = timed(lambda: bank.grid_cost(z), device, 3)
        result["cost_matrix"] = {"grid_cost_s (PrototypeBank.grid_cost, used by training)": med(tc)}
        if not args.paper_scale:  # the in-place builder is Eq. 3 (checked where the direct formula fits)
            direct, td = timed(lambda: bank.cost(z, c), device, 3)
            result["cost_matrix"]["direct_cost_s (PrototypeBank.cost, the formula)"] = med(td)
            result["cost_matrix"]["max_abs_diff"] = float((M - direct).abs().max())
            log(f"[ot] cost matrix: direct formula {med(td):.2f} s, in-place grid_cost {med(tc):.2f} s "
                f"(max abs diff {result['cost_matrix']['max_abs_diff']:.1e})")
            del direct
        del z, c
        del bb, x, f2
        result["ot"] = ot_section(M, args, device)
        del M
        result["memory"]["after_ot"] = memory_section(device)
    if "epoch" in sections:
        result["epoch"] = {stage_label(st): epoch_section(ds, args, device, scale, st) for st in args.stage_sets}
        result["memory"]["after_epoch"] = memory_section(device)
    if "scoring" in sections:
        result["scoring"] = scoring_section(ds, args, device, scale["n_score"])
        result["memory"]["after_scoring"] = memory_section(device)
    result["total_s"] = time.perf_counter() - t_all
    result["machine"]["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    result["targets"] = targets(result)

    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print_table(result)
    log(f"\nwritten {out}")
    if args.mlflow:
        import mlflow

        with mlflow.start_run(run_name=f"benchmark-{result['setting']}"):
            mlflow.log_params({"setting": result["setting"], "device": info["device_name"],
                               "cpu_count": info["cpu_count"], "torch": info["torch"],
                               "threads": info["torch_threads"], "command": result["command"][:500]})
            mlflow.log_metrics(flat_metrics({k: result[k] for k in ("ot", "epoch", "scoring", "memory")
                                             if k in result}))
            mlflow.log_artifact(str(out))
    return 0


def targets(r: dict) -> dict:
    t = {}
    ot_ = r.get("ot", {})
    if "speedup_vs_pot_float64" in ot_:
        t["ot_speedup_vs_pot_float64 >= 20"] = [round(ot_["speedup_vs_pot_float64"], 2),
                                                ot_["speedup_vs_pot_float64"] >= 20]
    if "agreement" in ot_:
        t["ot_plan_agreement <= 1e-3"] = [ot_["agreement"], ot_["agreement"] <= 1e-3]
    if ot_.get("per_eps"):
        ok = all(v["ours_finite"] and v["agreement"] <= 1e-3 for v in ot_["per_eps"].values())
        t["ot_finite_and_agreeing_for_eps_0.001_0.01_0.1"] = [
            {k: v["agreement"] for k, v in ot_["per_eps"].items()}, ok]
    for label, ep in r.get("epoch", {}).items():
        t[f"epoch_speedup_with_cache >= 5 ({label})"] = [round(ep["speedup_cached_vs_uncached"], 2),
                                                         ep["speedup_cached_vs_uncached"] >= 5]
    sc = r.get("scoring", {})
    if "ratio_scoring_to_backbone" in sc:
        t["scoring_per_image <= 0.5 x backbone"] = [round(sc["ratio_scoring_to_backbone"], 3),
                                                    sc["ratio_scoring_to_backbone"] <= 0.5]
    return t


def print_table(r: dict) -> None:
    rows = []
    ot_ = r.get("ot")
    if ot_:
        rows.append(("OT", f"{ot_['shape'][0]} x {ot_['shape'][1]}, 100 it, eps {ot_['eps']}", ""))
        rows.append(("  ours float32 (" + ot_.get("ours_backend", "") + ")", f"{ot_['ours_s']:.3f} s",
                     f"first call {ot_['ours_first_call_s']:.2f} s"))
        for k in ("ours_torch_blocked_s", "ours_torch_s"):
            if k in ot_:
                rows.append((f"  ours, {k[5:-2]} backend", f"{ot_[k]:.3f} s", ""))
        if "ours_after_pot_s" in ot_:
            rows.append(("  ours again after POT", f"{ot_['ours_after_pot_s']:.3f} s",
                         f"median of all runs {ot_['ours_s_all_runs_median']:.3f} s"))
        if "pot_float64_s" in ot_:
            rows.append((f"  POT sinkhorn_log float64 ({ot_['pot_backend']})", f"{ot_['pot_float64_s']:.2f} s",
                         f"speedup {ot_['speedup_vs_pot_float64']:.1f}x"))
        if "pot_float32_s" in ot_:
            rows.append((f"  POT sinkhorn_log float32 ({ot_['pot_backend']})", f"{ot_['pot_float32_s']:.2f} s",
                         f"speedup {ot_['speedup_vs_pot_float32']:.1f}x"))
        if "pot_numpy_float64_s" in ot_:
            rows.append(("  POT sinkhorn_log float64 (numpy)", f"{ot_['pot_numpy_float64_s']:.2f} s",
                         f"speedup {ot_['speedup_vs_pot_numpy_float64']:.1f}x"))
        rows.append(("  floor: torch.mv per iteration", f"{ot_['floor_1pass_s']:.2f} s",
                     f"2 passes {ot_['floor_2pass_s']:.2f} s; mv {ot_['mv_ms_min']:.1f} ms min, "
                     f"{ot_['mv_ms']:.1f} median"))
        rows.append(("  plan agreement (eps 0.01)", f"{ot_.get('agreement', float('nan')):.2e}", ot_["oracle"]))
        for eps, v in ot_.get("per_eps", {}).items():
            rows.append((f"  eps {eps}", f"finite {v['ours_finite']}", f"agreement {v['agreement']:.2e}"))
    for label, ep in r.get("epoch", {}).items():
        rows.append((f"Epoch, {label}", f"{ep['train_images']} images, batch {ep['batch_size']}, n={ep['n']}", ""))
        rows.append(("  recomputing features", f"{ep['uncached_epoch_s']:.2f} s",
                     f"features {ep['uncached_feature_s']:.2f} s, OT {ep['uncached_ot_s']:.2f} s"))
        rows.append(("  feature cache", f"{ep['cached_epoch_s']:.2f} s",
                     f"features {ep['cached_feature_s']:.3f} s, OT {ep['cached_ot_s']:.2f} s"))
        rows.append(("  speedup", f"{ep['speedup_cached_vs_uncached']:.2f}x",
                     f"best epochs {ep['speedup_best_epochs']:.2f}x; bound 1 + features/OT "
                     f"{ep['speedup_bound_1_plus_features_over_ot']:.2f}x; cache built once in "
                     f"{ep['cache_build_s']:.2f} s"))
    sc = r.get("scoring")
    if sc:
        rows.append(("Scoring", f"n={sc['n']}, stage {sc['stage']}, {sc['prototypes']} prototypes", ""))
        rows.append(("  backbone forward", f"{sc['backbone_forward_ms_per_image']:.1f} ms/img", sc["backbone"]))
        rows.append(("  Eq. 6 scores (fast path)", f"{sc['assignment_scores_ms_per_image']:.1f} ms/img",
                     f"general path {sc['general_path_ms_per_image']:.1f} ms/img"))
        rows.append(("  scores + upsampling", f"{sc['scoring_total_ms_per_image']:.1f} ms/img",
                     f"{sc['ratio_scoring_to_backbone']:.2f}x backbone (best runs "
                     f"{sc['ratio_scoring_to_backbone_best_runs']:.2f}x)"))
        if "resnet50" in sc:
            x = sc["resnet50"]
            rows.append(("  resnet50-shaped (D=512)", f"{x['assignment_scores_ms_per_image']:.1f} ms/img",
                         f"{x['ratio_scores_to_backbone']:.2f}x its backbone"))
    for k, v in r.get("memory", {}).items():
        rows.append((f"Memory {k}", f"{v['process_peak_rss_mb']:.0f} MB RSS peak",
                     f"CUDA {v['cuda_max_allocated_mb']:.0f} MB" if "cuda_max_allocated_mb" in v else ""))
    w0 = max(len(a) for a, _, _ in rows) + 2
    w1 = max(len(b) for _, b, _ in rows) + 2
    print()
    for a, b, c in rows:
        print(f"{a:<{w0}}{b:<{w1}}{c}")
    print("\nTargets: " + "; ".join(f"{k}: {v[0]} ({'met' if v[1] else 'NOT met'})" for k, v in r["targets"].items()))


if __name__ == "__main__":
    sys.exit(main())
