"""The models :mod:`benchmarks.quality` compares beside PRADOT's banks: the project's memory bank and the
PaDiM-style models, the PatchCore recipe written directly (no pradot code: the test oracle's recipe), and each
recipe bank's per-cell covariance twin; with the seconds each took to fit (:data:`FIT_SECONDS`)."""

from __future__ import annotations

import time

import numpy as np
import torch

#: label -> seconds to fit on the cached training features (filled as the models are fitted)
FIT_SECONDS: dict[str, float] = {}


def direct_recipe(train: dict, test: dict, size: int, sigma: float = 4.0) -> tuple[np.ndarray, float, float]:
    """The PatchCore recipe of issue 25 written directly (no pradot code): stride-8 and stride-16 features,
    3x3 zero-padded average pooling, stage 3 interpolated onto stage 2's grid and concatenated, the full bank,
    scikit-learn's exact L2 nearest neighbour, bilinear upsampling, scipy's Gaussian filter (sigma 4).
    Returns (test maps, fit seconds, score seconds)."""
    import torch.nn.functional as F
    from scipy.ndimage import gaussian_filter
    from sklearn.neighbors import NearestNeighbors

    def embed(f):
        p2, p3 = (F.avg_pool2d(torch.as_tensor(np.asarray(f[s])).float(), 3, 1, 1) for s in (2, 3))
        e = torch.cat([p2, F.interpolate(p3, size=p2.shape[-2:], mode="bilinear")], 1)
        return e.permute(0, 2, 3, 1).reshape(-1, e.shape[1]).numpy(), e.shape

    t0 = time.perf_counter()
    index = NearestNeighbors(n_neighbors=1).fit(embed(train)[0])
    t1 = time.perf_counter()
    q, (B, _, H, W) = embed(test)
    d = torch.from_numpy(index.kneighbors(q)[0][:, 0].astype(np.float32)).reshape(B, 1, H, W)
    up = F.interpolate(d, size=(size, size), mode="bilinear")[:, 0].numpy()
    maps = np.stack([gaussian_filter(m, sigma, mode="reflect") for m in up])
    return maps, t1 - t0, time.perf_counter() - t1


def mahalanobis_twins(args, recipe, feats) -> list:
    """Each recipe bank scored with the per-cell covariance feature term (:mod:`pradot.local_covariance`, the
    fixed training normaliser unless ``--mahalanobis-tau image``): ``[(label, base model, maps_of(split))]``;
    fit seconds = the bank's fit + the covariances and the normaliser."""
    from pradot.local_covariance import cell_residual_covariance, mahalanobis_scores, training_normaliser

    out = []
    for lab, m in recipe:
        (stage,) = m.config.stages
        t0 = time.perf_counter()
        bank = m.banks[str(stage)]
        train = m.prototypes.transform({stage: feats["train"][stage]})[stage]
        prec = cell_residual_covariance(bank, train)
        tau = training_normaliser(bank, prec, train) if args.mahalanobis_tau == "fixed" else None
        label = f"{lab} mahalanobis"
        FIT_SECONDS[label] = FIT_SECONDS[lab] + time.perf_counter() - t0

        def maps_of(split: dict, m=m, bank=bank, prec=prec, tau=tau, stage=stage) -> np.ndarray:
            f = m.prototypes.transform({stage: split[stage]})[stage]
            B, _, H, W = f.shape
            s = mahalanobis_scores(bank, prec, f, normaliser=tau).reshape(B, H, W)
            return m.prototypes.fuse({stage: s}).numpy()

        out.append((label, m, maps_of))
    return out


def timed(label: str, fit):
    """``fit()`` with its seconds recorded under ``label``."""
    t0 = time.perf_counter()
    out = fit()
    FIT_SECONDS[label] = time.perf_counter() - t0
    return out


def baselines(args, bb, feats) -> list:
    """The memory bank (the project's defaults, and its rules before issue 25) and the PaDiM-style models."""
    from pradot.memory_bank import MemoryBankConfig, MemoryBankModel
    from pradot.padim import PaDiMConfig, PaDiMModel

    S, out = args.image_size, []
    for label, extra in (
        ("memory bank", {}),
        ("memory bank (before)", dict(aggregation_border="inside", align_corners=True)),
    ):
        cfg = MemoryBankConfig(backbone=args.backbone, stages=(2, 3), image_size=S, seed=args.seed, **extra)
        out.append((label, timed(label, lambda c=cfg: MemoryBankModel(c, backbone=bb).fit_features(feats["train"]))))
    for label, cov in (("padim", "eps"), ("padim ledoit-wolf", "ledoit_wolf")):
        cfg = PaDiMConfig(backbone=args.backbone, stages=(2, 3), image_size=S, covariance=cov, seed=args.seed)
        out.append((label, timed(label, lambda c=cfg: PaDiMModel(c, backbone=bb).fit_features(feats["train"]))))
    return out
