"""Image I/O (``read_image``) and the torch ``ImageDataset``.

``read_image`` always returns an (H, W, 3) uint8 RGB array:

* grayscale ``L`` / ``1`` -> the gray value repeated over R, G, B;
* 16/32-bit grayscale (``I;16*``, ``I``) -> scaled from the full 16-bit range: ``round(v * 255 / 65535)``
  (values outside [0, 65535] are clipped first), so a 16-bit image is never stretched by its own max;
* float ``F`` -> values taken as [0, 1] and scaled by 255 (clipped);
* images with alpha (``RGBA``, ``LA``, ``PA``, palettes with transparency) -> composited on black:
  ``rgb * alpha / 255``;
* palette ``P`` and other modes (``CMYK``, ``YCbCr``, ...) -> PIL's RGB conversion.

The image is read upright: its EXIF orientation tag, if any, is applied first (``pradot.data.base.upright``;
masks and the serving decoder do the same), so a phone photo is scored as a person sees it. With ``size``
the image is resized with PIL's bilinear filter, which antialiases when downsampling.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import InputError
from .base import DatasetError, Sample, normalise_size, upright

#: how ``read_image`` reads pixels; part of the feature cache's key (change it when the pixels change)
READER = "rgb-upright-1"


def to_rgb_array(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8)
    if mode in ("L", "1"):
        gray = np.asarray(img.convert("L"), dtype=np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode.startswith("I"):  # I;16, I;16B, I;16L, I;16N, I (32-bit)
        arr = np.asarray(img)
        if arr.ndim != 2:  # unusual multi-band integer modes
            arr = np.asarray(img.convert("I"))
        arr = np.clip(arr.astype(np.float64), 0, 65535)
        gray = np.rint(arr * (255.0 / 65535.0)).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "F":
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0)
        gray = np.rint(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = np.asarray(img.convert("RGBA"), dtype=np.uint16)
        rgb = (rgba[..., :3] * rgba[..., 3:4] + 127) // 255  # composite on black, rounded
        return rgb.astype(np.uint8)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def read_image(path: str | Path, size: int | Sequence[int] | None = None) -> np.ndarray:
    """Read ``path`` as an (H, W, 3) uint8 RGB array; ``size`` (int or (H, W)) resizes bilinearly.

    Raises DatasetError naming the file when it is missing or cannot be decoded.
    """
    path = Path(path)
    target = normalise_size(size)
    try:
        with Image.open(path) as img:
            img.load()
            rgb = to_rgb_array(upright(img))
    except FileNotFoundError as exc:
        raise DatasetError(f"image file not found: {path}") from exc
    except DatasetError:
        raise
    except Exception as exc:  # UnidentifiedImageError, truncated data (OSError), SyntaxError, ...
        raise DatasetError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from exc
    if target is not None and rgb.shape[:2] != target:
        rgb = np.asarray(Image.fromarray(rgb).resize((target[1], target[0]), Image.Resampling.BILINEAR), dtype=np.uint8)
    rgb = np.ascontiguousarray(rgb)
    return rgb if rgb.flags.writeable else rgb.copy()


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)


class ImageDataset(torch.utils.data.Dataset):
    """Samples (or image paths) -> ``{"image": float32 (3, S, S) in [0, 1], "label": int, "index": int}``.

    ``augment`` (e.g. ``build_train_augmentation("light")``) is an albumentations transform (or any
    callable with the same ``augment(image=uint8 HWC)["image"]`` interface) applied to the resized
    uint8 image before conversion. Images are RGB, not ImageNet-normalised (the backbone does that).
    """

    def __init__(
        self,
        samples: Sequence[Sample | str | Path],
        image_size: int | Sequence[int],
        augment: Callable[..., dict[str, Any]] | None = None,
    ):
        self.samples = list(samples)
        self.image_size = normalise_size(image_size)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.samples)

    def path(self, index: int) -> Path:
        item = self.samples[index]
        return item.image_path if isinstance(item, Sample) else Path(item)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.samples[index]
        image = read_image(self.path(index), self.image_size)
        if self.augment is not None:
            image = self.augment(image=image)["image"]
            if image.shape[:2] != self.image_size:
                raise InputError(
                    f"augmentation changed the image size to {image.shape[:2]}, expected {self.image_size}"
                )
        label = item.label if isinstance(item, Sample) else 0
        return {"image": to_tensor(image), "label": int(label), "index": int(index)}
