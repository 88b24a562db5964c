"""Dataset indexes: MVTec LOCO AD, MVTec AD, MPDD, VisA, generic folders, the synthetic LOCO scene, and
(in their own modules) MVTec AD 2 and Real-IAD.

``load_dataset(kind, root, category, **options)`` is the entry point. ``root`` is the folder that
holds the categories (``None``: the ``PRADOT_DATA_ROOT`` environment variable).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .base import (
    DATA_ROOT_ENV,
    GOOD,
    MASK_EXTENSIONS,
    AnomalyDataset,
    DatasetError,
    DefectChannel,
    Sample,
    list_files,
    list_subdirs,
    read_mask,
)
from .layout import (
    LAYOUTS,
    CategoryFolderDataset,
    ad_channel,
    category_error,
    good_samples,
    resolve_root,
)
from .mvtec_ad2 import MVTecAD2Dataset
from .real_iad import RealIADDataset
from .text import TextFileError, read_csv_rows, read_json

DATASET_KINDS: tuple[str, ...] = (
    "mvtec_loco",
    "mvtec_ad",
    "visa",
    "mpdd",
    "folder",
    "synthetic",
    "mvtec_ad2",
    "real_iad",
)

# ---------------------------------------------------------------------------------------------
# MVTec LOCO AD
# ---------------------------------------------------------------------------------------------


def read_defects_config(path: Path) -> dict[int, dict[str, Any]]:
    """``defects_config.json`` as {pixel_value: entry}; DatasetError naming the file when malformed."""
    try:
        entries = read_json(path)
    except FileNotFoundError as exc:
        raise DatasetError(f"defects config {path} not found") from exc
    except TextFileError as exc:
        raise DatasetError(f"defects config {exc}") from exc
    if not isinstance(entries, list):
        raise DatasetError(f"defects config {path} must be a JSON list of defect entries, got {type(entries).__name__}")
    required = ("defect_name", "pixel_value", "saturation_threshold", "relative_saturation")
    table: dict[int, dict[str, Any]] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or any(k not in entry for k in required):
            raise DatasetError(f"defects config {path}: entry {i} must have keys {required}, got {entry!r}")
        value = int(entry["pixel_value"])
        if value in table:
            raise DatasetError(f"defects config {path}: pixel_value {value} appears twice")
        table[value] = {
            "defect_name": str(entry["defect_name"]),
            "pixel_value": value,
            "saturation_threshold": float(entry["saturation_threshold"]),
            "relative_saturation": bool(entry["relative_saturation"]),
        }
    return table


def _mask_pixel_value(path: Path) -> int:
    mask = read_mask(path)
    values = np.unique(mask[mask != 0])
    if values.size == 0:
        raise DatasetError(f"ground-truth mask {path} is empty (all pixels are 0)")
    if values.size > 1:
        raise DatasetError(
            f"ground-truth mask {path} holds several pixel values {values.tolist()}; "
            "a LOCO mask must encode exactly one defect (one value)"
        )
    return int(values[0])


class MVTecLOCODataset(CategoryFolderDataset):
    """MVTec LOCO AD layout: one PNG per defect, pixel values mapped through ``defects_config.json``."""

    kind = "mvtec_loco"
    has_saturation = True
    layout = LAYOUTS["mvtec_loco"]

    def _index(self) -> None:
        cat = self.category_dir
        self._splits["train"] = good_samples(cat / "train" / GOOD, "train")
        self._splits["validation"] = good_samples(cat / "validation" / GOOD, "validation")
        test_dir = self._test_dir()
        pending: list[tuple[Path, str, list[Path]]] = []
        good: list[Sample] = []
        for anomaly_type in list_subdirs(test_dir):
            for image in list_files(test_dir / anomaly_type):
                if anomaly_type == GOOD:
                    good.append(Sample(image, "test", GOOD, 0, ()))
                    continue
                gt_dir = cat / "ground_truth" / anomaly_type / image.stem
                masks = list_files(gt_dir, MASK_EXTENSIONS)
                if not masks:
                    state = "is empty" if gt_dir.is_dir() else "does not exist"
                    raise DatasetError(
                        f"anomalous test image {image} has no ground truth: expected mask PNGs in {gt_dir} "
                        f"(e.g. {gt_dir / '000.png'}), but that folder {state}.\nExpected layout:\n{self.layout}"
                    )
                pending.append((image, anomaly_type, masks))
        self.config_path = cat / "defects_config.json"
        if pending and not self.config_path.is_file():
            raise DatasetError(
                f"{self.kind} category {cat} has anomalous test images but no defects config {self.config_path}."
                f"\nExpected layout:\n{self.layout}"
            )
        self._splits["test"] = good
        if pending:
            self._lazy["test"] = lambda: good + self._build_anomalies(pending)

    def _build_anomalies(self, pending: list[tuple[Path, str, list[Path]]]) -> list[Sample]:
        config = read_defects_config(self.config_path)
        samples = []
        for image, anomaly_type, masks in pending:
            defects = []
            for mask in masks:
                value = _mask_pixel_value(mask)
                entry = config.get(value)
                if entry is None:
                    raise DatasetError(
                        f"ground-truth mask {mask} has pixel value {value}, which is not in {self.config_path}; "
                        f"known pixel values: {sorted(config)}"
                    )
                defects.append(
                    DefectChannel(
                        mask_path=mask,
                        defect_name=entry["defect_name"],
                        pixel_value=value,
                        saturation_threshold=entry["saturation_threshold"],
                        relative_saturation=entry["relative_saturation"],
                    )
                )
            samples.append(Sample(image, "test", anomaly_type, 1, tuple(defects)))
        return samples

    def defects_config(self) -> dict[int, dict[str, Any]]:
        """The parsed ``defects_config.json`` ({pixel_value: entry}); empty when the file is absent."""
        return read_defects_config(self.config_path) if self.config_path.is_file() else {}


# ---------------------------------------------------------------------------------------------
# MVTec AD / MPDD
# ---------------------------------------------------------------------------------------------


def _find_mask(folder: Path, stem: str) -> list[Path]:
    """Masks for ``stem`` in ``folder``: ``<stem>.<ext>``, ``<stem>_mask.<ext>`` / ``<stem>_*``, or a ``<stem>/``
    folder."""
    sub = folder / stem
    if sub.is_dir():
        return list_files(sub, MASK_EXTENSIONS)
    candidates = list_files(folder, MASK_EXTENSIONS)
    exact = [p for p in candidates if p.stem in (stem, f"{stem}_mask")]
    if exact:
        return [sorted(exact, key=lambda p: (p.stem != stem, p.name))[0]]
    prefixed = [p for p in candidates if p.stem.startswith(stem + "_") or p.stem.startswith(stem + "-")]
    return prefixed[:1] if len(prefixed) == 1 else []


class MVTecADDataset(CategoryFolderDataset):
    """MVTec AD layout (one ``<id>_mask.png`` per anomalous image; regions = connected components).

    There is no validation split: ``samples("validation")`` is empty (see ``split_validation``).
    """

    kind = "mvtec_ad"
    has_saturation = False
    layout = LAYOUTS["mvtec_ad"]

    def _index(self) -> None:
        cat = self.category_dir
        self._splits["train"] = good_samples(cat / "train" / GOOD, "train")
        test_dir = self._test_dir()
        test: list[Sample] = []
        for anomaly_type in list_subdirs(test_dir):
            for image in list_files(test_dir / anomaly_type):
                if anomaly_type == GOOD:
                    test.append(Sample(image, "test", GOOD, 0, ()))
                    continue
                gt_dir = cat / "ground_truth" / anomaly_type
                masks = _find_mask(gt_dir, image.stem)
                if not masks:
                    raise DatasetError(
                        f"anomalous test image {image} has no ground-truth mask: "
                        f"expected {gt_dir / (image.stem + '_mask.png')}"
                        f"\nExpected layout:\n{self.layout}"
                    )
                test.append(Sample(image, "test", anomaly_type, 1, (ad_channel(masks[0], anomaly_type),)))
        self._splits["test"] = test


class MPDDDataset(MVTecADDataset):
    """MPDD (Metal Parts Defect Detection): the MVTec AD layout."""

    kind = "mpdd"


# ---------------------------------------------------------------------------------------------
# VisA (official split csv)
# ---------------------------------------------------------------------------------------------


class VisADataset(AnomalyDataset):
    """VisA with its official split csv (``split_csv/1cls.csv``: object,split,label,image,mask).

    Normal images get anomaly type ``"good"``, anomalous ones ``"bad"`` (VisA's own converted layout).
    There is no validation split.
    """

    kind = "visa"
    has_saturation = False
    layout = LAYOUTS["visa"]
    ANOMALY_TYPE = "bad"

    def __init__(self, root: str | Path | None, category: str, csv_path: str | Path = "split_csv/1cls.csv"):
        root_path = resolve_root(root, self.kind)
        self.csv_path = Path(csv_path) if Path(csv_path).is_absolute() else root_path / csv_path
        super().__init__(root_path, category)

    def train_dir_hint(self) -> str:
        return f"rows of {self.csv_path} with object={self.category} and split=train"

    def _index(self) -> None:
        if not self.csv_path.is_file():
            raise DatasetError(
                f"VisA split csv {self.csv_path} not found. Folders found under {self.root}: "
                f"{', '.join(list_subdirs(self.root)) or '(none)'}.\nExpected layout:\n{self.layout}"
            )
        try:
            rows = read_csv_rows(self.csv_path, required=("object", "split", "label", "image", "mask"))
        except TextFileError as exc:
            raise DatasetError(f"VisA split csv {exc}") from exc
        for row in rows:  # paths written on Windows: backslash separators
            row["image"], row["mask"] = row["image"].replace("\\", "/"), row["mask"].replace("\\", "/")
        objects = sorted({r["object"] for r in rows})
        mine = [r for r in rows if r["object"] == self.category]
        if not mine:
            raise category_error(self.kind, self.root, self.category, objects, what=f"objects in {self.csv_path.name}")
        split_names = {"train": "train", "test": "test", "val": "validation", "validation": "validation"}
        for row in mine:
            split = split_names.get(row["split"].lower())
            if split is None:
                raise DatasetError(f"{self.csv_path}: unknown split {row['split']!r} for image {row['image']}")
            image = self.root / row["image"]
            if not image.is_file():
                raise DatasetError(f"{self.csv_path}: image {image} listed in the csv does not exist")
            label = row["label"].lower()
            if label in ("normal", "good", "0"):
                self._splits[split].append(Sample(image, split, GOOD, 0, ()))
            elif label in ("anomaly", "abnormal", "bad", "1"):
                if not row["mask"]:
                    raise DatasetError(
                        f"anomalous image {image} has no ground-truth mask: its row in {self.csv_path} has an empty "
                        "mask column (expected e.g. <category>/Data/Masks/Anomaly/<id>.png)"
                    )
                mask = self.root / row["mask"]
                if not mask.is_file():
                    raise DatasetError(
                        f"anomalous image {image} has no ground-truth mask: expected {mask} (from {self.csv_path})"
                    )
                self._splits[split].append(
                    Sample(image, split, self.ANOMALY_TYPE, 1, (ad_channel(mask, self.ANOMALY_TYPE),))
                )
            else:
                raise DatasetError(
                    f"{self.csv_path}: unknown label {row['label']!r} for image {image}; expected normal/anomaly"
                )
        anomalous_train = [s for s in self._splits["train"] if s.label == 1]
        if anomalous_train:
            raise DatasetError(
                f"{self.csv_path}: the train split holds anomalous images, e.g. {anomalous_train[0].image_path}"
            )


# ---------------------------------------------------------------------------------------------
# generic folders
# ---------------------------------------------------------------------------------------------


class FolderDataset(CategoryFolderDataset):
    """Generic folder layout; test anomalies may lack masks (``has_masks`` then is False)."""

    kind = "folder"
    has_saturation = False
    layout = LAYOUTS["folder"]

    def _index(self) -> None:
        cat = self.category_dir
        self._splits["train"] = good_samples(cat / "train" / GOOD, "train")
        self._splits["validation"] = good_samples(cat / "validation" / GOOD, "validation")
        test: list[Sample] = []
        for anomaly_type in list_subdirs(cat / "test"):
            for image in list_files(cat / "test" / anomaly_type):
                if anomaly_type == GOOD:
                    test.append(Sample(image, "test", GOOD, 0, ()))
                    continue
                masks = _find_mask(cat / "ground_truth" / anomaly_type, image.stem)
                channels = tuple(ad_channel(m, anomaly_type) for m in masks)
                test.append(Sample(image, "test", anomaly_type, 1, channels))
        self._splits["test"] = test
        self.n_unannotated = sum(1 for s in test if s.label == 1 and not s.defects)


# ---------------------------------------------------------------------------------------------
# synthetic LOCO scene
def _check_writable_root(root: Path) -> None:
    """A folder the generator may create: at most it and its parent are new (the project's default
    ``data/synthetic`` in a fresh checkout). A longer chain of missing folders is more likely a mistyped path
    than a wish to create folders elsewhere on disk.

    Raises:
        DatasetError: naming the folder and what to do.
    """
    full = root.resolve()
    if full.exists() or full.parent.exists() or full.parent.parent.exists():
        return
    raise DatasetError(
        f"the synthetic dataset is generated into its root folder, and neither {full} nor its parents "
        f"{full.parent} and {full.parent.parent} exist: a mistyped data_root? Create "
        f"{full.parent.parent} first if it is meant, or give an existing folder"
    )


# ---------------------------------------------------------------------------------------------


class SyntheticDataset(MVTecLOCODataset):
    """The LOCO loader pointed at a generator output folder (``pradot.data.synthetic``).

    With ``generate=True`` the folder is (re)generated by ``ensure_synthetic`` when it is missing or
    was made with other parameters; the remaining options are the generator's.
    """

    kind = "synthetic"
    layout = LAYOUTS["synthetic"]

    def __init__(
        self, root: str | Path | None, category: str = "screw_bag", generate: bool = False, **generator_options: Any
    ):
        if generate:
            from .synthetic import ensure_synthetic

            if root is None or str(root) == "":
                root = os.environ.get(DATA_ROOT_ENV, "")
                if not root:
                    raise DatasetError(
                        f"dataset kind 'synthetic' with generate=True needs a root folder to write to: pass root=... "
                        f"or set {DATA_ROOT_ENV}"
                    )
            _check_writable_root(Path(root).expanduser())
            ensure_synthetic(root, category, **generator_options)
        else:
            root_path = resolve_root(root, self.kind)
            if not (root_path / category).is_dir():
                raise category_error(self.kind, root_path, category, list_subdirs(root_path))
            if generator_options:
                self._check_stamp(root_path / category, generator_options)
        super().__init__(root, category)

    @staticmethod
    def _check_stamp(folder: Path, options: dict[str, Any]) -> None:
        """Without ``generate``, generator options must match the folder's stamp (or raise)."""
        from .synthetic import DEFAULTS, STAMP_NAME

        unknown = sorted(set(options) - set(DEFAULTS) - {"seed", "progress"})
        if unknown:
            raise TypeError(f"unknown synthetic generator options {unknown}")
        try:
            stamp = read_json(folder / STAMP_NAME)
        except (OSError, ValueError):
            stamp = {}
        wanted = {"seed": 0, **DEFAULTS, **{k: v for k, v in options.items() if k != "progress"}}
        diff = {k: (stamp.get(k), v) for k, v in wanted.items() if stamp.get(k) != v}
        if diff:
            details = ", ".join(f"{k}: folder {a!r} vs requested {b!r}" for k, (a, b) in sorted(diff.items()))
            raise DatasetError(
                f"synthetic dataset {folder} was generated with other parameters ({details}); "
                "pass generate=True to regenerate it"
            )


_LOADERS: dict[str, type[AnomalyDataset]] = {
    "mvtec_loco": MVTecLOCODataset,
    "mvtec_ad": MVTecADDataset,
    "mpdd": MPDDDataset,
    "visa": VisADataset,
    "folder": FolderDataset,
    "synthetic": SyntheticDataset,
    "mvtec_ad2": MVTecAD2Dataset,
    "real_iad": RealIADDataset,
}


def load_dataset(kind: str, root: str | Path | None, category: str, **options: Any) -> AnomalyDataset:
    """Index ``category`` of a dataset of ``kind`` (one of ``DATASET_KINDS``) under ``root``.

    Options: ``visa``: ``csv_path`` (default ``split_csv/1cls.csv``); ``synthetic``: ``generate=True``
    plus the generator's parameters (``seed``, ``image_size``, ``n_train``, ...); ``real_iad``:
    ``variant`` (``realiad_jsons``), ``resolution`` (``1024``), ``views`` (e.g. ``"C1,C3"``), ``json_dir``.
    Kinds are also accepted with dashes and in their datasets' own spellings (``mvtec-ad2``, ``mvtec_ad_2``,
    ``real-iad``, ``realiad``). Raises DatasetError with the expected layout when the data are missing or malformed.
    """
    key = str(kind).lower().replace("-", "_")
    key = {"mvtec_ad_2": "mvtec_ad2", "realiad": "real_iad"}.get(key, key)
    if key not in _LOADERS:
        raise DatasetError(f"unknown dataset kind {kind!r}; expected one of {', '.join(DATASET_KINDS)}")
    return _LOADERS[key](root, category, **options)
