"""The label-free choice: every candidate scored on the validation objective's set (validation normals +
pseudo-anomalies, :mod:`pipelines.objective`), the best per group kept, then the members and their weights
(``fusion=search``, :func:`pradot.fusion.choose_fusion`) or the paper's mean of the PRADOT group winners
(``fusion=mean``). Only the evaluation set is read: the test split is not opened here.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipelines import objective
from pipelines.promote.select import Member, PromotionError, Selection, download_member, group_key

log = logging.getLogger(__name__)

__all__ = ["Candidate", "Choice", "load_candidates", "score_on_set", "choose", "set_objective", "below_baseline"]


@dataclass
class Candidate:
    """A model promote may use: its label, registry reference (None for a baseline fitted by promote), the
    loaded model, its group, and its maps and metrics on the evaluation set."""

    label: str
    short: str
    ref: str | None
    model: object
    group: tuple
    kind: str  # "bank" | "memory_bank"
    maps: np.ndarray | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    is_baseline: bool = False
    given: bool = True  # one of the selection's members (False: the baseline added as a row and candidate)

    @property
    def name(self) -> str:
        """The registry reference, or for a model promote fitted itself a name without commas (for tags)."""
        if self.ref:
            return self.ref
        return "memory-bank-fitted-by-promote:stages=" + "+".join(map(str, self.group[1]))


@dataclass
class Choice:
    """The chosen members (indices into the candidates) with their weights (None: the plain mean) and the
    normalisation statistics fitted on the set's normals; the winners per group; how it was chosen."""

    members: list[int]
    weights: list[float] | None
    stats: list[dict] | None
    winners: list[int]
    mode: str
    metrics: dict[str, float]
    notes: list[str] = field(default_factory=list)


def _candidate(member: Member, model, baseline: bool = False) -> Candidate:
    kind = "memory_bank" if member.tags.kind == "memory_bank" else "bank"
    return Candidate(
        member.describe(), member.short(), member.ref, model, group_key(member), kind, is_baseline=baseline
    )


def load_candidates(sel: Selection, device, fit_baseline=None) -> list[Candidate]:
    """Download and load every candidate; the baseline (registered, else ``fit_baseline()``) comes last."""
    from pradot.persistence import load_scoring_model

    out = []
    with tempfile.TemporaryDirectory(prefix="pradot-promote-") as tmp:
        for i, m in enumerate(sel.members):
            path = download_member(m, Path(tmp) / f"member{i}")
            out.append(_candidate(m, load_scoring_model(path, device=device), m is sel.baseline))
            path.unlink()
        if sel.baseline is not None and sel.baseline not in sel.members:
            path = download_member(sel.baseline, Path(tmp) / "baseline")
            out.append(_candidate(sel.baseline, load_scoring_model(path, device=device), baseline=True))
            out[-1].given = False
    if not any(c.is_baseline for c in out) and fit_baseline is not None:
        model = fit_baseline()
        st = ",".join(map(str, model.config.stages))
        out.append(
            Candidate(
                f"memory bank (stage {st}; fitted by promote, not registered)",
                f"MB s{st}",
                None,
                model,
                ("memory_bank", tuple(model.config.stages)),
                "memory_bank",
                is_baseline=True,
                given=False,
            )
        )
    return out


def score_on_set(model, pset: objective.PseudoSet, size: int, batch_size: int) -> np.ndarray:
    """A model's maps (N, size, size) on the evaluation set's images."""
    import torch
    import torch.nn.functional as F

    maps = []
    for i in range(0, len(pset.images), batch_size):
        x = torch.from_numpy(pset.images[i : i + batch_size]).permute(0, 3, 1, 2).float() / 255.0
        m = model.score(x)[0].float()
        if m.shape[-1] != size:
            m = F.interpolate(
                m[:, None], size=(size, size), mode="bilinear", align_corners=False, antialias=m.shape[-1] > size
            )[:, 0]
        maps.append(m.cpu().numpy())
    return np.concatenate(maps).astype(np.float32)


