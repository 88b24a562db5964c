"""Where each dataset kind's files lie: the layouts (shown in errors and the README), the known
categories, and the resolution of a data root and a category folder with errors that say what was
expected and where it was looked for.
"""

from __future__ import annotations

import os
from pathlib import Path

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
)

__all__ = [
    "KNOWN_CATEGORIES",
    "LAYOUTS",
    "resolve_root",
    "category_error",
    "category_dir",
    "good_samples",
    "ad_channel",
    "find_mask",
    "CategoryFolderDataset",
]

KNOWN_CATEGORIES: dict[str, tuple[str, ...]] = {
    "mvtec_loco": ("breakfast_box", "juice_bottle", "pushpins", "screw_bag", "splicing_connectors"),
    "mvtec_ad": (
        "bottle",
        "cable",
        "capsule",
        "carpet",
        "grid",
        "hazelnut",
        "leather",
        "metal_nut",
        "pill",
        "screw",
        "tile",
        "toothbrush",
        "transistor",
        "wood",
        "zipper",
    ),
    "mpdd": ("bracket_black", "bracket_brown", "bracket_white", "connector", "metal_plate", "tubes"),
    "visa": (
        "candle",
        "capsules",
        "cashew",
        "chewinggum",
        "fryum",
        "macaroni1",
        "macaroni2",
        "pcb1",
        "pcb2",
        "pcb3",
        "pcb4",
        "pipe_fryum",
    ),
    "synthetic": ("screw_bag", "fastener_kit", "fixture_plate", "woven_fabric", "wood_grain"),
    "folder": (),
    "mvtec_ad2": ("can", "fabric", "fruit_jelly", "rice", "sheet_metal", "vial", "wallplugs", "walnuts"),
    "real_iad": (
        "audiojack",
        "bottle_cap",
        "button_battery",
        "end_cap",
        "eraser",
        "fire_hood",
        "mint",
        "mounts",
        "pcb",
        "phone_battery",
        "plastic_nut",
        "plastic_plug",
        "porcelain_doll",
        "regulator",
        "rolled_strip_base",
        "sim_card_set",
        "switch",
        "tape",
        "terminalblock",
        "toothbrush",
        "toy",
        "toy_brick",
        "transistor1",
        "u_block",
        "usb",
        "usb_adaptor",
        "vcpill",
        "wooden_beads",
        "woodstick",
        "zipper",
    ),
}

_LOCO_LAYOUT = """\
  <root>/<category>/train/good/*.png
  <root>/<category>/validation/good/*.png
  <root>/<category>/test/{good,logical_anomalies,structural_anomalies}/<id>.png
  <root>/<category>/ground_truth/{logical_anomalies,structural_anomalies}/<id>/000.png, 001.png, ...
  <root>/<category>/defects_config.json   (list of {defect_name, pixel_value, saturation_threshold, relative_saturation})"""

_AD_LAYOUT = """\
  <root>/<category>/train/good/*.png
  <root>/<category>/test/good/*.png
  <root>/<category>/test/<defect_type>/<id>.png
  <root>/<category>/ground_truth/<defect_type>/<id>_mask.png"""

LAYOUTS: dict[str, str] = {
    "mvtec_loco": _LOCO_LAYOUT,
    "synthetic": _LOCO_LAYOUT
    + "\n  (generate it with `python -m pradot.data.synthetic --root <root> --category screw_bag` (or fastener_kit),"
    " or load_dataset('synthetic', root, category, generate=True))",
    "mvtec_ad": _AD_LAYOUT,
    "mpdd": _AD_LAYOUT,
    "visa": """\
  <root>/split_csv/1cls.csv   (columns object,split,label,image,mask; label normal/anomaly; paths relative to <root>)
  <root>/<category>/Data/Images/{Normal,Anomaly}/*.JPG
  <root>/<category>/Data/Masks/Anomaly/*.png""",
    "folder": """\
  <root>/<category>/train/good/*.png            (required)
  <root>/<category>/validation/good/*.png       (optional)
  <root>/<category>/test/good/*.png             (optional)
  <root>/<category>/test/<anomaly_type>/*.png   (optional)
  <root>/<category>/ground_truth/<anomaly_type>/<stem>.png or <stem>_mask.png  (optional, mask > 0 = anomalous)""",
    "mvtec_ad2": """\
  <root>/<category>/train/good/*.png
  <root>/<category>/validation/good/*.png
  <root>/<category>/test_public/{good,bad}/*.png                 (the test split)
  <root>/<category>/test_public/ground_truth/bad/<stem>_mask.png
  <root>/<category>/test_private/*.png, test_private_mixed/*.png  (no labels, no masks: scored for submission only)""",
    "real_iad": """\
  <root>/realiad_jsons/<variant>/<category>.json   (variant: realiad_jsons, realiad_jsons_sv, realiad_jsons_fuiad_0.0, ...;
                                                  {"meta": {"prefix", "normal_class"}, "train": [...], "test": [...]},
                                                  entries {"category", "anomaly_class", "image_path", "mask_path"})
  <root>/realiad_<resolution>/<prefix>/{OK,NG/<defect>}/S<id>/<category>_<id>_<OK|NG>_C<view>_<timestamp>.jpg
  <root>/realiad_<resolution>/<prefix>/NG/<defect>/S<id>/<same name>.png   (masks next to the NG images)""",
}


