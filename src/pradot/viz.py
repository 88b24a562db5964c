"""Figures of the paper and of the pipelines: anomaly-map overlays, embedding-to-prototype assignment
arrows (Fig. 4), prototype reconstruction and restored test images (Fig. 5), UMAP of embeddings and
prototypes under cost (1) (Fig. 6), ROC / (s)PRO curves and training curves.

Every ``*_figure`` function returns a :class:`matplotlib.figure.Figure` built without pyplot (no global
state, no display needed; the Agg canvas is attached), which callers save (``fig.savefig(path)``) or log.
Array helpers (:func:`heatmap_rgb`, :func:`prototype_patches`, :func:`restore_image`,
:func:`abnormal_embeddings`) return NumPy arrays. Heavy optional imports (umap, scikit-learn,
``pradot.metrics``) happen inside the functions that need them, so ``import pradot.viz`` stays cheap
(the model server imports it for :func:`heatmap_rgb`).

Conventions:

* images: ``(S, S, 3)`` (or ``(H0, W0, 3)``) uint8 or float in [0, 1]; ``(3, S, S)`` tensors/arrays and
  grayscale ``(S, S)`` are accepted and converted;
* a feature grid ``(H, W)`` splits an image into non-overlapping patches with floor-rounded boundaries
  ``round(i * S / H)`` (:func:`block_edges`), so sizes that are not multiples of the grid work; every
  patch is stored at the size of the largest block (nearest-neighbour resized), which is exact when the
  grid divides the image size;
* grid coordinates are the cost's ``(row, col)`` in [0, 1] (``pradot.cost.grid_coordinates``), i.e.
  cell ``(i, j)`` sits at ``(i / (H - 1), j / (W - 1))``; they are drawn at the pixel centre of the cell.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from matplotlib import colormaps, patheffects
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

__all__ = [
    "to_rgb_uint8",
    "block_edges",
    "heatmap_rgb",
    "overlay_figure",
    "assignment_figure",
    "prototype_patches",
    "prototype_figure",
    "restore_image",
    "restoration_figure",
    "abnormal_embeddings",
    "position_colors",
    "umap_figure",
    "roc_figure",
    "pro_figure",
    "training_curves_figure",
    "metrics_bar_figure",
    "comparison_figure",
]

#: default colour map of anomaly maps (the paper's figures use jet)
DEFAULT_CMAP = "jet"


# ------------------------------------------------------------------------------------------------
# small helpers


def _numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _new_figure(width: float, height: float, layout: str | None = "constrained") -> Figure:
    fig = Figure(figsize=(width, height), layout=layout)
    FigureCanvasAgg(fig)  # so fig.savefig / fig.canvas.draw work without pyplot
    return fig


def to_rgb_uint8(image: Any) -> np.ndarray:
    """Any image -> ``(H, W, 3)`` uint8.

    Accepts ``(H, W, 3)``, ``(H, W, 4)`` (alpha dropped), ``(H, W, 1)``, ``(H, W)`` and channel-first
    ``(3, H, W)`` / ``(1, H, W)`` arrays or tensors; uint8 values as they are, floats taken in [0, 1]
    (clipped; NaN -> 0).
    """
    a = _numpy(image)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected an image of shape (H, W, 3), (H, W) or (3, H, W), got {a.shape}")
    a = a[..., :3]
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    f = np.nan_to_num(a.astype(np.float64), nan=0.0)
    return (np.clip(f, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def block_edges(size: int, cells: int) -> np.ndarray:
    """Pixel boundaries of ``cells`` non-overlapping blocks over ``size`` pixels: ``round(i * size / cells)``
    for ``i = 0..cells`` (``cells + 1`` integers, first 0, last ``size``)."""
    size, cells = int(size), int(cells)
    if cells < 1 or size < cells:
        raise ValueError(f"cannot split {size} pixels into {cells} non-empty blocks")
    return np.round(np.arange(cells + 1) * size / cells).astype(np.int64)


def _patch_index(size: int, cells: int, patch: int) -> np.ndarray:
    """``(cells, patch)`` pixel indices: block ``i`` sampled (nearest neighbour) at ``patch`` points."""
    e = block_edges(size, cells)
    lens = np.diff(e)
    off = np.floor(np.arange(patch)[None, :] * lens[:, None] / patch).astype(np.int64)
    return e[:-1, None] + off


def _inverse_offsets(t: np.ndarray, length: np.ndarray, patch: int) -> np.ndarray:
    """Patch index for offset ``t`` of a block of ``length`` pixels drawn from a ``patch``-sized tile:
    ``ceil(t * patch / length)``, the inverse of :func:`_patch_index`'s sampling when ``patch >= length``
    (so patches cut by :func:`prototype_patches` go back into a same-sized image unchanged)."""
    return np.minimum((t * patch + length - 1) // length, patch - 1).astype(np.int64)


def _patch_size(size: int, cells: int) -> int:
    return int(np.diff(block_edges(size, cells)).max())


def _cell_centres(size: int, cells: int) -> np.ndarray:
    """Pixel-centre coordinate (imshow convention: pixel k spans [k - .5, k + .5]) of each block."""
    e = block_edges(size, cells)
    return (e[:-1] + e[1:]) / 2.0 - 0.5


def _coords_to_pixels(coords: np.ndarray, grid: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """Cost coordinates (row, col) in [0, 1] -> pixel (y, x): grid units ``r (H - 1)``, then interpolated
    between the cells' pixel centres (linear; exact at every cell)."""
    out = np.empty((len(coords), 2), dtype=np.float64)
    for d in range(2):
        n, size = int(grid[d]), int(shape[d])
        centres = _cell_centres(size, n)
        u = coords[:, d] * (n - 1) if n > 1 else np.zeros(len(coords))
        out[:, d] = np.interp(u, np.arange(n), centres) if n > 1 else centres[0]
    return out


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


