"""What the trials are scored on and the features they read, prepared once by the driver.

* :func:`evaluation_set`: the objective's images with their labels, known before any image is made:
  ``pseudo`` = the validation normals + pseudo-anomalies made from them (split ``validation+pseudo``, built by
  ``pipelines.objective``, which promote uses too); ``test`` = the test split. :meth:`EvalSet.evaluate` turns a
  trial's image scores into its metrics (``pipelines.objective.evaluate`` for ``pseudo``).
* :func:`extract_features`: the backbone features of the training split and of the evaluation (and
  calibration) splits, for every backbone a trial may use and the union of the stages, extracted into
  the ``FeatureCache`` unless cached already; on several nodes also put into Ray's object store. The
  returned :class:`FeatureStore` is what a trial loads its arrays through.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from pipelines import config, objective
from pipelines.sweep.plan import SweepPlan, check_against_data

__all__ = ["PSEUDO_SPLIT", "EvalSet", "SplitSource", "evaluation_set", "open_data", "FeatureStore", "extract_features"]

log = logging.getLogger(__name__)

PSEUDO_SPLIT = objective.SPLIT
GOOD = objective.GOOD


def open_data(cfg: DictConfig, plan: SweepPlan):
    """The dataset's splits (``pradot.engine.Splits``), checked against the sweep."""
    from pradot.engine import open_splits

    splits = open_splits(config.data_spec(cfg))
    test_types = sorted({s.anomaly_type for s in splits.test if s.label == 1})
    check_against_data(plan, cfg, len(splits.train), len(splits.validation), test_types)
    return splits


@dataclass(frozen=True)
class EvalSet:
    """The images a trial is scored on: labels (1 = anomalous), groups (pseudo-anomaly kind or test
    anomaly type, ``good`` for normals) and styles (structural / logical); where its threshold is
    calibrated."""

    objective: str
    split: str
    labels: tuple[int, ...]
    groups: tuple[str, ...]
    styles: tuple[str, ...]
    loco_style: bool  # test_auroc is the mean over anomaly types (as `main` reports image_auroc)
    calibration_split: str
    calibration_source: str
    #: (N, S, S) bool pseudo-anomaly masks when the trials report the localisation (None: image scores only)
    masks: np.ndarray | None = field(default=None, compare=False, repr=False)
    eval_size: int | None = None  # the localisation's size (None: the maps')

    @property
    def localisation(self) -> bool:
        return self.masks is not None

    def evaluate(self, scores, maps=None) -> dict[str, float]:
        """The trial's metrics from its image scores (and, with :attr:`localisation`, its (N, S, S) maps):
        ``val_auroc`` (all pseudo-anomalies), one per kind and, when there are several, one per style, with
        maps ``val_aupro_<style>`` and ``val_objective``; or ``test_auroc`` and one per anomaly type."""
        from pradot.metrics import image_auroc, loco_image_auroc

        scores = np.asarray(scores, dtype=np.float64)
        if self.objective != "test":  # the validation objective promote uses too (pipelines.objective)
            if not self.localisation or maps is None:
                return objective.evaluate(self.groups, self.styles, scores)
            return objective.evaluate(
                self.groups,
                self.styles,
                scores,
                maps=np.asarray(maps, dtype=np.float32),
                masks=self.masks,
                size=self.eval_size,
            )
        per_group = loco_image_auroc(self.groups, scores, good=GOOD)
        mean = per_group.pop("mean")
        out = {"test_auroc": mean if self.loco_style else image_auroc(self.labels, scores)}
        out.update({f"test_auroc_{g}": v for g, v in per_group.items()})
        return out

    def normal_scores(self, scores) -> np.ndarray:
        """The scores of the normal images (a threshold calibrated on the evaluation split)."""
        return np.asarray(scores)[np.asarray(self.labels) == 0]


@dataclass
class SplitSource:
    """A split whose features the trials need: its images (a dataset), its samples (for the cache key)
    and what else its images depend on."""

    dataset: Any
    samples: Sequence
    extra_identity: dict = field(default_factory=dict)


class _Lazy:
    """A dataset built on first use (pseudo-anomalies are only made when their features are not cached)."""

    def __init__(self, factory: Callable[[], Any]):
        self._factory, self._ds = factory, None

    def _get(self):
        if self._ds is None:
            self._ds = self._factory()
        return self._ds

    def __len__(self):
        return len(self._get())

    def __getitem__(self, i):
        return self._get()[i]


def _pseudo_set(plan: SweepPlan, splits, size: int) -> tuple[EvalSet, SplitSource]:
    from pradot.data.pseudo_anomalies import ArrayImageDataset

    pa, normals = plan.pseudo, splits.validation
    groups, styles = objective.pseudo_groups(len(normals), pa)
    labels = [int(g != GOOD) for g in groups]

    def build():
        return ArrayImageDataset(objective.build_pseudo_set(normals, size, pa).images, labels)

    masks, dataset = None, _Lazy(build)
    if pa.localisation:  # the masks are made with the images: build them now (features may still be cached)
        pset = objective.build_pseudo_set(normals, size, pa)
        masks, dataset = pset.masks, ArrayImageDataset(pset.images, labels)
    evalset = EvalSet(
        "pseudo",
        PSEUDO_SPLIT,
        tuple(labels),
        tuple(groups),
        tuple(styles),
        False,
        PSEUDO_SPLIT,
        "validation",
        masks,
        pa.eval_size,
    )
    return evalset, SplitSource(dataset, normals, {"pseudo": pa.identity()})


