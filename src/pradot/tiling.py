"""Tiles of a high-resolution image: where they lie, cutting them out, stitching their maps back.

A model whose input is ``T`` pixels square (the backbone's resolution, e.g. 224) sees a defect of 20 pixels in
a 2,000-pixel image as 2 pixels once the image is resized to ``T``. Tiling keeps the resolution instead: the image
is resized to a working size ``S >= T`` (the optional downscale first, ``S`` below the native size), cut into
``T x T`` tiles whose top-left corners are ``stride`` pixels apart (the last tile of a row or column is aligned
with the image's edge, so every pixel is covered), each tile is scored at ``T``, and the tiles' maps are stitched
into one ``S x S`` map. Where tiles overlap, their maps are blended: the stitched value of a pixel is the weighted
mean of the values every covering tile gives it (:func:`stitch_maps`; weights uniform, ``blend="mean"``, or a
separable triangular window peaking at the tile's centre, ``blend="linear"``, which fades the seams out).

Shapes: images (B, 3, S, S); tiles (B, K, 3, T, T) with ``K = len(ys) * len(xs)`` positions in row-major order
(:meth:`TileGrid.positions`); tile maps (B, K, T, T); stitched maps (B, S, S). Everything is PyTorch on the
images' device, with static slicing and padding only (so the same code traces into an ONNX graph).

The idea is anomalib's tiler (Akcay et al., "Anomalib", 2022, section on tiling) and the sliding-window
inference of segmentation networks; the code and the blending rule are this project's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cached_property

import torch
import torch.nn.functional as F

from .errors import InputError

__all__ = ["BLENDS", "TileGrid", "axis_starts", "cut_tiles", "stitch_maps", "tile_window"]

#: how overlapping tiles' maps are blended: plain mean, or a triangular window (seams faded out)
BLENDS = ("mean", "linear")


def axis_starts(size: int, tile: int, stride: int) -> list[int]:
    """The start offsets of the tiles along one axis of ``size`` pixels: ``0, stride, 2 stride, ...`` while a
    tile fits, and ``size - tile`` last (the edge-aligned tile) when the steps do not land on it.

    Raises:
        InputError: ``tile`` not in [1, size], ``stride`` not in [1, tile] (a larger stride leaves pixels that
            no tile covers).
    """
    size, tile, stride = int(size), int(tile), int(stride)
    if tile < 1 or tile > size:
        raise InputError(
            f"tile size {tile} must lie in [1, {size}] (the image side after the downscale): a tile larger than "
            f"the image has nothing to cut; lower tiling.tile_size or raise data.image_size"
        )
    if stride < 1 or stride > tile:
        raise InputError(
            f"tile stride {stride} must lie in [1, tile size {tile}]: a stride <= 0 never advances and a stride "
            f"above the tile size leaves pixels that no tile covers"
        )
    starts = list(range(0, size - tile + 1, stride))
    if starts[-1] != size - tile:
        starts.append(size - tile)
    return starts


@dataclass(frozen=True)
class TileGrid:
    """Where the ``tile x tile`` tiles of a ``size x size`` image lie, and how their maps are blended.

    Attributes:
        size: side S of the (resized) whole image, pixels.
        tile: side T of a tile, pixels (the tile model's ``image_size``).
        stride: pixels between neighbouring tiles' corners (``stride < tile``: overlap).
        blend: one of :data:`BLENDS`.
    Raises:
        InputError: see :func:`axis_starts`; an unknown ``blend``.
    """

    size: int
    tile: int
    stride: int
    blend: str = "mean"

    def __post_init__(self):
        axis_starts(self.size, self.tile, self.stride)
        if self.blend not in BLENDS:
            raise InputError(f"tiling blend must be one of {', '.join(BLENDS)}, got {self.blend!r}")

    @cached_property
    def starts(self) -> list[int]:
        """The tile offsets along either axis (the grid is square)."""
        return axis_starts(self.size, self.tile, self.stride)

    @property
    def positions(self) -> list[tuple[int, int]]:
        """``[(y, x), ...]``: top-left corners of the K tiles, row-major."""
        return [(y, x) for y in self.starts for x in self.starts]

    @property
    def n_tiles(self) -> int:
        """K, the tiles per image."""
        return len(self.starts) ** 2

    def to_dict(self) -> dict:
        return asdict(self)


def tile_window(tile: int, blend: str = "mean", dtype=torch.float32, device=None) -> torch.Tensor:
    """The blending weight of each pixel of a tile: (T, T), all positive.

    ``"mean"``: ones. ``"linear"``: the outer product of a triangle ``w(i) = min(i + 1, T - i) / ceil(T / 2)``
    (1 at the centre, ``1 / ceil(T / 2)`` at the border: never 0, so an edge pixel covered by one tile keeps it).
    """
    if blend == "mean":
        return torch.ones(tile, tile, dtype=dtype, device=device)
    if blend != "linear":
        raise InputError(f"tiling blend must be one of {', '.join(BLENDS)}, got {blend!r}")
    i = torch.arange(tile, dtype=dtype, device=device)
    w = torch.minimum(i + 1, tile - i) / float((tile + 1) // 2)
    return w[:, None] * w[None, :]


def cut_tiles(images: torch.Tensor, grid: TileGrid) -> torch.Tensor:
    """(B, C, S, S) -> (B, K, C, T, T): the tiles of every image, row-major positions.

    Raises:
        InputError: images not (B, C, S, S) at ``grid.size``.
    """
    if images.ndim != 4 or tuple(images.shape[-2:]) != (grid.size, grid.size):
        raise InputError(f"tiles are cut from (B, C, {grid.size}, {grid.size}) images, got {tuple(images.shape)}")
    T = grid.tile
    return torch.stack([images[:, :, y : y + T, x : x + T] for y, x in grid.positions], dim=1)


def stitch_maps(tile_maps: torch.Tensor, grid: TileGrid) -> torch.Tensor:
    """(B, K, T, T) tile maps -> (B, S, S): each pixel the weighted mean of the values its covering tiles give
    it, weights :func:`tile_window` (``grid.blend``): ``out(p) = sum_k w_k(p) m_k(p) / sum_k w_k(p)``.

    Raises:
        InputError: ``tile_maps`` not (B, K, T, T) for this grid.
    """
    T, S = grid.tile, grid.size
    if tile_maps.ndim != 4 or tuple(tile_maps.shape[1:]) != (grid.n_tiles, T, T):
        raise InputError(f"tile maps must be (B, {grid.n_tiles}, {T}, {T}) for this grid, got {tuple(tile_maps.shape)}")
    w = tile_window(T, grid.blend, tile_maps.dtype, tile_maps.device)
    total = tile_maps.new_zeros(tile_maps.shape[0], S, S)
    weight = tile_maps.new_zeros(S, S)
    for k, (y, x) in enumerate(grid.positions):
        pad = (x, S - T - x, y, S - T - y)  # left, right, top, bottom: static, so it traces to ONNX Pad
        total = total + F.pad(tile_maps[:, k] * w, pad)
        weight = weight + F.pad(w, pad)
    return total / weight