def _mask2d(mask: Any) -> np.ndarray:
    m = _numpy(mask)
    if m.ndim == 3:  # (C, H, W) ground-truth channels
        m = m.any(axis=0)
    if m.ndim != 2:
        raise ValueError(f"masks must be (H, W) or (C, H, W), got {m.shape}")
    return m.astype(bool)


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


# ------------------------------------------------------------------------------------------------
# 1. anomaly-map overlays


def heatmap_rgb(
    amap: Any, vmin: float, vmax: float, image: Any = None, alpha: float = 0.5, cmap: str = DEFAULT_CMAP
) -> np.ndarray:
    """Colour an anomaly map, optionally blended over its image.

    Args:
        amap: (H, W) anomaly map (array or tensor); non-finite values are drawn as ``vmin``.
        vmin, vmax: values mapped to the two ends of the colour map (values outside are clipped).
        image: optional (H, W, 3) image (uint8 or float [0, 1]) of the same size to blend under the map.
        alpha: weight of the heat colours in the blend (ignored without ``image``).
        cmap: a matplotlib colour-map name.
    Returns:
        (H, W, 3) uint8.

    Works in float32 with the colour map's lookup table (no float64 full-size temporaries): about 40 bytes
    per pixel at the peak, so the model server can draw large maps.
    """
    a = np.asarray(_numpy(amap), dtype=np.float32)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise ValueError(f"anomaly map must be (H, W), got {a.shape}")
    lo, hi = float(vmin), float(vmax)
    span = hi - lo
    colours = colormaps[cmap]
    lut = colours(np.arange(colours.N))[:, :3]  # the map's N colours, as matplotlib draws them
    if span > 0:  # index = floor(clip((a - lo) / span, 0, 1) * N), the top value on the last colour
        t = np.where(np.isfinite(a), a, np.float32(lo))
        t -= np.float32(lo)
        t *= np.float32(colours.N / span)
        np.clip(t, 0, colours.N - 1, out=t)
        index = t.astype(np.int32)
    else:
        index = np.zeros(a.shape, np.int32)
    if image is None:
        return (np.clip(lut.astype(np.float64), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)[index]
    img = to_rgb_uint8(image)
    if img.shape[:2] != a.shape:
        raise ValueError(f"image {img.shape[:2]} and map {a.shape} sizes differ; resize one first")
    al = float(np.clip(alpha, 0.0, 1.0))
    rgb = lut.astype(np.float32)[index]  # float32 (H, W, 3)
    rgb *= np.float32(al)
    rgb += img * np.float32((1.0 - al) / 255.0)
    np.clip(rgb, 0.0, 1.0, out=rgb)
    rgb *= np.float32(255.0)
    rgb += np.float32(0.5)
    return rgb.astype(np.uint8)


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
            ax.set_title(str(titles[k]), fontsize=9)
        _off(ax)
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=list(axes[: len(imgs)]), shrink=0.85, label="anomaly score")
    return fig


# ------------------------------------------------------------------------------------------------
# 2. assignment arrows (Fig. 4)


