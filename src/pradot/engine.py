"""Orchestration shared by the pipelines, with typed arguments and no tracking framework:
open a dataset's splits, train a model on cached features, score a split, compute its metrics, write
the official ``.tiff`` maps. ``pipelines/`` wires these to MLflow and Ray.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .backbone import Backbone, load_backbone
from .data import AnomalyDataset, Sample, load_dataset, split_validation
from .features import FeatureCache, files_fingerprint
from .model import PRADOT, EpochStats, PRADOTConfig

__all__ = ["DataSpec", "Splits", "open_splits", "batch_size_for", "feature_identity", "train_features",
           "train_model", "Scored", "score_samples", "split_metrics", "flat_metrics", "write_tiff_maps",
           "resolve_device"]


def resolve_device(device: str) -> torch.device:
    """"auto" -> cuda when available, else cpu."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} requested but CUDA is not available; use device=cpu or auto")
    return torch.device(device)


@dataclass
class DataSpec:
    kind: str
    root: str | None
    category: str
    image_size: int
    validation_fraction: float = 0.0
    augmentation: str | None = None
    generator: dict | None = None  # synthetic generator options (kind "synthetic")
    seed: int = 0


@dataclass
class Splits:
    dataset: AnomalyDataset
    train: list[Sample]
    validation: list[Sample]
    test: list[Sample]


def open_splits(spec: DataSpec) -> Splits:
    """Index a dataset and return its train / validation / test samples.

    Datasets without a validation split (MVTec AD, VisA, MPDD, folder) hold out
    ``validation_fraction`` of train/good, deterministically by ``seed``.
    """
    options = {}
    if spec.kind == "synthetic":
        options = {"generate": True, **(spec.generator or {})}
    ds = load_dataset(spec.kind, spec.root, spec.category, **options)
    train = ds.samples("train")
    validation = ds.samples("validation")
    if not validation and spec.validation_fraction > 0:
        train, validation = split_validation(train, spec.validation_fraction, seed=spec.seed)
    test = ds.samples("test")
    if not train:
        raise ValueError(f"{spec.kind}/{spec.category}: the training split is empty")
    return Splits(ds, train, validation, test)


def batch_size_for(n: float, batch_ratio: float) -> int:
    """Batch size = batch_ratio x n (the paper's Fig. 3a knob); for n < 1, batch_ratio images."""
    return max(1, int(round(float(batch_ratio) * max(float(n), 1.0))))


def feature_identity(spec: DataSpec, backbone: str, stages: Sequence[int], samples: Sequence[Sample],
                     split: str, weights: str | None = None) -> dict:
    """What the cached features of a split depend on (any change gives another cache entry)."""
    return {"dataset": spec.kind, "category": spec.category, "backbone": backbone, "weights": weights,
            "stages": sorted(int(s) for s in stages), "image_size": int(spec.image_size), "split": split,
            "files": files_fingerprint([s.image_path for s in samples]), "n": len(samples)}


def train_features(backbone: Backbone, spec: DataSpec, samples: Sequence[Sample], cache: FeatureCache | None,
                   device, num_workers: int = 0, weights: str | None = None, progress: bool = True):
    """Backbone features of the training images, from the cache when possible: {stage: (N, D, H, W)}."""
    from .data import ImageDataset
    from .features import extract_features

    dataset = ImageDataset(list(samples), spec.image_size)
    if cache is None:
        return extract_features(backbone, dataset, num_workers=num_workers, device=device, progress=progress)
    ident = feature_identity(spec, backbone.name, backbone.stages, samples, "train", weights)
    return cache.get_or_compute(ident, backbone, dataset, num_workers=num_workers, device=device,
                                progress=progress)


@dataclass
class TrainResult:
    model: PRADOT
    history: list[EpochStats]
    timings: dict = field(default_factory=dict)