# ---------------------------------------------------------------------------------------------
# root / category resolution with helpful errors
# ---------------------------------------------------------------------------------------------


def resolve_root(root: str | Path | None, kind: str) -> Path:
    """``root`` as an absolute Path (relative: against the current folder; ``None`` or "": ``$PRADOT_DATA_ROOT``);
    DatasetError, showing the absolute path tried, if it does not exist."""
    hint = (
        f"Pass the folder that holds the {kind} categories as root, or set the {DATA_ROOT_ENV} environment "
        f"variable to it; to try the project without downloading anything use dataset=synthetic "
        f"(a generated MVTec LOCO-style screw_bag scene).\nExpected layout for {kind!r}:\n{LAYOUTS.get(kind, '')}"
    )
    if root is None or str(root) == "":
        env = os.environ.get(DATA_ROOT_ENV, "")
        if not env:
            raise DatasetError(f"no data root given for dataset kind {kind!r} and {DATA_ROOT_ENV} is not set. {hint}")
        root = env
    path = Path(os.path.abspath(Path(root).expanduser()))  # errors show the absolute path tried
    if not path.is_dir():
        raise DatasetError(f"data root {path} does not exist or is not a folder. {hint}")
    return path


def category_error(kind: str, root: Path, category: str, found: list[str], what: str = "folders") -> DatasetError:
    """The error for a category not found under ``root``: what was found, the known categories, the layout."""
    found_txt = ", ".join(found) if found else "(none)"
    known = KNOWN_CATEGORIES.get(kind, ())
    msg = (
        f"category {category!r} of dataset kind {kind!r} not found under {root}. "
        f"{what.capitalize()} found: {found_txt}."
    )
    if known:
        msg += f" Known {kind} categories: {', '.join(known)}."
    if (root / "train").is_dir() or (root / "test").is_dir():
        msg += f" Note: {root} itself looks like a category folder; root must be its parent."
    msg += f"\nExpected layout:\n{LAYOUTS.get(kind, '')}"
    return DatasetError(msg)


def category_dir(kind: str, root: Path, category: str) -> Path:
    """``root/category``, or a DatasetError (``category_error``) when it is not a folder."""
    if not category or Path(category).name != category:
        raise DatasetError(f"invalid category name {category!r}: expected a folder name under {root}")
    path = root / category
    if not path.is_dir():
        raise category_error(kind, root, category, list_subdirs(root))
    return path


def good_samples(folder: Path, split: str) -> list[Sample]:
    """The images of ``folder`` as good samples of ``split``."""
    return [Sample(p, split, GOOD, 0, ()) for p in list_files(folder)]


class CategoryFolderDataset(AnomalyDataset):
    """A dataset whose categories are folders under the root (``<root>/<category>/...``)."""

    def __init__(self, root: str | Path | None, category: str):
        root_path = resolve_root(root, self.kind)
        self.category_dir = category_dir(self.kind, root_path, category)
        super().__init__(root_path, category)

    def _test_dir(self) -> Path:
        """``<category>/test``, or a DatasetError that shows the expected layout."""
        test_dir = self.category_dir / "test"
        if not test_dir.is_dir():
            raise DatasetError(
                f"{self.kind} category {self.category_dir} has no test folder {test_dir}.\n"
                f"Expected layout:\n{self.layout}"
            )
        return test_dir


def ad_channel(mask: Path, anomaly_type: str) -> DefectChannel:
    """The one ground-truth channel of an AD-style mask (every pixel > 0 anomalous, regions = components)."""
    return DefectChannel(
        mask_path=mask, defect_name=anomaly_type, pixel_value=None, saturation_threshold=1.0, relative_saturation=True
    )


def find_mask(folder: Path, stem: str) -> list[Path]:
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