def assignment_figure(
    image: Any,
    bank,
    feats: Any,
    title: str | None = None,
    cmap: str = DEFAULT_CMAP,
    show_map: bool = False,
    panel_size: float = 5.0,
) -> Figure:
    """Embedding-to-prototype assignment of Eq. 6 (paper Fig. 4).

    For every embedding of the ``H x W`` grid an arrow goes from its cell to the coordinates of the
    prototype that minimises its cost (``pradot.scoring.assignment_scores``); embeddings whose
    prototype lies within half a cell of their own position are drawn as dots. Arrows and dots are
    coloured by the embedding's anomaly score (Eq. 6).

    Args:
        image: (S, S, 3) the test image.
        bank: a ``pradot.prototypes.PrototypeBank`` of one stage with grid (H, W).
        feats: (1, D, H, W) features of ``image`` at the bank's stage (tensor or array).
        title: axes title; default states stage and alpha.
        show_map: also draw the (H, W) score map, semi-transparent, under the arrows.
    Returns:
        Figure with one image axes (one ``Quiver`` with the arrows, one ``PathCollection`` with the
        dots) and one colour-bar axes. ``fig.pradot_info`` holds ``scores`` (H*W,), ``assignment``
        (H*W,) and ``n_arrows`` / ``n_dots``.
    """
    from .scoring import assignment_scores

    img = to_rgb_uint8(image)
    f = torch.as_tensor(_numpy(feats)) if not isinstance(feats, torch.Tensor) else feats
    if f.ndim == 3:
        f = f[None]
    if f.ndim != 4 or f.shape[0] != 1:
        raise ValueError(f"feats must be (1, D, H, W) for one image, got {tuple(f.shape)}")
    f = f.to(device=bank.features.device, dtype=bank.features.dtype)
    scores, idx = assignment_scores(bank, f)
    scores = scores[0].detach().cpu().numpy().astype(np.float64)
    idx = idx[0].detach().cpu().numpy()
    H, W = bank.config.grid
    grid_c = bank.grid_coords.detach().cpu().numpy().astype(np.float64)
    proto_c = bank.coords.detach().cpu().numpy().astype(np.float64)[idx]
    start = _coords_to_pixels(grid_c, (H, W), img.shape[:2])  # (HW, 2) (y, x)
    end = _coords_to_pixels(proto_c, (H, W), img.shape[:2])
    d = end - start
    cell = np.array([img.shape[0] / H, img.shape[1] / W])
    is_dot = np.all(np.abs(d) < cell / 2, axis=1)

    norm = Normalize(*_map_range([scores], None, None))
    fig = _new_figure(panel_size + 1.0, panel_size)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(img, interpolation="nearest")
    if show_map:
        ax.imshow(
            scores.reshape(H, W),
            cmap=cmap,
            norm=norm,
            alpha=0.35,
            extent=_extent(img.shape[:2]),
            interpolation="nearest",
        )
    arrows = ~is_dot
    # shaft width scales with the cell so that dense grids stay readable
    width = min(0.006, 0.12 * min(cell) / max(img.shape[:2]))
    q = ax.quiver(
        start[arrows, 1],
        start[arrows, 0],
        d[arrows, 1],
        d[arrows, 0],
        scores[arrows],
        cmap=cmap,
        norm=norm,
        angles="xy",
        scale_units="xy",
        scale=1.0,
        width=width,
        headwidth=3.5,
        headlength=4.0,
        headaxislength=3.5,
        pivot="tail",
        zorder=3,
    )
    cell_pt = min(cell) * 0.8 * panel_size * 72.0 / max(img.shape[:2])  # cell size in points
    sc = ax.scatter(
        start[is_dot, 1],
        start[is_dot, 0],
        c=scores[is_dot],
        cmap=cmap,
        norm=norm,
        s=float(np.clip(0.3 * cell_pt, 1.5, 7.0)) ** 2,
        edgecolors="none",
        zorder=3,
    )
    ax.set_xlim(-0.5, img.shape[1] - 0.5)
    ax.set_ylim(img.shape[0] - 0.5, -0.5)
    ax.set_title(
        title
        if title is not None
        else f"stage {bank.config.stage}, alpha={bank.config.alpha:g}: {int(arrows.sum())} moved, "
        f"{int(is_dot.sum())} in place",
        fontsize=10,
    )
    _off(ax)
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, shrink=0.85, label="anomaly score (Eq. 6)")
    fig.pradot_info = {
        "scores": scores,
        "assignment": idx,
        "n_arrows": int(arrows.sum()),
        "n_dots": int(is_dot.sum()),
        "quiver": q,
        "dots": sc,
    }
    return fig


# ------------------------------------------------------------------------------------------------
# 3. prototype reconstruction (Fig. 5 left)


