"""VisA (Zou et al., ECCV 2022) indexed from its official split csv."""

from __future__ import annotations

from pathlib import Path

from .base import (
    GOOD,
    AnomalyDataset,
    DatasetError,
    Sample,
    list_subdirs,
)
from .layout import LAYOUTS, ad_channel, category_error, resolve_root
from .text import TextFileError, read_csv_rows

__all__ = ["VisADataset"]


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
