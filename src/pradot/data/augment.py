"""Training augmentation (optional; the paper trains without any).

``build_train_augmentation(None | "none")`` returns None. ``"light"`` is a small geometric and
photometric jitter that keeps objects where they are to within a few pixels, so that the spatial
term of the cost (alpha > 0) still sees the scene's layout.
"""

from __future__ import annotations

from ..errors import InputError

AUGMENTATIONS: tuple[str, ...] = ("none", "light")


def build_train_augmentation(name: str | None = None, seed: int | None = None):
    """An albumentations ``Compose`` for uint8 HWC images, or None for ``None`` / ``"none"``.

    ``seed`` makes the random sequence reproducible (albumentations >= 2 keeps its own RNG).
    """
    key = "none" if name is None else str(name).strip().lower()
    if key in ("none", "", "null", "false"):
        return None
    if key not in AUGMENTATIONS:
        raise InputError(f"unknown augmentation {name!r}; expected one of {AUGMENTATIONS} or None")
    import albumentations as A
    import cv2

    transforms = [
        A.Affine(
            scale=(0.97, 1.03),
            translate_percent=(-0.02, 0.02),
            rotate=(-3.0, 3.0),
            interpolation=cv2.INTER_LINEAR,
            border_mode=cv2.BORDER_REFLECT_101,
            p=0.5,
        ),
        A.ColorJitter(brightness=(0.9, 1.1), contrast=(0.9, 1.1), saturation=(0.9, 1.1), hue=(-0.02, 0.02), p=0.5),
    ]
    return A.Compose(transforms, seed=seed)