@torch.no_grad()
def prototype_patches(
    bank, train_features: Any, train_images: Any | Callable[[int], Any], chunk: int = 16, return_index: bool = False
):
    """Each prototype drawn as the training-image patch whose feature has the highest cosine similarity
    with it (paper Fig. 5, left).

    Args:
        bank: a ``PrototypeBank`` (P prototypes of dimension D, grid (H, W)).
        train_features: (N, D, H, W) training features at the bank's stage: tensor, array or memmap (read
            ``chunk`` images at a time).
        train_images: (N, S, S, 3) uint8 images (array or sequence), or a callable ``get_image(i)``
            returning image ``i`` as (S, S, 3); only the images that win a prototype are read.
        chunk: images per similarity chunk (memory ``chunk * H * W * P`` floats).
        return_index: also return ``(image_index (P,), cell_index (P,), similarity (P,))``.
    Returns:
        (P, ph, pw, 3) uint8 patches, with ``ph = max block height`` of :func:`block_edges` (``S // H``
        when H divides S); ties go to the first (image, cell) in order.
    """
    n_img = len(train_features)
    if n_img == 0:
        raise ValueError("no training features")
    D, H, W = (int(s) for s in train_features[0].shape)
    if (H, W) != tuple(bank.config.grid) or D != int(bank.features.shape[1]):
        raise ValueError(
            f"training features are {D}x{H}x{W}, the bank expects "
            f"{int(bank.features.shape[1])}x{bank.config.grid[0]}x{bank.config.grid[1]}"
        )
    pn = bank.features.detach().float().cpu()
    pn = pn / pn.norm(dim=1, keepdim=True).clamp_min(1e-8)  # (P, D)
    best = torch.full((pn.shape[0],), -float("inf"))
    best_at = torch.zeros(pn.shape[0], dtype=torch.long)  # flat index image * HW + cell
    for s in range(0, n_img, chunk):
        f = train_features[s : s + chunk]
        # np.array copies: cached features are read-only memmaps, which torch.from_numpy warns about
        f = f.detach().cpu().float() if isinstance(f, torch.Tensor) else torch.from_numpy(np.array(f, np.float32))
        b = f.shape[0]
        z = f.permute(0, 2, 3, 1).reshape(b * H * W, D)
        z = z / z.norm(dim=1, keepdim=True).clamp_min(1e-8)
        val, arg = (z @ pn.T).max(dim=0)  # (P,)
        better = val > best
        best = torch.where(better, val, best)
        best_at = torch.where(better, arg + s * H * W, best_at)
    img_idx = (best_at // (H * W)).numpy()
    cell_idx = (best_at % (H * W)).numpy()

    get = train_images if callable(train_images) else (lambda i: train_images[i])
    first = to_rgb_uint8(get(int(img_idx[0])))
    S0, S1 = first.shape[:2]
    ph, pw = _patch_size(S0, H), _patch_size(S1, W)
    rows, cols = _patch_index(S0, H, ph), _patch_index(S1, W, pw)  # (H, ph), (W, pw)
    out = np.zeros((pn.shape[0], ph, pw, 3), dtype=np.uint8)
    for n in np.unique(img_idx):
        img = first if n == img_idx[0] else to_rgb_uint8(get(int(n)))
        if img.shape[:2] != (S0, S1):
            raise ValueError(f"training image {n} is {img.shape[:2]}, expected {(S0, S1)}")
        sel = np.nonzero(img_idx == n)[0]
        ci, cj = cell_idx[sel] // W, cell_idx[sel] % W
        out[sel] = img[rows[ci][:, :, None], cols[cj][:, None, :]]  # (k, ph, pw, 3)
    if return_index:
        return out, (img_idx, cell_idx, best.numpy())
    return out


def _prototype_layout(n_protos: int, grid: tuple[int, int], n: float) -> tuple[int, int, int]:
    """(prototypes per cell k, grid rows, grid cols) of a bank's index layout."""
    H, W = int(grid[0]), int(grid[1])
    if n >= 1:
        k = int(n)
        if k * H * W != n_protos:
            raise ValueError(f"{n_protos} patches do not match n={n} on a {H}x{W} grid")
        return k, H, W
    h, w = int(H * n), int(W * n)
    if h * w != n_protos:
        raise ValueError(f"{n_protos} patches do not match n={n} ({h}x{w} prototypes) on a {H}x{W} grid")
    return 1, h, w


def _mosaic(patches: np.ndarray, rows: int, cols: int, gap: int = 0) -> np.ndarray:
    """(rows*cols, ph, pw, 3) -> one image with ``gap`` white pixels between tiles."""
    _, ph, pw, _ = patches.shape
    out = np.full((rows * ph + (rows - 1) * gap, cols * pw + (cols - 1) * gap, 3), 255, np.uint8)
    for r in range(rows):
        for c in range(cols):
            y, x = r * (ph + gap), c * (pw + gap)
            out[y : y + ph, x : x + pw] = patches[r * cols + c]
    return out


def prototype_figure(
    patches: np.ndarray,
    grid: tuple[int, int],
    n: float,
    max_cells: int = 6,
    max_per_cell: int = 16,
    panel_size: float = 5.0,
) -> Figure:
    """Show reconstructed prototypes (the output of :func:`prototype_patches`).

    * ``n == 1`` (or ``n < 1``): one axes with the prototypes tiled at their grid positions, i.e. the
      "image" the prototypes form (paper Fig. 5 left, first column).
    * ``n > 1``: one axes per cell for ``max_cells`` cells spread evenly over the grid, each a row of that
      cell's first ``max_per_cell`` prototypes (index ``k * H * W + cell``) side by side.

    Args:
        patches: (P, ph, pw, 3) uint8.
        grid: (H, W) of the bank's stage; n: prototypes per cell (the bank's ``config.n``).
    Returns:
        Figure with 1 axes (n <= 1) or ``min(max_cells, H*W)`` axes (n > 1).
    """
    patches = np.asarray(patches)
    k, gh, gw = _prototype_layout(len(patches), grid, n)
    if k == 1:
        fig = _new_figure(panel_size, panel_size * gh / gw + 0.4)
        ax = fig.add_subplot(1, 1, 1)
        gap = 1 if patches.shape[1] >= 8 else 0
        ax.imshow(_mosaic(patches, gh, gw, gap=gap), interpolation="nearest")
        ax.set_title(f"{len(patches)} prototypes on the {gh}x{gw} grid (nearest training patches)", fontsize=10)
        _off(ax)
        return fig
    cells_n = gh * gw
    m = max(1, min(int(max_cells), cells_n))
    cells = (
        np.unique(np.round(np.linspace(0, cells_n - 1, m + 2)[1:-1]).astype(int)) if m < cells_n else np.arange(cells_n)
    )
    per = min(k, int(max_per_cell))
    ph, pw = patches.shape[1:3]
    row_w = per * pw + (per - 1)
    fig = _new_figure(min(14.0, max(4.0, 0.6 * per + 1.5)), 0.75 * len(cells) + 0.7)
    axes = fig.subplots(len(cells), 1, squeeze=False)[:, 0]
    for ax, c in zip(axes, cells):
        idx = np.arange(per) * cells_n + c
        ax.imshow(_mosaic(patches[idx], 1, per, gap=1), interpolation="nearest", aspect="equal")
        ax.set_xticks([(pw + 1) * t + (pw - 1) / 2 for t in range(per)])
        ax.set_xticklabels([str(t) for t in range(per)], fontsize=7) if ax is axes[-1] else ax.set_xticklabels([])
        ax.set_yticks([])
        ax.set_ylabel(f"({c // gw},{c % gw})", rotation=0, ha="right", va="center", fontsize=8)
        ax.set_xlim(-0.5, row_w - 0.5)
    axes[-1].set_xlabel("prototype k of the cell", fontsize=8)
    fig.suptitle(f"prototypes of {len(cells)} cells (row, col)" + (f", {per} of {k}" if per < k else ""), fontsize=10)
    return fig


# ------------------------------------------------------------------------------------------------
# 4. restored images (Fig. 5 right)


def restore_image(
    assignment: Any, patches: np.ndarray, grid: tuple[int, int], image_size: int | tuple[int, int]
) -> np.ndarray:
    """Replace every patch of a test image by the reconstruction patch of its assigned prototype.

    Args:
        assignment: (H*W,) (or (1, H*W) / (H, W)) prototype index per embedding, row-major
            (``pradot.scoring.assignment_scores(bank, feats)[1][b]``).
        patches: (P, ph, pw, 3) uint8 from :func:`prototype_patches`.
        grid: (H, W); image_size: S or (S0, S1) of the output.
    Returns:
        (S0, S1, 3) uint8; block ``(i, j)`` (:func:`block_edges`) holds ``patches[assignment[i*W+j]]``,
        nearest-neighbour resized to the block when sizes differ.
    """
    H, W = int(grid[0]), int(grid[1])
    a = _numpy(assignment).astype(np.int64).reshape(-1)
    if a.size != H * W:
        raise ValueError(f"assignment has {a.size} entries, the {H}x{W} grid needs {H * W}")
    patches = np.asarray(patches)
    if a.min() < 0 or a.max() >= len(patches):
        raise ValueError(f"assignment indices must lie in [0, {len(patches)})")
    S0, S1 = (image_size, image_size) if np.isscalar(image_size) else (int(image_size[0]), int(image_size[1]))
    ph, pw = patches.shape[1:3]
    ey, ex = block_edges(S0, H), block_edges(S1, W)
    iy = np.searchsorted(ey, np.arange(S0), side="right") - 1  # cell row of each pixel row
    jx = np.searchsorted(ex, np.arange(S1), side="right") - 1
    oy = _inverse_offsets(np.arange(S0) - ey[iy], np.diff(ey)[iy], ph)  # row inside the patch
    ox = _inverse_offsets(np.arange(S1) - ex[jx], np.diff(ex)[jx], pw)
    proto = a.reshape(H, W)[iy[:, None], jx[None, :]]  # (S0, S1)
    return patches[proto, oy[:, None], ox[None, :]].astype(np.uint8)


def restoration_figure(
    images: Any,
    restored: Any,
    maps: Any = None,
    titles: Sequence[str] | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = DEFAULT_CMAP,
    panel_size: float = 2.6,
) -> Figure:
    """Rows of ``original | restored | anomaly map`` (the map overlaid on the original; shared scale).

    Args:
        images, restored: N images each ((N, S, S, 3) or lists); maps: optional N (h, w) maps.
    Returns:
        Figure with ``N * (2 or 3)`` image axes (+ 1 colour-bar axes with maps).
    """
    imgs = [to_rgb_uint8(i) for i in _as_list(images)]
    rest = [to_rgb_uint8(i) for i in _as_list(restored)]
    if len(imgs) != len(rest) or not imgs:
        raise ValueError(f"need as many restored images as images (>= 1), got {len(imgs)}, {len(rest)}")
    mps = None if maps is None else [_numpy(m).astype(np.float64).squeeze() for m in _as_list(maps)]
    if mps is not None and len(mps) != len(imgs):
        raise ValueError(f"{len(mps)} maps for {len(imgs)} images")
    ncol = 2 if mps is None else 3
    fig = _new_figure(panel_size * ncol + (0.9 if mps else 0.0), panel_size * len(imgs) + 0.3)
    axes = fig.subplots(len(imgs), ncol, squeeze=False)
    norm = Normalize(*_map_range(mps, vmin, vmax)) if mps else None
    heads = ["original", "restored", "anomaly map"]
    for r in range(len(imgs)):
        axes[r, 0].imshow(imgs[r])
        axes[r, 1].imshow(rest[r])
        if mps is not None:
            axes[r, 2].imshow(imgs[r])
            axes[r, 2].imshow(mps[r], cmap=cmap, norm=norm, alpha=0.5, extent=_extent(imgs[r].shape[:2]))
        for c in range(ncol):
            _off(axes[r, c])
            if r == 0:
                axes[r, c].set_title(heads[c], fontsize=10)
        if titles is not None:
            axes[r, 0].set_ylabel(str(titles[r]), fontsize=8)
    if mps is not None:
        fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes[:, 2].tolist(), shrink=0.85, label="anomaly score")
    return fig


