"""Helpers shared by the figures (matplotlib, without pyplot)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _new_figure(width: float, height: float, layout: str | None = "constrained") -> Figure:
    fig = Figure(figsize=(width, height), layout=layout)
    FigureCanvasAgg(fig)  # so fig.savefig / fig.canvas.draw work without pyplot
    return fig


def _as_list(images: Any) -> list:
    if isinstance(images, (list, tuple)):
        return list(images)
    a = images if isinstance(images, torch.Tensor) else np.asarray(images)
    return [a[i] for i in range(len(a))]


def _grid_shape(n: int, ncols: int | None, max_cols: int = 4) -> tuple[int, int]:
    c = max(1, min(n, ncols or max_cols))
    return int(math.ceil(n / c)), c


def _extent(shape: tuple[int, int]) -> tuple[float, float, float, float]:
    h, w = shape
    return (-0.5, w - 0.5, h - 0.5, -0.5)


def _map_range(maps: Sequence[np.ndarray], vmin, vmax) -> tuple[float, float]:
    vals = np.concatenate([m[np.isfinite(m)].ravel() for m in maps]) if maps else np.zeros(0)
    lo = float(vals.min()) if vmin is None and vals.size else float(vmin if vmin is not None else 0.0)
    hi = float(vals.max()) if vmax is None and vals.size else float(vmax if vmax is not None else 1.0)
    if hi <= lo:
        hi = lo + 1e-12
    return lo, hi


def _draw_contour(ax, mask: np.ndarray, image_shape: tuple[int, int], color: str = "white") -> None:
    if not mask.any() or mask.all():
        return
    h, w = mask.shape
    H, W = image_shape
    ys = (np.arange(h) + 0.5) * H / h - 0.5
    xs = (np.arange(w) + 0.5) * W / w - 0.5
    ax.contour(xs, ys, mask.astype(np.float32), levels=[0.5], colors=[color], linewidths=1.2)


def _off(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
