"""Foreground masks for the foreground-aware memory (FOCT section 4.1, Fig. 2): where an image's product is,
at the resolution of its patch features. A pluggable source (:func:`mask_source`):

* ``border`` (default, offline, no weights): the boundary prior of salient-object detection. The product
  is photographed on a background that reaches the image border (the sheet under an MVTec object, the
  bench under an MPDD part, the frame around the synthetic tray), so the ring of border patches is a sample
  of the background; a patch is foreground when its feature is far from every border patch: distance to
  the nearest border patch above Otsu's threshold of these distances (and above the spread among the
  border patches themselves, so a texture that fills the frame is all background rather than split at
  random). Same features, no extra model, and it works on query images as well as support images.
* ``none``: every patch is foreground (the OCT / CT / vanilla rows of the paper's Table 3).
* ``sam``: Segment Anything (the paper's choice) for users with SAM weights on disk:
  ``SamForeground(checkpoint="/models/sam_vit_b_01ec64.pth", model_type="vit_b")``, prompted with a box
  over the whole image (the most salient object); needs the ``segment-anything`` package. Nothing is
  downloaded: a missing file or package is a :class:`ForegroundError` before any work starts.

Every source maps ``(features (B, C, h, w), images (B, 3, S, S) in [0, 1] or None)`` to (B, h, w) bool
masks, and describes itself with :meth:`spec` (stored in model files; :func:`mask_source` rebuilds it).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError

__all__ = [
    "FOREGROUNDS",
    "ForegroundError",
    "MaskSource",
    "AllForeground",
    "BorderContrast",
    "SamForeground",
    "mask_source",
    "otsu_threshold",
]

FOREGROUNDS = ("border", "none", "sam")


class ForegroundError(InputError):
    """A mask source cannot be built (unknown name, missing SAM weights or package); the message says how
    to fix it."""


class MaskSource(Protocol):
    name: str
    needs_images: bool

    def masks(self, features: torch.Tensor, images: torch.Tensor | None = None) -> torch.Tensor: ...

    def spec(self) -> dict[str, Any]: ...


class AllForeground:
    """Every patch is foreground (no foreground awareness)."""

    name = "none"
    needs_images = False

    def masks(self, features: torch.Tensor, images: torch.Tensor | None = None) -> torch.Tensor:
        b, _, h, w = features.shape
        return torch.ones(b, h, w, dtype=torch.bool)

    def spec(self) -> dict[str, Any]:
        return {"name": self.name}


def otsu_threshold(values: torch.Tensor, bins: int = 256) -> float:
    """Otsu's threshold of 1-D values: the cut of a ``bins``-bin histogram that maximises the between-class
    variance (``skimage.filters.threshold_otsu``'s definition, used as its test oracle)."""
    v = values.detach().double().flatten()
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return lo
    hist = torch.histc(v, bins=bins, min=lo, max=hi)
    centers = lo + (torch.arange(bins, dtype=torch.float64) + 0.5) * (hi - lo) / bins
    w1 = torch.cumsum(hist, 0)
    w2 = torch.cumsum(hist.flip(0), 0).flip(0)
    m1 = torch.cumsum(hist * centers, 0) / w1.clamp_min(1e-12)
    m2 = (torch.cumsum((hist * centers).flip(0), 0) / w2.flip(0).clamp_min(1e-12)).flip(0)
    between = w1[:-1] * w2[1:] * (m1[:-1] - m2[1:]) ** 2
    return float(centers[int(torch.argmax(between))])


class BorderContrast:
    """Foreground = patches unlike every patch of the image's border ring (see the module docstring)."""

    name = "border"
    needs_images = False

    @staticmethod
    def contrast(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, h, w) -> (distance of every patch to its nearest border patch (B, h, w), the border
        patches' distances to their nearest other border patch (B, R))."""
        b, c, h, w = features.shape
        ring = torch.zeros(h, w, dtype=torch.bool, device=features.device)
        ring[0, :] = ring[-1, :] = ring[:, 0] = ring[:, -1] = True
        x = features.float().permute(0, 2, 3, 1).reshape(b, h * w, c)
        border = x[:, ring.flatten()]
        d = torch.cdist(x, border).min(dim=2).values.reshape(b, h, w)
        dr = torch.cdist(border, border)
        dr.diagonal(dim1=1, dim2=2).fill_(float("inf"))
        return d, dr.min(dim=2).values

    def masks(self, features: torch.Tensor, images: torch.Tensor | None = None) -> torch.Tensor:
        d, spread = self.contrast(features)
        out = torch.zeros_like(d, dtype=torch.bool)
        for i in range(len(d)):
            finite = spread[i][torch.isfinite(spread[i])]
            floor = float(torch.quantile(finite, 0.95)) if len(finite) else 0.0
            out[i] = d[i] > max(otsu_threshold(d[i]), floor)
        return out

    def spec(self) -> dict[str, Any]:
        return {"name": self.name}


class SamForeground:
    """Segment Anything masks (box prompt over the whole image; the mask SAM rates best), downsampled to
    the feature grid (a patch is foreground when at least half of it is).

    Args:
        checkpoint: SAM weights on disk (e.g. ``sam_vit_b_01ec64.pth``); never downloaded.
        model_type: ``vit_b`` | ``vit_l`` | ``vit_h`` (must match the checkpoint).
        device: where SAM runs.
    Raises:
        ForegroundError: no checkpoint given, the file is missing, or ``segment_anything`` is not installed.
    """

    name = "sam"
    needs_images = True
    MODEL_TYPES = ("vit_b", "vit_l", "vit_h")

    def __init__(self, checkpoint: str | Path | None, model_type: str = "vit_b", device: str | torch.device = "cpu"):
        if not checkpoint:
            raise ForegroundError(
                "foreground=sam needs SAM weights on disk: set foct.sam_checkpoint=/path/to/"
                "sam_vit_b_01ec64.pth (they are never downloaded), or use foreground=border "
                "(no weights) or foreground=none"
            )
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise ForegroundError(
                f"SAM weights not found at {path}; give the path of a downloaded checkpoint "
                f"(e.g. sam_vit_b_01ec64.pth) in foct.sam_checkpoint, or use "
                f"foreground=border (no weights)"
            )
        if model_type not in self.MODEL_TYPES:
            raise ForegroundError(
                f"sam_model_type must be one of {list(self.MODEL_TYPES)} (matching the checkpoint), got {model_type!r}"
            )
        try:
            self._sam_module = importlib.import_module("segment_anything")
        except ImportError:
            raise ForegroundError(
                "foreground=sam needs the segment-anything package: pip install "
                "segment-anything (or use foreground=border, which needs nothing)"
            ) from None
        self.checkpoint, self.model_type, self.device = str(path), model_type, torch.device(device)
        self._predictor = None

    def _predictor_(self):
        if self._predictor is None:
            sam = self._sam_module.sam_model_registry[self.model_type](checkpoint=self.checkpoint)
            self._predictor = self._sam_module.SamPredictor(sam.to(self.device).eval())
        return self._predictor

    def image_mask(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> (H, W) bool mask of the most salient object."""
        predictor = self._predictor_()
        predictor.set_image(image, image_format="RGB")
        h, w = image.shape[:2]
        masks, quality, _ = predictor.predict(
            box=np.array([0, 0, w - 1, h - 1], dtype=np.float32), multimask_output=True
        )
        return np.asarray(masks[int(np.argmax(quality))], dtype=bool)

    def masks(self, features: torch.Tensor, images: torch.Tensor | None = None) -> torch.Tensor:
        if images is None:
            raise ValueError("SAM foreground masks need the images, not only their features")
        h, w = features.shape[-2:]
        out = []
        for img in images:
            rgb = (img.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
            full = torch.from_numpy(self.image_mask(rgb)).float()[None, None]
            out.append(F.adaptive_avg_pool2d(full, (h, w))[0, 0] >= 0.5)
        return torch.stack(out)

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "checkpoint": self.checkpoint, "model_type": self.model_type}


def mask_source(
    name: str, *, sam_checkpoint: str | None = None, sam_model_type: str = "vit_b", device: str | torch.device = "cpu"
) -> MaskSource:
    """The mask source called ``name`` (one of :data:`FOREGROUNDS`).

    Raises:
        ForegroundError: unknown name, or SAM without its weights/package.
    """
    if name == "border":
        return BorderContrast()
    if name == "none":
        return AllForeground()
    if name == "sam":
        return SamForeground(sam_checkpoint, sam_model_type, device)
    raise ForegroundError(f"foreground must be one of {list(FOREGROUNDS)}, got {name!r}")
