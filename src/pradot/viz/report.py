"""Figures the pipelines log: anomaly maps over their images, metrics of several models side by side, and
members vs ensemble on the same images (matplotlib figures without pyplot)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from ..explain import _mask2d
from ..names import figure_text
from ._common import _as_list, _draw_contour, _extent, _grid_shape, _map_range, _new_figure, _off
from .heatmap import DEFAULT_CMAP, _numpy, to_rgb_uint8

__all__ = ["comparison_figure", "metrics_bar_figure", "overlay_figure"]


def overlay_figure(
    images: Any,
    maps: Any,
    titles: Sequence[str] | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    masks: Any = None,
    cmap: str = DEFAULT_CMAP,
    alpha: float = 0.5,
    ncols: int | None = None,
    panel_size: float = 3.0,
) -> Figure:
    """Grid of test images with their anomaly maps overlaid (one shared colour scale and colour bar).

    Args:
        images: N images, (N, S, S, 3) or a list (uint8 or float [0, 1]; (3, S, S) accepted).
        maps: N anomaly maps, (N, h, w); a map smaller than its image is stretched over it.
        titles: N panel titles (e.g. "logical_anomalies 003 (score 0.71)").
        vmin, vmax: colour scale; default min / max over all maps.
        masks: optional N ground-truth masks, (h, w) or (C, h, w) bool (None entries skip), drawn as
            white contours.
        ncols: panels per row (default min(N, 4)).
    Returns:
        Figure with N image axes and one colour-bar axes.
    """
    imgs = [to_rgb_uint8(i) for i in _as_list(images)]
    mps = [_numpy(m).astype(np.float64).squeeze() for m in _as_list(maps)]
    if len(imgs) != len(mps) or not imgs:
        raise ValueError(f"need as many maps as images (>= 1), got {len(imgs)} images, {len(mps)} maps")
    if titles is not None and len(titles) != len(imgs):
        raise ValueError(f"{len(titles)} titles for {len(imgs)} images")
    mks = [None] * len(imgs) if masks is None else list(_as_list(masks))
    if len(mks) != len(imgs):
        raise ValueError(f"{len(mks)} masks for {len(imgs)} images")
    lo, hi = _map_range(mps, vmin, vmax)
    norm = Normalize(lo, hi, clip=True)
    nrows, nc = _grid_shape(len(imgs), ncols)
    fig = _new_figure(panel_size * nc + 0.9, panel_size * nrows + (0.3 if titles else 0.0))
    axes = fig.subplots(nrows, nc, squeeze=False).ravel()
    for ax in axes[len(imgs) :]:
        fig.delaxes(ax)
    for k, ax in enumerate(axes[: len(imgs)]):
        img, m = imgs[k], mps[k]
        ax.imshow(img, interpolation="nearest")
        ax.imshow(m, cmap=cmap, norm=norm, alpha=alpha, extent=_extent(img.shape[:2]), interpolation="bilinear")
        if mks[k] is not None:
            _draw_contour(ax, _mask2d(mks[k]), img.shape[:2])
        if titles is not None:
            ax.set_title(figure_text(titles[k]), fontsize=9)
        _off(ax)
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=list(axes[: len(imgs)]), shrink=0.85, label="anomaly score")
    return fig


def metrics_bar_figure(
    rows: Sequence[Mapping[str, Any]], metrics: Sequence[str], title: str = "", highlight_last: bool = True
) -> Figure:
    """Grouped bars: one group per metric, one bar per model.

    Args:
        rows: one mapping per model with ``"model"`` (its label) and a value per metric (NaN: no bar).
        metrics: the metrics to show, in order.
        highlight_last: draw the last model (e.g. the ensemble) in black.
    """
    if not rows or not metrics:
        raise ValueError("need at least one model and one metric")
    fig = _new_figure(max(6.0, 1.6 * len(metrics) * max(1, len(rows)) / 3), 4)
    ax = fig.subplots()
    width = 0.8 / len(rows)
    x = np.arange(len(metrics))
    for j, r in enumerate(rows):
        vals = [float(r.get(k, float("nan"))) for k in metrics]
        ax.bar(
            x + j * width - 0.4 + width / 2,
            vals,
            width,
            label=figure_text(str(r["model"])),
            alpha=0.85,
            color=("black" if highlight_last and j == len(rows) - 1 else None),
        )
    ax.set_xticks(x, list(metrics), rotation=20, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("value")
    if title:
        ax.set_title(figure_text(title))
    ax.legend(fontsize=7, loc="lower right")
    return fig


def comparison_figure(
    images: Any,
    maps: Sequence[Any],
    labels: Sequence[str],
    scores: Sequence[Any],
    titles: Sequence[str] | None = None,
    masks: Any = None,
    cmap: str = DEFAULT_CMAP,
    alpha: float = 0.5,
    panel_size: float = 2.2,
) -> Figure:
    """One row per image: the image (ground truth outlined) and each model's map over it.

    Args:
        images: N images (see :func:`overlay_figure`).
        maps: per model, its N maps ``(N, h, w)``; each model's column has its own colour scale (the
            1st-99.9th percentile of that model's maps).
        labels: per model, its column title; scores: per model, its N image scores (shown per panel).
        titles: N row titles (first column); masks: N ground-truth masks or None.
    """
    imgs = [to_rgb_uint8(i) for i in _as_list(images)]
    per_model = [[_numpy(m).astype(np.float64).squeeze() for m in _as_list(ms)] for ms in maps]
    if not imgs or any(len(ms) != len(imgs) for ms in per_model) or len(labels) != len(per_model):
        raise ValueError(
            f"need N >= 1 images and N maps per model with one label each, got {len(imgs)} images, "
            f"{[len(ms) for ms in per_model]} maps, {len(labels)} labels"
        )
    mks = [None] * len(imgs) if masks is None else list(_as_list(masks))
    ranges = [(float(np.percentile(np.stack(ms), 1)), float(np.percentile(np.stack(ms), 99.9))) for ms in per_model]
    cols = 1 + len(per_model)
    fig = _new_figure(panel_size * cols, (panel_size + 0.1) * len(imgs))
    axes = fig.subplots(len(imgs), cols, squeeze=False)
    for r, img in enumerate(imgs):
        axes[r, 0].imshow(img)
        if mks[r] is not None:
            _draw_contour(axes[r, 0], _mask2d(mks[r]), img.shape[:2])
        if titles is not None:
            axes[r, 0].set_title(figure_text(titles[r]), fontsize=7)
        for c, (ms, lab, sc) in enumerate(zip(per_model, labels, scores), start=1):
            lo, hi = ranges[c - 1]
            axes[r, c].imshow(img)
            axes[r, c].imshow(
                ms[r], cmap=cmap, alpha=alpha, vmin=lo, vmax=hi if hi > lo else lo + 1e-9, extent=_extent(img.shape[:2])
            )
            axes[r, c].set_title(f"{figure_text(lab)}\n{float(_numpy(sc)[r]):.3f}", fontsize=7)
    for ax in axes.ravel():
        ax.set_axis_off()
    return fig
