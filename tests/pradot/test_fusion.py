"""The validation objective on a pseudo-anomaly set (pradot.metrics.pseudo) and the label-free choice of
members and weights (pradot.fusion), against direct computations."""

from __future__ import annotations

import itertools
from math import comb

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from pradot.fusion import choose_fusion, weight_grid
from pradot.metrics import au_pro
from pradot.metrics.pseudo import pseudo_metrics

S = 16


def _evalset(seed=0, n_normal=6):
    """Normals, 3 structural (a bright blob) and 3 logical (a region) pseudo-anomalies with their masks."""
    rng = np.random.default_rng(seed)
    groups = ["good"] * n_normal + ["noise"] * 3 + ["shuffle"] * 3
    styles = ["good"] * n_normal + ["structural"] * 3 + ["logical"] * 3
    masks = np.zeros((len(groups), S, S), bool)
    for i in range(n_normal, len(groups)):
        y, x = rng.integers(0, S - 5, size=2)
        masks[i, y : y + 5, x : x + 5] = True
    return groups, styles, masks, rng


def test_pseudo_metrics_are_the_direct_formulas():
    groups, styles, masks, rng = _evalset()
    maps = rng.random((len(groups), S, S)) + 0.8 * masks
    scores = maps.reshape(len(maps), -1).max(1)
    out = pseudo_metrics(groups, styles, scores, maps=maps, masks=masks)
    labels = np.array([g != "good" for g in groups])
    assert out["val_auroc"] == pytest.approx(roc_auc_score(labels, scores))
    objective = []
    for style in ("structural", "logical"):
        sel = [i for i, s in enumerate(styles) if s in ("good", style)]
        auroc = roc_auc_score(labels[sel], scores[sel])
        pro = au_pro(list(masks[sel]), list(maps[sel]), max_fpr=0.05)
        assert out[f"val_auroc_{style}"] == pytest.approx(auroc)
        assert out[f"val_aupro_{style}"] == pytest.approx(pro)
        objective.append((auroc + pro) / 2)
    assert out["val_objective"] == pytest.approx(np.mean(objective))
    # scores only: exactly the sweep's keys (val_auroc, per kind, per style)
    assert set(pseudo_metrics(groups, styles, scores)) == {
        "val_auroc",
        "val_auroc_noise",
        "val_auroc_shuffle",
        "val_auroc_structural",
        "val_auroc_logical",
    }
    with pytest.raises(ValueError, match="one map and one mask"):
        pseudo_metrics(groups, styles, scores, maps=maps)


def test_weight_grid_is_the_simplex_grid():
    for k, step in [(1, 0.5), (3, 0.5), (4, 0.25), (5, 0.25)]:
        grid = weight_grid(k, step)
        m = round(1 / step)
        assert len(grid) == len(set(grid)) == comb(m + k - 1, k - 1)
        assert all(abs(sum(w) - 1) < 1e-12 and all(x in {i / m for i in range(m + 1)} for x in w) for w in grid)
        assert [sum(x > 0 for x in w) for w in grid] == sorted(sum(x > 0 for x in w) for w in grid)
    assert weight_grid(2, 0.5)[:2] == [(1.0, 0.0), (0.0, 1.0)]
    with pytest.raises(ValueError, match="divide 1"):
        weight_grid(3, 0.3)


def test_choose_fusion_maximises_the_objective_over_the_grid():
    """Candidate 0 sees only the structural anomalies, candidate 1 only the logical ones (on another scale),
    candidate 2 is noise: the choice mixes 0 and 1 and beats either alone; it equals a brute-force search
    with pseudo_metrics on hand-standardised maps."""
    groups, styles, masks, rng = _evalset(1)
    st = np.array(styles)[:, None, None]
    base = [rng.random(masks.shape) for _ in range(3)]
    cands = [
        base[0] + 1.5 * (masks & (st == "structural")),
        100 * (base[1] + 1.5 * (masks & (st == "logical"))),
        base[2],
    ]
    choice = choose_fusion(cands, groups, styles, masks, step=0.25)
    assert choice.members == [0, 1] and choice.weights[2] == 0
    singles = {w: v for w, v in choice.tried if sum(x > 0 for x in w) == 1}
    assert choice.value > max(singles.values())
    normal = np.array([g == "good" for g in groups])
    z = [(c - c[normal].mean()) / c[normal].std() for c in cands]
    best = None
    for w in itertools.product([0, 0.25, 0.5, 0.75, 1.0], repeat=3):
        if abs(sum(w) - 1) > 1e-9:
            continue
        fused = sum(wi * zi for wi, zi in zip(w, z))
        v = pseudo_metrics(groups, styles, fused.reshape(len(fused), -1).max(1), maps=fused, masks=masks)[
            "val_objective"
        ]
        key = (round(v, 9), -sum(x > 0 for x in w))
        if best is None or key > best[0]:
            best = (key, w)
    assert choice.value == pytest.approx(best[0][0], abs=1e-6)
    assert choice.stats[1]["mean"] == pytest.approx(float(cands[1][normal].mean()))
    # a single good candidate is a valid answer; max_members bounds the ensemble
    perfect = base[0] + 3.0 * masks  # detects and localises both styles: nothing to gain from mixing
    single = choose_fusion([base[2], perfect], groups, styles, masks, step=0.5)
    assert single.members == [1] and single.value == pytest.approx(1.0)
    assert len(choose_fusion(cands, groups, styles, masks, step=0.25, max_members=1).members) == 1
    # the choice reads nothing but what it is given: same inputs, same answer
    again = choose_fusion(cands, groups, styles, masks, step=0.25)
    assert again.weights == choice.weights and again.value == choice.value
