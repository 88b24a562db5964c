"""pradot.maps: each map resize convention against an independent reference (scipy's zoom, PIL's resize, the
nearest-neighbour index formula). Smoothing is checked against scipy in test_postprocess.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from pradot.errors import InputError
from pradot.maps import CONVENTIONS, maps_at, resize_maps


def _maps(b=2, h=7, w=5, seed=0):
    return torch.rand(b, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("size", [(13, 11), (21, 8)])
def test_align_corners_is_scipy_zoom_on_the_corner_grid(size):
    maps = _maps()
    got = resize_maps(maps, size, "align_corners").numpy()
    for b in range(len(maps)):  # grid_mode=False: the corner samples map onto the corner pixels
        zoom = (size[0] / maps.shape[1], size[1] / maps.shape[2])  # the output shape; the mapping is (n-1)/(N-1)
        ref = ndimage.zoom(maps[b].double().numpy(), zoom, order=1, grid_mode=False, mode="nearest")
        assert ref.shape == size
        np.testing.assert_allclose(got[b], ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("convention", ["half_pixel", "half_pixel_shrink"])
def test_half_pixel_upsampling_is_scipy_zoom_on_pixel_centres(convention):
    maps = _maps()
    size = (14, 15)
    got = resize_maps(maps, size, convention).numpy()
    for b in range(len(maps)):  # grid_mode=True: pixel centres, edges clamped
        zoom = (size[0] / maps.shape[1], size[1] / maps.shape[2])
        ref = ndimage.zoom(maps[b].double().numpy(), zoom, order=1, grid_mode=True, mode="nearest")
        np.testing.assert_allclose(got[b], ref, rtol=0, atol=1e-5)


def test_half_pixel_shrink_is_pil_bilinear_when_shrinking():
    maps = _maps(h=40, w=36, seed=3)
    got = resize_maps(maps, (13, 9), "half_pixel_shrink").numpy()
    for b in range(len(maps)):  # PIL widens its triangle filter by the scale: an antialiased shrink
        ref = np.asarray(Image.fromarray(maps[b].numpy(), mode="F").resize((9, 13), Image.BILINEAR))
        np.testing.assert_allclose(got[b], ref, rtol=0, atol=1e-5)
    plain = resize_maps(maps, (13, 9), "half_pixel").numpy()
    assert np.abs(plain - got).max() > 1e-3  # without antialiasing a shrink samples, it does not average


def test_nearest_is_the_floor_index_formula():
    maps = _maps(h=6, w=4)
    got = resize_maps(maps, (9, 10), "nearest").numpy()
    rows = np.floor(np.arange(9) * 6 / 9).astype(int)
    cols = np.floor(np.arange(10) * 4 / 10).astype(int)
    np.testing.assert_array_equal(got, maps.numpy()[:, rows][:, :, cols])


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_same_size_2d_maps_and_errors(convention):
    maps = _maps()
    torch.testing.assert_close(resize_maps(maps, (7, 5), convention), maps, rtol=0, atol=0)
    torch.testing.assert_close(resize_maps(maps[0], 12, convention), resize_maps(maps, 12, convention)[0])
    with pytest.raises(InputError, match="maps must be"):
        resize_maps(torch.zeros(1, 1, 4, 4), 8, convention)
    with pytest.raises(InputError, match="unknown map resize convention 'bicubic'"):
        resize_maps(maps, 8, "bicubic")  # type: ignore[arg-type]


def test_maps_at_resizes_then_smooths():
    maps = _maps(h=4, w=4)
    got = maps_at(maps, 16, "align_corners", sigma=2.0).numpy()
    up = resize_maps(maps, 16, "align_corners").double().numpy()
    for b in range(len(maps)):
        ref = ndimage.gaussian_filter(up[b], 2.0, mode="reflect", truncate=4.0)
        np.testing.assert_allclose(got[b], ref, rtol=0, atol=1e-5)
