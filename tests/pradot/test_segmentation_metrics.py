"""SegF1 (MVTec AD 2's pixel-level F1 of thresholded maps, pixels of the split pooled) against scikit-learn's
f1_score on the flattened pixels, and its undefined case."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from pradot.metrics.segmentation import seg_f1, segmentation_counts


def test_seg_f1_equals_sklearn_on_pooled_pixels():
    rng = np.random.default_rng(0)
    shapes = [(8, 10), (12, 6), (5, 5), (9, 9)]  # images of different sizes weigh by their pixel counts
    maps = [rng.random(s) for s in shapes]
    masks = [rng.random(s) > 0.7 for s in shapes]
    masks[2] = None  # a good image: only false positives possible
    for threshold in (0.2, 0.5, 0.9):
        y = np.concatenate([(np.zeros(a.shape, bool) if m is None else m).ravel() for m, a in zip(masks, maps)])
        p = np.concatenate([(a > threshold).ravel() for a in maps])
        assert seg_f1(masks, maps, threshold) == pytest.approx(f1_score(y, p))


def test_counts_use_strictly_greater_and_check_shapes():
    amap = np.array([[0.5, 0.6], [0.4, 0.5]])
    gt = np.array([[True, True], [False, False]])
    assert segmentation_counts([gt], [amap], 0.5) == (1, 0, 1)  # 0.5 is not above 0.5
    with pytest.raises(ValueError, match="differ in shape"):
        segmentation_counts([gt], [np.zeros((3, 2))], 0.5)
    with pytest.raises(ValueError, match="non-finite"):
        segmentation_counts([gt], [np.full((2, 2), np.nan)], 0.5)


def test_seg_f1_undefined_without_any_positive():
    maps = [np.zeros((4, 4))]
    with pytest.raises(ValueError, match="SegF1 is undefined"):
        seg_f1([None], maps, 0.5)
    assert seg_f1([None], [np.ones((4, 4))], 0.5) == 0.0  # only false positives: defined, 0
