"""Section ``epoch``: seconds per training epoch recomputing features against reading them from the cache.

For each stage set of ``--stages`` (default: a model with stage-2 and stage-3 banks, then the paper's
single-stage members), on the same images and the same seeded batch schedule:

- uncached: ``PRADOT.fit`` (image decoding + backbone forward + the OT steps of every batch);
- cached: ``FeatureCache.get_or_compute`` (a hit: memory-mapped arrays, built once beforehand and timed
  as ``cache_build_s``) + ``PRADOT.fit_features`` (the OT steps only).

The two kinds of epoch alternate, ``--epochs`` times each, so that both see the same load of a shared
machine. With the cache an epoch is only the OT steps: the speedup cannot exceed
``1 + feature time / OT time``, reported as ``speedup_bound_1_plus_features_over_ot``. The prototypes of
both runs are compared (``prototypes_max_abs_diff_cached_vs_uncached``: 0 when they are identical).
"""

from __future__ import annotations

import tempfile
import time

import torch

from benchmarks.harness import log, med
from pradot.backbone import load_backbone
from pradot.data import ImageDataset
from pradot.features import FeatureCache
from pradot.model import PRADOT, PRADOTConfig

EPS = 0.01  # the paper's epsilon


def stage_label(stages) -> str:
    """``"stages 2+3"`` or ``"stage 2"``: the key of a stage set in the JSON."""
    return "stages " + "+".join(str(s) for s in stages) if len(stages) > 1 else f"stage {stages[0]}"


def epoch_section(ds, args, device: torch.device, scale: dict, stages: list[int]) -> dict:
    """Uncached and cached epochs of a model with banks for ``stages`` (see the module docstring)."""
    dataset = ImageDataset(ds.samples("train")[: args.train_images], args.image_size)
    cfg = PRADOTConfig(
        backbone=args.backbone,
        stages=tuple(stages),
        image_size=args.image_size,
        alpha=0.3,
        n=scale["n"],
        batch_size=scale["batch"],
        epochs=1,
        eta=0.95,
        epsilon=EPS,
    )
    backbone = load_backbone(args.backbone, tuple(stages), device=device)
    out = {
        "train_images": len(dataset),
        "batch_size": cfg.batch_size,
        "n": cfg.n,
        "stages": list(cfg.stages),
        "epochs_timed_each": args.epochs,
        "image_size": cfg.image_size,
        "backbone": args.backbone,
    }
    unc, cac = [], []
    with tempfile.TemporaryDirectory(prefix="pradot-bench-cache-", dir=args.work_dir) as tmp:
        cache = FeatureCache(tmp)
        identity = {
            "bench": "screw_bag",
            "backbone": args.backbone,
            "stages": list(stages),
            "size": args.image_size,
            "n": len(dataset),
        }

        def features():
            return cache.get_or_compute(
                identity, backbone, dataset, batch_size=cfg.batch_size, device=device, progress=False
            )

        t = time.perf_counter()
        features()
        out["cache_build_s"] = time.perf_counter() - t
        for _ in range(max(1, args.epochs)):
            model = PRADOT(cfg, backbone=backbone, device=device)
            unc.append(model.fit(dataset, progress=False).history_[0])
            feats = features()  # a hit: the memory-mapped arrays
            model2 = PRADOT(cfg, backbone=backbone, device=device)
            cac.append(model2.fit_features(feats, progress=False).history_[0])
            del feats
        out["cache_hits_misses"] = [cache.hits, cache.misses]
        out["prototypes_max_abs_diff_cached_vs_uncached"] = max(
            float((model.banks[str(s)].features - model2.banks[str(s)].features).abs().max()) for s in cfg.stages
        )
    summarise(out, unc, cac)
    return out


def summarise(out: dict, unc: list, cac: list) -> None:
    """Medians of the epoch statistics (``EpochStats``) of both kinds, and the speedups."""
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
    log(
        f"[epoch] recomputing features: {out['uncached_epoch_s']:.2f} s/epoch (features+I/O "
        f"{out['uncached_feature_s']:.2f} s, OT steps {out['uncached_ot_s']:.2f} s)"
    )
    log(
        f"[epoch] feature cache: {out['cached_epoch_s']:.2f} s/epoch (features {out['cached_feature_s']:.3f} s, "
        f"OT {out['cached_ot_s']:.2f} s); cache build {out['cache_build_s']:.2f} s once -> "
        f"{out['speedup_cached_vs_uncached']:.2f}x per epoch (best epochs {out['speedup_best_epochs']:.2f}x)"
    )
