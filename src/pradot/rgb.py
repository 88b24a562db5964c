"""Images and maps as NumPy arrays: any tensor or array to NumPy, any image layout to ``(H, W, 3)`` uint8.

Below both the drawing (:mod:`pradot.viz`) and the computations it draws (:mod:`pradot.explain`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["to_rgb_uint8"]


def _numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


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
