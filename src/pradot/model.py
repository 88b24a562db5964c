"""The PRADOT model (Algorithm 1): one prototype bank per feature stage, and a frozen backbone.

Two layers, as in the paper's algorithm:

* :class:`PrototypeModel` holds the banks and works on backbone **features** only: it trains on
  precomputed features (``fit_features``) and turns features into anomaly maps (``maps_from_features``).
  It needs the feature shapes, not the network, so a sweep trial or a feature cache can use it alone.
* :class:`PRADOT` is a backbone plus a :class:`PrototypeModel`: ``fit(images)``, ``score(images)``, and
  ``save``/``load`` of one self-describing file (config, banks and, optionally, the backbone's weights so
  the model works offline).

The model knows nothing of MLflow or Ray: training takes an optional per-epoch callback that the
pipelines use for logging and for Tune's reports.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .aggregation import FeatureOptions, stage_image_count
from .backbone import Backbone, backbone_state, load_backbone, restore_backbone
from .base import FeatureModel, FeatureScorer, as_tensor, prepare_images
from .checkpoint import MODEL_FORMAT, PROTOTYPES_FORMAT, load_state, save_state
from .errors import InputError
from .local_covariance import cell_metric_map, fit_cell_metrics, metrics_state
from .maps import gaussian_smooth, resize_maps
from .model_config import EpochStats, FeatureShape, PRADOTConfig
from .prototypes import BankConfig, PrototypeBank
from .scoring import fuse_maps, stage_maps
from .transport import sinkhorn

__all__ = [
    "PRADOTConfig",
    "EpochStats",
    "FeatureShape",
    "PrototypeModel",
    "PRADOT",
    "FORMAT",
    "prepare_images",
    "as_tensor",
]

log = logging.getLogger(__name__)

FORMAT = MODEL_FORMAT


class PrototypeModel(nn.Module, FeatureScorer):
    """The prototype banks of a PRADOT model: training and scoring on backbone features.

    Backbone features go through the config's feature options first (:class:`pradot.aggregation.FeatureOptions`:
    ``aggregation``, ``concat_stages``); the banks are keyed by :attr:`bank_stages` (``config.stages``, or the
    finest stage alone when the stages are concatenated). Maps are post-processed by ``smoothing_sigma``.

    Args:
        config: the hyper-parameters (``config.stages`` names the backbone stages used).
        shapes: ``{stage: FeatureShape}`` of the backbone's features at ``config.image_size``.
        device: where the banks live.
        bank_shapes: ``{bank stage: FeatureShape}`` of the banks themselves instead of ``shapes`` (a saved
            model's banks carry them).
    Implements :class:`pradot.base.FeatureScorer` (``fit_features`` returns ``self``; the epochs' statistics
    are ``history_``).

    Raises:
        InputError: a stage of ``config.stages`` has no shape.
    """

    KIND = "prototypes"
    #: the format of :meth:`save` files (banks only, no backbone; :class:`PRADOT` files are ``pradot-model-v1``)
    FORMAT = PROTOTYPES_FORMAT

    def __init__(
        self,
        config: PRADOTConfig,
        shapes: Mapping[int, FeatureShape] | None,
        device: str | torch.device = "cpu",
        *,
        bank_shapes: Mapping[int, FeatureShape] | None = None,
    ):
        super().__init__()
        self.options = FeatureOptions(config.aggregation, config.concat_stages)
        self.bank_stages: tuple[int, ...] = self.options.bank_stages(config.stages)
        if bank_shapes is None:
            shapes = {int(k): v for k, v in (shapes or {}).items()}
            missing = [s for s in config.stages if int(s) not in shapes]
            if missing:
                raise InputError(f"no feature shape for stages {missing} (have {sorted(shapes)})")
            raw = {s: (shapes[s].dim, shapes[s].grid) for s in config.stages}
            bank_shapes = {s: FeatureShape(d, g) for s, (d, g) in self.options.bank_shapes(raw, config.stages).items()}
        bank_shapes = {int(k): v for k, v in bank_shapes.items()}
        if sorted(bank_shapes) != sorted(self.bank_stages):
            raise InputError(f"bank shapes for stages {sorted(bank_shapes)}, the config's banks are {self.bank_stages}")
        self.config = config
        self.device = torch.device(device)
        self.banks = nn.ModuleDict()
        for i, s in enumerate(self.bank_stages):
            sh = bank_shapes[s]
            bc = BankConfig(
                stage=s,
                alpha=config.alpha,
                n=config.n,
                grid=sh.grid,
                dim=sh.dim,
                backbone=config.backbone,
                image_size=config.image_size,
                eta=config.eta,
                epsilon=config.epsilon,
                sinkhorn_iters=config.sinkhorn_iters,
                learn_coordinates=config.learn_coordinates,
            )
            self.banks[str(s)] = PrototypeBank(bc, seed=config.seed + i, device=self.device)
        self.fitted = False
        self.history_: list[EpochStats] = []
        #: ``{bank stage: {"precision": (H*W, D, D), "normaliser": float}}`` with ``feature_metric="mahalanobis"``
        self.metrics: dict[int, dict] = {}

    @classmethod
    def for_features(
        cls, config: PRADOTConfig, features: Mapping[int, np.ndarray | torch.Tensor], device: str | torch.device = "cpu"
    ) -> PrototypeModel:
        """A model whose banks fit ``features`` ``{stage: (N, D, H, W)}`` (e.g. cached ones)."""
        return cls(config, {int(s): FeatureShape.of(f) for s, f in features.items()}, device=device)

    def transform(self, features: Mapping[int, np.ndarray | torch.Tensor]) -> dict[int, torch.Tensor]:
        """Backbone features ``{stage: (B, D, H, W)}`` -> the banks' features ``{bank stage: (B, D', H', W')}``
        (the feature options, on the model's device)."""
        feats = {s: as_tensor(features[s]).to(self.device) for s in self.config.stages}
        return feats if self.options.identity else self.options.apply(feats, self.config.stages)

    # ------------------------------------------------------------------ training
    def _check_train_size(self, n_images: int) -> int:
        bs = int(self.config.batch_size)
        if n_images == 0:
            raise InputError("the training set is empty")
        if n_images < bs:
            raise InputError(
                f"the training set has {n_images} images, fewer than the batch size {bs}; batches "
                f"are drawn with drop_last, so no batch would be trained. Lower batch_size "
                f"(batch_ratio x n) or add images."
            )
        return n_images // bs

    def epoch_batches(self, n_images: int) -> list[list[torch.Tensor]]:
        """The seeded, shuffled, drop_last batches of every epoch: [epoch][batch] -> image indices."""
        n_batches = self._check_train_size(n_images)
        bs = int(self.config.batch_size)
        g = torch.Generator().manual_seed(int(self.config.seed))
        out = []
        for _ in range(int(self.config.epochs)):
            perm = torch.randperm(n_images, generator=g)
            out.append([perm[b * bs : (b + 1) * bs] for b in range(n_batches)])
        return out

    def train_schedule(
        self,
        schedule: list[list[torch.Tensor]],
        batch_features,
        callback: Callable[[EpochStats], None] | None = None,
        progress: bool = True,
        first_epoch: int = 1,
    ) -> list[EpochStats]:
        """Algorithm 1 over a schedule (:meth:`epoch_batches`). ``batch_features`` yields
        ``{stage: (B, D, H, W)}`` for the schedule's batches in order; ``callback`` gets each epoch's stats,
        numbered from ``first_epoch`` (> 1 when the schedule is the rest of an interrupted training).
        Returns the epochs' statistics (also appended to ``history_``)."""
        history = []
        batch_features = iter(batch_features)
        warm = {s: None for s in self.bank_stages}
        bar = tqdm(
            total=len(schedule) * len(schedule[0]) if schedule else 0,
            desc="PRADOT training",
            disable=not progress,
            leave=False,
        )
        for epoch, batches in enumerate(schedule):
            t0 = time.perf_counter()
            tf = tot = 0.0
            losses = {s: [] for s in self.bank_stages}
            changes = {s: [] for s in self.bank_stages}
            for _ in batches:
                t1 = time.perf_counter()
                feats = self.transform(next(batch_features))
                t2 = time.perf_counter()
                for s in self.bank_stages:
                    st = self.banks[str(s)].step(
                        feats[s], warm=warm[s], warm_start=self.config.warm_start, solver=sinkhorn
                    )
                    warm[s] = st.warm if self.config.warm_start else None
                    losses[s].append(st.ot_loss)
                    changes[s].append(st.change)
                t3 = time.perf_counter()
                tf += t2 - t1
                tot += t3 - t2
                bar.update(1)
            stats = EpochStats(
                first_epoch + epoch,
                {s: float(np.mean(v)) for s, v in losses.items()},
                {s: float(np.mean(v)) for s, v in changes.items()},
                time.perf_counter() - t0,
                tf,
                tot,
            )
            history.append(stats)
            bar.set_postfix(epoch=stats.epoch, ot_loss=f"{np.mean(list(stats.ot_loss.values())):.4f}")
            if callback is not None:
                callback(stats)
        bar.close()
        self.fitted = True
        self.history_.extend(history)
        return history

    def fit_features(
        self,
        features: Mapping[int, np.ndarray | torch.Tensor],
        callback=None,
        progress: bool = True,
        start_epoch: int = 0,
    ) -> PrototypeModel:
        """Learn the prototypes from precomputed features ``{stage: (N, D, H, W)}`` (e.g. a memmap cache).

        ``start_epoch``: continue a training that stopped after that many epochs, on a model restored
        from the state it had then (:meth:`state` / :meth:`from_state`): only the remaining epochs of the
        same seeded schedule run, so the prototypes equal an uninterrupted fit's (with ``warm_start``
        off; with it on, the first batch after the restart solves from cold potentials).

        Returns ``self``; the epochs' statistics are ``history_`` (reset unless ``start_epoch`` > 0).

        Raises:
            InputError: a stage is missing, the stages have different image counts, there are fewer
                images than one batch, or ``start_epoch`` is not in ``[0, epochs]``.
        """
        if not 0 <= int(start_epoch) <= int(self.config.epochs):
            raise InputError(f"start_epoch must lie in [0, epochs={self.config.epochs}], got {start_epoch}")
        n = stage_image_count(features, self.config.stages)
        if int(start_epoch) == 0:
            self.history_ = []

        schedule = self.epoch_batches(n)[int(start_epoch) :]

        def batches():
            for epoch in schedule:
                for idx in epoch:
                    order = np.sort(idx.numpy())  # memmaps read faster in order; restore batch order after
                    inv = np.argsort(np.argsort(idx.numpy()))
                    yield {
                        s: torch.from_numpy(np.ascontiguousarray(np.asarray(features[s][order])[inv]))
                        for s in self.config.stages
                    }

        self.train_schedule(schedule, batches(), callback, progress, first_epoch=int(start_epoch) + 1)
        bs = int(self.config.batch_size)
        self.fit_metrics(
            lambda: (
                {
                    s: torch.tensor(np.asarray(features[s][i : i + bs])) for s in self.config.stages
                }  # a copy: memmaps are read-only
                for i in range(0, n, bs)
            )
        )
        return self

    def fit_metrics(self, batches: Callable[[], Iterable[Mapping[int, torch.Tensor]]]) -> None:
        """With ``feature_metric="mahalanobis"``, after the OT epochs: each bank's per-cell precisions and fixed
        normaliser (:func:`pradot.local_covariance.fit_cell_metrics`) from ``batches()``, which yields the
        training set's backbone features ``{stage: (B, D, H, W)}`` once per call; nothing with ``"cosine"``."""
        if self.config.feature_metric == "mahalanobis":
            banks = {s: self.banks[str(s)] for s in self.bank_stages}
            self.metrics = fit_cell_metrics(banks, lambda: (self.transform(f) for f in batches()))

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def stage_maps(self, features: Mapping[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """Eq. 6 per bank at feature resolution: backbone features ``{stage: (B, D, H, W)}`` -> ``{bank stage:
        (B, H, W)}`` (CPU), after the feature options (:meth:`transform`)."""
        feats = self.transform(features)
        return {s: self._bank_map(s, feats[s]).cpu() for s in self.bank_stages}

    def _bank_map(self, s: int, f: torch.Tensor) -> torch.Tensor:
        """Eq. 6 of one bank, (B, D, H, W) -> (B, H, W), with the config's feature term of Eq. 3."""
        if self.config.feature_metric == "cosine":
            return stage_maps(self.banks[str(s)], f)
        return cell_metric_map(self.banks[str(s)], self.metrics.get(s), f)

    def fuse(self, per_stage: Mapping[int, torch.Tensor]) -> torch.Tensor:
        """Per-bank maps ``{stage: (B, h, w)}`` -> the model's map (B, S, S): each upsampled to the input
        size (``align_corners``), averaged over the banks, then smoothed (``config.smoothing_sigma`` pixels;
        0: not at all)."""
        S = int(self.config.image_size)
        maps = [resize_maps(per_stage[s], S, "align_corners") for s in self.bank_stages]
        return gaussian_smooth(fuse_maps(maps), self.config.smoothing_sigma)

    @torch.no_grad()
    def maps_from_backbone(self, features: Mapping[int, torch.Tensor]) -> torch.Tensor:
        """The model's maps (B, S, S) from one batch of backbone features ``{stage: (B, D, H, W)}``."""
        return self.fuse(self.stage_maps(features))

    def describe(self) -> dict:
        """Kind, backbone, stages, image size and hyper-parameters (what an ensemble records of a member)."""
        c = self.config
        return {
            "kind": self.KIND,
            "backbone": c.backbone,
            "stages": list(c.stages),
            "alpha": float(c.alpha),
            "n": c.n,
            "image_size": int(c.image_size),
            "aggregation": int(c.aggregation),
            "concat_stages": bool(c.concat_stages),
            "smoothing_sigma": float(c.smoothing_sigma),
            "feature_metric": str(c.feature_metric),
        }

    # ------------------------------------------------------------------ state
    def state(self) -> dict:
        """``{"config", "banks", "fitted"}``: what a model file stores besides the backbone (no ``"format"``:
        :meth:`save` adds it, :class:`PRADOT` files have their own)."""
        return {
            "config": asdict(self.config),
            "banks": {s: self.banks[str(s)].state() for s in self.bank_stages},
            "fitted": self.fitted,
            "metrics": metrics_state(self.metrics),
        }

    def save(self, path: str | Path, **options) -> Path:
        """One file of the banks (format ``pradot-prototypes-v1``), written atomically."""
        return save_state({"format": self.FORMAT, **self.state()}, path)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu", **options) -> PrototypeModel:
        """Read a :meth:`save` file, or a bare :meth:`state` file (a sweep trial's checkpoint)."""
        state = load_state(path, what="PRADOT prototypes")
        if state.get("format", cls.FORMAT) != cls.FORMAT:
            raise InputError(
                f"{path} is not a PRADOT prototypes file (format {cls.FORMAT!r}; found {state['format']!r})"
            )
        return cls.from_state(state, device=device)

    @classmethod
    def from_state(cls, state: Mapping, device: str | torch.device = "cpu") -> PrototypeModel:
        """Inverse of :meth:`state` (the banks carry their own shapes). Files written before the feature and
        post-processing options existed load with their defaults (the paper's), so they score as before."""
        cfg = dict(state["config"])
        cfg["stages"] = tuple(cfg["stages"])
        config = PRADOTConfig(**cfg)
        banks = {int(s): PrototypeBank.from_state(b, device=device) for s, b in state["banks"].items()}
        shapes = {s: FeatureShape(int(b.config.dim), tuple(b.config.grid)) for s, b in banks.items()}
        model = cls(config, None, device=device, bank_shapes=shapes)
        for s, bank in banks.items():
            model.banks[str(s)] = bank
        model.fitted = bool(state.get("fitted", True))
        model.metrics = metrics_state(state.get("metrics", {}), device)  # none in files of before: cosine
        return model


class PRADOT(nn.Module, FeatureModel):
    """PRADOT model: a frozen backbone and a :class:`PrototypeModel` (a :class:`pradot.base.FeatureModel`).

    ``fit(data)`` / ``fit_features(features)`` (both return ``self``; the epochs' statistics are
    ``history_``), ``score(images) -> (maps, scores)``, ``maps_from_features``, ``save(path)``, ``load(path)``.
    """

    KIND = "pradot"
    FORMAT = MODEL_FORMAT

    def __init__(
        self,
        config: PRADOTConfig,
        backbone: Backbone | None = None,
        device: str | torch.device = "cpu",
        prototypes: PrototypeModel | None = None,
    ):
        super().__init__()
        self.config = config
        self.device = torch.device(device)
        self.backbone = backbone if backbone is not None else load_backbone(config.backbone, config.stages)
        self.backbone.to(self.device)
        if tuple(self.backbone.stages) != tuple(config.stages):
            raise InputError(f"backbone stages {self.backbone.stages} != config stages {config.stages}")
        if prototypes is None:
            shapes = {
                s: FeatureShape(int(self.backbone.channels[s]), self.backbone.grid(s, config.image_size))
                for s in config.stages
            }
            prototypes = PrototypeModel(config, shapes, device=self.device)
        elif tuple(prototypes.config.stages) != tuple(config.stages):
            raise InputError(f"prototype stages {prototypes.config.stages} != config stages {config.stages}")
        self.prototypes = prototypes.to(self.device)
        self.prototypes.device = self.device

    @classmethod
    def from_prototypes(
        cls, prototypes: PrototypeModel, backbone: Backbone, device: str | torch.device = "cpu"
    ) -> PRADOT:
        """Attach a backbone to banks trained on its features (e.g. in a sweep trial)."""
        return cls(prototypes.config, backbone=backbone, device=device, prototypes=prototypes)

    @property
    def banks(self) -> nn.ModuleDict:
        """``{str(stage): PrototypeBank}`` of the prototype model."""
        return self.prototypes.banks

    @property
    def fitted(self) -> bool:
        return self.prototypes.fitted

    @fitted.setter
    def fitted(self, value: bool) -> None:
        self.prototypes.fitted = bool(value)

    @property
    def history_(self) -> list[EpochStats]:
        """The statistics of every training epoch (:class:`EpochStats`), in order."""
        return self.prototypes.history_

    # ------------------------------------------------------------------ training
    def epoch_batches(self, n_images: int) -> list[list[torch.Tensor]]:
        """The seeded, shuffled, drop_last batches of every epoch (see :meth:`PrototypeModel.epoch_batches`)."""
        return self.prototypes.epoch_batches(n_images)

    def fit(
        self, data: Dataset | DataLoader, callback=None, progress: bool = True, num_workers: int | None = None
    ) -> PRADOT:
        """Learn the prototypes, recomputing backbone features for every batch (the authors' way); returns
        ``self`` (the epochs' statistics: ``history_``).

        ``data`` is a Dataset of ``{"image": (3, S, S) float in [0, 1]}`` items or a DataLoader over one
        (its dataset and num_workers are used). Batches are PRADOT's own: shuffled with the config's
        seed, ``batch_size`` images, ``drop_last``; so this gives the same prototypes as
        :meth:`fit_features` on cached features.
        """
        if isinstance(data, DataLoader):
            num_workers = data.num_workers if num_workers is None else num_workers
            data = data.dataset
        schedule = self.epoch_batches(len(data))
        loader = DataLoader(
            data, batch_sampler=[idx.tolist() for epoch in schedule for idx in epoch], num_workers=num_workers or 0
        )
        feats = (self.backbone(batch["image"].to(self.device)) for batch in loader)
        self.prototypes.history_ = []
        self.prototypes.train_schedule(schedule, feats, callback, progress)
        bs, nw = int(self.config.batch_size), num_workers or 0
        self.prototypes.fit_metrics(
            lambda: (self.backbone(b["image"].to(self.device)) for b in DataLoader(data, batch_size=bs, num_workers=nw))
        )
        return self

    def fit_features(
        self, features: Mapping[int, np.ndarray | torch.Tensor], callback=None, progress: bool = True
    ) -> PRADOT:
        """Learn the prototypes from precomputed features ``{stage: (N, D, H, W)}`` (e.g. a memmap cache);
        returns ``self``."""
        self.prototypes.fit_features(features, callback=callback, progress=progress)
        return self

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def maps_from_backbone(self, features: Mapping[int, torch.Tensor]) -> torch.Tensor:
        """The model's maps (B, S, S) from its backbone's features ``{stage: (B, D, H, W)}`` (what an ensemble
        calls once per shared backbone pass)."""
        return self.prototypes.maps_from_backbone(features)

    @torch.no_grad()
    def stage_maps(self, features: Mapping[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """Per-bank Eq. 6 maps at feature resolution from backbone features: {bank stage: (B, H, W)}."""
        return self.prototypes.stage_maps(features)

    def describe(self) -> dict:
        """What an ensemble records of this member: kind, backbone, stages, image size and hyper-parameters."""
        return {**self.prototypes.describe(), "kind": self.KIND}

    # ------------------------------------------------------------------ persistence
    def state(self, include_backbone: bool = True) -> dict:
        """The dict :meth:`save` writes: format, config, banks, backbone name/stages and (by default) its
        weights (so loading needs neither internet nor weight packages)."""
        return {
            "format": FORMAT,
            **self.prototypes.state(),
            "backbone": backbone_state(self.backbone, include_backbone),
        }

    @classmethod
    def from_state(cls, state: Mapping, device: str | torch.device = "cpu", backbone: Backbone | None = None) -> PRADOT:
        """Inverse of :meth:`state`; ``backbone`` replaces the stored one (e.g. a shared network)."""
        prototypes = PrototypeModel.from_state(state, device=device)
        backbone = restore_backbone(state["backbone"], backbone)
        return cls.from_prototypes(prototypes, backbone, device=device)
