"""Metrics of a dataset's split from in-memory maps: the official shapes (MVTec LOCO ``metrics.json``,
MVTec AD keys) and their flat names for tracking."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from .classification import image_auroc, image_scores_from_maps
from .pro import DEFAULT_MAX_FPRS, Saturation
from .report import loco_metrics, pixel_metrics
from .segmentation import seg_f1

__all__ = ["AD_DEFAULT_MAX_FPRS", "dataset_metrics", "flat_metrics"]

log = logging.getLogger(__name__)

#: AU-PRO limits reported for AD-style data
AD_DEFAULT_MAX_FPRS: tuple[float, ...] = (0.3,)


def dataset_metrics(
    ds,
    samples,
    maps,
    max_fprs: Sequence[float] | None = None,
    gt_size: int | Sequence[int] | None = None,
    threshold: float | None = None,
) -> tuple[dict, list[str]]:
    """Metrics of in-memory maps for ``samples`` of a dataset: LOCO-style (official metrics.json shape)
    when the dataset has saturation thresholds, AD-style (image/pixel AUROC, AU-PRO) otherwise.

    Metrics that the split cannot define are skipped, each with a note that names the cause, and the
    others are still reported: no test images (nothing); only one class at image level (no image AUROC;
    LOCO: nothing); anomalous images without a mask (no pixel metrics); no anomalous ground-truth pixel,
    e.g. every mask blank (no pixel metrics; the blank masks are named). Some blank masks among others
    are noted too (their pixels count as normal).

    Args:
        ds: a ``pradot.data`` dataset; samples: its test samples; maps: one 2-D map per sample.
        max_fprs: AU-(s)PRO limits (default: LOCO 0.01 ... 1.0; AD-style ``ds.default_max_fprs`` or 0.3).
        gt_size: load the ground truth resized (nearest) to this size (the authors evaluate at 224 px);
            ``None``: native resolution (maps must match it).
        threshold: a decision threshold on map values; AD-style data then also get ``seg_f1`` (MVTec AD 2).
    Returns:
        (metrics, notes)
    """
    if not len(samples):
        note = "test metrics skipped: the test split is empty (no test images), so no metric is defined"
        log.warning("%s", note)
        return {}, [note]
    channels, saturations, types, labels = [], [], [], []
    for s, a in zip(samples, maps):
        ch = np.asarray(ds.load_channels(s, size=gt_size), dtype=bool)
        if len(ch) != len(s.defects):
            raise ValueError(f"{s.image_path}: {len(ch)} ground-truth channels but {len(s.defects)} defects")
        if len(ch) and ch.shape[1:] != np.shape(a):
            raise ValueError(f"{s.image_path}: map {np.shape(a)} and ground truth {ch.shape[1:]} differ in size")
        channels.append(ch)
        saturations.append([Saturation.coerce(d) for d in s.defects])
        types.append(s.anomaly_type)
        labels.append(int(s.label))
    notes: list[str] = []
    image_note = _one_class_note(labels)
    if ds.has_saturation:
        if image_note:
            return {}, _noted(
                notes,
                f"test metrics skipped: {image_note}; AUROC and AU-sPRO compare the good images with each anomaly type",
            )
        limits = tuple(max_fprs) if max_fprs else DEFAULT_MAX_FPRS
        return loco_metrics(maps, types, channels, saturations, max_fprs=limits), notes
    limits = tuple(max_fprs) if max_fprs else (getattr(ds, "default_max_fprs", None) or AD_DEFAULT_MAX_FPRS)
    out: dict[str, float] = {}
    if image_note:
        _noted(notes, f"image_auroc skipped: {image_note}")
    else:
        out["image_auroc"] = image_auroc(labels, image_scores_from_maps(maps))
    out.update(_group_auroc(ds, samples, labels, maps, notes))
    masks = [ch.any(axis=0) if len(ch) else np.zeros(np.shape(a), bool) for ch, a in zip(channels, maps)]
    pixel_note = _pixel_note(samples, labels, channels, masks, notes)
    if pixel_note:
        _noted(notes, f"pixel metrics (pixel_auroc, au_pro) skipped: {pixel_note}")
        return out, notes
    out.update(pixel_metrics(maps, masks, max_fprs=limits))
    if threshold is not None:
        out["seg_f1"] = seg_f1(masks, maps, float(threshold))
    return out, notes


def _noted(notes: list[str], note: str) -> list[str]:
    log.warning("%s", note)
    notes.append(note)
    return notes


def _one_class_note(labels: Sequence[int], what: str = "images") -> str | None:
    """Why an AUROC over ``labels`` is undefined (one class only), or None."""
    n_bad = sum(1 for y in labels if y == 1)
    if n_bad == 0:
        return f"the test split has no anomalous {what} (all {len(labels)} are good)"
    if n_bad == len(labels):
        return f"the test split has no good {what} (all {len(labels)} are anomalous)"
    return None


def _shown(paths: Sequence, k: int = 5) -> str:
    more = f", ... ({len(paths) - k} more)" if len(paths) > k else ""
    return ", ".join(str(p) for p in paths[:k]) + more


def _pixel_note(samples, labels, channels, masks, notes: list[str]) -> str | None:
    """Why pixel metrics are undefined, or None (then blank masks among others get a note of their own)."""
    unannotated = [s.image_path for s, y, ch in zip(samples, labels, channels) if y == 1 and len(ch) == 0]
    if unannotated:
        return (
            f"{len(unannotated)} anomalous test images have no ground-truth mask ({_shown(unannotated)}); "
            f"only image-level metrics are reported"
        )
    blank = [d.mask_path for s, y, m in zip(samples, labels, masks) if y == 1 and not m.any() for d in s.defects]
    n_bad = sum(1 for y in labels if y == 1)
    n_pos = sum(int(np.count_nonzero(m)) for m in masks)
    if n_pos == 0:
        if n_bad == 0:
            return "the test split has no anomalous images, so no ground-truth pixel is anomalous"
        return (
            f"no ground-truth pixel is anomalous: the masks of all {n_bad} anomalous test images are blank "
            f"(all 0 at the evaluation size): {_shown(blank)}"
        )
    if n_pos == sum(m.size for m in masks):
        return "every ground-truth pixel is anomalous (no normal pixel to compare with)"
    if blank:
        _noted(
            notes,
            f"{len(blank)} anomalous test images have blank masks (all 0 at the evaluation size): "
            f"{_shown(blank)}; their pixels count as normal in pixel_auroc and they add no region to au_pro",
        )
    return None


def _group_auroc(ds, samples, labels, maps, notes: list[str]) -> dict[str, float]:
    """``sample_auroc`` for datasets with several images per physical sample (``ds.sample_group``, e.g.
    Real-IAD's five views): a sample's score is the max over its images, its label the max of theirs."""
    group_of = getattr(ds, "sample_group", None)
    if group_of is None:
        return {}
    scores = image_scores_from_maps(maps)
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        groups.setdefault(group_of(s), []).append(i)
    g_labels = [max(labels[i] for i in idx) for idx in groups.values()]
    why = _one_class_note(g_labels, what="samples")
    if why:
        _noted(notes, f"sample_auroc skipped: {why}")
        return {}
    return {"sample_auroc": image_auroc(g_labels, [max(scores[i] for i in idx) for idx in groups.values()])}


def flat_metrics(metrics: dict) -> dict[str, float]:
    """Flat names for tracking: ``image_auroc`` (LOCO: the mean over types), ``image_auroc_<type>``,
    ``au_spro_<fpr>`` (mean) and ``au_spro_<fpr>_<type>``; AD-style keys pass through."""
    out: dict[str, float] = {}
    if "classification" in metrics:
        for t, v in metrics["classification"]["auc_roc"].items():
            out["image_auroc" if t == "mean" else f"image_auroc_{t}"] = float(v)
        for t, per_fpr in metrics["localization"]["auc_spro"].items():
            for fpr, v in per_fpr.items():
                out[f"au_spro_{fpr}" if t == "mean" else f"au_spro_{fpr}_{t}"] = float(v)
    else:
        out.update({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))})
    return out
