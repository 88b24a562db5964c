"""MVTec LOCO AD (Bergmann et al., IJCV 2022): one mask PNG per defect, pixel values mapped to defect
types and saturation thresholds through the category's ``defects_config.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .base import (
    GOOD,
    MASK_EXTENSIONS,
    DatasetError,
    DefectChannel,
    Sample,
    list_files,
    list_subdirs,
    read_mask,
)
from .layout import LAYOUTS, CategoryFolderDataset, good_samples
from .text import TextFileError, read_json

__all__ = ["MVTecLOCODataset", "read_defects_config"]


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