def evaluation_set(plan: SweepPlan, splits, image_size: int) -> tuple[EvalSet, dict[str, SplitSource]]:
    """The objective's evaluation set and the splits whose features the trials score (the evaluation
    split, and the calibration split when it is another: the validation normals, else the training images)."""
    from pradot.data import ImageDataset

    if plan.objective == "pseudo":
        evalset, source = _pseudo_set(plan, splits, image_size)
        return evalset, {PSEUDO_SPLIT: source}
    groups = tuple(s.anomaly_type if s.label else GOOD for s in splits.test)
    sources = {"test": SplitSource(ImageDataset(splits.test, image_size), splits.test)}
    if splits.validation:
        sources["validation"] = SplitSource(ImageDataset(splits.validation, image_size), splits.validation)
        calibration = ("validation", "validation")
    else:
        calibration = ("train", "train (no validation images)")
    evalset = EvalSet(
        "test",
        "test",
        tuple(int(s.label) for s in splits.test),
        groups,
        groups,
        bool(splits.dataset.has_saturation),
        *calibration,
    )
    return evalset, sources


# ------------------------------------------------------------------------------------- features
@dataclass(frozen=True)
class FeatureStore:
    """Where the trials find the features: the ``FeatureCache`` folder (``disk``) or Ray's object store
    (``object_store``: ``refs``). Keys are ``<backbone>/<split>``."""

    kind: str
    cache_dir: str
    identities: dict[str, dict]
    refs: dict[str, dict[int, Any]] = field(default_factory=dict)
    cache_keys: tuple[str, ...] = ()  # the cache entries of the sweep (tag pradot.features of every trial)

    def load(self, backbone: str, split: str, stages: Sequence[int]) -> dict[int, np.ndarray]:
        """``{stage: (N, D, H, W)}`` of a split for the given stages (read-only arrays).

        Raises:
            FileNotFoundError: the cache entry is not in ``cache_dir`` on this node.
        """
        key = f"{backbone}/{split}"
        if self.kind == "object_store":
            import ray

            return {int(s): ray.get(self.refs[key][int(s)]) for s in stages}
        from pradot.features import FeatureCache

        ident = self.identities[key]
        feats = FeatureCache(self.cache_dir).load(ident)
        if feats is None:
            raise FileNotFoundError(
                f"the cached features {FeatureCache.key(ident)} ({key}) are not in {self.cache_dir} on node "
                f"{socket.gethostname()}: on a multi-node cluster cache.dir must be shared storage (NFS, ...), or "
                f"use sweep.feature_store=object_store"
            )
        return {int(s): feats[int(s)] for s in stages}


def _record(cache, ident: dict, backbone: str, split: str, stages, extracted: bool, t0: float) -> dict:
    metas = list(cache.info(ident).values())  # one record per stage
    return {
        "backbone": backbone,
        "split": split,
        "stages": list(stages),
        "key": cache.key(ident),
        "path": str(cache.path(ident)),
        "extracted_now": extracted,
        "n_images": int(metas[0]["n_images"]),
        "extraction_seconds": max(float(m["seconds"]) for m in metas),
        "created": max(float(m["created"]) for m in metas),
        "lookup_seconds": time.perf_counter() - t0,
    }


def extract_features(
    plan: SweepPlan, cfg: DictConfig, splits, sources: Mapping[str, SplitSource], store: str, device
) -> tuple[FeatureStore, list[dict]]:
    """Find (or extract, once) every feature array the trials need; ``store``: disk | object_store.
    Returns the store and one record per (backbone, split) (the ``sweep/features.json`` artifact)."""
    from pradot.backbone import load_backbone
    from pradot.data import ImageDataset
    from pradot.engine import feature_identity
    from pradot.features import FeatureCache

    spec, union = config.data_spec(cfg), plan.union_stages()
    cache = FeatureCache(Path(str(cfg.cache.dir)).expanduser().resolve())
    todo = {"train": SplitSource(ImageDataset(splits.train, spec.image_size), splits.train), **sources}
    identities, refs, infos = {}, {}, []
    for name in plan.backbones:
        weights = cfg.backbone.get("weights_path") if name == str(cfg.backbone.name) else None
        backbone = None  # loaded only when some features are not cached yet
        for split, src in todo.items():
            ident = {**feature_identity(spec, name, union, src.samples, split, weights), **src.extra_identity}
            t0 = time.perf_counter()
            feats = cache.load(ident)
            extracted = feats is None
            if extracted:
                backbone = backbone or load_backbone(name, union, weights_path=weights, device=device)
                feats = cache.get_or_compute(
                    ident, backbone, src.dataset, device=device, num_workers=int(cfg.num_workers), progress=False
                )
            infos.append(_record(cache, ident, name, split, union, extracted, t0))
            log.info(
                "features %s/%s: %s (%s)", name, split, "extracted" if extracted else "cache hit", cache.path(ident)
            )
            identities[f"{name}/{split}"] = ident
            if store == "object_store":
                import ray

                refs[f"{name}/{split}"] = {int(s): ray.put(np.ascontiguousarray(a)) for s, a in feats.items()}
    return FeatureStore(store, str(cache.root), identities, refs, tuple(i["key"] for i in infos)), infos
