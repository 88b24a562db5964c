"""Synthetic ("pseudo") anomalies made from normal images, for a sweep objective without test labels.

A hyper-parameter sweep must not look at the test split's labels. Instead each trial is scored on the
validation normals plus anomalies synthesised from them (``val_auroc``): a model that ranks every
synthetic anomaly above the normals it came from separates the normal appearance *and layout* of the
scene from local corruptions of both.

Kinds (every edit stays inside the returned mask; pixels outside it are left untouched):

========== ============ ===============================================================================
kind        style        what
========== ============ ===============================================================================
cutpaste    structural   a patch of *another* image (flipped / rotated / colour-jittered with
                         albumentations) pasted at a random place (CutPaste, Li et al. 2021)
noise       structural   an elliptical blob of strong Gaussian noise (albumentations ``GaussNoise``)
blotch      structural   an elliptical stain of a random colour (contamination, a missing coating)
shuffle     logical      a square region cut into 2x2 or 3x3 tiles put back in another order
moved_patch logical      two regions of the image swapped (a part where another should be)
========== ============ ===============================================================================

Difficulty is graded so that the validation image AUROC does not saturate (issue 25: with large, strong
edits every candidate scored 1.000 and only the localisation separated them): the side of an edited region is
drawn **log-uniformly** in ``patch_fraction`` x the image side (default 0.02-0.3: from a few pixels at the
model's input size to a third of the image), and each edit is applied at a **contrast** drawn uniformly in
``contrast`` (default 0.15-1): the output is ``source + c * (edit - source)`` inside the mask, from a faint
trace to the full edit. The region is chosen on the full-strength edit (``min_change``), then faded.

Everything is deterministic per ``seed``: anomaly ``j`` of image ``i`` draws from
``numpy.random.default_rng([seed, i, j])`` (albumentations seeded from it; its contrast from
``default_rng([seed, i, j, 1])``), so it does not depend on the
other images (except for the donor of a cut-paste, drawn among them) or on the order of generation.
Kinds are assigned round-robin, so every kind appears once there are at least ``len(kinds)``
anomalies. A region is re-drawn (up to ``attempts`` times) when the edit barely changes the image there
(e.g. shuffling tiles of a uniform background), and the most visible draw is kept.

```python
from pradot.data.pseudo_anomalies import make_pseudo_anomalies, ArrayImageDataset
normals = [read_image(s.image_path, 224) for s in ds.samples("validation")]
pa = make_pseudo_anomalies(normals, seed=0)     # pa.images (N,H,W,3) uint8, pa.masks (N,H,W) bool, pa.kinds
features = extract_features(backbone, ArrayImageDataset(pa.images))
```
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import InputError

__all__ = [
    "KINDS",
    "KIND_STYLE",
    "PSEUDO_VERSION",
    "PseudoAnomalies",
    "make_pseudo_anomalies",
    "assign_kinds",
    "pseudo_identity",
    "ArrayImageDataset",
    "DEFAULT_PATCH_FRACTION",
    "DEFAULT_CONTRAST",
]

#: the kinds of synthetic anomalies, in their round-robin order
KINDS: tuple[str, ...] = ("cutpaste", "noise", "blotch", "shuffle", "moved_patch")
KIND_STYLE: dict[str, str] = {
    "cutpaste": "structural",
    "noise": "structural",
    "blotch": "structural",
    "shuffle": "logical",
    "moved_patch": "logical",
}
#: bump when the generator changes, so cached features of old pseudo-anomalies are not reused
PSEUDO_VERSION = 2
#: side of an edited region as a fraction of the image side (min, max), drawn log-uniformly
DEFAULT_PATCH_FRACTION: tuple[float, float] = (0.02, 0.3)
#: strength of an edit (min, max), drawn uniformly: 1 = the full edit, 0.15 = a faint trace of it
DEFAULT_CONTRAST: tuple[float, float] = (0.15, 1.0)


@dataclass
class PseudoAnomalies:
    """Synthetic anomalies: ``images`` (N, H, W, 3) uint8, ``masks`` (N, H, W) bool (True where the
    image was edited), ``kinds`` (N,) kind names, ``sources`` (N,) index of the normal image each was
    made from, ``donors`` (N,) index of the image a pasted patch came from (-1 if none), ``contrasts`` (N,)
    the strength each edit was applied at (1 = the full edit)."""

    images: np.ndarray
    masks: np.ndarray
    kinds: list[str]
    sources: np.ndarray
    donors: np.ndarray
    seed: int
    contrasts: np.ndarray

    def __len__(self) -> int:
        return len(self.kinds)

    def styles(self) -> list[str]:
        return [KIND_STYLE[k] for k in self.kinds]


def pseudo_identity(
    kinds: Sequence[str] = KINDS,
    per_image: int = 1,
    seed: int = 0,
    patch_fraction: tuple[float, float] = DEFAULT_PATCH_FRACTION,
    min_change: float = 0.06,
    contrast: tuple[float, float] = DEFAULT_CONTRAST,
) -> dict:
    """What the generated images depend on besides the normal images (for feature-cache keys)."""
    return {
        "kinds": list(kinds),
        "per_image": int(per_image),
        "seed": int(seed),
        "patch_fraction": [float(x) for x in patch_fraction],
        "contrast": [float(x) for x in contrast],
        "min_change": float(min_change),
        "version": PSEUDO_VERSION,
    }


def assign_kinds(n_images: int, kinds: Sequence[str] = KINDS, per_image: int = 1) -> list[tuple[int, int, str]]:
    """(image index, anomaly index, kind) of every anomaly :func:`make_pseudo_anomalies` makes, in order
    (known without making them: labels and kinds of a cached evaluation set)."""
    kinds = list(kinds)
    return [
        (i, j, kinds[(i * int(per_image) + j) % len(kinds)])
        for i in range(int(n_images))
        for j in range(int(per_image))
    ]


# ------------------------------------------------------------------------------------- regions
def _box(rng: np.random.Generator, H: int, W: int, frac: tuple[float, float], square: bool = False):
    """A random box (y, x, h, w) with sides of ``frac`` x the image side (log-uniform), at least 4 px."""
    h = int(round(_log_uniform(rng, frac) * H))
    w = h if square else int(round(_log_uniform(rng, frac) * W))
    h, w = max(4, min(h, H - 1)), max(4, min(w, W - 1))
    if square:
        h = w = min(h, w)
    y = int(rng.integers(0, H - h + 1))
    x = int(rng.integers(0, W - w + 1))
    return y, x, h, w


def _log_uniform(rng: np.random.Generator, frac: tuple[float, float]) -> float:
    """A fraction drawn log-uniformly in [lo, hi]: small regions as likely per octave as large ones."""
    lo, hi = float(frac[0]), float(frac[1])
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _ellipse(rng: np.random.Generator, H: int, W: int, frac: tuple[float, float]) -> np.ndarray:
    """A boolean mask of a random, rotated ellipse inside a random box."""
    y, x, h, w = _box(rng, H, W, frac)
    yy, xx = np.mgrid[:H, :W].astype(np.float64)
    cy, cx = y + (h - 1) / 2.0, x + (w - 1) / 2.0
    theta = rng.uniform(0, np.pi)
    dy, dx = yy - cy, xx - cx
    u = dx * np.cos(theta) + dy * np.sin(theta)
    v = -dx * np.sin(theta) + dy * np.cos(theta)
    a, b = max(w / 2.0, 2.0), max(h / 2.0, 2.0)
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


def _boxes_overlap(a, b) -> bool:
    ya, xa, ha, wa = a
    yb, xb, hb, wb = b
    return not (ya + ha <= yb or yb + hb <= ya or xa + wa <= xb or xb + wb <= xa)


def _seed(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**31 - 1))


# --------------------------------------------------------------------------------------- kinds
def _cutpaste(img, donor, rng, frac):
    import albumentations as A

    H, W = img.shape[:2]
    y, x, h, w = _box(rng, H, W, frac, square=True)  # square: RandomRotate90 keeps the shape
    patch = donor[y : y + h, x : x + w].copy()
    aug = A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            A.RandomRotate90(p=1.0),
            A.ColorJitter(brightness=(0.7, 1.3), contrast=(0.7, 1.3), saturation=(0.6, 1.4), hue=(-0.1, 0.1), p=1.0),
        ],
        seed=_seed(rng),
    )
    patch = aug(image=patch)["image"]
    # paste somewhere else (away from where the patch was cut when possible)
    for _ in range(10):
        ty, tx = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
        if not _boxes_overlap((ty, tx, h, w), (y, x, h, w)):
            break
    out = img.copy()
    out[ty : ty + h, tx : tx + w] = patch
    mask = np.zeros((H, W), bool)
    mask[ty : ty + h, tx : tx + w] = True
    return out, mask


def _noise(img, donor, rng, frac):
    import albumentations as A

    H, W = img.shape[:2]
    mask = _ellipse(rng, H, W, frac)
    aug = A.Compose(
        [A.GaussNoise(std_range=(0.25, 0.5), mean_range=(0.0, 0.0), per_channel=True, p=1.0)], seed=_seed(rng)
    )
    noisy = aug(image=img.copy())["image"]
    out = img.copy()
    out[mask] = noisy[mask]
    return out, mask


def _blotch(img, donor, rng, frac):
    H, W = img.shape[:2]
    mask = _ellipse(rng, H, W, frac)
    colour = rng.integers(0, 256, size=3).astype(np.float64)
    opacity = rng.uniform(0.7, 1.0)
    out = img.copy()
    blended = (1.0 - opacity) * img[mask].astype(np.float64) + opacity * colour
    out[mask] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return out, mask


def _shuffle(img, donor, rng, frac):
    H, W = img.shape[:2]
    g = int(rng.integers(2, 4))  # 2x2 or 3x3 tiles
    y, x, h, w = _box(rng, H, W, (frac[0] * 1.3, min(0.6, frac[1] * 1.6)), square=True)
    t = max(2, h // g)
    h = w = t * g
    y, x = min(y, H - h), min(x, W - w)
    tiles = [img[y + r * t : y + (r + 1) * t, x + c * t : x + (c + 1) * t].copy() for r in range(g) for c in range(g)]
    n = len(tiles)
    perm = rng.permutation(n)
    while np.any(perm == np.arange(n)):  # a derangement: every tile moves
        perm = rng.permutation(n)
    out = img.copy()
    for k, src in enumerate(perm):
        r, c = divmod(k, g)
        out[y + r * t : y + (r + 1) * t, x + c * t : x + (c + 1) * t] = tiles[src]
    mask = np.zeros((H, W), bool)
    mask[y : y + h, x : x + w] = True
    return out, mask


def _moved_patch(img, donor, rng, frac):
    H, W = img.shape[:2]
    a = _box(rng, H, W, frac)
    _, _, h, w = a
    b = a
    for _ in range(20):
        b = (int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1)), h, w)
        if not _boxes_overlap(a, b):
            break
    out = img.copy()
    (ya, xa, _, _), (yb, xb, _, _) = a, b
    pa, pb = img[ya : ya + h, xa : xa + w].copy(), img[yb : yb + h, xb : xb + w].copy()
    out[yb : yb + h, xb : xb + w] = pa
    out[ya : ya + h, xa : xa + w] = pb  # when the boxes overlap, the second write wins inside the union
    mask = np.zeros((H, W), bool)
    mask[ya : ya + h, xa : xa + w] = True
    mask[yb : yb + h, xb : xb + w] = True
    return out, mask


_MAKERS: dict[str, Callable] = {
    "cutpaste": _cutpaste,
    "noise": _noise,
    "blotch": _blotch,
    "shuffle": _shuffle,
    "moved_patch": _moved_patch,
}


def _fade(source: np.ndarray, edited: np.ndarray, c: float) -> np.ndarray:
    """``source + c * (edited - source)`` rounded to uint8: the edit at strength ``c`` (1: unchanged)."""
    if c >= 1.0:
        return edited
    s = source.astype(np.float64)
    return np.clip(np.rint(s + c * (edited.astype(np.float64) - s)), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------- public
def make_pseudo_anomalies(
    images: Sequence[np.ndarray] | np.ndarray,
    *,
    kinds: Sequence[str] = KINDS,
    per_image: int = 1,
    seed: int = 0,
    patch_fraction: tuple[float, float] = DEFAULT_PATCH_FRACTION,
    min_change: float = 0.06,
    attempts: int = 8,
    contrast: tuple[float, float] = DEFAULT_CONTRAST,
) -> PseudoAnomalies:
    """Synthetic anomalies from normal images.

    Args:
        images: normal images, (H, W, 3) uint8 each, all of one size.
        kinds: which kinds to make (see the module doc), assigned round-robin.
        per_image: anomalies made from every image (N = per_image x len(images)).
        seed: everything is deterministic per seed.
        patch_fraction: side of an edited region as a fraction of the image side (min, max), drawn
            log-uniformly; a side is at least 4 px.
        min_change: a region is re-drawn when the mean absolute change of the full-strength edit inside it
            is below this (fraction of the 0-255 range); the most visible of ``attempts`` draws is kept.
        attempts: region draws per anomaly at most.
        contrast: (min, max) in (0, 1]: each edit is applied at a strength ``c`` drawn uniformly in it,
            ``source + c * (edit - source)`` rounded to uint8 (``(1, 1)``: full-strength edits only).
    Returns:
        :class:`PseudoAnomalies`. Pixels outside each mask equal the source image's.
    Raises:
        InputError (a ValueError): unknown kinds, ``per_image`` < 1, ranges out of bounds, images that are
            not (H, W, 3) uint8 of one size of at least 16 px.
    """
    kinds = [str(k) for k in kinds]
    unknown = [k for k in kinds if k not in _MAKERS]
    if not kinds or unknown:
        raise InputError(f"unknown pseudo-anomaly kinds {unknown or '(none given)'}; available: {list(KINDS)}")
    if int(per_image) < 1:
        raise InputError(f"per_image must be >= 1, got {per_image}")
    lo, hi = (float(patch_fraction[0]), float(patch_fraction[1]))
    if not (0.0 < lo <= hi < 1.0):
        raise InputError(f"patch_fraction must satisfy 0 < min <= max < 1, got {patch_fraction}")
    c_lo, c_hi = (float(contrast[0]), float(contrast[1]))
    if not (0.0 < c_lo <= c_hi <= 1.0):
        raise InputError(f"contrast must satisfy 0 < min <= max <= 1, got {contrast}")
    imgs = [np.asarray(im) for im in images]
    if not imgs:
        raise InputError("no normal images to make pseudo-anomalies from")
    shape = imgs[0].shape
    for i, im in enumerate(imgs):
        if im.dtype != np.uint8 or im.ndim != 3 or im.shape[2] != 3:
            raise InputError(f"image {i}: expected (H, W, 3) uint8, got {im.shape} {im.dtype}")
        if im.shape != shape:
            raise InputError(f"image {i} has shape {im.shape}, image 0 has {shape}: resize them to one size")
    if min(shape[:2]) < 16:
        raise InputError(f"images must be at least 16 px a side, got {shape[:2]}")

    out_images, out_masks, out_kinds, sources, donors, contrasts = [], [], [], [], [], []
    n = len(imgs)
    for i, j, kind in assign_kinds(n, kinds, per_image):
        rng = np.random.default_rng([int(seed), i, j])
        donor_idx = -1
        if kind == "cutpaste":
            donor_idx = int((i + 1 + rng.integers(0, max(1, n - 1))) % n) if n > 1 else i
        donor = imgs[donor_idx] if donor_idx >= 0 else imgs[i]
        best = None
        for _ in range(max(1, int(attempts))):
            edited, mask = _MAKERS[kind](imgs[i], donor, rng, (lo, hi))
            diff = np.abs(edited.astype(np.int16) - imgs[i].astype(np.int16))
            change = float(diff[mask].mean()) / 255.0 if mask.any() else 0.0
            if best is None or change > best[2]:
                best = (edited, mask, change)
            if change >= min_change:
                break
        assert best is not None  # at least one attempt
        edited, mask, _ = best
        c = float(np.random.default_rng([int(seed), i, j, 1]).uniform(c_lo, c_hi))
        edited = _fade(imgs[i], edited, c)
        out_images.append(edited)
        contrasts.append(c)
        out_masks.append(mask)
        out_kinds.append(kind)
        sources.append(i)
        donors.append(donor_idx)
    return PseudoAnomalies(
        np.stack(out_images),
        np.stack(out_masks),
        out_kinds,
        np.asarray(sources),
        np.asarray(donors),
        int(seed),
        np.asarray(contrasts, dtype=np.float64),
    )


class ArrayImageDataset:
    """In-memory (N, H, W, 3) uint8 images as a torch Dataset of ``{"image": (3, H, W) float [0, 1],
    "label", "index"}`` items (as :class:`pradot.data.ImageDataset` gives for files)."""

    def __init__(self, images: np.ndarray | Sequence[np.ndarray], labels: Sequence[int] | None = None):
        self.images = images
        self.labels = list(labels) if labels is not None else [0] * len(images)
        if len(self.labels) != len(images):
            raise InputError(f"{len(images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        from .images import to_tensor

        return {
            "image": to_tensor(np.asarray(self.images[index])),
            "label": int(self.labels[index]),
            "index": int(index),
        }
