"""The multi-class (unified) setting: ONE model fitted on the union of several categories' normal training
images, used with no class label at inference, evaluated per category and on average; beside it the
per-category models (one per category), the upper reference.

The setting is VPDM's (``vpdm-paper.md`` Sec. 4, Table 1: MVTec AD multi-class, one model for the fifteen
categories, image / pixel AUROC per category and mean). Here every model kind can be run in it: a unified PRADOT
(prototype banks fitted on the union), a unified memory bank and, when :mod:`pradot.vpdm` is installed, VPDM.

Flow (no tracking framework; ``pipelines/multiclass`` wires it to MLflow)::

    cats = open_categories(spec, ["screw_bag", "woven_fabric", ...])     # one DataSpec per category
    model = fit_unified(method, cats, cache=..., device=...)              # features of every category, concatenated
    result = evaluate(method.name, "unified", {c: model for c in cats}, cats)
    table = comparison_rows([result, ...])                                # per category + mean

Metrics per category are the project's (:func:`pradot.engine.split_metrics`: image AUROC, AU-PRO for the
MVTec AD layout, AU-sPRO for the LOCO layout), plus the pixel AUROC of the union of a LOCO image's defect masks
(Table 1 reports pixel AUROC for every category). Thresholds: per category from that category's validation
normals when the category is known at training time (it is, here), and one global threshold on all categories'
validation normals together, the fallback used when the category is unknown at inference (the served model).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .calibration import Calibration
from .engine import DataSpec, Scored, Splits, open_splits, score_samples, split_metrics, threshold_metrics
from .metrics.classification import pixel_auroc
from .metrics.dataset import flat_metrics
from .names import markdown_cell

__all__ = [
    "METHODS",
    "Method",
    "CategoryResult",
    "MethodResult",
    "open_categories",
    "training_features",
    "union_features",
    "fit_unified",
    "fit_per_category",
    "evaluate",
    "comparison_rows",
    "TABLE_COLUMNS",
    "format_table",
]

log = logging.getLogger(__name__)

#: model kinds of the setting; ``vpdm`` needs :mod:`pradot.vpdm`
METHODS: tuple[str, ...] = ("pradot", "memory_bank", "vpdm")
#: the comparison table's metrics: Table 1's image / pixel AUROC, then the layouts' region metrics
TABLE_COLUMNS: tuple[str, ...] = ("image_auroc", "pixel_auroc", "au_pro_0.3", "au_spro_0.05")


@dataclass(frozen=True)
class Method:
    """A model kind and its settings: ``kind`` one of :data:`METHODS`, ``config`` its config object
    (:class:`pradot.model.PRADOTConfig`, :class:`pradot.memory_bank.MemoryBankConfig`,
    ``pradot.vpdm.VPDMConfig``); ``name`` labels it in tables (default: ``kind``)."""

    kind: str
    config: Any
    name: str = ""

    def __post_init__(self) -> None:
        if self.kind not in METHODS:
            raise ValueError(f"unknown multi-class method {self.kind!r}; expected one of {', '.join(METHODS)}")
        if not self.name:
            object.__setattr__(self, "name", self.kind)

    @property
    def image_size(self) -> int:
        return int(self.config.image_size)

    def build(self, backbone, device):
        """The unfitted model on ``backbone``."""
        if self.kind == "pradot":
            from .model import PRADOT

            return PRADOT(self.config, backbone=backbone, device=device)
        if self.kind == "memory_bank":
            from .memory_bank import MemoryBankModel

            return MemoryBankModel(self.config, backbone=backbone, device=device)
        from .vpdm import VPDM  # type: ignore[import-not-found,unused-ignore]

        return VPDM(self.config, backbone=backbone, device=device)

    def fit(self, model, features: Mapping[int, Any], progress: bool = True):
        """``model`` fitted on backbone ``features`` ``{stage: (N, D, H, W)}``, in eval mode."""
        model.fit_features(features, progress=progress)
        return model.eval()


@dataclass
class CategoryResult:
    """One category scored by one model: test metrics (flat names), thresholds and threshold metrics."""

    category: str
    metrics: dict[str, float]
    notes: list[str]
    test: Scored
    validation: Scored
    calibration: Calibration | None = None  # from this category's validation normals
    threshold_metrics: dict[str, float] = field(default_factory=dict)  # at the category's own threshold
    global_threshold_metrics: dict[str, float] = field(default_factory=dict)  # at the global threshold


@dataclass
class MethodResult:
    """A method in one setting (``"unified"`` or ``"per_category"``): per-category results, the global
    calibration (all categories' validation normals) and the mean of each metric over the categories that
    define it."""

    method: str
    setting: str
    categories: dict[str, CategoryResult]
    calibration: Calibration | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.method} ({self.setting})"

    def mean(self) -> dict[str, float]:
        """Metric -> mean over the categories that have it (AU-PRO: AD-layout ones; AU-sPRO: LOCO ones)."""
        keys = sorted({k for r in self.categories.values() for k in r.metrics})
        out = {}
        for k in keys:
            vals = [r.metrics[k] for r in self.categories.values() if k in r.metrics and math.isfinite(r.metrics[k])]
            if vals:
                out[k] = float(np.mean(vals))
        return out


def open_categories(spec: DataSpec, categories: Sequence[str]) -> dict[str, Splits]:
    """The splits of each category (``spec`` with its ``category`` replaced), in the given order.

    Raises:
        ValueError: fewer than one category, or a category named twice.
        pradot.data.DatasetError: a category is missing (the loader's message lists those present).
    """
    cats = [str(c) for c in categories]
    if not cats:
        raise ValueError("the multi-class setting needs at least one category (e.g. categories=[a,b])")
    dupes = sorted({c for c in cats if cats.count(c) > 1})
    if dupes:
        raise ValueError(f"categories named more than once: {dupes}")
    return {c: open_splits(dataclasses.replace(spec, category=c)) for c in cats}


def _category_spec(spec: DataSpec, category: str, image_size: int) -> DataSpec:
    return dataclasses.replace(spec, category=category, image_size=int(image_size))


def training_features(
    method: Method,
    spec: DataSpec,
    cats: Mapping[str, Splits],
    backbone,
    cache=None,
    device="cpu",
    weights_path: str | None = None,
    progress: bool = True,
) -> dict[str, dict[int, Any]]:
    """Backbone features of each category's training images at the method's image size, from the feature
    cache when one is given (one entry per category and stage, shared with the per-category runs)."""
    from .engine import train_features

    return {
        c: train_features(
            backbone,
            _category_spec(spec, c, method.image_size),
            s.train,
            cache,
            device,
            weights=weights_path,
            progress=progress,
        )
        for c, s in cats.items()
    }


def union_features(per_category: Mapping[str, Mapping[int, Any]]) -> dict[int, np.ndarray]:
    """The categories' features stacked along the image axis: ``{stage: (sum N_c, D, H, W)}``.

    Raises:
        ValueError: no category, or the categories disagree on the stages or the feature shape.
    """
    if not per_category:
        raise ValueError("no category to take the union of")
    stage_sets = {tuple(sorted(f)) for f in per_category.values()}
    if len(stage_sets) != 1:
        raise ValueError(f"the categories' features hold different stages: {sorted(stage_sets)}")
    out = {}
    for s in stage_sets.pop():
        shapes = {c: tuple(np.shape(f[s])[1:]) for c, f in per_category.items()}
        if len(set(shapes.values())) != 1:
            raise ValueError(f"stage {s}: feature shapes differ between categories {shapes}; use one image size")
        out[s] = np.concatenate([np.asarray(f[s]) for f in per_category.values()], axis=0)
    return out


def _backbone(method: Method, device, weights_path: str | None):
    from .backbone import load_backbone

    return load_backbone(method.config.backbone, method.config.stages, weights_path=weights_path, device=device)


def fit_unified(
    method: Method,
    spec: DataSpec,
    cats: Mapping[str, Splits],
    cache=None,
    device="cpu",
    weights_path: str | None = None,
    progress: bool = True,
):
    """ONE model of ``method`` fitted on the union of every category's training images (no class label)."""
    backbone = _backbone(method, device, weights_path)
    feats = training_features(method, spec, cats, backbone, cache, device, weights_path, progress)
    return method.fit(method.build(backbone, device), union_features(feats), progress)


def fit_per_category(
    method: Method,
    spec: DataSpec,
    cats: Mapping[str, Splits],
    cache=None,
    device="cpu",
    weights_path: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """One model of ``method`` per category, each fitted on its own category (the upper reference); the
    models share one backbone."""
    backbone = _backbone(method, device, weights_path)
    feats = training_features(method, spec, cats, backbone, cache, device, weights_path, progress)
    return {c: method.fit(method.build(backbone, device), f, progress) for c, f in feats.items()}


def _pixel_auroc_of_union(cats: Splits, test: Scored) -> float | None:
    """Pixel AUROC with each image's defect channels merged (LOCO layout); None when undefined."""
    masks = []
    for s, m in zip(test.samples, test.maps):
        ch = np.asarray(cats.dataset.load_channels(s, size=m.shape[-1]), bool)
        masks.append(ch.any(axis=0) if len(ch) else np.zeros(m.shape, bool))
    n_pos = sum(int(k.sum()) for k in masks)
    if n_pos == 0 or n_pos == sum(k.size for k in masks):
        return None
    return float(pixel_auroc(masks, list(test.maps)))


def category_metrics(splits: Splits, test: Scored) -> tuple[dict[str, float], list[str]]:
    """Flat test metrics of one category (:func:`pradot.engine.split_metrics`), with ``pixel_auroc`` added for
    the LOCO layout (merged defect masks) so that every category has Table 1's two columns."""
    metrics, notes = split_metrics(splits.dataset, test)
    flat = flat_metrics(metrics)
    if "pixel_auroc" not in flat:
        value = _pixel_auroc_of_union(splits, test)
        if value is not None:
            flat["pixel_auroc"] = value
    return flat, notes


def _normals(scored: Scored) -> Scored:
    keep = np.array([s.label == 0 for s in scored.samples], bool)
    return Scored([s for s, k in zip(scored.samples, keep) if k], scored.maps[keep], scored.scores[keep], 0.0)


def _calibrated(scored: Scored, quantile: float, pixel_quantile: float | None) -> Calibration | None:
    normal = _normals(scored)
    if not len(normal.samples):
        return None
    return Calibration.calibrate(normal.scores, quantile, pixel_maps=normal.maps, pixel_quantile=pixel_quantile)


def evaluate(
    method: str,
    setting: str,
    models: Mapping[str, Any],
    cats: Mapping[str, Splits],
    batch_size: int = 16,
    quantile: float = 0.99,
    pixel_quantile: float | None = None,
    progress: bool = True,
) -> MethodResult:
    """Score each category's test and validation splits with ``models[category]`` (the same object for every
    category in the unified setting), compute its metrics, its own threshold (its validation normals) and the
    global threshold (every category's validation normals together; the training images when no category has
    validation images), and the threshold metrics at both.

    Raises:
        ValueError: a category without a model.
    """
    missing = sorted(set(cats) - set(models))
    if missing:
        raise ValueError(f"no model for categories {missing}")
    results: dict[str, CategoryResult] = {}
    for c, splits in cats.items():
        model = models[c]
        size = int(model.config.image_size)
        test = score_samples(model, splits.test, size, batch_size, progress)
        val_samples = splits.validation or splits.train
        val = score_samples(model, val_samples, size, batch_size, progress)
        metrics, notes = category_metrics(splits, test)
        results[c] = CategoryResult(c, metrics, notes, test, val, _calibrated(val, quantile, pixel_quantile))
    pooled = [_normals(r.validation) for r in results.values()]
    scores = np.concatenate([p.scores for p in pooled])
    maps = np.concatenate([p.maps for p in pooled]) if len({p.maps.shape[1:] for p in pooled}) == 1 else None
    glob = Calibration.calibrate(scores, quantile, pixel_maps=maps, pixel_quantile=pixel_quantile)
    for r in results.values():
        labels = [s.label for s in r.test.samples]
        if r.calibration is not None:
            r.threshold_metrics = threshold_metrics(labels, r.test.scores, r.calibration.threshold)
        r.global_threshold_metrics = threshold_metrics(labels, r.test.scores, glob.threshold)
    return MethodResult(method, setting, results, glob)


def comparison_rows(results: Sequence[MethodResult], columns: Sequence[str] = TABLE_COLUMNS) -> list[dict]:
    """The comparison table as rows ``{"category", "method", <column>: value or None}``: every category, then
    ``mean`` (over the categories that define the column), for each method/setting."""
    rows = []
    cats = list(dict.fromkeys(c for r in results for c in r.categories))
    for c in [*cats, "mean"]:
        for r in results:
            values = r.mean() if c == "mean" else (r.categories[c].metrics if c in r.categories else {})
            rows.append({"category": c, "method": r.label, **{k: values.get(k) for k in columns}})
    return rows


def format_table(rows: Sequence[dict], columns: Sequence[str] = TABLE_COLUMNS) -> str:
    """``rows`` (:func:`comparison_rows`) as a Markdown table, values in percent with one decimal (Table 1's
    style); "-" where the layout has no such metric; names as :func:`pradot.names.markdown_cell`."""
    head = ["category", "method", *columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [markdown_cell(str(row["category"])), markdown_cell(str(row["method"]))]
        cells += ["-" if row.get(k) is None else f"{100 * float(row[k]):.1f}" for k in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
