"""The anomaly map as an RGB heat map (over its image): NumPy only, what a model server imports.

No matplotlib on this path: the default colour map (``jet``) is built here from its published segment
data; other colour maps are read from matplotlib when asked for.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..rgb import _numpy, to_rgb_uint8

__all__ = ["DEFAULT_CMAP", "annotate_overlay", "colour_table", "heatmap_rgb", "to_rgb_uint8"]

#: default colour map of anomaly maps (the paper's figures use jet)
DEFAULT_CMAP = "jet"


#: matplotlib's ``jet`` colour map as its segment data: per channel, (x, value) breakpoints of a piecewise-linear
#: function on [0, 1] (matplotlib ``_cm.py``; the colour map of the paper's figures and of the served maps)
_JET = {
    "red": ((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),
    "green": ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),
    "blue": ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)),
}
_LUT_SIZE = 256


def _jet_lut(n: int = _LUT_SIZE) -> np.ndarray:
    """(n, 3) float64 colours of ``jet`` sampled at ``i / (n - 1)``: linear interpolation between the
    breakpoints, in the order of operations matplotlib's ``LinearSegmentedColormap`` uses (so the uint8
    colours are bit-identical to matplotlib's)."""
    at = (n - 1) * np.linspace(0.0, 1.0, n)
    out = np.empty((n, 3))
    for k, channel in enumerate(("red", "green", "blue")):
        xs, ys = np.asarray(_JET[channel]).T
        xs = xs * (n - 1)
        right = np.searchsorted(xs, at[1:-1])  # breakpoint at or after each inner sample
        frac = (at[1:-1] - xs[right - 1]) / (xs[right] - xs[right - 1])
        out[1:-1, k] = frac * (ys[right] - ys[right - 1]) + ys[right - 1]
        out[0, k], out[-1, k] = ys[0], ys[-1]
    return np.clip(out, 0.0, 1.0)


def colour_table(cmap: str = DEFAULT_CMAP) -> np.ndarray:
    """(N, 3) float RGB in [0, 1], the colours of a colour map in order: ``jet`` without matplotlib (the
    server's default), any other matplotlib colour-map name through matplotlib (imported then).

    Raises:
        ValueError: ``cmap`` is not a matplotlib colour map.
    """
    if cmap == "jet":
        return _jet_lut()
    from matplotlib import colormaps

    try:
        colours = colormaps[cmap]
    except KeyError:
        raise ValueError(f"unknown colour map {cmap!r}; use 'jet' or a matplotlib colour-map name") from None
    return colours(np.arange(colours.N))[:, :3]


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
    lut = colour_table(cmap)  # the map's N colours, as matplotlib draws them
    n_colours = len(lut)
    if span > 0:  # index = floor(clip((a - lo) / span, 0, 1) * N), the top value on the last colour
        t = np.where(np.isfinite(a), a, np.float32(lo))
        t -= np.float32(lo)
        t *= np.float32(n_colours / span)
        np.clip(t, 0, n_colours - 1, out=t)
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


#: smallest image side (pixels) that gets a colour bar and a score label (below it they would hide the image)
MIN_ANNOTATED_SIDE = 64


def annotate_overlay(
    rgb: np.ndarray,
    vmin: float,
    vmax: float,
    threshold: float | None = None,
    label: str | None = None,
    cmap: str = DEFAULT_CMAP,
) -> np.ndarray:
    """Draw the colour scale (and a label such as the score and decision) onto a heat map, in place of its
    right and top edges, so the picture keeps its size (one pixel of the picture per pixel of the image).

    Args:
        rgb: (H, W, 3) uint8 heat map or overlay (:func:`heatmap_rgb`).
        vmin, vmax: the values at the bottom and the top of the colour bar (those :func:`heatmap_rgb` used).
        threshold: drawn as a white tick across the bar where it falls (the decision threshold), if given.
        label: text drawn at the top left on a dark band (PIL's built-in font), if given.
        cmap: the colour map :func:`heatmap_rgb` used.
    Returns:
        (H, W, 3) uint8, a copy; ``rgb`` itself when either side is under :data:`MIN_ANNOTATED_SIDE`.
    """
    from PIL import Image, ImageDraw

    h, w = rgb.shape[:2]
    if min(h, w) < MIN_ANNOTATED_SIDE:
        return rgb
    out = np.array(rgb, dtype=np.uint8, copy=True)
    bar_w = max(4, w // 32)
    top, bottom = (h // 10 if label else 2), h - 2
    lut = (np.clip(colour_table(cmap), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    rows = bottom - top
    index = ((1.0 - (np.arange(rows) + 0.5) / rows) * (len(lut) - 1) + 0.5).astype(int)  # vmax at the top
    out[top:bottom, w - bar_w - 2 : w - 2] = lut[index][:, None, :]
    out[top:bottom, w - bar_w - 3] = 0  # a black edge, visible over any colour
    if threshold is not None and vmax > vmin:
        frac = float(np.clip((threshold - vmin) / (vmax - vmin), 0.0, 1.0))
        y = int(round(bottom - frac * (rows - 1))) - 1
        out[max(top, y - 1) : min(bottom, y + 1), w - bar_w - 5 : w - 2] = 255
    if label:
        img = Image.fromarray(out)
        draw = ImageDraw.Draw(img)
        x0, y0, x1, y1 = draw.textbbox((3, 2), label)
        draw.rectangle((0, 0, min(w - bar_w - 4, x1 + 3), y1 + 2), fill=(0, 0, 0))
        draw.text((3, 2), label, fill=(255, 255, 255))
        out = np.asarray(img)
    return out
