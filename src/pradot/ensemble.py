"""Ensembles of scoring models: the paper's final model is the average of the maps of four PRADOT banks,
(stage, alpha) = (2, 0), (2, 0.3), (3, 0), (3, 0.3). Members may also be memory banks
(:class:`pradot.memory_bank.MemoryBankModel`), and the fusion may weight them.

```python
from pradot.ensemble import Ensemble
from pradot.persistence import load_scoring_model
ens = Ensemble([m20, m2a, m30, m3a])                      # PRADOT models (normalisation="none": the paper)
maps, scores = ens.score(images)                          # (B, S, S), (B,); S = the first member's image_size
ens.save("ensemble.pt"); Ensemble.load("ensemble.pt")
model = load_scoring_model(path)                          # a PRADOT file or an ensemble file
```

Fusion rule (:meth:`Ensemble.fuse`):

* every member scores the images at its own ``image_size`` (inputs are resized as ``PRADOT.score``
  does) and its map is resized to the ensemble's size ``S`` (the first member's ``image_size``;
  bilinear, ``align_corners=False``, antialiased when shrinking). Members of different image sizes are
  therefore accepted; with equal sizes (the paper) no resizing happens;
* ``normalisation="none"`` (the paper's rule): the fused map is the plain mean of the members' maps
  (with ``weights``: their weighted mean, :func:`pradot.postprocess.weighted_fusion`);
* ``normalisation="per_member"``: each member's map is first standardised, ``(map - mean_k) / std_k``,
  with ``mean_k`` / ``std_k`` the mean and standard deviation of **all pixels** of member k's maps on
  normal validation images (:meth:`Ensemble.fit_normalisation`). Pixel statistics are used rather than
  image-score statistics because the quantity being averaged is the map: a member whose maps live on a
  larger scale (e.g. another alpha, another stage's smoother maps) would otherwise dominate every pixel.
  The statistics are fitted on normal images only, so no anomaly label is used;
* ``weights`` (optional, one per member, >= 0, not all 0): the fused map is ``sum_k w_k z_k / sum_k w_k`` of
  the (normalised) maps ``z_k``; ``None`` is the plain mean (the paper). A member with weight 0 is kept in
  the file but does not count (promotion chooses members and weights this way);
* every member post-processes its own map first (e.g. ``smoothing_sigma``), as it does alone;
* the image score is the max of the fused map (as for a single model).

Members: feature models (:class:`pradot.base.FeatureModel`: ``backbone``, ``image_size``, ``prepare``,
``maps_from_backbone``, ``describe``, ``state(include_backbone=False)`` with its ``"format"``) of a kind whose
files an ensemble reads back (:data:`MEMBER_CLASSES`: :class:`pradot.model.PRADOT` and
:class:`pradot.memory_bank.MemoryBankModel`). The ensemble itself is a :class:`pradot.base.ScoringModel`.

Members that share identical backbone weights, stages and image size run the backbone once per batch
(the paper's four members need two backbone passes, not four), and the saved file stores each distinct
weight tensor once (a stage-2 network's weights are a prefix of the stage-3 network's).

File format (``torch.save`` of a dict): ``{"format": "pradot-ensemble-v2", "config": {...image_size,
normalisation, weights, backbone, stages, members...}, "stats": [...] | None, "weights": [...] | None,
"labels": [...], "members": [member states as their ``save`` writes them (each with its own ``"format"``),
with backbone weights replaced by tensor references], "tensors": {digest: tensor}}``. Files of format
``pradot-ensemble-v1`` (PRADOT members, no weights) load and score as before. v2 is a new format name so
that a reader of v1 refuses a file it would misread (weights, memory-bank members).
:func:`pradot.persistence.load_scoring_model` dispatches on the ``"format"`` key and serves model, memory-bank
and ensemble files with the same ``score`` / ``config.image_size`` interface.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .backbone import Backbone, load_backbone
from .base import FeatureModel, ScoringModel
from .checkpoint import ENSEMBLE_FORMAT, ENSEMBLE_FORMATS, MEMORY_BANK_FORMAT, MODEL_FORMAT, load_state, save_state
from .errors import InputError, InputTypeError, NotFittedError
from .maps import resize_maps
from .memory_bank import MemoryBankModel
from .model import PRADOT
from .padim import PADIM_FORMAT, PaDiMModel
from .postprocess import check_weights, standardise, weighted_fusion
from .scoring import fuse_maps, image_scores

__all__ = ["ENSEMBLE_FORMAT", "MEMBER_CLASSES", "NORMALISATIONS", "EnsembleConfig", "Ensemble"]
NORMALISATIONS = ("none", "per_member")
#: member state format -> the class that reads it
MEMBER_CLASSES = {MODEL_FORMAT: PRADOT, MEMORY_BANK_FORMAT: MemoryBankModel, PADIM_FORMAT: PaDiMModel}


@dataclass
class EnsembleConfig:
    """What a scorer needs (``image_size``) and a description of the members."""

    image_size: int
    normalisation: str = "none"
    backbone: str = ""  # the members' backbones, "+"-joined when they differ (for model metadata)
    stages: tuple[int, ...] = ()  # the union of the members' stages
    members: list[dict] = field(default_factory=list)  # per member: its describe() and label
    weights: list[float] | None = None  # fusion weights (None: the plain mean)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stages"] = list(self.stages)
        return d


def _resize_maps(maps: torch.Tensor, size: int) -> torch.Tensor:
    """(B, h, w) -> (B, size, size): the ensemble's convention (:func:`pradot.maps.resize_maps`,
    ``"half_pixel_shrink"``)."""
    return resize_maps(maps, size, "half_pixel_shrink")


def _digest(t: torch.Tensor) -> str:
    t = t.detach().cpu().contiguous()
    h = hashlib.sha1(f"{t.dtype}|{tuple(t.shape)}|".encode())
    if t.numel():
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _backbone_key(member) -> tuple:
    """Members with the same key compute identical features: one backbone pass serves them all."""
    bb = member.backbone
    h = hashlib.sha1()
    for k, v in bb.net.state_dict().items():
        h.update(k.encode())
        h.update(_digest(v).encode())
    return bb.name, tuple(bb.stages), int(member.config.image_size), h.hexdigest()


def _as_images(images) -> torch.Tensor:
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor):
        raise InputTypeError(f"images must be a tensor (B, 3, H, W) in [0, 1], got {type(images).__name__}")
    return images


class Ensemble(nn.Module, ScoringModel):
    """Fusion of the anomaly maps of several scoring models (see the module docstring).

    Args:
        members: fitted :class:`~pradot.model.PRADOT` or :class:`~pradot.memory_bank.MemoryBankModel`
            models (at least one).
        normalisation: ``"none"`` (the paper: plain mean) or ``"per_member"`` (standardise each member's
            map by its validation statistics first; needs ``stats`` or :meth:`fit_normalisation`).
        stats: per member ``{"mean": float, "std": float, "n_images": int}`` (pixel statistics of its
            maps on normal validation images).
        labels: optional names of the members (e.g. ``"pradot-mvtec_loco-screw_bag/3"``), saved with it.
        weights: optional fusion weights, one per member (>= 0, not all 0); ``None``: the plain mean.
    Raises:
        InputTypeError: a member is not a feature model of a kind ensembles store (:data:`MEMBER_CLASSES`).
        InputError: bad options.
    """

    KIND = "ensemble"
    FORMAT = ENSEMBLE_FORMAT

    def __init__(
        self,
        members: Sequence,
        normalisation: str = "none",
        stats: Sequence[dict] | None = None,
        labels: Sequence[str] | None = None,
        weights: Sequence[float] | None = None,
    ):
        super().__init__()
        members = list(members)
        if not members:
            raise InputError("an ensemble needs at least one member (PRADOT models, memory banks or PaDiM models)")
        kinds = tuple(MEMBER_CLASSES.values())
        bad = [i for i, m in enumerate(members) if not (isinstance(m, FeatureModel) and m.FORMAT in MEMBER_CLASSES)]
        if bad:
            raise InputTypeError(
                f"ensemble members must be PRADOT models, memory banks or PaDiM models "
                f"({', '.join(c.__name__ for c in kinds)}); members {bad} are "
                f"{[type(members[i]).__name__ for i in bad]}"
            )
        if normalisation not in NORMALISATIONS:
            raise InputError(f"normalisation must be one of {NORMALISATIONS}, got {normalisation!r}")
        if labels is not None and len(labels) != len(members):
            raise InputError(f"{len(labels)} labels for {len(members)} members")
        self.members = nn.ModuleList(members)
        self.normalisation = normalisation
        self.labels = [str(x) for x in labels] if labels is not None else [f"member{i}" for i in range(len(members))]
        self.weights: list[float] | None = check_weights(weights, len(members)) if weights is not None else None
        self.stats: list[dict] | None = None
        if stats is not None:
            self.set_stats(stats)
        S = int(members[0].config.image_size)
        backbones = list(dict.fromkeys(m.config.backbone for m in members))
        self.config = EnsembleConfig(
            image_size=S,
            normalisation=normalisation,
            backbone="+".join(backbones),
            stages=tuple(sorted({s for m in members for s in m.config.stages})),
            members=[{"label": lab, **m.describe()} for lab, m in zip(self.labels, members)],
            weights=list(self.weights) if self.weights is not None else None,
        )
        # groups of members sharing one backbone pass: [(index of the member whose backbone runs, [members])]
        groups: dict[tuple, list[int]] = {}
        for i, m in enumerate(members):
            groups.setdefault(_backbone_key(m), []).append(i)
        self._groups = [(idx[0], idx) for idx in groups.values()]

    # ------------------------------------------------------------------ properties
    @property
    def image_size(self) -> int:
        return int(self.config.image_size)

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        """The first member's device."""
        return self.members[0].device

    @property
    def fitted(self) -> bool:  # type: ignore[override]
        """Every member is fitted."""
        return all(m.fitted for m in self.members)

    def describe(self) -> dict:
        """Kind, backbone(s), stages, image size, fusion rule and the members' ``describe()``."""
        c = self.config
        return {
            "kind": "ensemble",
            "backbone": c.backbone,
            "stages": list(c.stages),
            "image_size": int(c.image_size),
            "normalisation": self.normalisation,
            "weights": list(self.weights) if self.weights is not None else None,
            "members": [dict(m) for m in c.members],
        }

    def __len__(self) -> int:
        return len(self.members)

    def set_stats(self, stats: Sequence[dict]) -> None:
        stats = [dict(s) for s in stats]
        if len(stats) != len(self.members):
            raise InputError(f"{len(stats)} normalisation statistics for {len(self.members)} members")
        for i, s in enumerate(stats):
            if "mean" not in s or "std" not in s:
                raise InputError(f"statistics of member {i} need 'mean' and 'std', got {sorted(s)}")
            mean, std = float(s["mean"]), float(s["std"])
            if not (math.isfinite(mean) and math.isfinite(std)) or std < 0:
                raise InputError(f"statistics of member {i} must be finite with std >= 0, got {s}")
            s["mean"], s["std"] = mean, std
        self.stats = stats

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def member_maps(self, images, batch_size: int = 16) -> list[torch.Tensor]:
        """Each member's anomaly map at the ensemble's size, before normalisation: list of (B, S, S).

        Equal to ``[resize(m.score(images)[0]) for m in members]``; members with identical backbones
        share one backbone pass per batch.
        """
        images = _as_images(images)
        S = self.image_size
        out: list[torch.Tensor | None] = [None] * len(self.members)
        for runner, idx in self._groups:
            lead = self.members[runner]
            prepared = lead.prepare(images)  # resized to this group's image_size (every member's rule)
            Sm = int(lead.config.image_size)
            per = {i: [] for i in idx}
            for b in range(0, len(prepared), batch_size):
                feats = lead.backbone(prepared[b : b + batch_size].to(lead.device))
                for i in idx:
                    per[i].append(self.members[i].maps_from_backbone(feats))
            for i in idx:
                out[i] = _resize_maps(torch.cat(per[i]) if per[i] else torch.zeros(0, Sm, Sm), S)
        return out  # type: ignore[return-value]

    def _normalise(self, k: int, maps: torch.Tensor) -> torch.Tensor:
        if self.normalisation == "none":
            return maps
        if self.stats is None:
            raise NotFittedError(
                "normalisation='per_member' needs the members' statistics on validation normals: "
                "call fit_normalisation(validation_images) (or pass stats=) first"
            )
        s = self.stats[k]
        return standardise(maps, s["mean"], s["std"])

    def fuse(self, member_maps: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
        """Fused maps and image scores from the members' maps (list of (B, S_k, S_k) tensors or arrays):
        resize to the ensemble's size, normalise (``per_member``), average (weighted with ``weights``);
        image score = max."""
        if len(member_maps) != len(self.members):
            raise InputError(f"{len(member_maps)} member maps for {len(self.members)} members")
        S = self.image_size
        maps = [
            self._normalise(
                k, _resize_maps(torch.as_tensor(np.asarray(m) if not isinstance(m, torch.Tensor) else m).float(), S)
            )
            for k, m in enumerate(member_maps)
        ]
        fused = fuse_maps(maps) if self.weights is None else weighted_fusion(maps, self.weights)
        return fused, image_scores(fused)

    @torch.no_grad()
    def score(self, images, batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
        """Anomaly maps (B, S, S) at the ensemble's size and image scores (B,) (max of the fused map).

        ``images``: (B, 3, H, W) float in [0, 1] (or uint8); each member resizes them to its own size.
        """
        return self.fuse(self.member_maps(images, batch_size))

    # ------------------------------------------------------------------ normalisation statistics
    @staticmethod
    def map_statistics(maps) -> dict:
        """``{"mean", "std", "n_images"}`` over all pixels of (N, S, S) maps."""
        x = torch.as_tensor(np.asarray(maps) if not isinstance(maps, torch.Tensor) else maps).double()
        if x.numel() == 0:
            raise InputError("normalisation statistics need at least one validation map")
        if not torch.isfinite(x).all():
            raise InputError("validation maps contain non-finite values")
        return {"mean": float(x.mean()), "std": float(x.std(unbiased=False)), "n_images": int(x.shape[0])}

    def fit_normalisation(self, images=None, member_maps: Sequence | None = None, batch_size: int = 16) -> list[dict]:
        """Fit the per-member statistics on normal validation images: either ``images`` ((N, 3, H, W)
        tensor/array, or an iterable of such batches), or precomputed ``member_maps`` (one (N, S, S) per
        member, e.g. from :meth:`member_maps`). Sets and returns ``stats`` (used when
        ``normalisation="per_member"``)."""
        if (images is None) == (member_maps is None):
            raise InputError("give exactly one of images= or member_maps=")
        if member_maps is None:
            if isinstance(images, (torch.Tensor, np.ndarray)):
                member_maps = self.member_maps(images, batch_size)
            else:
                parts = [self.member_maps(b, batch_size) for b in images]
                if not parts:
                    raise InputError("normalisation statistics need at least one validation image")
                member_maps = [torch.cat([p[k] for p in parts]) for k in range(len(self.members))]
        if len(member_maps) != len(self.members):
            raise InputError(f"{len(member_maps)} member maps for {len(self.members)} members")
        S = self.image_size
        stats = [
            self.map_statistics(
                _resize_maps(torch.as_tensor(np.asarray(m) if not isinstance(m, torch.Tensor) else m).float(), S)
            )
            for m in member_maps
        ]
        self.set_stats(stats)
        return self.stats  # type: ignore[return-value]

    # ------------------------------------------------------------------ persistence
    def state(self, **options) -> dict:
        """The dict :meth:`save` writes (backbone weights deduplicated by content)."""
        tensors: dict[str, torch.Tensor] = {}
        members = []
        for m in self.members:
            ms = m.state(include_backbone=False)
            refs = {}
            for k, v in m.backbone.net.state_dict().items():
                d = _digest(v)
                tensors.setdefault(d, v.detach().cpu())
                refs[k] = d
            ms["backbone"] = {"name": m.backbone.name, "stages": list(m.backbone.stages), "state_refs": refs}
            members.append(ms)
        return {
            "format": ENSEMBLE_FORMAT,
            "config": self.config.to_dict(),
            "normalisation": self.normalisation,
            "stats": self.stats,
            "weights": self.weights,
            "labels": list(self.labels),
            "members": members,
            "tensors": tensors,
        }

    def save(self, path: str | Path, **options) -> Path:
        """One file (format ``pradot-ensemble-v2``) with every member (banks, config, backbone weights
        stored once per distinct tensor), the normalisation statistics and the fusion weights."""
        return save_state(self.state(), path)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu", **options) -> Ensemble:
        """Read a :meth:`save` file (or a ``pradot-ensemble-v1`` one). Raises FileNotFoundError / ValueError
        (not an ensemble file)."""
        state = load_state(path, what="PRADOT ensemble")
        if state.get("format") not in ENSEMBLE_FORMATS:
            raise InputError(
                f"{path} is not a PRADOT ensemble file (formats {list(ENSEMBLE_FORMATS)}; found "
                f"{state.get('format')!r})"
            )
        return cls.from_state(state, device=device)

    @classmethod
    def from_state(cls, state: dict, device: str | torch.device = "cpu") -> Ensemble:
        """Inverse of :meth:`state`; also reads ``pradot-ensemble-v1`` dicts (PRADOT members, no weights)."""
        tensors = state["tensors"]
        backbones: dict[tuple, Backbone] = {}  # identical weights -> one Backbone object in memory
        members = []
        for ms in state["members"]:
            bb = ms["backbone"]
            refs = bb["state_refs"]
            key = (bb["name"], tuple(bb["stages"]), tuple(sorted(refs.items())))
            if key not in backbones:
                sd = {k: tensors[r] for k, r in refs.items()}
                backbones[key] = load_backbone(bb["name"], tuple(bb["stages"]), state_dict=sd)
            fmt = ms.get("format", MODEL_FORMAT)
            if fmt not in MEMBER_CLASSES:
                raise InputError(f"ensemble member of unknown format {fmt!r} (known: {sorted(MEMBER_CLASSES)})")
            members.append(MEMBER_CLASSES[fmt].from_state(ms, device=device, backbone=backbones[key]))
        ens = cls(
            members,
            normalisation=state.get("normalisation", "none"),
            stats=state.get("stats"),
            labels=state.get("labels"),
            weights=state.get("weights"),
        )
        return ens.eval()
