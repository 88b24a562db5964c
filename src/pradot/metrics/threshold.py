"""Metrics of a decision threshold on image scores, for labelled data (``is_anomaly = score > threshold``).

* :func:`average_precision` -- AUPR: scikit-learn's ``average_precision_score`` (the step-wise area under
  the precision-recall curve, anomalies as the positive class).
* :func:`f1_at_threshold` -- F1 of the decisions ``score > threshold``.
* :func:`best_f1` -- the F1-optimal threshold over all cuts of the scores
  (:func:`pradot.metrics.classification.f1_curve`) and its F1. The curve flags ``score >= t``; the
  threshold returned here is the midpoint between the best cut and the next lower score, so that
  ``score > threshold`` makes the same decisions (and the threshold stays valid on nearby scores).
* :func:`threshold_report` -- all of them, plus precision and recall at the threshold.

The F1-optimal threshold is chosen on the labelled split it is measured on: an optimistic number that
says how far the label-free calibrated threshold is from the best one, not a threshold to deploy without a
held-out check.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, f1_score

from .classification import f1_curve

__all__ = ["average_precision", "f1_at_threshold", "best_f1", "threshold_report"]


def _checked(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).ravel().astype(int)
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.size} vs {s.size}")
    if not np.all(np.isin(y, (0, 1))):
        raise ValueError(f"labels must be 0 (normal) or 1 (anomalous), got {np.unique(y)[:10].tolist()}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain non-finite values (NaN or inf)")
    if y.min(initial=1) == y.max(initial=0):
        raise ValueError(
            f"threshold metrics need normal and anomalous images; all {y.size} labels are "
            f"{'anomalous' if y.size and y[0] else 'normal'}"
        )
    return y, s


def average_precision(labels, scores) -> float:
    """AUPR of image scores (anomalies positive): ``sklearn.metrics.average_precision_score``.

    Raises:
        ValueError: one class only, non-finite scores, lengths differ.
    """
    y, s = _checked(labels, scores)
    return float(average_precision_score(y, s))


def f1_at_threshold(labels, scores, threshold: float) -> float:
    """F1 of ``score > threshold`` against the labels (0 when nothing is flagged)."""
    y, s = _checked(labels, scores)
    return float(f1_score(y, s > float(threshold), zero_division=0))


def best_f1(labels, scores) -> tuple[float, float]:
    """``(f1_max, threshold)``: the best F1 over every cut of the scores, and a threshold with
    ``score > threshold`` making those decisions (see the module docstring)."""
    y, s = _checked(labels, scores)
    f1, cuts = f1_curve(y, s)
    i = int(np.argmax(f1))
    cut = float(cuts[i])
    below = s[s < cut]
    threshold = 0.5 * (cut + float(below.max())) if below.size else float(np.nextafter(cut, -np.inf))
    return float(f1[i]), threshold


def threshold_report(labels, scores, threshold: float) -> dict[str, float]:
    """``{"aupr", "f1_max", "f1_optimal_threshold", "f1_at_threshold", "precision_at_threshold",
    "recall_at_threshold"}`` of image scores and a decision threshold (``score > threshold``).

    Raises:
        ValueError: one class only (use :func:`average_precision`'s rules), non-finite scores.
    """
    y, s = _checked(labels, scores)
    pred = s > float(threshold)
    f1_max, best = best_f1(y, s)
    tp = int(np.sum(pred & (y == 1)))
    return {
        "aupr": average_precision(y, s),
        "f1_max": f1_max,
        "f1_optimal_threshold": best,
        "f1_at_threshold": f1_at_threshold(y, s, threshold),
        "precision_at_threshold": tp / int(pred.sum()) if pred.any() else 0.0,
        "recall_at_threshold": tp / int((y == 1).sum()),
    }
