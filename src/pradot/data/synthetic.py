"""Synthetic data sets: the generator and its categories, two MVTec LOCO-style object scenes, ``screw_bag``
(:mod:`pradot.data.synthetic_bag`: a tray with six compartments under a translucent bag) and ``fastener_kit``
(:mod:`pradot.data.synthetic_kit`), and two procedural textures in the MVTec AD layout, ``woven_fabric`` and
``wood_grain`` (:mod:`pradot.data.synthetic_texture`: small, thin and large structural defects). All four live
side by side under one root (the multi-class setting, :mod:`pradot.multiclass`).

Logical anomalies break the layout rules with parts that look perfectly normal (they need spatial
context); structural anomalies damage one part locally.

Output (``generate``): ``<root>/<category>/`` in the MVTec LOCO AD layout, one ground-truth PNG per
defect (``ground_truth/<type>/<id>/000.png`` ...) valued with the defect's ``pixel_value`` in
``defects_config.json``. Following the MVTec LOCO convention, a missing part's region is the area
where the part can lie and its saturation threshold is the part's area in pixels (absolute), so
detecting a part-sized piece of the region saturates; other defects saturate at their whole area
(relative 1.0). Same parameters -> byte-identical PNGs. ``metadata.json`` records what was done to
each test image; ``.pradot_synthetic.json`` is the stamp ``ensure_synthetic`` compares.

``fastener_kit`` puts parts at fixed seats on a plain board: its logical anomalies a memory bank of patches
cannot see. ``fixture_plate`` (:mod:`pradot.data.synthetic_fixture`) holds parts in machined pockets with about
a pixel of play: the near-rigid layout where a Gaussian per position (PaDiM) is strongest.

CLI: ``python -m pradot.data.synthetic --root DIR --category screw_bag [--seed S --image-size PX ...]``
(also installed as ``pradot-synthetic``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import InputError
from . import synthetic_bag as _bag
from .synthetic_bag import DEFECTS, LOGICAL_KINDS, STRUCTURAL_KINDS, Scene, nominal_pose, part_areas
from .synthetic_parts import Canvas
from .synthetic_texture import AD_CATEGORIES, TEXTURES

__all__ = [
    "DEFAULTS",
    "DEFECTS",
    "LOGICAL_KINDS",
    "OBJECT_SCENES",
    "SCENES",
    "TEXTURES",
    "STAMP_NAME",
    "STRUCTURAL_KINDS",
    "Canvas",
    "Scene",
    "defects_config",
    "ensure_synthetic",
    "generate",
    "main",
    "nominal_pose",
    "part_areas",
]

GENERATOR_VERSION = 1
STAMP_NAME = ".pradot_synthetic.json"
#: fastener_kit: pradot.data.synthetic_kit; fixture_plate: pradot.data.synthetic_fixture (near-rigid pockets)
OBJECT_SCENES: tuple[str, ...] = ("screw_bag", "fastener_kit", "fixture_plate")
# textures and the high-resolution fine_weave: pradot.data.synthetic_texture (MVTec AD layout)
SCENES: tuple[str, ...] = OBJECT_SCENES + AD_CATEGORIES
DEFAULTS: dict[str, int] = {
    "image_size": 128,
    "n_train": 60,
    "n_validation": 20,
    "n_test_good": 20,
    "n_test_logical": 20,
    "n_test_structural": 20,
}

LOGICAL = "logical_anomalies"
STRUCTURAL = "structural_anomalies"

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------


def defects_config(image_size: int, category: str = "screw_bag") -> list[dict[str, Any]]:
    """The ``defects_config.json`` entries of a scene for ``image_size``."""
    return _scene(category).defects_config(image_size)


def _save_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG", compress_level=6)


def _params(category: str, seed: int, image_size: int, counts: dict[str, int]) -> dict[str, Any]:
    return {
        "generator_version": GENERATOR_VERSION,
        "category": category,
        "seed": int(seed),
        "image_size": int(image_size),
        **counts,
    }


def _checked_counts(
    category: str,
    seed: int,
    image_size: int,
    n_train: int,
    n_validation: int,
    n_test_good: int,
    n_test_logical: int,
    n_test_structural: int,
) -> dict[str, int]:
    """The split sizes as a dict, after checking every argument."""
    counts = {
        "n_train": int(n_train),
        "n_validation": int(n_validation),
        "n_test_good": int(n_test_good),
        "n_test_logical": int(n_test_logical),
        "n_test_structural": int(n_test_structural),
    }
    _check_args(category, seed, image_size, counts)
    return counts


def _check_args(category: str, seed: int, image_size: int, counts: dict[str, int]) -> None:
    if category not in SCENES:
        raise InputError(f"unknown synthetic category {category!r}; available scenes: {', '.join(SCENES)}")
    if int(seed) < 0:
        raise InputError(f"seed must be >= 0, got {seed}")
    if int(image_size) < 64:
        raise InputError(f"image_size must be >= 64, got {image_size}")
    for name, n in counts.items():
        if int(n) < 0:
            raise InputError(f"{name} must be >= 0, got {n}")
    if counts["n_train"] < 1:
        raise InputError("n_train must be >= 1")


def _scene(category: str):
    """The module of a scene (:data:`SCENES`)."""
    if category == "fastener_kit":
        from . import synthetic_kit

        return synthetic_kit
    if category == "fixture_plate":
        from . import synthetic_fixture

        return synthetic_fixture
    return _bag


def _write_all(
    out: Path, seed: int, image_size: int, counts: dict[str, int], progress: bool, category: str = "screw_bag"
) -> dict[str, Any]:
    canvas = Canvas(image_size)
    scene = _scene(category)
    logical, structural, render, defects = scene.LOGICAL_KINDS, scene.STRUCTURAL_KINDS, scene.render, scene.DEFECTS
    jobs: list[tuple[str, str, int, int]] = []  # (folder, anomaly kind, index, stream)
    jobs += [("train/good", "", i, 0) for i in range(counts["n_train"])]
    jobs += [("validation/good", "", i, 1) for i in range(counts["n_validation"])]
    jobs += [("test/good", "", i, 2) for i in range(counts["n_test_good"])]
    jobs += [(f"test/{LOGICAL}", logical[i % len(logical)], i, 3) for i in range(counts["n_test_logical"])]
    jobs += [(f"test/{STRUCTURAL}", structural[i % len(structural)], i, 4) for i in range(counts["n_test_structural"])]
    values = {name: spec[0] for name, spec in defects.items()}
    metadata: dict[str, Any] = {}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), desc=f"synthetic {category}", unit="img", leave=False)
    for folder, kind, index, stream in jobs:
        rng = np.random.default_rng([int(seed), stream, index])
        image_id = f"{index:03d}"
        image, channels, info = render(kind, rng, canvas)
        _save_png(image, out / folder / f"{image_id}.png")
        if channels:
            anomaly_type = folder.split("/")[1]
            for c, (name, mask) in enumerate(channels):
                if not mask.any():  # pragma: no cover - guarded by construction
                    raise RuntimeError(f"empty ground truth for {folder}/{image_id} ({name})")
                png = (mask.astype(np.uint8) * values[name]).astype(np.uint8)
                _save_png(png, out / "ground_truth" / anomaly_type / image_id / f"{c:03d}.png")
            metadata[f"{anomaly_type}/{image_id}"] = {"anomaly": kind, "defects": [n for n, _ in channels], **info}
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return metadata


def generate(
    root: str | Path,
    category: str = "screw_bag",
    seed: int = 0,
    image_size: int = DEFAULTS["image_size"],
    n_train: int = DEFAULTS["n_train"],
    n_validation: int = DEFAULTS["n_validation"],
    n_test_good: int = DEFAULTS["n_test_good"],
    n_test_logical: int = DEFAULTS["n_test_logical"],
    n_test_structural: int = DEFAULTS["n_test_structural"],
    progress: bool = False,
) -> Path:
    """Write the synthetic dataset to ``<root>/<category>`` and return that folder.

    The data are written to a temporary sibling folder first and moved into place at the end, so
    a reader never sees half a dataset. An existing ``<root>/<category>`` made by this generator is
    replaced; any other non-empty folder there is left alone (InputError).
    """
    counts = _checked_counts(
        category, seed, image_size, n_train, n_validation, n_test_good, n_test_logical, n_test_structural
    )
    root = Path(root).expanduser()
    target = root / category
    if target.exists() and any(target.iterdir()) and not (target / STAMP_NAME).is_file():
        raise InputError(f"{target} exists and was not made by the synthetic generator; refusing to overwrite it")
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    tmp = root / f".{category}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        if category in AD_CATEGORIES:
            from . import synthetic_texture

            metadata = synthetic_texture.write(tmp, category, int(seed), int(image_size), counts)
            (tmp / "README.txt").write_text(synthetic_texture.describe(category, seed, image_size))
        else:
            metadata = _write_all(tmp, int(seed), int(image_size), counts, progress, category)
            (tmp / "defects_config.json").write_text(
                json.dumps(defects_config(int(image_size), category), indent=2) + "\n"
            )
            (tmp / "README.txt").write_text(_scene(category).describe(seed, image_size))
        (tmp / "metadata.json").write_text(json.dumps(metadata, indent=1, sort_keys=True) + "\n")
        params = _params(category, int(seed), int(image_size), counts)
        (tmp / STAMP_NAME).write_text(json.dumps(params, indent=1, sort_keys=True) + "\n")
        if target.exists():
            shutil.rmtree(target)
        try:
            os.replace(tmp, target)
        except OSError:
            # another process put a dataset there meanwhile: keep it if it is the same one
            if _read_stamp(target) != params:
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    n = sum(counts.values())
    if progress:
        print(
            f"synthetic {category}: {n} images ({counts['n_train']} train, {counts['n_validation']} validation, "
            f"{counts['n_test_good']} good / {counts['n_test_logical']} logical / "
            f"{counts['n_test_structural']} structural "
            f"test) at {image_size}px, seed {seed}, in {time.perf_counter() - start:.1f}s -> {target}"
        )
    return target


def _read_stamp(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / STAMP_NAME).read_text())
    except (OSError, ValueError):
        return None


def ensure_synthetic(
    root: str | Path,
    category: str = "screw_bag",
    seed: int = 0,
    image_size: int = DEFAULTS["image_size"],
    n_train: int = DEFAULTS["n_train"],
    n_validation: int = DEFAULTS["n_validation"],
    n_test_good: int = DEFAULTS["n_test_good"],
    n_test_logical: int = DEFAULTS["n_test_logical"],
    n_test_structural: int = DEFAULTS["n_test_structural"],
    progress: bool = False,
) -> Path:
    """``<root>/<category>``, generated only when it is missing or its stamp has other parameters."""
    counts = _checked_counts(
        category, seed, image_size, n_train, n_validation, n_test_good, n_test_logical, n_test_structural
    )
    target = Path(root).expanduser() / category
    wanted, found = _params(category, int(seed), int(image_size), counts), _read_stamp(target)
    if found == wanted:
        return target
    if found is not None:  # another recipe's copy: say so, it is replaced (same parameters make it again)
        changed = {k: (found.get(k), v) for k, v in wanted.items() if found.get(k) != v}
        log.warning(
            "regenerating %s: it was generated with other parameters (%s); give data.root another folder to keep both",
            target,
            ", ".join(f"{k}: {a} -> {b}" for k, (a, b) in changed.items()),
        )
    return generate(root, category, int(seed), int(image_size), progress=progress, **counts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pradot-synthetic",
        description="Generate a synthetic MVTec LOCO-style dataset (logical + structural anomalies): the screw_bag "
        "scene, the fastener_kit or the fixture_plate scene, or a texture.",
    )
    parser.add_argument("--root", required=True, help="folder that will hold <category>/")
    parser.add_argument("--category", default="screw_bag", choices=SCENES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=DEFAULTS["image_size"])
    parser.add_argument("--n-train", type=int, default=DEFAULTS["n_train"])
    parser.add_argument("--n-validation", type=int, default=DEFAULTS["n_validation"])
    parser.add_argument("--n-test-good", type=int, default=DEFAULTS["n_test_good"])
    parser.add_argument("--n-test-logical", type=int, default=DEFAULTS["n_test_logical"])
    parser.add_argument("--n-test-structural", type=int, default=DEFAULTS["n_test_structural"])
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    args = parser.parse_args(argv)
    try:
        generate(
            args.root,
            args.category,
            seed=args.seed,
            image_size=args.image_size,
            n_train=args.n_train,
            n_validation=args.n_validation,
            n_test_good=args.n_test_good,
            n_test_logical=args.n_test_logical,
            n_test_structural=args.n_test_structural,
            progress=not args.quiet,
        )
    except ValueError as exc:
        parser.error(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
