"""Returned maps and masks: their size, resizing, and base64 encodings (PNG, ``.npy``)."""

from __future__ import annotations

import base64
import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = ["MAP_FORMATS", "encode_mask", "encode_png", "map_size", "resize_map"]

#: formats of the returned anomaly map: ``overlay`` (the heat map blended over the image, with its colour bar and
#: the score; ``png`` is its earlier name), ``heatmap`` (the bare heat map as a PNG, same colours), ``npy`` (raw
#: float32 values)
MAP_FORMATS = ("overlay", "png", "heatmap", "npy")


def encode_png(rgb: np.ndarray) -> str:
    """(H, W, 3) uint8 -> base64 (standard alphabet, no data-URL prefix) of a PNG file."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buf, format="PNG", compress_level=3)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def encode_mask(mask: np.ndarray) -> str:
    """(H, W) bool -> base64 of an 8-bit grayscale PNG, 255 where True."""
    buf = io.BytesIO()
    Image.fromarray(np.where(np.asarray(mask, dtype=bool), 255, 0).astype(np.uint8), mode="L").save(
        buf, format="PNG", compress_level=3
    )
    return base64.b64encode(buf.getvalue()).decode("ascii")


def resize_map(amap, size: tuple[int, int]) -> np.ndarray:
    """A (h, w) anomaly map at ``size`` = (H, W) as float32: bilinear (``align_corners=False``), antialiased
    when shrinking (the maps and masks a served model returns)."""
    h, w = int(size[0]), int(size[1])
    m = torch.as_tensor(amap).float()[None, None]
    if (h, w) != tuple(m.shape[-2:]):
        m = F.interpolate(
            m, size=(h, w), mode="bilinear", align_corners=False, antialias=h < m.shape[-2] or w < m.shape[-1]
        )
    return m[0, 0].cpu().numpy()


def _encode_npy(array: np.ndarray) -> str:
    buf = io.BytesIO()
    np.save(buf, np.asarray(array, dtype=np.float32), allow_pickle=False)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def map_size(h: int, w: int, max_side: int) -> tuple[int, int]:
    """The (height, width) of a returned map: the input's, scaled down (aspect kept) so that its longer side
    is at most ``max_side``."""
    scale = min(1.0, max_side / max(h, w))
    return (max(1, round(h * scale)), max(1, round(w * scale))) if scale < 1.0 else (h, w)
