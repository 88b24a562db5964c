"""Metric bundles in the shape of the official evaluation outputs.

Both functions take plain arrays / lists (no ``pradot.data`` objects), so they can be used with
in-memory maps from the training pipeline as well as by ``pradot.evaluate``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .classification import GOOD, image_auroc, image_scores_from_maps, loco_image_auroc, pixel_auroc
from .pro import DEFAULT_MAX_FPRS, au_pro, au_spro, pro_curve

__all__ = ["fpr_key", "loco_metrics", "ad_metrics", "pixel_metrics"]


def fpr_key(max_fpr: float) -> str:
    """JSON key of an integration limit, as in the official tool: ``str(float)`` ("0.05", "1.0")."""
    return str(float(max_fpr))


def loco_metrics(
    maps,
    anomaly_types: Sequence[str],
    channels,
    saturations,
    image_scores=None,
    max_fprs: Sequence[float] = DEFAULT_MAX_FPRS,
    good: str = GOOD,
) -> dict:
    """MVTec LOCO metrics in the official ``metrics.json`` shape::

        {"classification": {"auc_roc": {"logical_anomalies": x, "structural_anomalies": y,
                                        "mean": m}},
         "localization": {"auc_spro": {"logical_anomalies": {"0.01": .., ..., "1.0": ..},
                                       "structural_anomalies": {...}, "mean": {...}}}}

    Per anomaly type (every type present other than ``good``, sorted), AUROC and AU-sPRO use the
    good images plus that type's images; ``"mean"`` averages over the types.

    Args:
        maps: N 2-D anomaly maps (each at the resolution of its ground truth).
        anomaly_types: N type names ("good", "logical_anomalies", ...).
        channels: N (C_i, H, W) bool arrays (C_i = 0 or None for good images).
        saturations: N sequences of C_i saturation specs (see ``pradot.metrics.Saturation``);
            ``None`` (overall or per image) means relative 1.0 (plain PRO per channel).
        image_scores: N image scores; default: the max of each map.
    """
    n = len(maps)
    if saturations is None:
        saturations = [None] * n
    if not (len(anomaly_types) == len(channels) == len(saturations) == n):
        raise ValueError(
            f"length mismatch: {n} maps, {len(anomaly_types)} types, {len(channels)} channel "
            f"arrays, {len(saturations)} saturation lists"
        )
    scores = image_scores_from_maps(maps) if image_scores is None else np.asarray(image_scores, float)
    if scores.shape != (n,):
        raise ValueError(f"expected {n} image scores, got shape {scores.shape}")
    types = [str(t) for t in anomaly_types]
    auc_roc = loco_image_auroc(types, scores, good=good)
    defect_types = [t for t in auc_roc if t != "mean"]

    auc_spro: dict[str, dict[str, float]] = {}
    for t in defect_types:
        idx = [i for i, ti in enumerate(types) if ti in (good, t)]
        res = au_spro(
            [maps[i] for i in idx], [channels[i] for i in idx], [saturations[i] for i in idx], max_fprs=max_fprs
        )
        auc_spro[t] = {fpr_key(f): float(v) for f, v in res.items()}
    auc_spro["mean"] = {fpr_key(f): float(np.mean([auc_spro[t][fpr_key(f)] for t in defect_types])) for f in max_fprs}
    return {"classification": {"auc_roc": auc_roc}, "localization": {"auc_spro": auc_spro}}


def ad_metrics(
    maps, masks, labels=None, image_scores=None, max_fprs: Sequence[float] = (0.3,), connectivity: int = 8
) -> dict:
    """MVTec-AD-style metrics: ``{"image_auroc", "pixel_auroc", "au_pro_<max_fpr>"...}``
    (default key ``"au_pro_0.3"``).

    Args:
        maps: N 2-D anomaly maps; masks: N 2-D bool masks of the same shapes (None = good).
        labels: N image labels (1 = anomalous); default: whether the mask has any pixel.
        image_scores: default: the max of each map.
        connectivity: connected-component connectivity for AU-PRO regions (8 as in the
            official MVTec AD code, or 4).
    """
    n = len(maps)
    if len(masks) != n:
        raise ValueError(f"got {n} maps but {len(masks)} masks")
    masks = [np.zeros(np.shape(a), bool) if m is None else np.asarray(m, bool) for m, a in zip(masks, maps)]
    y = np.array([m.any() for m in masks]) if labels is None else np.asarray(labels)
    scores = image_scores_from_maps(maps) if image_scores is None else np.asarray(image_scores, float)
    return {"image_auroc": float(image_auroc(y, scores)), **pixel_metrics(maps, masks, max_fprs, connectivity)}


def pixel_metrics(maps, masks, max_fprs: Sequence[float] = (0.3,), connectivity: int = 8) -> dict[str, float]:
    """The localisation half of :func:`ad_metrics`: ``{"pixel_auroc", "au_pro_<max_fpr>"...}``.

    Args:
        maps: N 2-D anomaly maps; masks: N 2-D bool masks of the same shapes (None = good).
    Raises:
        ValueError: no anomalous or no normal pixel (the metrics are undefined).
    """
    masks = [np.zeros(np.shape(a), bool) if m is None else np.asarray(m, bool) for m, a in zip(masks, maps)]
    out = {"pixel_auroc": pixel_auroc(masks, maps)}
    if len(max_fprs) == 1:
        out[f"au_pro_{float(max_fprs[0])}"] = au_pro(masks, maps, max_fprs[0], connectivity)
    else:
        curve = pro_curve(masks, maps, connectivity)
        for f in max_fprs:
            out[f"au_pro_{float(f)}"] = curve.auc(f)
    return {k: float(v) for k, v in out.items()}
