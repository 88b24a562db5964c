"""Core data types of ``pradot.data``: samples, ground-truth channels, the dataset base class.

A dataset is an index over ``<root>/<category>``: it lists image files per split and, for
anomalous test images, the ground-truth masks ("channels") that the metrics need.

* LOCO-style data (MVTec LOCO AD, the synthetic generator): one PNG per defect, each with its
  own saturation threshold (AU-sPRO); ``has_saturation`` is True.
* AD-style data (MVTec AD, MPDD, VisA, generic folders): one mask per image whose connected
  components are the regions (AU-PRO); ``has_saturation`` is False and each image has a single
  channel with ``pixel_value=None`` (pixels ``> 0`` are anomalous), ``saturation_threshold=1.0``
  and ``relative_saturation=True``.

Orientation: every image and mask is read upright, as a person sees it: an EXIF orientation tag
(phone and camera JPEGs; rarely PNG/TIFF) is applied (``upright``) by ``image_size_of``, ``read_mask``,
``pradot.data.read_image`` and the serving decoder alike, so maps and masks stay aligned with the image.

Uniqueness: maps are written as ``<anomaly_type>/<stem>.tiff`` and AD-style masks are found by stem
(``<stem>_mask.png``), so two test images of one anomaly type that share a stem (``000.png`` and
``000.jpg``) would share a map and a mask. Indexing refuses that with a DatasetError naming both files
(``check_unique``), as it refuses two anomalous images that resolve to the same mask file.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps

from ..errors import InputError

SPLITS: tuple[str, ...] = ("train", "validation", "test")
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MASK_EXTENSIONS: tuple[str, ...] = (".png", ".bmp", ".tif", ".tiff")
GOOD = "good"
DATA_ROOT_ENV = "PRADOT_DATA_ROOT"


class DatasetError(InputError):
    """A dataset on disk is missing, incomplete or malformed; the message says what and where."""


@dataclass(frozen=True)
class DefectChannel:
    """One ground-truth channel of an anomalous image.

    ``pixel_value`` selects the defect's pixels in the mask (``mask == pixel_value``); ``None``
    means every non-zero pixel (AD-style masks). ``saturation_threshold`` is an area in pixels
    when ``relative_saturation`` is False, else a fraction of the defect's area.
    """

    mask_path: Path
    defect_name: str
    pixel_value: int | None
    saturation_threshold: float
    relative_saturation: bool


@dataclass(frozen=True)
class Sample:
    """One image of a split. ``defects`` is empty for good images (and for unannotated anomalies)."""

    image_path: Path
    split: str
    anomaly_type: str
    label: int
    defects: tuple[DefectChannel, ...] = field(default=())

    @property
    def image_id(self) -> str:
        """The file stem, e.g. ``"000"``."""
        return self.image_path.stem

    @property
    def relative_id(self) -> str:
        """``"<anomaly_type>/<stem>"``: where the sample's map goes, ``MAPS/CAT/test/<relative_id>.tiff``."""
        return f"{self.anomaly_type}/{self.image_id}"


def _natural_key(name: str) -> tuple:
    """Sort key that orders ``2.png`` before ``10.png`` (and is total and deterministic)."""
    parts = re.split(r"(\d+)", name)
    return tuple((0, int(p), p) if p.isdigit() else (1, 0, p) for p in parts), name


def sort_samples(samples: Iterable[Sample]) -> list[Sample]:
    """Deterministic order: good first, then anomaly types alphabetically, then natural file order."""
    return sorted(
        samples,
        key=lambda s: (s.anomaly_type != GOOD, s.anomaly_type, _natural_key(s.image_path.name), str(s.image_path)),
    )


def list_files(folder: Path, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """Regular, non-hidden files of ``folder`` with one of ``extensions`` (case-insensitive), naturally sorted."""
    if not folder.is_dir():
        return []
    exts = {e.lower() for e in extensions}
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in exts]
    return sorted(files, key=lambda p: _natural_key(p.name))


def list_subdirs(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


#: EXIF orientations that swap width and height (rotations by 90 or 270 degrees, transposes)
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)


