"""Real-IAD (Wang et al., CVPR 2024): 30 categories, every physical sample photographed from five camera
views (C1..C5), with splits given by json files::

    <root>/realiad_jsons/<variant>/<category>.json
    <root>/realiad_<resolution>/<prefix>/OK/S<id>/<category>_<id>_OK_C<view>_<timestamp>.jpg
    <root>/realiad_<resolution>/<prefix>/NG/<defect>/S<id>/<category>_<id>_NG_C<view>_<timestamp>.jpg (+ .png mask)

A json file is ``{"meta": {"prefix": ..., "normal_class": "OK", ...}, "train": [entry, ...], "test": [...]}``
with entries ``{"category", "anomaly_class", "image_path", "mask_path"}`` whose paths are relative to
``realiad_<resolution>/<prefix>``. ``variant`` picks the split protocol: ``realiad_jsons`` (the default
multi-view setting), ``realiad_jsons_sv`` (single view), ``realiad_jsons_fuiad_<ratio>`` (fully
unsupervised: training sets that contain anomalies on purpose; those images are kept, labelled 1).

Multi-view samples: every image is a sample of its own (its anomaly type is the entry's
``anomaly_class``, ``good`` for the normal class), so maps and metrics are per image, as in the Real-IAD
image-level protocol. ``views`` keeps only some camera views. :meth:`RealIADDataset.sample_group` names
the physical sample an image shows (its ``S<id>`` folder); ``pradot.metrics.dataset`` uses it to report
``sample_auroc`` too: one score per physical sample, the maximum over its views (label: anomalous when
any of its views is).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import InputError
from .base import GOOD, AnomalyDataset, DatasetError, Sample, list_subdirs
from .layout import LAYOUTS, ad_channel, category_error, resolve_root
from .text import TextFileError, read_json

__all__ = ["RealIADDataset", "VIEWS", "parse_views"]

log = logging.getLogger(__name__)

VIEWS: tuple[str, ...] = ("C1", "C2", "C3", "C4", "C5")
JSON_FOLDER = "realiad_jsons"
_VIEW_IN_NAME = re.compile(r"_(C\d)_")


def parse_views(views: str | int | Sequence[str | int] | None) -> tuple[str, ...] | None:
    """``None`` (all views), ``"C1,C3"``, ``[1, 3]``, ``["C1", "c3"]`` -> ``("C1", "C3")``.

    Raises:
        InputError: a view outside C1..C5.
    """
    if views is None or (isinstance(views, str) and not views.strip()):
        return None
    items = views.split(",") if isinstance(views, str) else [views] if isinstance(views, int) else list(views)
    out = []
    for v in items:
        name = str(v).strip().upper()
        name = f"C{name}" if name.isdigit() else name
        if name not in VIEWS:
            raise InputError(f"unknown Real-IAD camera view {v!r}; expected some of {', '.join(VIEWS)}")
        out.append(name)
    return tuple(sorted(set(out)))


def view_of(path: Path) -> str | None:
    """The camera view in a Real-IAD file name (``..._NG_C3_2023....jpg`` -> ``"C3"``), or None."""
    m = _VIEW_IN_NAME.search(path.name)
    return m.group(1) if m else None


class RealIADDataset(AnomalyDataset):
    """A Real-IAD category indexed from its split json (see the module docstring). No validation split."""

    kind = "real_iad"
    has_saturation = False
    layout = LAYOUTS["real_iad"]

    def __init__(
        self,
        root: str | Path | None,
        category: str,
        variant: str = "realiad_jsons",
        resolution: str | int = "1024",
        views: Any = None,
        json_dir: str | Path | None = None,
    ):
        root_path = resolve_root(root, self.kind)
        self.variant = str(variant)
        self.resolution = str(resolution)
        self.views = parse_views(views)
        self.json_path = self._find_json(root_path, str(category), json_dir)
        super().__init__(root_path, category)

    # -- where things are ------------------------------------------------------------------
    def _find_json(self, root: Path, category: str, json_dir: str | Path | None) -> Path:
        folders = [Path(json_dir)] if json_dir else [root / JSON_FOLDER / self.variant, root / self.variant]
        for folder in folders:
            if (folder / f"{category}.json").is_file():
                return folder / f"{category}.json"
        json_folder = next((f for f in folders if f.is_dir()), None)
        if json_folder is None:
            variants = list_subdirs(root / JSON_FOLDER)
            raise DatasetError(
                f"Real-IAD split folder for variant {self.variant!r} not found: looked in "
                f"{' and '.join(str(f) for f in folders)}. Variants found under {root / JSON_FOLDER}: "
                f"{', '.join(variants) or '(none)'}.\nExpected layout:\n{self.layout}"
            )
        found = sorted(p.stem for p in json_folder.glob("*.json"))
        raise category_error(self.kind, root, category, found, what=f"split files in {json_folder}")

    def train_dir_hint(self) -> str:
        return f"the 'train' list of {self.json_path}"

    def _image_root(self, prefix: str) -> Path:
        candidates = [self.root / f"realiad_{self.resolution}", self.root]
        for base in candidates:
            if (base / prefix).is_dir():
                return base / prefix
        found = [d for d in list_subdirs(self.root) if d.startswith("realiad_") and d != JSON_FOLDER]
        raise DatasetError(
            f"Real-IAD images of {self.json_path.name} (prefix {prefix!r}) not found: looked for "
            f"{candidates[0] / prefix}. Image folders found under {self.root}: {', '.join(found) or '(none)'} "
            f"(choose one with the resolution option, e.g. resolution=512 for realiad_512).\n"
            f"Expected layout:\n{self.layout}"
        )

    # -- the index -------------------------------------------------------------------------
    def _index(self) -> None:
        try:
            doc = read_json(self.json_path)
        except TextFileError as exc:
            raise DatasetError(f"Real-IAD split file {exc}") from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("meta"), dict) or "train" not in doc:
            raise DatasetError(
                f"Real-IAD split file {self.json_path} must be an object with 'meta' and 'train' "
                f"(and 'test') lists; got keys {sorted(doc) if isinstance(doc, dict) else type(doc)}"
            )
        meta = doc["meta"]
        normal = str(meta.get("normal_class", "OK"))
        folder = self._image_root(str(meta.get("prefix") or self.category))
        for split in ("train", "test"):
            entries = doc.get(split) or []
            if not isinstance(entries, list):
                raise DatasetError(f"{self.json_path}: '{split}' must be a list of entries")
            samples = [self._sample(e, i, split, normal, folder) for i, e in enumerate(entries)]
            self._splits[split] = [s for s in samples if self.views is None or view_of(s.image_path) in self.views]
        n_bad = sum(s.label for s in self._splits["train"])
        if n_bad:
            log.info(
                "%s: %d anomalous training images kept (the %s protocol trains on them)",
                self.json_path,
                n_bad,
                self.variant,
            )

    def _sample(self, entry: Any, i: int, split: str, normal: str, folder: Path) -> Sample:
        if not isinstance(entry, dict) or not entry.get("image_path") or "anomaly_class" not in entry:
            raise DatasetError(
                f"{self.json_path}: entry {i} of '{split}' needs 'image_path' and 'anomaly_class', got {entry!r}"
            )
        image = folder / str(entry["image_path"]).replace("\\", "/")
        if not image.is_file():
            raise DatasetError(f"{self.json_path}: image {image} (entry {i} of '{split}') does not exist")
        anomaly_class = str(entry["anomaly_class"])
        if anomaly_class == normal:
            return Sample(image, split, GOOD, 0, ())
        mask_rel = entry.get("mask_path")
        if not mask_rel:  # an anomaly annotated at image level only
            return Sample(image, split, anomaly_class, 1, ())
        mask = folder / str(mask_rel).replace("\\", "/")
        if not mask.is_file():
            raise DatasetError(
                f"anomalous image {image} has no ground-truth mask: expected {mask} (from {self.json_path})"
            )
        return Sample(image, split, anomaly_class, 1, (ad_channel(mask, anomaly_class),))

    def sample_group(self, sample: Sample) -> str:
        """The physical sample an image shows: its ``S<id>`` folder (the five views of one part share it)."""
        return str(sample.image_path.parent)