# ------------------------------------------------------------------------------------------------
# 5. UMAP of embeddings and prototypes (Fig. 6)


def abnormal_embeddings(mask: Any, grid: tuple[int, int], threshold: float = 0.3) -> np.ndarray:
    """Which embeddings count as abnormal: more than ``threshold`` of their patch's pixels are abnormal.

    Args:
        mask: (S0, S1) bool ground truth (or (C, S0, S1) channels, merged with ``any``).
        grid: (H, W) feature grid; patches are the blocks of :func:`block_edges`.
    Returns:
        (H*W,) bool, row-major; exactly ``threshold`` is not abnormal.
    """
    m = _mask2d(mask)
    H, W = int(grid[0]), int(grid[1])
    ey, ex = block_edges(m.shape[0], H), block_edges(m.shape[1], W)
    counts = np.add.reduceat(np.add.reduceat(m.astype(np.int64), ey[:-1], axis=0), ex[:-1], axis=1)  # (H, W)
    area = np.diff(ey)[:, None] * np.diff(ex)[None, :]
    return (counts / area > float(threshold)).reshape(-1)


_CORNERS = np.array(
    [
        [0.12, 0.35, 0.85],  # top-left: blue
        [0.15, 0.70, 0.25],  # top-right: green
        [0.85, 0.15, 0.20],  # bottom-left: red
        [0.98, 0.75, 0.10],
    ]
)  # bottom-right: yellow


