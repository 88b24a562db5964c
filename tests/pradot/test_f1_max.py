"""F1-max (image and pixel level) against a direct sweep over every threshold and against sklearn."""

import numpy as np
import pytest
from sklearn.metrics import f1_score

from pradot.metrics import f1_max, pixel_f1_max


def brute_f1_max(labels, scores):
    best = 0.0
    for t in np.unique(scores):
        pred = scores >= t
        tp = np.sum(pred & (labels == 1))
        fp = np.sum(pred & (labels == 0))
        fn = np.sum(~pred & (labels == 1))
        best = max(best, 2 * tp / (2 * tp + fp + fn))
    return best


@pytest.mark.parametrize("seed", range(5))
def test_f1_max_is_the_best_f1_over_all_thresholds(seed):
    rng = np.random.default_rng(seed)
    labels = (rng.random(40) < 0.3).astype(int)
    labels[:2] = [0, 1]
    scores = np.round(rng.normal(labels * 0.8, 1.0), 1)  # ties included
    value = f1_max(labels, scores)
    assert value == pytest.approx(brute_f1_max(labels, scores))
    assert value == pytest.approx(max(f1_score(labels, scores >= t) for t in np.unique(scores)))


def test_pixel_f1_max_and_edge_cases():
    rng = np.random.default_rng(0)
    masks = rng.random((3, 6, 7)) < 0.2
    maps = rng.normal(masks * 1.0, 0.7)
    assert pixel_f1_max(masks, maps) == pytest.approx(brute_f1_max(masks.ravel().astype(int), maps.ravel()))
    assert f1_max([0, 1, 1], [0.1, 0.5, 0.9]) == 1.0
    with pytest.raises(ValueError, match="only one class"):
        f1_max([1, 1], [0.2, 0.3])
