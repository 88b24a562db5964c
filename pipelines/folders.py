"""The folders of ``predict``: the images of an input folder or glob, an output folder that is never
overwritten silently, and each image's output name mirroring the input tree."""

from __future__ import annotations

import glob
import shutil
from collections.abc import Sequence
from pathlib import Path

from pipelines import cli

__all__ = ["IMAGE_EXTENSIONS", "OUTPUTS", "input_files", "check_output", "output_stems", "relative_name"]

#: files a folder input is searched for (case-insensitive); a glob takes every file it matches
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
#: what predict writes in its output folder (replaced with overwrite=true)
OUTPUTS = ("scores.csv", "errors.csv", "maps", "masks", "overlays")


def relative_name(f: Path, root: Path) -> Path:
    """``f`` under ``root`` (its own name when it is not under it)."""
    return f.relative_to(root) if f.is_relative_to(root) else Path(f.name)


def input_files(pattern: str) -> tuple[Path, list[Path]]:
    """``(root, files)``: a folder's image files (recursive, sorted), or the files a glob matches (``**``
    recursive) with the glob's fixed leading folder as root.

    Raises:
        FileNotFoundError: nothing to score (the message says what was searched).
    """
    path = Path(pattern)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        root, what = path, f"image files ({', '.join(IMAGE_EXTENSIONS)}) under the folder {path}"
    elif glob.has_magic(pattern):
        files = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
        lead = next(i for i, part in enumerate(path.parts) if glob.has_magic(part))
        root = Path(*path.parts[:lead]) if lead else Path(".")
        what = f"files matching {pattern}"
    elif path.is_file():
        files, root, what = [path], path.parent, str(path)
    else:
        raise FileNotFoundError(f"input {pattern} is neither a folder, a file nor a glob that matches files")
    if not files:
        raise FileNotFoundError(f"nothing to score: no {what}")
    return root, files


def check_output(output: Path, overwrite: bool, input_root: Path) -> bool:
    """Refuse an output folder inside the input folder, or a non-empty one without ``overwrite``. Changes
    nothing (:func:`prepare_output` does, once the model has loaded). Returns whether the folder has entries.

    Raises:
        UsageError: what is wrong and how to fix it (nothing is written).
    """
    out, root = output.resolve(), input_root.resolve()
    if out == root or root in out.parents:
        raise cli.UsageError(
            f"output {output} lies inside the input folder {input_root}: its maps and overlays would "
            f"be read as input next time; choose a folder outside it"
        )
    if out.exists() and not out.is_dir():
        raise cli.UsageError(f"output {output} is a file; give a folder")
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if entries and not overwrite:
        raise cli.UsageError(
            f"output folder {output} is not empty ({len(entries)} entries, e.g. {entries[:3]}); "
            f"choose a new or empty folder, or pass overwrite=true to replace predict's files there "
            f"({', '.join(OUTPUTS)})"
        )
    return bool(entries)


def prepare_output(output: Path) -> None:
    """Make the (checked) output folder, removing predict's earlier outputs there (:data:`OUTPUTS`) and leaving
    other files alone."""
    out = output.resolve()
    for name in OUTPUTS if out.is_dir() else ():
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    out.mkdir(parents=True, exist_ok=True)


def output_stems(files: Sequence[Path], root: Path) -> tuple[list[tuple[Path, str]], list[tuple[str, str]]]:
    """``(jobs, clashes)``: each file with its output stem (path under root, no extension), and the files whose
    stem another file already has (they would overwrite its outputs)."""
    seen: dict[str, str] = {}
    jobs, clashes = [], []
    for f in files:
        rel = relative_name(f, root)
        stem = rel.with_suffix("").as_posix()
        if stem in seen:
            clashes.append(
                (
                    rel.as_posix(),
                    f"its outputs would overwrite those of {seen[stem]} (same name without "
                    f"extension); rename one of them",
                )
            )
            continue
        seen[stem] = rel.as_posix()
        jobs.append((f, stem))
    return jobs, clashes