def set_objective(maps: np.ndarray, pset: objective.PseudoSet, eval_size: int | None) -> dict[str, float]:
    """The objective's metrics of maps on the evaluation set (image score = max of the map)."""
    scores = maps.reshape(len(maps), -1).max(axis=1)
    return objective.evaluate(pset.groups, pset.styles, scores, maps=maps, masks=pset.masks, size=eval_size)


def _winners(cands: Sequence[Candidate], key: str) -> list[int]:
    """Per group, the candidate with the best objective (ties: the later one, i.e. the newer version)."""
    best: dict[tuple, int] = {}
    for i, c in enumerate(cands):
        j = best.get(c.group)
        if j is None or c.metrics[key] >= cands[j].metrics[key]:
            best[c.group] = i
    return sorted(best.values())


def choose(cands: Sequence[Candidate], opts, pset: objective.PseudoSet, explicit: bool) -> Choice:
    """The members and weights (see the module docstring); every candidate must have been scored."""
    from pradot.fusion import choose_fusion, normal_statistics

    key = opts.objective
    missing = [c.label for c in cands if key not in c.metrics]
    if missing:
        raise PromotionError(
            f"objective {key!r} is not a validation metric promote computes (have {sorted(cands[0].metrics)})"
        )
    winners = list(range(len(cands))) if explicit else _winners(cands, key)
    notes = [
        f"{cands[i].label}: {key}={cands[i].metrics[key]:.4f}" + ("" if explicit else " (best of its group)")
        for i in winners
    ]
    if opts.fusion == "mean":  # the paper's rule: the given members, or the single-stage PRADOT group winners
        members = (
            [i for i in winners if cands[i].given]
            if explicit
            else [i for i in winners if cands[i].kind == "bank" and len(cands[i].group[1]) == 1]
        )
        if not members:
            raise PromotionError(
                "fusion=mean averages single-stage PRADOT banks and none is registered; train "
                "some (e.g. -e reproduce) or use fusion=search"
            )
        stats = (
            [normal_statistics(cands[i].maps, pset.normal) for i in members]
            if opts.normalisation == "per_member"
            else None
        )
        mode = (
            "mean of the given members" if explicit else "mean of the best single-stage bank per (stage, alpha group)"
        )
        return Choice(members, None, stats, winners, mode, {}, notes)
    fc = choose_fusion(
        [cands[i].maps for i in winners],
        pset.groups,
        pset.styles,
        pset.masks,
        normalisation=opts.normalisation,
        step=opts.weight_step,
        objective=key,
        size=opts.eval_size,
        max_members=opts.max_members,
    )
    members = [winners[j] for j in fc.members]
    weights = [fc.weights[j] for j in fc.members]
    stats = [fc.stats[j] for j in fc.members] if fc.stats is not None else None
    notes.append(
        f"search over {len(fc.tried)} weight vectors of {len(winners)} candidates (step "
        f"{opts.weight_step}): {key}={fc.value:.4f}"
    )
    return Choice(members, weights, stats, winners, "search on the validation objective", fc.metrics, notes)


def below_baseline(cands: Sequence[Candidate], value: float, key: str) -> str | None:
    """A plain sentence when the chosen model's ``value`` of the validation objective ``key`` is below the
    memory-bank baseline's (the best baseline candidate), else ``None``."""
    base = [c for c in cands if c.is_baseline and key in c.metrics]
    if not base:
        return None
    best = max(base, key=lambda c: c.metrics[key])
    if value >= best.metrics[key]:
        return None
    return (
        f"the chosen model is BELOW the memory-bank baseline on the validation objective ({key} {value:.4f} < "
        f"{best.metrics[key]:.4f} for {best.label}): the trained banks do not beat it on this data; look at the "
        f"table above, and serve the baseline or train other banks if the test split agrees"
    )
