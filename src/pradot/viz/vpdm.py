"""VPDM's figures (``vpdm-paper.md`` Sec. 4.2.2): reconstructions and maps (Fig. 2) and the features at each
step of the model (Fig. 3).

VPDM reconstructs backbone features, not pixels, so its feature grids (C channels) are drawn as colour images:
:func:`feature_rgb` projects every grid of a row onto the first three principal components of that row's input
features ``x0`` (one basis and one colour scale per row, so that ``f_down``, ``y_hat`` and the reconstruction
are comparable with the input), the usual way to look at high-dimensional feature maps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..names import figure_text
from ..rgb import to_rgb_uint8
from ._common import _draw_contour, _map_range, _new_figure, _off
from .heatmap import heatmap_rgb

__all__ = ["feature_rgb", "reconstruction_figure", "vague_steps_figure"]


def _chw(a: Any) -> np.ndarray:
    arr = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    if arr.ndim != 3:
        raise ValueError(f"a feature grid must be (C, h, w), got shape {arr.shape}")
    return arr.astype(np.float64)


def feature_rgb(grids: Sequence[Any], basis: Any = None) -> list[np.ndarray]:
    """Feature grids (C, h, w) (arrays or tensors, any h, w) -> (h, w, 3) float images in [0, 1]: each feature
    vector projected on the first three principal components of ``basis`` (a (C, h, w) grid; default: the
    first grid), then scaled per component by the 1st-99th percentile of ``basis``'s projection (clipped).

    Raises:
        ValueError: no grid, a grid that is not (C, h, w), or grids with different C.
    """
    arrays = [_chw(g) for g in grids]
    if not arrays:
        raise ValueError("feature_rgb needs at least one grid")
    ref = _chw(basis) if basis is not None else arrays[0]
    if len({a.shape[0] for a in [ref, *arrays]}) != 1:
        raise ValueError(f"the grids differ in channels: {[a.shape[0] for a in [ref, *arrays]]}")
    points = ref.reshape(ref.shape[0], -1).T  # (h w, C)
    mean = points.mean(0)
    _, _, vt = np.linalg.svd(points - mean, full_matrices=False)
    axes = vt[:3]
    if len(axes) < 3:  # fewer than 3 channels or points: pad with zero components
        axes = np.vstack([axes, np.zeros((3 - len(axes), ref.shape[0]))])
    proj = (points - mean) @ axes.T
    lo, hi = np.percentile(proj, 1, axis=0), np.percentile(proj, 99, axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    out = []
    for a in arrays:
        p = (a.reshape(a.shape[0], -1).T - mean) @ axes.T
        out.append(np.clip((p - lo) / span, 0.0, 1.0).reshape(a.shape[1], a.shape[2], 3))
    return out


def _show(ax, image: np.ndarray, title: str, size: tuple[int, int]) -> None:
    ax.imshow(image, extent=(-0.5, size[1] - 0.5, size[0] - 0.5, -0.5), interpolation="nearest")
    ax.set_title(figure_text(title), fontsize=8)  # names are data: never mathtext
    _off(ax)


def _mask(mask: Any, shape: tuple[int, int]) -> np.ndarray:
    if mask is None:
        return np.zeros(shape, bool)
    m = np.asarray(mask)
    return m.any(axis=0) if m.ndim == 3 else m.astype(bool)


def reconstruction_figure(
    references: Sequence[Any],
    images: Sequence[Any],
    x0: Sequence[Any],
    reconstructions: Sequence[Any],
    maps: Sequence[Any],
    masks: Sequence[Any] | None = None,
    titles: Sequence[str] | None = None,
):
    """Fig. 2 of the paper, one row per image: a normal reference image, the image, its reconstruction (the
    feature grid ``x^0_rec`` through :func:`feature_rgb` in the basis of the image's features ``x0``, whose
    drawing is shown beside it), the ground truth and the anomaly map over the image (one colour scale per
    row).

    Args:
        references, images: (S, S, 3) images (uint8 or float in [0, 1]; or (3, S, S)), one per row.
        x0, reconstructions: (C, g, g) feature grids of each image and its reconstruction.
        maps: (S, S) anomaly maps. masks: (S, S) or (K, S, S) ground truth, None for a normal image.
        titles: row labels.
    Raises:
        ValueError: the sequences differ in length, or no row.
    """
    n = len(images)
    if n == 0 or any(len(s) != n for s in (references, x0, reconstructions, maps)):
        raise ValueError("reconstruction_figure needs the same number (>= 1) of references, images, x0, maps")
    fig = _new_figure(2.0 * 6, 2.1 * n)
    axes = np.atleast_2d(fig.subplots(n, 6))
    for i in range(n):
        img = to_rgb_uint8(images[i])
        size = img.shape[:2]
        amap = np.asarray(maps[i], np.float32)
        lo, hi = _map_range([amap], None, None)
        mask = _mask(masks[i] if masks is not None else None, amap.shape)
        feat, rec = feature_rgb([x0[i], reconstructions[i]])
        label = f"{titles[i]}: " if titles else ""
        _show(axes[i, 0], to_rgb_uint8(references[i]), "normal reference", size)
        _show(axes[i, 1], img, f"{label}image", size)
        _show(axes[i, 2], feat, "features x0 (PCA)", size)
        _show(axes[i, 3], rec, "reconstruction", size)
        _show(axes[i, 4], np.repeat(mask[..., None].astype(np.float32), 3, -1), "ground truth", size)
        _show(axes[i, 5], heatmap_rgb(amap, lo, hi, img), f"anomaly map ({lo:.2f}-{hi:.2f})", size)
        _draw_contour(axes[i, 5], mask, size)
    return fig


def vague_steps_figure(
    images: Sequence[Any],
    x0: Sequence[Any],
    f_down: Sequence[Any],
    y_hat: Sequence[Any],
    reconstructions: Sequence[Any],
    masks: Sequence[Any] | None = None,
    titles: Sequence[str] | None = None,
):
    """Fig. 3 of the paper, one row per image: the image, the ground truth, then its feature grids at each
    step of VPDM in one colour basis (:func:`feature_rgb` of ``x0``): the features ``x0``, the low-passed
    ``f_down``, the vague condition ``y_hat`` (VPOT's output) and the reconstruction.

    Raises:
        ValueError: the sequences differ in length, or no row.
    """
    n = len(images)
    if n == 0 or any(len(s) != n for s in (x0, f_down, y_hat, reconstructions)):
        raise ValueError("vague_steps_figure needs the same number (>= 1) of images, x0, f_down, y_hat, rec")
    fig = _new_figure(2.0 * 6, 2.1 * n)
    axes = np.atleast_2d(fig.subplots(n, 6))
    names = ("features x0", "f_down (low-pass)", "y_hat (VPOT)", "reconstruction")
    for i in range(n):
        img = to_rgb_uint8(images[i])
        size = img.shape[:2]
        mask = _mask(masks[i] if masks is not None else None, size)
        _show(axes[i, 0], img, f"{titles[i]}: image" if titles else "image", size)
        _show(axes[i, 1], np.repeat(mask[..., None].astype(np.float32), 3, -1), "ground truth", size)
        grids = feature_rgb([x0[i], f_down[i], y_hat[i], reconstructions[i]])
        for j, (g, name) in enumerate(zip(grids, names)):
            _show(axes[i, 2 + j], g, name, size)
    return fig