def train_model(config: PRADOTConfig, spec: DataSpec, samples: Sequence[Sample], *, backbone: Backbone | None = None,
                cache: FeatureCache | None = None, device="cpu", weights_path: str | None = None,
                callback: Callable[[EpochStats], None] | None = None, num_workers: int = 0,
                progress: bool = True, augmentation=None) -> TrainResult:
    """Train one PRADOT model on ``samples``. With augmentation the features change every epoch, so the
    cache is bypassed and features are recomputed per batch (the authors' way)."""
    device = torch.device(device)
    t0 = time.perf_counter()
    if backbone is None:
        backbone = load_backbone(config.backbone, config.stages, weights_path=weights_path, device=device)
    model = PRADOT(config, backbone=backbone, device=device)
    t1 = time.perf_counter()
    if augmentation is not None:
        from .data import ImageDataset

        history = model.fit(ImageDataset(list(samples), spec.image_size, augment=augmentation),
                            callback=callback, progress=progress, num_workers=num_workers)
        t2 = t1
    else:
        feats = train_features(backbone, spec, samples, cache, device, num_workers, weights_path, progress)
        t2 = time.perf_counter()
        history = model.fit_features(feats, callback=callback, progress=progress)
    t3 = time.perf_counter()
    timings = {"backbone_load_seconds": t1 - t0, "feature_seconds": t2 - t1 + sum(h.feature_seconds for h in history),
               "ot_seconds": sum(h.ot_seconds for h in history), "train_seconds": t3 - t1}
    return TrainResult(model, history, timings)


@dataclass
class Scored:
    samples: list[Sample]
    maps: np.ndarray  # (N, S, S) float32 at the model's input size
    scores: np.ndarray  # (N,)
    seconds: float


def score_samples(model, samples: Sequence[Sample], image_size: int, batch_size: int = 16,
                  progress: bool = True) -> Scored:
    """Anomaly maps and image scores of samples (any object with ``score(images) -> (maps, scores)``)."""
    from tqdm.auto import tqdm

    from .data import ImageDataset

    samples = list(samples)
    ds = ImageDataset(samples, image_size)
    maps, scores = [], []
    t0 = time.perf_counter()
    for i in tqdm(range(0, len(samples), batch_size), desc="scoring", disable=not progress, leave=False):
        images = torch.stack([ds[j]["image"] for j in range(i, min(i + batch_size, len(samples)))])
        m, s = model.score(images)
        maps.append(m.cpu().numpy().astype(np.float32))
        scores.append(s.cpu().numpy())
    if not samples:
        return Scored(samples, np.zeros((0, image_size, image_size), np.float32), np.zeros(0), 0.0)
    return Scored(samples, np.concatenate(maps), np.concatenate(scores), time.perf_counter() - t0)


def split_metrics(dataset: AnomalyDataset, scored: Scored, gt_size: int | None = None) -> tuple[dict, list[str]]:
    """Metrics of a scored split in the official shape (LOCO) or AD-style keys; GT resized to ``gt_size``."""
    from .evaluate import dataset_metrics

    size = gt_size if gt_size is not None else scored.maps.shape[-1]
    return dataset_metrics(dataset, scored.samples, list(scored.maps), gt_size=size)


def flat_metrics(metrics: dict) -> dict[str, float]:
    """Flat names for tracking: ``image_auroc`` (LOCO: the mean over types), ``image_auroc_<type>``,
    ``au_spro_<fpr>`` (mean) and ``au_spro_<fpr>_<type>``; AD-style keys pass through."""
    out: dict[str, float] = {}
    if "classification" in metrics:
        for t, v in metrics["classification"]["auc_roc"].items():
            out["image_auroc" if t == "mean" else f"image_auroc_{t}"] = float(v)
        for t, per_fpr in metrics["localization"]["auc_spro"].items():
            for fpr, v in per_fpr.items():
                out[f"au_spro_{fpr}" if t == "mean" else f"au_spro_{fpr}_{t}"] = float(v)
    else:
        out.update({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))})
    return out


def write_tiff_maps(scored: Scored, out_dir: str | Path, category: str) -> Path:
    """Maps in the official tools' layout: ``out_dir/<category>/test/<type>/<id>.tiff`` (float32)."""
    import tifffile

    root = Path(out_dir)
    for s, m in zip(scored.samples, scored.maps):
        p = root / category / "test" / s.anomaly_type / f"{Path(s.image_path).stem}.tiff"
        p.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(p, np.asarray(m, np.float32))
    return root
