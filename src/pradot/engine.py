"""Orchestration shared by the pipelines, with typed arguments and no tracking framework:
open a dataset's splits, train a model on cached features, score a split, compute its metrics,
calibrate the decision threshold, write the official ``.tiff`` maps. ``pipelines/`` wires these to
MLflow and Ray.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .backbone import Backbone, load_backbone
from .calibration import Calibration
from .data import AnomalyDataset, Sample, load_dataset, split_validation
from .data.images import READER
from .errors import InputError
from .features import FeatureCache, files_fingerprint
from .metrics.dataset import dataset_metrics
from .model import PRADOT, EpochStats, PRADOTConfig
from .ranges import MAX_N, number

__all__ = [
    "DataSpec",
    "Splits",
    "open_splits",
    "batch_size_for",
    "feature_identity",
    "train_features",
    "TrainResult",
    "train_model",
    "Scored",
    "score_samples",
    "split_metrics",
    "CalibrationResult",
    "calibrate",
    "threshold_metrics",
    "write_tiff_maps",
]

log = logging.getLogger(__name__)


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
    options: dict | None = None  # the loader's options (load_dataset), e.g. Real-IAD's variant and views


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
    options = dict(spec.options or {})
    if spec.kind == "synthetic":
        options.update({"generate": True, **(spec.generator or {})})
    ds = load_dataset(spec.kind, spec.root, spec.category, **options)
    train = ds.samples("train")
    validation = ds.samples("validation")
    if not validation and spec.validation_fraction > 0:
        train, validation = split_validation(train, spec.validation_fraction, seed=spec.seed)
    test = ds.samples("test")
    if not train:
        raise InputError(f"{spec.kind}/{spec.category}: the training split is empty")
    return Splits(ds, train, validation, test)


def batch_size_for(n: float, batch_ratio: float) -> int:
    """Batch size = batch_ratio x n (the paper's Fig. 3a knob); for n < 1, batch_ratio images.

    Raises:
        pradot.ranges.SettingError: ``batch_ratio`` is not a number in (0, MAX_N], or ``n`` is not a finite
            number (its range is :class:`pradot.model.PRADOTConfig`'s to check).
    """
    ratio = number("batch_ratio", batch_ratio, lo=0, lo_open=True, hi=MAX_N, why="batch size = batch_ratio x n images")
    n = number("n", n, why="prototypes per feature cell")
    return max(1, int(round(ratio * max(n, 1.0))))


def feature_identity(
    spec: DataSpec,
    backbone: str,
    stages: Sequence[int],
    samples: Sequence[Sample],
    split: str,
    weights: str | None = None,
) -> dict:
    """What the cached features of a split depend on (any change gives another cache entry), including how
    images are read (``pradot.data.images.READER``: features cached before EXIF orientation was applied are
    not reused)."""
    return {
        "dataset": spec.kind,
        "category": spec.category,
        "backbone": backbone,
        "weights": weights,
        "stages": sorted(int(s) for s in stages),
        "image_size": int(spec.image_size),
        "split": split,
        "files": files_fingerprint([s.image_path for s in samples]),
        "n": len(samples),
        "reader": READER,
    }


def train_features(
    backbone: Backbone,
    spec: DataSpec,
    samples: Sequence[Sample],
    cache: FeatureCache | None,
    device,
    num_workers: int = 0,
    weights: str | None = None,
    progress: bool = True,
):
    """Backbone features of the training images, from the cache when possible: {stage: (N, D, H, W)}."""
    from .data import ImageDataset
    from .features import extract_features

    dataset = ImageDataset(list(samples), spec.image_size)
    if cache is None:
        return extract_features(backbone, dataset, num_workers=num_workers, device=device, progress=progress)
    ident = feature_identity(spec, backbone.name, backbone.stages, samples, "train", weights)
    return cache.get_or_compute(ident, backbone, dataset, num_workers=num_workers, device=device, progress=progress)


@dataclass
class TrainResult:
    """A trained model, its per-epoch history, timings (seconds) and the training features it was fitted on
    (``{stage: (N, D, H, W)}``; ``None`` when augmentation recomputed them every batch)."""

    model: PRADOT
    history: list[EpochStats]
    timings: dict = field(default_factory=dict)
    features: dict | None = None


def train_model(
    config: PRADOTConfig,
    spec: DataSpec,
    samples: Sequence[Sample],
    *,
    backbone: Backbone | None = None,
    cache: FeatureCache | None = None,
    device="cpu",
    weights_path: str | None = None,
    callback: Callable[[EpochStats], None] | None = None,
    num_workers: int = 0,
    progress: bool = True,
    augmentation=None,
) -> TrainResult:
    """Train one PRADOT model on ``samples``. With augmentation the features change every epoch, so the
    cache is bypassed and features are recomputed per batch (the authors' way)."""
    device = torch.device(device)
    t0 = time.perf_counter()
    if backbone is None:
        backbone = load_backbone(config.backbone, config.stages, weights_path=weights_path, device=device)
    model = PRADOT(config, backbone=backbone, device=device)
    t1 = time.perf_counter()
    feats = None
    if augmentation is not None:
        from .data import ImageDataset

        history = model.fit(
            ImageDataset(list(samples), spec.image_size, augment=augmentation),
            callback=callback,
            progress=progress,
            num_workers=num_workers,
        ).history_
        t2 = t1
    else:
        feats = train_features(backbone, spec, samples, cache, device, num_workers, weights_path, progress)
        t2 = time.perf_counter()
        history = model.fit_features(feats, callback=callback, progress=progress).history_
    t3 = time.perf_counter()
    timings = {
        "backbone_load_seconds": t1 - t0,
        "feature_seconds": t2 - t1 + sum(h.feature_seconds for h in history),
        "ot_seconds": sum(h.ot_seconds for h in history),
        "train_seconds": t3 - t1,
    }
    return TrainResult(model, history, timings, feats)


@dataclass
class Scored:
    samples: list[Sample]
    maps: np.ndarray  # (N, S, S) float32 at the model's input size
    scores: np.ndarray  # (N,)
    seconds: float


def score_samples(
    model, samples: Sequence[Sample], image_size: int, batch_size: int = 16, progress: bool = True
) -> Scored:
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


def split_metrics(
    dataset: AnomalyDataset, scored: Scored, gt_size: int | None = None, threshold: float | None = None
) -> tuple[dict, list[str]]:
    """Metrics of a scored split in the official shape (LOCO) or AD-style keys; GT resized to ``gt_size``
    (default: the maps' size); ``threshold``: a pixel threshold, AD-style data with masks then also get
    ``seg_f1`` (:func:`pradot.metrics.dataset.dataset_metrics`). Returns ``(metrics, notes)``."""
    size = gt_size if gt_size is not None else scored.maps.shape[-1]
    return dataset_metrics(dataset, scored.samples, list(scored.maps), gt_size=size, threshold=threshold)


@dataclass
class CalibrationResult:
    """A calibrated threshold, the split it was calibrated on and that split's scores."""

    calibration: Calibration
    source: str  # "validation" or "train (no validation images)"
    scored: Scored


def calibrate(
    model,
    splits: Splits,
    quantile: float,
    image_size: int,
    batch_size: int = 16,
    validation: Scored | None = None,
    pixel_quantile: float | None = None,
) -> CalibrationResult:
    """The decision thresholds at ``quantile`` of the validation normals (images not seen in training), or,
    without any, of the training images (said in ``source``): the image threshold on their image scores and
    the pixel threshold at ``pixel_quantile`` (default ``quantile``) of their maps' pixels, with the quantile
    table of both (:class:`pradot.calibration.Calibration`). Labelled anomalies in the validation split are
    left out: the thresholds are quantiles of normals.

    ``validation``: the validation split already scored by ``model`` (not scored again).
    """
    if splits.validation:
        scored = (
            validation if validation is not None else score_samples(model, splits.validation, image_size, batch_size)
        )
        source = "validation"
    else:
        scored = score_samples(model, splits.train, image_size, batch_size)
        source = "train (no validation images)"
    normal = np.array([s.label == 0 for s in scored.samples], dtype=bool)
    if not normal.any():
        raise InputError(f"calibration needs normal images: the {source} split has none")
    cal = Calibration.calibrate(
        scored.scores[normal], quantile, pixel_maps=scored.maps[normal], pixel_quantile=pixel_quantile
    )
    return CalibrationResult(cal, source, scored)


def threshold_metrics(
    labels: Sequence[int], scores: np.ndarray, threshold: float, prefix: str = "test"
) -> dict[str, float]:
    """Metrics of the decision ``score > threshold`` on a labelled split, named ``<prefix>_<metric>``: recall
    (anomalies above the threshold), false-positive rate (normals above it), F1 and precision at the
    threshold, the F1-optimal threshold and F1-max, and AUPR (:func:`pradot.metrics.threshold.threshold_report`,
    scikit-learn's precision-recall curve); empty when one class is missing."""
    from .metrics.threshold import threshold_report

    y = np.asarray(labels)
    if len(set(y.tolist())) < 2:
        return {}
    pred = np.asarray(scores) > threshold
    report = threshold_report(y, scores, threshold)
    return {
        f"{prefix}_recall_at_threshold": float(np.mean(pred[y == 1])),
        f"{prefix}_fpr_at_threshold": float(np.mean(pred[y == 0])),
        **{f"{prefix}_{k}": v for k, v in report.items() if k != "recall_at_threshold"},
    }


def write_tiff_maps(scored: Scored, out_dir: str | Path, category: str) -> Path:
    """Maps in the official tools' layout: ``out_dir/<category>/test/<type>/<id>.tiff`` (float32)."""
    import tifffile

    root = Path(out_dir)
    for s, m in zip(scored.samples, scored.maps):
        p = root / category / "test" / s.anomaly_type / f"{Path(s.image_path).stem}.tiff"
        p.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(p, np.asarray(m, np.float32))
    return root