def position_colors(coords: Any) -> np.ndarray:
    """(N, 2) grid coordinates (row, col) in [0, 1] -> (N, 3) RGB, bilinear between four corner colours
    (top-left blue, top-right green, bottom-left red, bottom-right yellow)."""
    c = np.clip(_numpy(coords).astype(np.float64), 0.0, 1.0)
    r, q = c[:, :1], c[:, 1:2]
    return (1 - r) * (1 - q) * _CORNERS[0] + (1 - r) * q * _CORNERS[1] + r * (1 - q) * _CORNERS[2] + r * q * _CORNERS[3]


def _subsample(
    n_emb: int, n_proto: int, abnormal: np.ndarray, max_points: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic subsample: the budget is split in proportion to the two sets; embeddings keep
    abnormal ones first (up to half of their share) so that they stay visible."""
    total = n_emb + n_proto
    if total <= max_points:
        return np.arange(n_emb), np.arange(n_proto)
    keep_p = int(round(max_points * n_proto / total))
    keep_p = min(n_proto, max(1 if n_proto else 0, keep_p))
    keep_e = min(n_emb, max_points - keep_p)
    ab, no = np.nonzero(abnormal)[0], np.nonzero(~abnormal)[0]
    take_ab = min(len(ab), max(keep_e // 2, keep_e - len(no)))
    e = np.concatenate([rng.choice(ab, take_ab, replace=False), rng.choice(no, keep_e - take_ab, replace=False)])
    p = rng.choice(n_proto, keep_p, replace=False)
    return np.sort(e), np.sort(p)


def umap_figure(
    embeddings: Any,
    embedding_coords: Any,
    abnormal: Any,
    prototypes: Any,
    prototype_coords: Any,
    alpha: float,
    squared: bool = True,
    max_points: int = 2000,
    seed: int = 0,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    title: str | None = None,
    panel_size: float = 6.0,
) -> Figure:
    """UMAP of test embeddings and prototypes with cost (1) as the metric (paper Fig. 6).

    The pairwise matrix over the union of (sub-sampled) embeddings and prototypes is
    ``pradot.cost.fused_cost(z, c, z, c, alpha, squared)`` (float64), symmetrised with a zero diagonal,
    and given to ``umap.UMAP(metric="precomputed")``.

    Args:
        embeddings: (N, D) test-embedding features; embedding_coords: (N, 2) their grid coordinates.
        abnormal: (N,) bool (see :func:`abnormal_embeddings`).
        prototypes: (P, D) prototype features; prototype_coords: (P, 2).
        alpha: cost balance of Eq. 1; squared: squared spatial distance (Eq. 1 as printed).
        max_points: at most this many points in total, drawn deterministically with ``seed``.
    Returns:
        Figure whose first (main) axes has 3 collections: normal embeddings (dots), abnormal embeddings
        (crosses), prototypes (diamonds), coloured by grid position; two small axes beside it hold the
        colour key and the marker legend.
        ``fig.pradot_info`` holds the ``embedding_index`` / ``prototype_index`` kept and the 2-D
        ``projection`` (embeddings first).
    """
    from .cost import fused_cost

    z = torch.as_tensor(_numpy(embeddings), dtype=torch.float64)
    c = torch.as_tensor(_numpy(embedding_coords), dtype=torch.float64)
    p = torch.as_tensor(_numpy(prototypes), dtype=torch.float64)
    rho = torch.as_tensor(_numpy(prototype_coords), dtype=torch.float64)
    ab = _numpy(abnormal).astype(bool).reshape(-1)
    if z.ndim != 2 or p.ndim != 2 or z.shape[1] != p.shape[1]:
        raise ValueError(f"embeddings (N, D) and prototypes (P, D) expected, got {tuple(z.shape)}, {tuple(p.shape)}")
    if c.shape != (z.shape[0], 2) or rho.shape != (p.shape[0], 2) or ab.shape != (z.shape[0],):
        raise ValueError("coordinates must be (N, 2) / (P, 2) and abnormal (N,) matching the features")
    rng = np.random.default_rng(seed)
    ei, pi = _subsample(z.shape[0], p.shape[0], ab, int(max_points), rng)
    X = torch.cat([z[ei], p[pi]])
    C = torch.cat([c[ei], rho[pi]])
    if X.shape[0] < 4:
        raise ValueError(f"UMAP needs at least 4 points, got {X.shape[0]}")
    dist = fused_cost(X, C, X, C, alpha, squared=squared).numpy()
    dist = 0.5 * (dist + dist.T)
    np.clip(dist, 0.0, None, out=dist)
    np.fill_diagonal(dist, 0.0)

    import umap  # lazy: slow import (numba)

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*precomputed.*")
        warnings.filterwarnings("ignore", message=".*n_jobs.*")
        warnings.filterwarnings("ignore", message=".*disconnected.*")
        reducer = umap.UMAP(
            n_components=2,
            metric="precomputed",
            n_neighbors=int(min(n_neighbors, len(X) - 1)),
            min_dist=min_dist,
            random_state=int(seed),
            init="spectral",
        )
        emb2 = np.asarray(reducer.fit_transform(dist), dtype=np.float64)

    ne = len(ei)
    pe, pp = emb2[:ne], emb2[ne:]
    col_e, col_p = position_colors(C[:ne].numpy()), position_colors(C[ne:].numpy())
    abk = ab[ei]
    fig = _new_figure(panel_size + 1.8, panel_size)
    gs = fig.add_gridspec(3, 2, width_ratios=[panel_size, 1.6], height_ratios=[1.3, 1.2, panel_size - 2.5])
    ax = fig.add_subplot(gs[:, 0])
    size = float(np.clip(16000.0 / max(len(X), 1), 8.0, 50.0))
    ax.scatter(pe[~abk, 0], pe[~abk, 1], c=col_e[~abk], s=size, marker="o", linewidths=0, alpha=0.8, zorder=2)
    ax.scatter(
        pe[abk, 0],
        pe[abk, 1],
        c=col_e[abk],
        s=size * 3.0,
        marker="x",
        linewidths=1.8,
        zorder=4,
        path_effects=[patheffects.withStroke(linewidth=3.2, foreground="black")],
    )
    ax.scatter(
        pp[:, 0], pp[:, 1], c=col_p, s=size * 1.5, marker="D", edgecolors="black", linewidths=0.4, alpha=0.75, zorder=3
    )
    ax.set_title(
        title if title is not None else f"UMAP of test embeddings and prototypes, cost (1), alpha={alpha:g}",
        fontsize=10,
    )
    ax.set_xlabel("UMAP 1")
    ax.set_ylabel("UMAP 2")
    ax.set_xticks([])
    ax.set_yticks([])
    # colour key (grid position -> colour) and marker legend beside the plot, so they hide no point
    key = fig.add_subplot(gs[0, 1])
    g = np.linspace(0, 1, 32)
    rr, cc = np.meshgrid(g, g, indexing="ij")
    key.imshow(position_colors(np.stack([rr.ravel(), cc.ravel()], 1)).reshape(32, 32, 3), interpolation="bilinear")
    key.set_xticks([0, 31], ["left", "right"], fontsize=7)
    key.set_yticks([0, 31], ["top", "bottom"], fontsize=7)
    key.set_title("grid position", fontsize=8)
    lg = fig.add_subplot(gs[1, 1])
    lg.axis("off")
    handles = [
        Line2D([], [], ls="", marker="o", color="0.4", label=f"normal\nembedding ({int((~abk).sum())})"),
        Line2D([], [], ls="", marker="x", color="0.2", mew=1.8, label=f"abnormal\nembedding ({int(abk.sum())})"),
        Line2D([], [], ls="", marker="D", mfc="0.7", mec="black", label=f"prototype ({len(pp)})"),
    ]
    lg.legend(handles=handles, loc="upper left", fontsize=7, frameon=False, borderaxespad=0)
    fig.pradot_info = {"embedding_index": ei, "prototype_index": pi, "projection": emb2}
    return fig


# ------------------------------------------------------------------------------------------------
# 6. curves


def roc_figure(
    labels: Any,
    scores: Any,
    by_type: Mapping[str, tuple[Any, Any]] | None = None,
    title: str = "image-level ROC",
    panel_size: float = 4.5,
) -> Figure:
    """ROC curves (``sklearn.metrics.roc_curve``) with the AUROC in the legend.

    Args:
        labels, scores: (N,) 0/1 labels (1 = anomalous) and scores of the whole test set.
        by_type: optional ``{name: (labels, scores)}`` subsets (e.g. good + logical anomalies).
    Returns:
        Figure with one axes: one line per curve plus the chance diagonal.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    curves = {"all": (labels, scores), **(dict(by_type) if by_type else {})}
    fig = _new_figure(panel_size + 0.3, panel_size)
    ax = fig.add_subplot(1, 1, 1)
    for name, (y, s) in curves.items():
        y = _numpy(y).astype(int).reshape(-1)
        s = _numpy(s).astype(np.float64).reshape(-1)
        if len(np.unique(y)) < 2:
            ax.plot([], [], label=f"{name}: undefined (one class)")
            continue
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, lw=2 if name == "all" else 1.3, label=f"{name}: AUROC {roc_auc_score(y, s):.3f}")
    ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.set_title(title, fontsize=11)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def pro_figure(
    curves: Mapping[str, tuple[Any, Any]], max_fpr: float = 0.3, title: str = "sPRO", panel_size: float = 4.5
) -> Figure:
    """(s)PRO curves over the FPR, up to ``min(1, 1.5 max_fpr)``, with the normalised area up to the
    integration limit (``pradot.metrics.area_under_curve``) in the legend and a vertical line there.

    Args:
        curves: ``{name: (fpr (K,), pro (K,))}``, fpr sorted ascending.
    """
    fig = _new_figure(panel_size + 0.6, panel_size)
    ax = fig.add_subplot(1, 1, 1)
    try:
        from .metrics import area_under_curve
    except Exception:  # pragma: no cover - metrics unavailable: plot without areas
        area_under_curve = None
    for name, (fpr, pro) in curves.items():
        x = _numpy(fpr).astype(np.float64).reshape(-1)
        y = _numpy(pro).astype(np.float64).reshape(-1)
        label = str(name)
        if area_under_curve is not None:
            try:
                label += f": AU-{title}@{max_fpr:g} {area_under_curve(x, y, max_fpr):.3f}"
            except ValueError:
                pass
        ax.plot(x, y, lw=1.5, label=label)
    ax.axvline(max_fpr, color="0.3", ls="--", lw=1, label=f"integration limit {max_fpr:g}")
    ax.set_xlim(0, min(1.0, 1.5 * float(max_fpr)))
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel(title)
    ax.set_title(f"{title} curve", fontsize=11)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def _field(obj: Any, name: str):
    return obj[name] if isinstance(obj, Mapping) else getattr(obj, name)


