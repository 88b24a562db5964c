"""MVTec AD (Bergmann et al., CVPR 2019): one ``<id>_mask.png`` per anomalous test image, no validation split."""

from __future__ import annotations

from .base import (
    GOOD,
    DatasetError,
    Sample,
    list_files,
    list_subdirs,
)
from .layout import LAYOUTS, CategoryFolderDataset, ad_channel, find_mask, good_samples

__all__ = ["MVTecADDataset"]


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
                masks = find_mask(gt_dir, image.stem)
                if not masks:
                    raise DatasetError(
                        f"anomalous test image {image} has no ground-truth mask: "
                        f"expected {gt_dir / (image.stem + '_mask.png')}"
                        f"\nExpected layout:\n{self.layout}"
                    )
                test.append(Sample(image, "test", anomaly_type, 1, (ad_channel(masks[0], anomaly_type),)))
        self._splits["test"] = test
