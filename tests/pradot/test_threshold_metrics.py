"""Threshold metrics (pradot.metrics.threshold) against direct formulas: F1 from counts over every cut,
average precision as the sum over recall steps of the precision there."""

import numpy as np
import pytest

from pradot.metrics.threshold import average_precision, best_f1, f1_at_threshold, threshold_report


def f1_from_counts(labels, scores, t):
    pred = scores > t
    tp = np.sum(pred & (labels == 1))
    fp = np.sum(pred & (labels == 0))
    fn = np.sum(~pred & (labels == 1))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def brute_f1_max(labels, scores):
    cuts = np.unique(scores)
    candidates = np.concatenate([[cuts[0] - 1.0], (cuts[:-1] + cuts[1:]) / 2])  # every distinct decision
    return max(f1_from_counts(labels, scores, t) for t in candidates)


def direct_ap(labels, scores):
    """sum_k (R_k - R_{k-1}) P_k over the distinct scores, from the highest down (ties flagged together)."""
    ap, prev_recall = 0.0, 0.0
    for t in np.unique(scores)[::-1]:
        pred = scores >= t
        tp = np.sum(pred & (labels == 1))
        recall, precision = tp / np.sum(labels == 1), tp / np.sum(pred)
        ap += (recall - prev_recall) * precision
        prev_recall = recall
    return ap


@pytest.mark.parametrize("seed", range(6))
def test_best_f1_and_ap_match_the_direct_formulas(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(8, 60))
    labels = (rng.random(n) < 0.4).astype(int)
    labels[:2] = [0, 1]
    scores = np.round(rng.normal(labels * 1.2, 1.0), 1)  # rounded: ties between the classes
    f1_max, t = best_f1(labels, scores)
    assert f1_max == pytest.approx(brute_f1_max(labels, scores), abs=1e-12)
    assert f1_from_counts(labels, scores, t) == pytest.approx(f1_max, abs=1e-12)  # score > t makes that F1
    assert average_precision(labels, scores) == pytest.approx(direct_ap(labels, scores), abs=1e-12)
    thr = float(np.median(scores))
    report = threshold_report(labels, scores, thr)
    assert report["f1_at_threshold"] == pytest.approx(f1_from_counts(labels, scores, thr), abs=1e-12)
    pred = scores > thr
    assert report["recall_at_threshold"] == pytest.approx(np.mean(pred[labels == 1]))
    assert report["precision_at_threshold"] == pytest.approx(np.mean(labels[pred] == 1) if pred.any() else 0.0)
    assert report["f1_max"] >= report["f1_at_threshold"] - 1e-12


def test_threshold_metrics_need_both_classes_and_finite_scores():
    with pytest.raises(ValueError, match="normal and anomalous"):
        threshold_report([0, 0, 0], [0.1, 0.2, 0.3], 0.15)
    with pytest.raises(ValueError, match="non-finite"):
        best_f1([0, 1], [0.1, float("nan")])
    assert f1_at_threshold([0, 1, 1], [0.1, 0.5, 0.9], 1.0) == 0.0  # nothing flagged


def test_engine_threshold_metrics_names_and_one_class():
    from pradot.engine import threshold_metrics

    labels, scores = np.array([0, 0, 1, 1, 0, 1]), np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
    out = threshold_metrics(labels, scores, 0.3)
    assert set(out) == {
        "test_recall_at_threshold",
        "test_fpr_at_threshold",
        "test_aupr",
        "test_f1_max",
        "test_f1_optimal_threshold",
        "test_f1_at_threshold",
        "test_precision_at_threshold",
    }
    assert out["test_fpr_at_threshold"] == pytest.approx(1 / 3) and out["test_recall_at_threshold"] == 1.0
    assert set(threshold_metrics(labels, scores, 0.3, prefix="val")) == {k.replace("test_", "val_") for k in out}
    assert threshold_metrics([0, 0], [0.1, 0.2], 0.3) == {}
