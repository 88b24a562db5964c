"""Generic folders: ``<category>/{train,validation}/good``, ``test/<type>``, optional ``ground_truth/<type>``."""

from __future__ import annotations

from .base import (
    GOOD,
    Sample,
    list_files,
    list_subdirs,
)
from .layout import LAYOUTS, CategoryFolderDataset, ad_channel, find_mask, good_samples

__all__ = ["FolderDataset"]


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
                masks = find_mask(cat / "ground_truth" / anomaly_type, image.stem)
                channels = tuple(ad_channel(m, anomaly_type) for m in masks)
                test.append(Sample(image, "test", anomaly_type, 1, channels))
        self._splits["test"] = test
        self.n_unannotated = sum(1 for s in test if s.label == 1 and not s.defects)
