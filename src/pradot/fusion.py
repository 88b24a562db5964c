"""Label-free choice of an ensemble's members and fusion weights on a validation objective.

Given the maps of K candidate models on a pseudo-anomaly evaluation set (validation normals + pseudo-anomalies,
:mod:`pradot.metrics.pseudo`), :func:`choose_fusion` tries every weight vector of the simplex grid
(:func:`weight_grid`: entries in ``{0, step, 2 step, ..., 1}`` summing to 1; a vector with one non-zero entry
is a single model) on the fused maps

    fused = sum_k w_k z_k,   z_k = (map_k - mean_k) / std_k   (``normalisation="per_member"``)
                                   = map_k                    (``normalisation="none"``)

with ``mean_k`` / ``std_k`` the pixel statistics of candidate k's maps on the **normal** images of the set
(what :meth:`pradot.ensemble.Ensemble.fit_normalisation` fits), and keeps the vector with the highest
objective (default ``val_objective``). Ties go to fewer members, then to the earlier vector of the grid
(candidates in the order given), so the choice is deterministic. Only the evaluation set is read: no test
image, no test label.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .errors import InputError
from .metrics.pseudo import OBJECTIVE, pseudo_metrics

__all__ = ["weight_grid", "FusionChoice", "choose_fusion", "normal_statistics"]


def weight_grid(k: int, step: float) -> list[tuple[float, ...]]:
    """Every weight vector of ``k`` entries in ``{0, step, ..., 1}`` that sums to 1 (``1 / step`` must be an
    integer): ``C(1/step + k - 1, k - 1)`` vectors, single models first, in a fixed order.

    Raises:
        ValueError: ``k < 1`` or ``1 / step`` not a positive integer.
    """
    if int(k) < 1:
        raise InputError(f"need at least one candidate, got {k}")
    parts = 1.0 / float(step) if float(step) > 0 else 0.0
    m = int(round(parts))
    if m < 1 or abs(parts - m) > 1e-9:
        raise InputError(f"weight step must divide 1 (0.5, 0.25, 0.2, ...), got {step!r}")

    def rec(n_left: int, slots: int):
        if slots == 1:
            yield (n_left,)
            return
        for first in range(n_left, -1, -1):
            for rest in rec(n_left - first, slots - 1):
                yield (first, *rest)

    grid = [tuple(c / m for c in v) for v in rec(m, int(k))]
    return sorted(grid, key=lambda w: sum(1 for x in w if x > 0))  # stable: single models first


def normal_statistics(maps: np.ndarray, normal: np.ndarray) -> dict:
    """``{"mean", "std", "n_images"}`` of all pixels of the maps of the normal images (N, S, S)."""
    x = np.asarray(maps, dtype=np.float64)[np.asarray(normal, dtype=bool)]
    if x.size == 0:
        raise InputError("normalisation statistics need at least one normal validation image")
    return {"mean": float(x.mean()), "std": float(x.std()), "n_images": int(x.shape[0])}


@dataclass
class FusionChoice:
    """The chosen weights (one per candidate; 0 = left out), their metrics on the evaluation set, the
    normalisation statistics (per candidate, on the set's normals; None without normalisation) and every
    vector tried with its objective."""

    weights: tuple[float, ...]
    metrics: dict[str, float]
    objective: str
    stats: list[dict] | None
    tried: list[tuple[tuple[float, ...], float]] = field(default_factory=list)

    @property
    def members(self) -> list[int]:
        """Indices of the candidates with a non-zero weight."""
        return [i for i, w in enumerate(self.weights) if w > 0]

    @property
    def value(self) -> float:
        return float(self.metrics[self.objective])


def choose_fusion(
    candidate_maps: Sequence[np.ndarray],
    groups: Sequence[str],
    styles: Sequence[str],
    masks,
    normalisation: str = "per_member",
    step: float = 0.25,
    objective: str = OBJECTIVE,
    size: int | None = None,
    max_members: int | None = None,
) -> FusionChoice:
    """The weights that maximise ``objective`` on the evaluation set (see the module docstring).

    Args:
        candidate_maps: per candidate, its (N, S, S) maps on the evaluation set (same N, S for all).
        groups, styles, masks: the evaluation set (:func:`pradot.metrics.pseudo.pseudo_metrics`).
        normalisation: ``"per_member"`` or ``"none"``.
        step: the weight grid's step. size: evaluate the localisation at this size (None: the maps').
        max_members: at most this many non-zero weights (None: any).
    Raises:
        ValueError: no candidate, maps of different shapes, or a bad normalisation / step.
    """
    if not candidate_maps:
        raise InputError("no candidate maps to choose a fusion from")
    shapes = {tuple(np.shape(m)) for m in candidate_maps}
    if len(shapes) != 1:
        raise InputError(f"candidates' maps differ in shape: {sorted(shapes)}")
    if normalisation not in ("none", "per_member"):
        raise InputError(f"normalisation must be 'none' or 'per_member', got {normalisation!r}")
    normal = np.asarray([str(g) == "good" for g in groups])
    stats = None
    z = [np.asarray(m, dtype=np.float32) for m in candidate_maps]
    if normalisation == "per_member":
        stats = [normal_statistics(m, normal) for m in z]
        z = [((m - s["mean"]) / max(s["std"], 1e-12)).astype(np.float32) for m, s in zip(z, stats)]
    best: tuple | None = None
    tried = []
    for w in weight_grid(len(z), step):
        used = [i for i, x in enumerate(w) if x > 0]
        if max_members is not None and len(used) > int(max_members):
            continue
        fused = sum((np.float32(w[i]) * z[i] for i in used), np.zeros_like(z[0]))  # 0 + x == x: as before
        scores = fused.reshape(len(fused), -1).max(axis=1)
        metrics = pseudo_metrics(groups, styles, scores, maps=fused, masks=masks, size=size)
        value = float(metrics[objective])
        tried.append((w, value))
        key = (value, -len(used))  # higher objective, then fewer members; first in grid order on a tie
        if best is None or key > best[0]:
            best = (key, w, metrics)
    assert best is not None  # the grid has at least one weight vector
    _, weights, metrics = best
    return FusionChoice(tuple(weights), metrics, objective, stats, tried)
