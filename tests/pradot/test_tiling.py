"""Tiling (pradot.tiling, pradot.tiled): the grid, cutting, stitching against a slow per-pixel formula, and a tiled
model's maps against its tile models scoring the tiles directly. The contract checks run in test_contract.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pradot.backbone import load_backbone
from pradot.errors import InputError
from pradot.memory_bank import MemoryBankConfig, MemoryBankModel
from pradot.tiled import TiledConfig, TiledModel
from pradot.tiling import TileGrid, axis_starts, cut_tiles, stitch_maps


@pytest.mark.parametrize(
    "size, tile, stride, want",
    [(10, 4, 3, [0, 3, 6]), (10, 4, 4, [0, 4, 6]), (8, 8, 3, [0]), (9, 4, 1, [0, 1, 2, 3, 4, 5])],
)
def test_axis_starts_cover_the_axis_with_the_last_tile_on_the_edge(size, tile, stride, want):
    assert axis_starts(size, tile, stride) == want


@pytest.mark.parametrize(
    "size, tile, stride, match",
    [(8, 9, 4, "larger than the image"), (8, 4, 0, "stride"), (8, 4, -2, "stride"), (8, 4, 5, "no tile covers")],
)
def test_bad_geometry_is_refused_by_name(size, tile, stride, match):
    with pytest.raises(InputError, match=match):
        TileGrid(size, tile, stride)


def test_unknown_blend_and_banks_are_refused():
    with pytest.raises(InputError, match="blend"):
        TileGrid(8, 4, 2, "gaussian")
    with pytest.raises(InputError, match="banks"):
        TiledConfig(8, 4, 2, banks="per_tile")


def test_cut_tiles_are_the_image_windows():
    grid = TileGrid(7, 3, 2)
    images = torch.rand(2, 3, 7, 7)
    tiles = cut_tiles(images, grid)
    assert tiles.shape == (2, 9, 3, 3, 3)
    for k, (y, x) in enumerate(grid.positions):
        assert torch.equal(tiles[:, k], images[:, :, y : y + 3, x : x + 3])


def _stitch_slow(tile_maps: np.ndarray, grid: TileGrid) -> np.ndarray:
    """Per pixel, directly: the weighted mean of the covering tiles' values, the triangle written out."""
    T = grid.tile
    half = (T + 1) // 2

    def w(i):  # weight of tile pixel i along an axis
        return 1.0 if grid.blend == "mean" else min(i + 1, T - i) / half

    B = tile_maps.shape[0]
    out = np.zeros((B, grid.size, grid.size))
    for py in range(grid.size):
        for px in range(grid.size):
            num, den = np.zeros(B), 0.0
            for k, (y, x) in enumerate(grid.positions):
                if y <= py < y + T and x <= px < x + T:
                    wk = w(py - y) * w(px - x)
                    num += wk * tile_maps[:, k, py - y, px - x]
                    den += wk
            out[:, py, px] = num / den
    return out


@pytest.mark.parametrize("blend", ["mean", "linear"])
@pytest.mark.parametrize("size, tile, stride", [(11, 5, 3), (12, 4, 4), (9, 6, 2)])
def test_stitch_maps_equals_the_per_pixel_weighted_mean(size, tile, stride, blend):
    grid = TileGrid(size, tile, stride, blend)
    maps = torch.rand(2, grid.n_tiles, tile, tile, generator=torch.Generator().manual_seed(size), dtype=torch.float64)
    np.testing.assert_allclose(stitch_maps(maps, grid).numpy(), _stitch_slow(maps.numpy(), grid), rtol=1e-12)


def test_stitching_the_cut_tiles_of_a_map_gives_it_back():
    grid = TileGrid(13, 5, 3, "linear")
    m = torch.rand(2, 1, 13, 13, dtype=torch.float64)
    np.testing.assert_allclose(stitch_maps(cut_tiles(m, grid)[:, :, 0], grid).numpy(), m[:, 0].numpy(), rtol=1e-12)
    with pytest.raises(InputError, match="tile maps"):
        stitch_maps(torch.zeros(1, grid.n_tiles - 1, 5, 5), grid)


@pytest.mark.parametrize("banks", ["shared", "per_position"])
def test_tiled_model_maps_are_its_tile_models_maps_stitched(banks):
    """Memory banks (exact nearest neighbours) on 16 px tiles of 32 px images: the tiled model's map is the stitch
    of each tile model scoring its tile alone; per position, model k saw only tile k of the training images."""
    backbone = load_backbone("tiny_random", (1, 2))
    tile = MemoryBankModel(MemoryBankConfig(backbone="tiny_random", stages=(1, 2), image_size=16), backbone=backbone)
    grid = TileGrid(32, 16, 8)
    gen = torch.Generator().manual_seed(0)
    train, test = torch.rand(3, 3, 32, 32, generator=gen), torch.rand(2, 3, 32, 32, generator=gen)
    model = TiledModel.build(tile, grid, banks).fit(train, progress=False).eval()
    assert len(model.models) == (1 if banks == "shared" else 9)
    models = [model.models[0]] * 9 if banks == "shared" else list(model.models)
    tiles = cut_tiles(test, grid)
    direct = torch.stack([m.score(tiles[:, k])[0] for k, m in enumerate(models)], 1)
    maps, scores = model.score(test)
    torch.testing.assert_close(maps, stitch_maps(direct, grid))
    torch.testing.assert_close(scores, maps.amax(dim=(1, 2)))
    if banks == "per_position":  # tile 0 of a training image is in bank 0 (score ~0) but not in bank 8
        at0 = cut_tiles(train, grid)[:, 0]
        assert models[0].score(at0)[1].max() < 1e-4 < models[8].score(at0)[1].min()


def test_tile_models_must_match_the_grid():
    backbone = load_backbone("tiny_random", (1, 2))
    tile = MemoryBankModel(MemoryBankConfig(backbone="tiny_random", stages=(1, 2), image_size=24), backbone=backbone)
    with pytest.raises(InputError, match="16 px tiles"):
        TiledModel(TiledConfig(32, 16, 8, banks="shared"), [tile])
    with pytest.raises(InputError, match="needs 4 tile models"):
        TiledModel(TiledConfig(32, 24, 8), [tile])
