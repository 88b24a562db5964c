"""The paper's figures: embedding-to-prototype assignment (Fig. 4), prototypes as their nearest training
patches and restored test images (Fig. 5), UMAP of embeddings and prototypes under cost (1) (Fig. 6).

The arrays they draw come from :mod:`pradot.explain`; each function returns a matplotlib ``Figure`` built
without pyplot. Grid coordinates ``(row, col)`` in [0, 1] are drawn at the pixel centre of their cell.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from matplotlib import patheffects
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..explain import _coords_to_pixels
from ..names import figure_text
from ._common import _as_list, _extent, _map_range, _new_figure, _off
from .heatmap import DEFAULT_CMAP, _numpy, to_rgb_uint8

__all__ = ["assignment_figure", "position_colors", "prototype_figure", "restoration_figure", "umap_figure"]


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
    from ..scoring import assignment_scores

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
        figure_text(title)
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
            axes[r, 0].set_ylabel(figure_text(titles[r]), fontsize=8)
    if mps is not None:
        fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes[:, 2].tolist(), shrink=0.85, label="anomaly score")
    return fig


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
    from ..cost import fused_cost

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
        figure_text(title)
        if title is not None
        else f"UMAP of test embeddings and prototypes, cost (1), alpha={alpha:g}",
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
