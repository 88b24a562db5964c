"""Image- and pixel-level ROC metrics.

* :func:`image_auroc` -- AUROC of one score per image (image score = max of the map by default,
  see :func:`image_scores_from_maps`).
* :func:`loco_image_auroc` -- MVTec LOCO classification protocol: one AUROC per anomaly type
  (good images vs. the images of that type) and their mean.
* :func:`pixel_auroc` -- AUROC over all pixels of all images.
* :func:`roc_curve_points` / :func:`pixel_roc_curve` -- ROC points for plotting.
* :func:`f1_max` / :func:`pixel_f1_max` -- the F1 score at the best threshold (image / pixel level), as
  reported by the few-shot literature (WinCLIP, FOCT).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_auc_score, roc_curve

__all__ = [
    "GOOD",
    "image_scores_from_maps",
    "image_auroc",
    "loco_image_auroc",
    "pixel_auroc",
    "roc_curve_points",
    "pixel_roc_curve",
    "f1_curve",
    "f1_max",
    "pixel_f1_max",
]

#: Anomaly type of defect-free images (MVTec AD / LOCO sub-directory name).
GOOD = "good"


def image_scores_from_maps(maps: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """Image anomaly score = maximum of each anomaly map (the official MVTec LOCO convention)."""
    scores = np.array([float(np.max(np.asarray(m))) for m in maps], dtype=np.float64)
    if not np.all(np.isfinite(scores)):
        raise ValueError("anomaly maps contain non-finite values (NaN or inf)")
    return scores


def _binary_labels_and_scores(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape[0]} vs {s.shape[0]}")
    if y.size == 0:
        raise ValueError("AUROC of an empty set is undefined")
    if y.dtype != bool:
        uniq = np.unique(y)
        if not np.all(np.isin(uniq, (0, 1))):
            raise ValueError(f"labels must be binary (0/1 or bool), got values {uniq[:10].tolist()}")
        y = y.astype(bool)
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain non-finite values (NaN or inf)")
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        only = "anomalous (1)" if n_pos else "normal (0)"
        raise ValueError(f"AUROC is undefined when only one class is present: all {y.size} labels are {only}")
    return y, s


def image_auroc(labels, scores) -> float:
    """Image-level AUROC (``sklearn.metrics.roc_auc_score``); labels 1 = anomalous.

    Raises:
        ValueError: if only one class is present, lengths differ or scores are not finite.
    """
    y, s = _binary_labels_and_scores(labels, scores)
    return float(roc_auc_score(y, s))


def roc_curve_points(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve ``(fpr, tpr, thresholds)`` from ``sklearn.metrics.roc_curve`` (for plotting)."""
    y, s = _binary_labels_and_scores(labels, scores)
    fpr, tpr, thr = roc_curve(y, s)
    return fpr, tpr, thr


def loco_image_auroc(anomaly_types: Sequence[str], scores, good: str = GOOD) -> dict[str, float]:
    """MVTec LOCO classification AUROC: for every anomaly type present (e.g. ``logical_anomalies``,
    ``structural_anomalies``), the AUROC of the ``good`` images vs. the images of that type;
    ``"mean"`` is the unweighted mean over the types.

    Types are reported in sorted order. Raises ValueError without good images or without
    anomalous images.
    """
    types = np.asarray([str(t) for t in anomaly_types])
    s = np.asarray(scores, dtype=np.float64).ravel()
    if types.shape != s.shape:
        raise ValueError(f"anomaly_types and scores differ in length: {types.size} vs {s.size}")
    is_good = types == good
    if not is_good.any():
        raise ValueError(f"no '{good}' images: per-type AUROC needs defect-free images")
    defect_types = sorted(set(types[~is_good].tolist()))
    if not defect_types:
        raise ValueError("no anomalous images: per-type AUROC needs at least one anomaly type")
    out: dict[str, float] = {}
    for t in defect_types:
        sel = is_good | (types == t)
        out[t] = image_auroc(types[sel] == t, s[sel])
    out["mean"] = float(np.mean([out[t] for t in defect_types]))
    return out


def _flatten_pixels(masks, maps) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate flattened masks / maps; accepts (N,H,W) arrays or lists of (H_i,W_i) arrays."""
    if len(masks) != len(maps):
        raise ValueError(f"got {len(masks)} masks but {len(maps)} maps")
    ys, ss = [], []
    for i, (m, a) in enumerate(zip(masks, maps)):
        m = np.asarray(m)
        a = np.asarray(a)
        if m.shape != a.shape:
            raise ValueError(f"image {i}: mask shape {m.shape} != map shape {a.shape}")
        ys.append(m.astype(bool, copy=False).ravel())
        ss.append(a.ravel())
    return np.concatenate(ys), np.concatenate(ss)


def pixel_auroc(masks, maps) -> float:
    """Pixel-level AUROC over all pixels of all images.

    Args:
        masks: (N, H, W) bool ground truth (or a list of 2-D masks of varying size).
        maps: (N, H, W) real-valued anomaly maps of the same shapes.
    """
    y, s = _flatten_pixels(masks, maps)
    return image_auroc(y, s)


def pixel_roc_curve(masks, maps) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel-level ROC curve ``(fpr, tpr, thresholds)`` (for plotting)."""
    y, s = _flatten_pixels(masks, maps)
    return roc_curve_points(y, s)


def f1_curve(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """``(f1, cuts)``: the F1 score ``2 P R / (P + R)`` of the decisions ``score >= cuts[i]`` for every cut of
    the scores (``sklearn.metrics.precision_recall_curve``; the recall-0 end point, which has no cut, dropped);
    labels 1 = anomalous.

    Raises:
        ValueError: if only one class is present, lengths differ or scores are not finite.
    """
    y, s = _binary_labels_and_scores(labels, scores)
    precision, recall, cuts = precision_recall_curve(y, s)
    p, r = precision[:-1], recall[:-1]
    denom = p + r
    f1 = np.divide(2.0 * p * r, denom, out=np.zeros_like(denom), where=denom > 0)
    return f1, cuts


def f1_max(labels, scores) -> float:
    """F1-max: the largest F1 score ``2 P R / (P + R)`` over all thresholds (``score >= t`` is anomalous),
    from :func:`f1_curve`; labels 1 = anomalous.

    Raises:
        ValueError: if only one class is present, lengths differ or scores are not finite.
    """
    return float(f1_curve(labels, scores)[0].max())


def pixel_f1_max(masks, maps) -> float:
    """F1-max over all pixels of all images (masks: ground truth, maps: anomaly maps of the same shapes)."""
    y, s = _flatten_pixels(masks, maps)
    return f1_max(y, s)
