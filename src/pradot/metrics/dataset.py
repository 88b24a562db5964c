"""Metrics of a dataset's split from in-memory maps: the official shapes (MVTec LOCO ``metrics.json``,
MVTec AD keys) and their flat names for tracking."""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from .classification import image_auroc, image_scores_from_maps
from .pro import DEFAULT_MAX_FPRS, Saturation
from .report import ad_metrics, loco_metrics

__all__ = ["AD_DEFAULT_MAX_FPRS", "dataset_metrics", "flat_metrics"]

log = logging.getLogger(__name__)

#: AU-PRO limits reported for AD-style data
AD_DEFAULT_MAX_FPRS: tuple[float, ...] = (0.3,)


def dataset_metrics(ds, samples, maps, max_fprs: Sequence[float] | None = None,
                    gt_size: int | Sequence[int] | None = None) -> tuple[dict, list[str]]:
    """Metrics of in-memory maps for ``samples`` of a dataset: LOCO-style (official metrics.json shape)
    when the dataset has saturation thresholds, AD-style (image/pixel AUROC, AU-PRO) otherwise.

    Args:
        ds: a ``pradot.data`` dataset; samples: its test samples; maps: one 2-D map per sample.
        gt_size: load the ground truth resized (nearest) to this size (the authors evaluate at 224 px);
            ``None``: native resolution (maps must match it).
    Returns:
        (metrics, notes)
    """
    channels, saturations, types, labels = [], [], [], []
    for s, a in zip(samples, maps):
        ch = np.asarray(ds.load_channels(s, size=gt_size), dtype=bool)
        if len(ch) != len(s.defects):
            raise ValueError(f"{s.image_path}: {len(ch)} ground-truth channels but {len(s.defects)} defects")
        if len(ch) and ch.shape[1:] != np.shape(a):
            raise ValueError(f"{s.image_path}: map {np.shape(a)} and ground truth {ch.shape[1:]} differ in size")
        channels.append(ch)
        saturations.append([Saturation.coerce(d) for d in s.defects])
        types.append(s.anomaly_type)
        labels.append(int(s.label))
    notes: list[str] = []
    if ds.has_saturation:
        limits = tuple(max_fprs) if max_fprs else DEFAULT_MAX_FPRS
        return loco_metrics(maps, types, channels, saturations, max_fprs=limits), notes
    limits = tuple(max_fprs) if max_fprs else AD_DEFAULT_MAX_FPRS
    unannotated = sum(1 for y, ch in zip(labels, channels) if y == 1 and len(ch) == 0)
    if unannotated:
        note = (f"pixel metrics skipped: {unannotated} anomalous test images have no ground-truth mask; "
                f"only image_auroc is reported")
        log.warning("%s", note)
        notes.append(note)
        return {"image_auroc": image_auroc(labels, image_scores_from_maps(maps))}, notes
    masks = [ch.any(axis=0) if len(ch) else np.zeros(np.shape(a), bool) for ch, a in zip(channels, maps)]
    return ad_metrics(maps, masks, labels=labels, max_fprs=limits), notes


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
