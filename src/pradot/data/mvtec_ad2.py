"""MVTec AD 2 (Heckler-Kram et al., 2025): eight scenarios (can, fabric, fruit_jelly, rice, sheet_metal,
vial, wallplugs, walnuts) with normal training and validation images, a public test split with ground
truth, and two private test splits without labels or masks, scored only by the benchmark server::

    <root>/<category>/train/good/*.png
    <root>/<category>/validation/good/*.png
    <root>/<category>/test_public/{good,bad}/*.png
    <root>/<category>/test_public/ground_truth/bad/<stem>_mask.png      (255 = anomalous)
    <root>/<category>/test_private/*.png
    <root>/<category>/test_private_mixed/*.png                         (seen and unseen lighting, mixed)

``samples("test")`` is the public test split (anomaly types ``good`` and ``bad``, masks attached); the
private splits are read with :meth:`MVTecAD2Dataset.private_samples` (label -1: unknown) to be scored
and written in the submission format (:mod:`pradot.submission`). Official localisation metrics: AU-PRO
up to a false-positive rate of 0.05 (``default_max_fprs``) and SegF1 (:mod:`pradot.metrics.segmentation`).
"""

from __future__ import annotations

from ..errors import InputError
from .base import GOOD, MASK_EXTENSIONS, DatasetError, Sample, check_unique, list_files, list_subdirs
from .layout import LAYOUTS, CategoryFolderDataset, ad_channel, good_samples

__all__ = ["MVTecAD2Dataset", "PRIVATE_SPLITS", "PUBLIC_TEST", "UNKNOWN_LABEL"]

PUBLIC_TEST = "test_public"
PRIVATE_SPLITS: tuple[str, ...] = ("test_private", "test_private_mixed")
#: label of an image of a private split (its class is not published)
UNKNOWN_LABEL = -1
GROUND_TRUTH = "ground_truth"


class MVTecAD2Dataset(CategoryFolderDataset):
    """An MVTec AD 2 category: train, validation, the public test split as ``test``; private splits apart."""

    kind = "mvtec_ad2"
    has_saturation = False
    layout = LAYOUTS["mvtec_ad2"]
    default_max_fprs: tuple[float, ...] = (0.05,)  # AU-PRO_0.05, the benchmark's

    def _index(self) -> None:
        cat = self.category_dir
        self._splits["train"] = good_samples(cat / "train" / GOOD, "train")
        self._splits["validation"] = good_samples(cat / "validation" / GOOD, "validation")
        public = cat / PUBLIC_TEST
        test: list[Sample] = []
        for anomaly_type in list_subdirs(public):
            if anomaly_type == GROUND_TRUTH:
                continue
            for image in list_files(public / anomaly_type):
                if anomaly_type == GOOD:
                    test.append(Sample(image, "test", GOOD, 0, ()))
                    continue
                mask = public / GROUND_TRUTH / anomaly_type / f"{image.stem}_mask.png"
                if not mask.is_file():
                    found = [p.name for p in list_files(mask.parent, MASK_EXTENSIONS)[:3]]
                    raise DatasetError(
                        f"anomalous test image {image} has no ground-truth mask: expected {mask} "
                        f"(masks found there: {', '.join(found) or 'none'}).\n"
                        f"Expected layout:\n{self.layout}"
                    )
                test.append(Sample(image, "test", anomaly_type, 1, (ad_channel(mask, anomaly_type),)))
        self._splits["test"] = test

    def private_samples(self, split: str) -> list[Sample]:
        """The images of a private test split (``test_private`` or ``test_private_mixed``), naturally sorted:
        samples of that split with anomaly type ``"unknown"`` and label -1 (no ground truth), for scoring only.

        Raises:
            ValueError: ``split`` is not a private split. DatasetError: its folder is missing or empty.
        """
        if split not in PRIVATE_SPLITS:
            raise InputError(f"unknown private split {split!r}; expected one of {PRIVATE_SPLITS}")
        folder = self.category_dir / split
        images = list_files(folder)
        if not images:
            state = "is empty" if folder.is_dir() else "does not exist"
            raise DatasetError(f"MVTec AD 2 private split {folder} {state}.\nExpected layout:\n{self.layout}")
        return check_unique([Sample(p, split, "unknown", UNKNOWN_LABEL, ()) for p in images], split)