def exif_orientation(img: Image.Image) -> int:
    """The image's EXIF orientation tag (1..8; 1 when absent or unreadable)."""
    try:
        value = int(img.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception:  # a corrupt EXIF block must not make the image unreadable
        return 1
    return value if 1 <= value <= 8 else 1


def upright(img: Image.Image) -> Image.Image:
    """``img`` as a person sees it: its EXIF orientation applied (PIL's ``ImageOps.exif_transpose``);
    the same object when there is nothing to apply."""
    return ImageOps.exif_transpose(img) if exif_orientation(img) != 1 else img


def image_size_of(path: Path) -> tuple[int, int]:
    """(H, W) of an image file as a person sees it (EXIF orientation applied), reading only its header."""
    try:
        with Image.open(path) as img:
            w, h = img.size
            if exif_orientation(img) in _SWAPPING_ORIENTATIONS:
                w, h = h, w
    except FileNotFoundError as exc:
        raise DatasetError(f"image file not found: {path}") from exc
    except Exception as exc:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ...
        raise DatasetError(f"cannot read image {path}: {exc}") from exc
    return h, w


def read_mask(path: Path) -> np.ndarray:
    """A mask file as a 2-D integer array (native values; RGB masks collapse to their channel maximum),
    upright (its EXIF orientation, if any, applied as for images)."""
    try:
        with Image.open(path) as opened:
            opened.load()
            img = upright(opened)
            if img.mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV"):
                arr = np.asarray(img.convert("RGB")).max(axis=2)
            elif img.mode == "LA":
                arr = np.asarray(img)[..., 0]
            elif img.mode == "1":
                arr = np.asarray(img.convert("L"))
            else:  # L, P (palette indices), I, I;16, F
                arr = np.asarray(img)
    except FileNotFoundError as exc:
        raise DatasetError(f"mask file not found: {path}") from exc
    except Exception as exc:
        raise DatasetError(f"cannot read mask {path}: {exc}") from exc
    if arr.ndim != 2:
        raise DatasetError(f"mask {path} has unexpected shape {arr.shape}; expected a 2-D single-channel image")
    return arr


def normalise_size(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    """``None`` -> None, ``S`` -> (S, S), ``(H, W)`` -> (H, W)."""
    if size is None:
        return None
    if isinstance(size, (int, np.integer)):
        h = w = int(size)
    else:
        if len(size) != 2:
            raise InputError(f"size must be an int or (H, W), got {size!r}")
        h, w = int(size[0]), int(size[1])
    if h <= 0 or w <= 0:
        raise InputError(f"size must be positive, got {size!r}")
    return h, w


def resize_nearest(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a 2-D bool/integer array to (H, W)."""
    if mask.shape == size:
        return mask
    if mask.dtype == bool:
        img = Image.fromarray(mask.astype(np.uint8) * 255)
        return np.asarray(img.resize((size[1], size[0]), Image.Resampling.NEAREST)) > 0
    img = Image.fromarray(mask)
    return np.asarray(img.resize((size[1], size[0]), Image.Resampling.NEAREST))


class AnomalyDataset:
    """Index of one category of an anomaly-detection dataset.

    Subclasses fill ``self._splits`` (split -> list[Sample]) in ``_index()``; everything else
    (validation, mask loading) lives here.
    """

    kind: str = "base"
    has_saturation: bool = False
    layout: str = ""

    def __init__(self, root: str | Path, category: str):
        self.root = Path(root)
        self.category = str(category)
        self._splits: dict[str, list[Sample]] = {s: [] for s in SPLITS}
        # split -> zero-argument callable building that split's samples on first use (for
        # indexes that must read files, e.g. LOCO mask pixel values)
        self._lazy: dict[str, Callable[[], list[Sample]]] = {}
        self._index()
        for split in SPLITS:
            self._splits[split] = sort_samples(self._splits[split])
            if split not in self._lazy:
                check_unique(self._splits[split], split)
        if not self._splits["train"] and "train" not in self._lazy:
            raise DatasetError(
                f"{self.kind} dataset {self.category!r} under {self.root} has no training images "
                f"(looked in {self.train_dir_hint()}).\nExpected layout:\n{self.layout}"
            )

    # -- to implement -------------------------------------------------------------------
    def _index(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def train_dir_hint(self) -> str:
        return str(self.root / self.category / "train" / GOOD)

    # -- public API ---------------------------------------------------------------------
    @property
    def has_masks(self) -> bool:
        """True when every anomalous test image has at least one ground-truth channel."""
        return all(s.defects for s in self.samples("test") if s.label == 1)

    def samples(self, split: str) -> list[Sample]:
        """Samples of ``split`` ("train", "validation" or "test"), in a deterministic order."""
        if split not in SPLITS:
            raise InputError(f"unknown split {split!r}; expected one of {SPLITS}")
        if split in self._lazy:
            self._splits[split] = check_unique(sort_samples(self._lazy.pop(split)()), split)
        return list(self._splits[split])

    def load_channels(self, sample: Sample, size: int | Sequence[int] | None = None) -> np.ndarray:
        """Ground truth of ``sample`` as a (C, H, W) bool array, one channel per ``sample.defects``.

        ``size=None`` keeps the image's native size; an int or (H, W) resizes with nearest neighbour.
        Good images give C = 0. A mask whose size differs from its image raises DatasetError.
        """
        target = normalise_size(size)
        native = image_size_of(sample.image_path)
        out_size = target or native
        channels = np.zeros((len(sample.defects), *out_size), dtype=bool)
        cache: dict[Path, np.ndarray] = {}
        for c, defect in enumerate(sample.defects):
            mask = cache.get(defect.mask_path)
            if mask is None:
                mask = read_mask(defect.mask_path)
                cache[defect.mask_path] = mask
            if mask.shape != native:
                raise DatasetError(
                    f"mask {defect.mask_path} has size {mask.shape[1]}x{mask.shape[0]} (WxH) but its image "
                    f"{sample.image_path} has size {native[1]}x{native[0]} (WxH)"
                )
            binary = mask > 0 if defect.pixel_value is None else mask == defect.pixel_value
            channels[c] = resize_nearest(binary, out_size) if target is not None else binary
        return channels

    def __repr__(self) -> str:
        counts = ", ".join(f"{s}={len(v)}" for s, v in self._splits.items())
        return (
            f"{type(self).__name__}(kind={self.kind!r}, root={str(self.root)!r}, category={self.category!r}, {counts})"
        )


def check_unique(samples: Sequence[Sample], split: str) -> list[Sample]:
    """``samples`` when no two share a map path (``relative_id``) or a mask file; else DatasetError naming
    both files. Training images are exempt: no map or mask is keyed by their stem."""
    samples = list(samples)
    if split == "train":
        return samples
    seen: dict[str, Path] = {}
    masks: dict[Path, Path] = {}
    for s in samples:
        other = seen.setdefault(s.relative_id, s.image_path)
        if other != s.image_path:
            shared = "anomaly maps" + (" and ground-truth masks (<stem>_mask.png)" if s.label else "")
            raise DatasetError(
                f"{split} images {other} and {s.image_path} share the file stem {s.image_id!r} in {s.anomaly_type!r}: "
                f"their {shared} would be the same file (<category>/test/{s.relative_id}.tiff). Rename one of them "
                f"(e.g. to {s.image_id}_{s.image_path.suffix.lstrip('.').lower()}{s.image_path.suffix}) or remove "
                f"the duplicate."
            )
        for d in s.defects:
            owner = masks.setdefault(d.mask_path, s.image_path)
            if owner != s.image_path:
                raise DatasetError(
                    f"{split} images {owner} and {s.image_path} resolve to the same ground-truth mask {d.mask_path}; "
                    f"give each anomalous image its own mask (<stem>_mask.png next to the others)."
                )
    return samples


def split_validation(samples: Sequence[Sample], fraction: float, seed: int = 0) -> tuple[list[Sample], list[Sample]]:
    """Deterministically hold out ``fraction`` of the normal training samples as a validation split.

    Returns ``(train, validation)``; held-out samples get ``split="validation"``. At least one
    sample stays in train; ``fraction`` in [0, 1). Only good (label 0) samples are held out.
    """
    if not 0.0 <= fraction < 1.0:
        raise InputError(f"fraction must be in [0, 1), got {fraction}")
    ordered = sort_samples(samples)
    normals = [i for i, s in enumerate(ordered) if s.label == 0]
    n_val = int(round(fraction * len(normals)))
    n_val = min(n_val, max(len(normals) - 1, 0))
    if fraction > 0 and n_val == 0 and len(normals) > 1:
        n_val = 1
    rng = np.random.default_rng(seed)
    held = set(np.asarray(normals)[rng.permutation(len(normals))[:n_val]].tolist()) if n_val else set()
    train = [s for i, s in enumerate(ordered) if i not in held]
    validation = [replace(s, split="validation") for i, s in enumerate(ordered) if i in held]
    return train, sort_samples(validation)
