"""Threshold-dependent segmentation metrics: SegF1, the localisation metric of MVTec AD 2.

MVTec AD 2 (Heckler-Kram et al., 2025) ranks methods by AU-PRO up to a false-positive rate of 0.05
(:func:`pradot.metrics.au_pro` with ``max_fpr=0.05``) and by **SegF1**: the F1 score of the binarised
anomaly maps against the ground truth, at the pixel level. The pixels of all images of the split are
pooled before the score is computed (one true-positive / false-positive / false-negative count for the
whole split, so a large image weighs more than a small one and a good image contributes only false
positives); a pixel is predicted anomalous when its map value is strictly greater than the threshold.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["segmentation_counts", "seg_f1"]


def segmentation_counts(
    masks: Sequence[np.ndarray | None], maps: Sequence[np.ndarray], threshold: float
) -> tuple[int, int, int]:
    """Pooled pixel counts ``(true positives, false positives, false negatives)`` of ``maps > threshold``.

    Args:
        masks: N 2-D bool masks (None = a good image: every pixel normal).
        maps: N 2-D real-valued anomaly maps, each of its mask's shape.
        threshold: map values strictly above it are predicted anomalous.
    Raises:
        ValueError: different counts or shapes, non-finite maps or threshold.
    """
    if len(masks) != len(maps):
        raise ValueError(f"got {len(maps)} maps but {len(masks)} masks")
    if not np.isfinite(threshold):
        raise ValueError(f"the threshold must be finite, got {threshold}")
    tp = fp = fn = 0
    for i, (m, a) in enumerate(zip(masks, maps)):
        a = np.asarray(a)
        gt = np.zeros(a.shape, bool) if m is None else np.asarray(m, bool)
        if gt.shape != a.shape:
            raise ValueError(f"image {i}: mask {gt.shape} and map {a.shape} differ in shape")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"image {i}: the anomaly map contains non-finite values")
        pred = a > threshold
        tp += int(np.count_nonzero(pred & gt))
        fp += int(np.count_nonzero(pred & ~gt))
        fn += int(np.count_nonzero(~pred & gt))
    return tp, fp, fn


def seg_f1(masks: Sequence[np.ndarray | None], maps: Sequence[np.ndarray], threshold: float) -> float:
    """SegF1 (MVTec AD 2): pixel-level F1 = 2 TP / (2 TP + FP + FN) over the pooled pixels of a split,
    predicting ``map > threshold`` (see the module docstring).

    Raises:
        ValueError: no pixel is anomalous in the ground truth and none is predicted anomalous (F1 = 0/0).
    """
    tp, fp, fn = segmentation_counts(masks, maps, threshold)
    if 2 * tp + fp + fn == 0:
        raise ValueError("SegF1 is undefined: no ground-truth pixel is anomalous and none is predicted anomalous")
    return 2.0 * tp / (2.0 * tp + fp + fn)