def training_curves_figure(history: Sequence[Any], panel_size: float = 4.0) -> Figure:
    """OT loss and relative prototype change per epoch and stage.

    Args:
        history: ``pradot.model.EpochStats`` list (or dicts with ``epoch``, ``ot_loss`` {stage: float},
            ``change`` {stage: float}).
    Returns:
        Figure with two axes: ``<M, T*>`` per stage (left) and the relative change (right, log scale).
    """
    fig = _new_figure(2 * panel_size + 0.5, panel_size * 0.8)
    ax_l, ax_c = fig.subplots(1, 2)
    epochs = [int(_field(h, "epoch")) for h in history]
    stages = sorted({s for h in history for s in _field(h, "ot_loss")})
    for s in stages:
        ep = [e for e, h in zip(epochs, history) if s in _field(h, "ot_loss")]
        ax_l.plot(
            ep,
            [_field(h, "ot_loss")[s] for h in history if s in _field(h, "ot_loss")],
            marker="o",
            ms=3,
            label=f"stage {s}",
        )
        ch = [(e, _field(h, "change").get(s)) for e, h in zip(epochs, history)]
        ch = [(e, v) for e, v in ch if v is not None and v > 0]
        if ch:
            ax_c.plot(*zip(*ch), marker="o", ms=3, label=f"stage {s}")
    ax_l.set_title("OT loss <M, T*>", fontsize=10)
    ax_c.set_title("relative prototype change", fontsize=10)
    for ax in (ax_l, ax_c):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if stages:
            ax.legend(fontsize=8)
    if any(line.get_ydata().size for line in ax_c.get_lines()):
        ax_c.set_yscale("log")
    if not history:
        ax_l.text(0.5, 0.5, "no epochs", ha="center", va="center", transform=ax_l.transAxes)
    return fig


# ------------------------------------------------------------------------------------------------
# 7. models side by side (ensemble promotion)


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
            label=str(r["model"]),
            alpha=0.85,
            color=("black" if highlight_last and j == len(rows) - 1 else None),
        )
    ax.set_xticks(x, list(metrics), rotation=20, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("value")
    if title:
        ax.set_title(title)
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
            axes[r, 0].set_title(str(titles[r]), fontsize=7)
        for c, (ms, lab, sc) in enumerate(zip(per_model, labels, scores), start=1):
            lo, hi = ranges[c - 1]
            axes[r, c].imshow(img)
            axes[r, c].imshow(
                ms[r], cmap=cmap, alpha=alpha, vmin=lo, vmax=hi if hi > lo else lo + 1e-9, extent=_extent(img.shape[:2])
            )
            axes[r, c].set_title(f"{lab}\n{float(_numpy(sc)[r]):.3f}", fontsize=7)
    for ax in axes.ravel():
        ax.set_axis_off()
    return fig
