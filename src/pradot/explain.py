"""Computations behind the paper's explanation figures (no drawing): each prototype as its nearest
training patch and test images restored from their assigned prototypes (paper Fig. 5), which embeddings are
abnormal under a ground-truth mask (Fig. 6), and the patch geometry of a feature grid they share.

A feature grid ``(H, W)`` splits an image into non-overlapping patches with floor-rounded boundaries
``round(i * S / H)`` (:func:`block_edges`), so sizes that are not multiples of the grid work; every patch is
stored at the size of the largest block (nearest-neighbour resized), which is exact when the grid divides
the image size. Grid coordinates are the cost's ``(row, col)`` in [0, 1] (``pradot.cost.grid_coordinates``).
The figures that draw these are in :mod:`pradot.viz.paper`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .rgb import _numpy, to_rgb_uint8

__all__ = ["abnormal_embeddings", "block_edges", "prototype_patches", "restore_image"]


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


def _mask2d(mask: Any) -> np.ndarray:
    m = _numpy(mask)
    if m.ndim == 3:  # (C, H, W) ground-truth channels
        m = m.any(axis=0)
    if m.ndim != 2:
        raise ValueError(f"masks must be (H, W) or (C, H, W), got {m.shape}")
    return m.astype(bool)


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
