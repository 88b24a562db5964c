"""Saturated per-region overlap (sPRO, MVTec LOCO) and per-region overlap (PRO, MVTec AD).

Definitions (official MVTec LOCO evaluation; docs/architecture.md, implementation notes
"Evaluation protocol"):

* A *region* is one ground-truth defect channel (LOCO) or one connected component of a
  ground-truth mask (MVTec AD).  A region with ``defect_area`` pixels has a saturation area
  ``s = min(threshold, defect_area)`` (absolute saturation) or
  ``s = int(threshold * defect_area)`` (relative saturation); PRO is relative saturation 1.0,
  i.e. ``s = defect_area``.
* At a threshold ``t`` a pixel is predicted anomalous when its score is ``>= t``.  The thresholds
  are *all* unique values of the maps (plus ``+inf``, where nothing is predicted), so the curve is
  exact; pixels with equal scores always enter together (one curve point per distinct score).
  The official tool binarises with ``score > t`` on a refined threshold subset; over all unique
  values both conventions produce the same set of curve points.
* ``sPRO_k(t) = min(TP_k(t) / s_k, 1)``; the curve value is the mean over all regions of all images.
* ``FPR(t)`` = false-positive pixels / defect-free pixels, over all images; a pixel inside any
  channel of its image is never a false positive (nor a negative).
* ``AU-sPRO(max_fpr)`` = trapezoidal area under sPRO(FPR) from 0 to ``max_fpr`` (the value at
  ``max_fpr`` linearly interpolated between its neighbours), divided by ``max_fpr``.

Edge cases (the official code would divide by zero):

* ``s == 0`` for a non-empty region (relative threshold with ``threshold * area < 1``, or an
  absolute threshold of 0): we use ``s = 1``, i.e. the region's sPRO is 0 until one of its pixels
  is detected and 1 afterwards (official: NaN, then 1).
* Empty channels (``defect_area == 0``, e.g. a tiny defect lost by resizing the ground truth)
  carry no defect and are skipped with a warning (official: NaN at every threshold).
* No region at all, or no defect-free pixel at all: ``ValueError`` (the curve is undefined).

Cost: one global sort of all pixel scores plus one sort per region; roughly 40 bytes of memory
per pixel (float32 maps are kept in float32).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = [
    "DEFAULT_MAX_FPRS",
    "Saturation",
    "PRO_SATURATION",
    "SproCurve",
    "connected_regions",
    "spro_curve",
    "au_spro",
    "pro_curve",
    "au_pro",
    "area_under_curve",
]

#: Integration limits reported by the official MVTec LOCO tool.
DEFAULT_MAX_FPRS: tuple[float, ...] = (0.01, 0.05, 0.1, 0.3, 1.0)


@dataclass(frozen=True)
class Saturation:
    """Saturation spec of one defect channel (``defects_config.json`` of MVTec LOCO).

    ``relative=False``: ``threshold`` is an absolute pixel count, ``s = min(threshold, area)``.
    ``relative=True``: ``threshold`` in (0, 1] is a fraction of the area, ``s = int(threshold*area)``.
    """

    threshold: float
    relative: bool = False

    def __post_init__(self) -> None:
        thr = float(self.threshold)
        if not math.isfinite(thr) or thr < 0:
            raise ValueError(f"saturation threshold must be finite and >= 0, got {self.threshold!r}")
        if self.relative and not 0.0 < thr <= 1.0:
            raise ValueError(f"relative saturation threshold must lie in (0, 1], got {thr}")
        object.__setattr__(self, "threshold", thr)
        object.__setattr__(self, "relative", bool(self.relative))

    def area(self, defect_area: int) -> float:
        """Official saturation area for a defect of ``defect_area`` pixels (may be 0)."""
        if self.relative:
            return float(int(self.threshold * defect_area))
        return float(min(self.threshold, defect_area))

    @classmethod
    def coerce(cls, spec: Any) -> Saturation:
        """Accept a Saturation, a ``(threshold, relative)`` tuple, a mapping with keys
        ``saturation_threshold``/``relative_saturation`` (or ``threshold``/``relative``), or any
        object with attributes ``saturation_threshold`` and ``relative_saturation`` (e.g.
        ``pradot.data.DefectChannel``)."""
        if isinstance(spec, Saturation):
            return spec
        if isinstance(spec, Mapping):
            if "saturation_threshold" in spec:
                return cls(spec["saturation_threshold"], bool(spec.get("relative_saturation", False)))
            return cls(spec["threshold"], bool(spec.get("relative", False)))
        if hasattr(spec, "saturation_threshold") and hasattr(spec, "relative_saturation"):
            return cls(spec.saturation_threshold, bool(spec.relative_saturation))
        if isinstance(spec, (tuple, list)) and len(spec) == 2:
            return cls(spec[0], bool(spec[1]))
        raise TypeError(f"cannot interpret {spec!r} as a saturation spec")


#: PRO (MVTec AD): every region saturates at its full area.
PRO_SATURATION = Saturation(1.0, relative=True)


@dataclass(frozen=True)
class SproCurve:
    """Points of an sPRO/PRO curve, ordered by decreasing threshold (increasing FPR).

    ``thresholds[j]``: point ``j`` predicts the pixels with score ``>= thresholds[j]``;
    ``thresholds[0] = +inf`` (nothing predicted, FPR 0, sPRO 0).  A full curve ends at (1, 1).
    A point added by truncation at ``max_fpr`` is interpolated and has threshold NaN.
    Unpacks as ``fpr, spro = curve``.
    """

    fpr: np.ndarray
    spro: np.ndarray
    thresholds: np.ndarray
    num_regions: int
    num_normal_pixels: int

    def __iter__(self) -> Iterator[np.ndarray]:
        yield self.fpr
        yield self.spro

    def auc(self, max_fpr: float = 1.0) -> float:
        """Normalised area under the curve up to ``max_fpr`` (see :func:`area_under_curve`)."""
        max_fpr = _check_max_fpr(max_fpr, self.fpr)
        return _auc_sorted(self.fpr, self.spro, max_fpr) / max_fpr

    def truncate(self, max_fpr: float) -> SproCurve:
        """The part of the curve with FPR <= max_fpr, ending with an interpolated point at
        ``max_fpr`` when no curve point lies exactly there."""
        max_fpr = _check_max_fpr(max_fpr, self.fpr)
        keep = self.fpr <= max_fpr
        fpr, y, thr = self.fpr[keep], self.spro[keep], self.thresholds[keep]
        if fpr[-1] != max_fpr:
            y_max = _interpolate_at(self.fpr, self.spro, max_fpr)
            fpr = np.append(fpr, max_fpr)
            y = np.append(y, y_max)
            thr = np.append(thr, np.nan)
        return SproCurve(fpr, y, thr, self.num_regions, self.num_normal_pixels)


# --------------------------------------------------------------------------------------------
# integration


def _check_max_fpr(max_fpr: float, fpr: np.ndarray) -> float:
    max_fpr = float(max_fpr)
    if not 0.0 < max_fpr <= 1.0:
        raise ValueError(f"max_fpr must lie in (0, 1], got {max_fpr}")
    if fpr.size == 0 or fpr[0] > 0 or fpr[-1] < max_fpr:
        raise ValueError(
            f"curve must start at FPR 0 and reach max_fpr={max_fpr} (covers "
            f"[{fpr[0] if fpr.size else np.nan}, {fpr[-1] if fpr.size else np.nan}])"
        )
    return max_fpr


def _interpolate_at(x: np.ndarray, y: np.ndarray, x_at: float) -> float:
    """Linear interpolation between the last point with x < x_at and the first with x > x_at
    (x_at must not be an element of x)."""
    ins = int(np.searchsorted(x, x_at, side="right"))
    assert 0 < ins < len(x)
    x0, x1, y0, y1 = x[ins - 1], x[ins], y[ins - 1], y[ins]
    return float(y0 + (y1 - y0) * (x_at - x0) / (x1 - x0))


def _auc_sorted(x: np.ndarray, y: np.ndarray, max_fpr: float) -> float:
    """Un-normalised area for a validated curve (x sorted, starting at 0, reaching max_fpr)."""
    ins = int(np.searchsorted(x, max_fpr, side="right"))  # points [0, ins) have x <= max_fpr
    xs, ys = x[:ins], y[:ins]
    area = float(np.sum(0.5 * (ys[1:] + ys[:-1]) * np.diff(xs)))
    if xs[-1] != max_fpr:  # trapezoid up to max_fpr, with y interpolated there
        y_interp = _interpolate_at(x, y, max_fpr)
        area += 0.5 * (y_interp + float(ys[-1])) * (max_fpr - float(xs[-1]))
    return area


def area_under_curve(fpr, y, max_fpr: float = 1.0, normalize: bool = True) -> float:
    """Trapezoidal area under ``y(fpr)`` from 0 to ``max_fpr`` as in the official MVTec tools:
    points with FPR <= max_fpr, plus the trapezoid up to max_fpr with the y value there linearly
    interpolated when max_fpr is not a curve point; divided by ``max_fpr`` when ``normalize``.

    ``fpr`` must be non-decreasing, start at 0 and reach ``max_fpr``.  Points with equal FPR
    (vertical steps) are fine: they enclose no area.
    """
    x = np.asarray(fpr, dtype=np.float64)
    yv = np.asarray(y, dtype=np.float64)
    if x.shape != yv.shape or x.ndim != 1:
        raise ValueError(f"fpr and y must be 1-D arrays of equal length, got {x.shape}, {yv.shape}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(yv))):
        raise ValueError("curve contains non-finite values")
    if np.any(np.diff(x) < 0):
        raise ValueError("fpr must be sorted in non-decreasing order")
    max_fpr = _check_max_fpr(max_fpr, x)
    area = _auc_sorted(x, yv, max_fpr)
    return area / max_fpr if normalize else area


# --------------------------------------------------------------------------------------------
# curve computation


def connected_regions(mask: np.ndarray, connectivity: int = 8) -> np.ndarray:
    """Split a 2-D boolean mask into its connected components, as (C, H, W) bool channels.

    ``connectivity=8`` (default) is what the official MVTec AD evaluation uses
    (``scipy.ndimage.label(gt, np.ones((3, 3)))``); ``4`` is scipy's default structure.
    """
    mask = np.asarray(mask, dtype=bool)
    lab, n = _label(mask, connectivity)
    return lab[None, :, :] == np.arange(1, n + 1)[:, None, None]


def _label(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, int]:
    if mask.ndim != 2:
        raise ValueError(f"masks must be 2-D, got shape {mask.shape}")
    if connectivity == 8:
        structure = np.ones((3, 3), dtype=int)
    elif connectivity == 4:
        structure = ndimage.generate_binary_structure(2, 1)
    else:
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    lab, n = ndimage.label(mask, structure=structure)
    return lab, int(n)


def _as_map(a: Any, i: int) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"anomaly map {i} must be 2-D, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"anomaly map {i} contains non-finite values (NaN or inf)")
    return a


def _curve(
    scores_list: list[np.ndarray], normal_list: list[np.ndarray], regions: list[tuple[int, np.ndarray, float]]
) -> SproCurve:
    """Exact curve over all distinct scores.

    scores_list / normal_list: per image, flattened scores and defect-free masks.
    regions: (image index, flat pixel indices, saturation area s >= 1) per region.
    """
    if not regions:
        raise ValueError("no anomalous region in the evaluated images: the sPRO/PRO curve is undefined")
    normal = np.concatenate(normal_list)
    n_normal = int(normal.sum())
    if n_normal == 0:
        raise ValueError("no defect-free pixel in the evaluated images: the FPR is undefined")
    scores = np.concatenate(scores_list)
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in scores_list])])

    # Each region contributes, for its r-th highest pixel (r = 1..n), the increment
    # min(r/s, 1) - min((r-1)/s, 1) of its sPRO.  Summed over the pixels with score >= t this is
    # exactly min(TP(t)/s, 1) whatever the order among tied scores, since tied pixels enter
    # together and occupy consecutive ranks.
    gain = np.zeros(scores.shape[0], dtype=np.float64)
    for img, idx, s in regions:
        g = idx + offsets[img]
        n = g.shape[0]
        if s >= n:  # s == n: every pixel adds 1/n, no ranking needed (PRO)
            gain[g] += 1.0 / n
            continue
        order = np.argsort(scores[g])[::-1]
        r = np.arange(1, n + 1, dtype=np.float64)
        gain[g[order]] += np.minimum(r / s, 1.0) - np.minimum((r - 1.0) / s, 1.0)

    order = np.argsort(scores)[::-1]  # decreasing score (tie order is irrelevant)
    sorted_scores = scores[order]
    del scores
    ends = np.flatnonzero(sorted_scores[1:] != sorted_scores[:-1])
    ends = np.append(ends, sorted_scores.shape[0] - 1)  # last pixel of each group of equal scores
    thresholds = sorted_scores[ends].astype(np.float64)
    del sorted_scores
    fp = np.cumsum(normal[order], dtype=np.int64)[ends]
    tp = np.cumsum(gain[order])[ends]
    del order, gain

    fpr = np.concatenate([[0.0], fp / n_normal])
    spro = np.concatenate([[0.0], np.clip(tp / len(regions), 0.0, 1.0)])
    thresholds = np.concatenate([[np.inf], thresholds])
    return SproCurve(fpr, spro, thresholds, len(regions), n_normal)


def _prepare_channels(maps, channels, saturations):
    if len(maps) != len(channels):
        raise ValueError(f"got {len(maps)} maps but {len(channels)} channel arrays")
    if saturations is not None and len(saturations) != len(maps):
        raise ValueError(f"got {len(maps)} maps but {len(saturations)} saturation lists")
    scores_list, normal_list, regions = [], [], []
    empty = []
    for i, a in enumerate(maps):
        a = _as_map(a, i)
        ch = channels[i]
        if ch is None:
            ch = np.zeros((0,) + a.shape, dtype=bool)
        ch = np.asarray(ch)
        if ch.ndim == 2:
            ch = ch[None]
        if ch.ndim != 3:
            raise ValueError(f"channels of image {i} must be (C, H, W), got shape {ch.shape}")
        n_ch = ch.shape[0]
        if n_ch and ch.shape[1:] != a.shape:
            raise ValueError(f"image {i}: channels shape {ch.shape} does not match map shape {a.shape}")
        ch = ch.astype(bool, copy=False)
        sats_i = None if saturations is None else saturations[i]
        if sats_i is None:
            sats = [PRO_SATURATION] * n_ch
        else:
            sats = [Saturation.coerce(x) for x in sats_i]
            if len(sats) != n_ch:
                raise ValueError(f"image {i}: {n_ch} channels but {len(sats)} saturation specs")
        scores_list.append(a.ravel())
        normal_list.append(~ch.any(axis=0).ravel() if n_ch else np.ones(a.size, dtype=bool))
        for c in range(n_ch):
            idx = np.flatnonzero(ch[c])
            if idx.size == 0:
                empty.append((i, c))
                continue
            s = sats[c].area(idx.size)
            regions.append((i, idx, s if s > 0 else 1.0))
    if empty:
        warnings.warn(
            f"{len(empty)} empty ground-truth channel(s) skipped (no defect pixel), first "
            f"(image, channel): {empty[:5]}",
            RuntimeWarning,
            stacklevel=3,
        )
    return scores_list, normal_list, regions


def spro_curve(maps, channels, saturations=None, max_fpr: float = 1.0) -> SproCurve:
    """Exact sPRO curve (MVTec LOCO definition) over all images of the evaluated set.

    Args:
        maps: N real-valued 2-D anomaly maps ((N, H, W) array or a list; sizes may differ
            between images).
        channels: per image, a (C_i, H_i, W_i) bool array, one channel per defect (C_i = 0 or
            ``None`` for good images; a 2-D mask counts as one channel).
        saturations: per image, C_i saturation specs (:class:`Saturation`, ``(threshold,
            relative)`` tuples, ``defects_config``-style dicts or ``DefectChannel`` objects);
            ``None`` (overall or per image) means relative 1.0, i.e. plain PRO per channel.
        max_fpr: truncate the returned curve at this FPR (interpolated end point), for plots.
    """
    curve = _curve(*_prepare_channels(maps, channels, saturations))
    return curve if max_fpr >= 1.0 else curve.truncate(max_fpr)


def au_spro(
    maps, channels_per_image, saturation_per_channel=None, max_fprs: Sequence[float] = DEFAULT_MAX_FPRS
) -> dict[float, float]:
    """AU-sPRO for several integration limits: ``{max_fpr: area / max_fpr}``.

    Arguments as in :func:`spro_curve`; the curve is computed once.
    """
    curve = spro_curve(maps, channels_per_image, saturation_per_channel)
    return {float(f): curve.auc(f) for f in max_fprs}


def _prepare_masks(masks, maps, connectivity):
    if len(masks) != len(maps):
        raise ValueError(f"got {len(masks)} masks but {len(maps)} maps")
    scores_list, normal_list, regions = [], [], []
    for i, (m, a) in enumerate(zip(masks, maps)):
        a = _as_map(a, i)
        m = np.asarray(m, dtype=bool) if m is not None else np.zeros(a.shape, dtype=bool)
        if m.shape != a.shape:
            raise ValueError(f"image {i}: mask shape {m.shape} != map shape {a.shape}")
        lab, n = _label(m, connectivity)
        scores_list.append(a.ravel())
        normal_list.append(~m.ravel())
        if n:
            flat = lab.ravel()
            nz = np.flatnonzero(flat)
            nz = nz[np.argsort(flat[nz], kind="stable")]
            counts = np.bincount(flat[nz], minlength=n + 1)[1:]
            for idx in np.split(nz, np.cumsum(counts)[:-1]):
                regions.append((i, idx, float(idx.size)))  # relative saturation 1.0: s = area
    return scores_list, normal_list, regions


def pro_curve(masks, maps, connectivity: int = 8, max_fpr: float = 1.0) -> SproCurve:
    """Exact PRO curve (MVTec AD): regions = connected components of each mask
    (``connectivity`` 8 by default, as the official MVTec AD code), saturation = region area.

    Args:
        masks: (N, H, W) bool ground truth or a list of 2-D masks (``None`` = defect-free).
        maps: anomaly maps of the same shapes.
    """
    curve = _curve(*_prepare_masks(masks, maps, connectivity))
    return curve if max_fpr >= 1.0 else curve.truncate(max_fpr)


def au_pro(masks, maps, max_fpr: float = 0.3, connectivity: int = 8) -> float:
    """Normalised area under the PRO curve up to ``max_fpr`` (MVTec AD AU-PRO, default 0.3)."""
    return pro_curve(masks, maps, connectivity).auc(max_fpr)
