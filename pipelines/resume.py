"""``predict resume=true``: go on with a predict run that was stopped, keeping what it finished.

An output folder a predict run wrote holds ``predict.json`` (the model and operating point, written before the
first image) and ``scores.csv`` (one row per image, written after that image's map, mask and overlay files).
A resumed run keeps a row only when it is complete and consistent: every column present, the numbers finite,
each file the row names present, non-empty and at the path this run would write, and the image still in the
input; everything else (rows cut short by the kill, images with no row, the images of ``errors.csv``) is
scored again. A folder written with another model or operating point is refused.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pipelines import cli

__all__ = ["MANIFEST", "write_manifest", "check_manifest", "completed_rows", "rewrite_scores"]

#: what a predict run records about itself in its output folder
MANIFEST = "predict.json"
_NUMBERS = ("score", "raw_score", "threshold", "mask_threshold")


def write_manifest(output: Path, manifest: Mapping[str, Any]) -> None:
    """Write ``predict.json`` (atomically: a complete file or the previous one)."""
    tmp = output / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(dict(manifest), indent=2, sort_keys=True), encoding="utf-8")
    os.replace(tmp, output / MANIFEST)


def check_manifest(output: Path, manifest: Mapping[str, Any]) -> bool:
    """Whether ``output`` holds an earlier run's results to resume (False: a new or empty folder).

    Raises:
        UsageError: the folder's results came from another model or operating point, or from no predict
            run that can be resumed (no ``predict.json``).
    """
    path = output / MANIFEST
    if not path.is_file():
        if (output / "scores.csv").exists():
            raise cli.UsageError(
                f"resume=true: {output} has no {MANIFEST}, so what wrote its scores.csv is unknown; pass "
                f"overwrite=true to score everything again"
            )
        return False
    try:
        earlier = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise cli.UsageError(f"resume=true: cannot read {path} ({exc}); pass overwrite=true instead") from None
    diff = sorted(k for k in set(earlier) | set(manifest) if earlier.get(k) != manifest.get(k))
    if diff:
        said = ", ".join(f"{k}: {earlier.get(k)!r} then, {manifest.get(k)!r} now" for k in diff)
        raise cli.UsageError(
            f"resume=true: {output} was written with other settings ({said}); resume with the same ones, or "
            f"pass overwrite=true to score everything again"
        )
    return True


def _finite(text: str | None) -> bool:
    try:
        return text is not None and math.isfinite(float(text))
    except ValueError:
        return False


def completed_rows(
    output: Path, columns: Iterable[str], expected: Mapping[str, Mapping[str, tuple[str, Path | None]]]
) -> dict[str, list]:
    """The rows of ``output/scores.csv`` a resumed run keeps, by their ``path`` cell.

    ``expected``: for each image of this run (by the ``path`` cell it gets), the cell and the file of each
    output it would write (``{"map": ("maps/a.tiff", <path>), "mask": ("", None), ...}``: ``None`` = not
    written). A row is kept when its image is in ``expected``, it has every column with finite numbers, its
    file cells are the expected ones, and each of those files exists and is not empty.
    """
    columns = list(columns)
    path = output / "scores.csv"
    if not path.is_file():
        return {}
    kept: dict[str, list] = {}
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.DictReader(f)
        for row in reader:
            name = row.get("path")
            files = expected.get(name or "")
            if files is None or any(row.get(c) in (None, "") for c in ("path", "is_anomaly")):
                continue
            if not all(_finite(row.get(c)) for c in _NUMBERS):
                continue
            if any(
                row.get(k) != cell or (file is not None and not _nonempty(file)) for k, (cell, file) in files.items()
            ):
                continue
            kept[name or ""] = [row[c] for c in columns]
    return kept


def _nonempty(path: Path) -> bool:
    try:
        return path.is_file() and path.stat().st_size > 0
    except OSError:
        return False


def rewrite_scores(output: Path, columns: Iterable[str], rows: Iterable[list]) -> None:
    """Replace ``scores.csv`` with the header and ``rows`` (atomically), for the resumed run to append to."""
    tmp = output / "scores.csv.tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(list(columns))
        w.writerows(rows)
    os.replace(tmp, output / "scores.csv")
