"""The folders of ``predict``: the images of an input folder or glob, an output folder that is never
overwritten silently, and each image's output name mirroring the input tree."""

from __future__ import annotations

import errno
import fnmatch
import glob
import os
import shutil
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipelines import cli
from pipelines.names import printable

__all__ = [
    "IMAGE_EXTENSIONS",
    "OUTPUTS",
    "Listing",
    "walk",
    "list_input",
    "input_files",
    "check_output",
    "output_stems",
    "relative_name",
]

#: files a folder input is searched for (case-insensitive); a glob takes every file it matches
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
#: what predict writes in its output folder (replaced with overwrite=true)
OUTPUTS = ("scores.csv", "errors.csv", "predict.json", "maps", "masks", "overlays")


def relative_name(f: Path, root: Path) -> Path:
    """``f`` under ``root`` (its own name when it is not under it)."""
    return f.relative_to(root) if f.is_relative_to(root) else Path(f.name)


@dataclass
class Listing:
    """What an input names: ``files`` to score (each file once, sorted), ``skipped`` ``(name, reason)`` for each
    name it matched that cannot be scored (a dangling link, a link loop, the same file reached twice, a folder
    that cannot be read), and ``notes`` (links to folders already listed, not followed again)."""

    root: Path
    files: list[Path]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _closure(states: set[int], comps: Sequence[str]) -> set[int]:
    out = set(states)
    for i in states:
        while i < len(comps) and comps[i] == "**":
            i += 1
            out.add(i)
    return out


def _advance(states: set[int], comps: Sequence[str], name: str, is_dir: bool, hidden: bool) -> set[int]:
    """The pattern positions after matching one more path component ``name`` (``**``: zero or more folders)."""
    nxt: set[int] = set()
    for i in _closure(states, comps):
        if i >= len(comps):
            continue
        c = comps[i]
        dot_ok = hidden or not name.startswith(".") or c.startswith(".")
        if c == "**":
            if is_dir and (hidden or not name.startswith(".")):
                nxt.add(i)
        elif dot_ok and fnmatch.fnmatchcase(name, c):
            nxt.add(i + 1)
    return nxt


def _link_reason(path: Path, exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "a symbolic link loop: the link never reaches a file"
    if path.is_symlink():
        return f"a dangling link: its target {printable(os.readlink(path))} does not exist"
    return f"cannot open it ({type(exc).__name__}: {printable(exc.strerror or exc)})"


def _take_file(entry: os.DirEntry, root: Path, out: Listing, seen: dict[tuple[int, int], list[Path]]) -> None:
    """A matched file name: remembered by device and inode, or skipped with its reason."""
    path = Path(entry.path)
    try:
        fst = entry.stat()
    except OSError as exc:
        out.skipped.append((relative_name(path, root).as_posix(), _link_reason(path, exc)))
        return
    if not stat.S_ISREG(fst.st_mode):
        out.skipped.append((relative_name(path, root).as_posix(), "not a regular file (a device, pipe or socket)"))
        return
    seen.setdefault((fst.st_dev, fst.st_ino), []).append(path)


def walk(root: Path, comps: Sequence[str], *, hidden: bool, want=lambda name: True) -> Listing:
    """Every file under ``root`` whose path below it matches the glob components ``comps`` (``**`` = any
    folders, ``*``/``?``/``[...]`` within one name, as :func:`glob.glob` with ``recursive=True``; ``hidden``:
    ``*`` and ``**`` also match names starting with a dot) and whose name passes ``want``.

    Links are followed with loop detection by device and inode: each folder is listed once and each file
    is taken once (the same file reached again, e.g. through a ``latest -> .`` link, is skipped with its
    reason), so listing ends after one pass over the real tree. Names that match but cannot be scored
    (dangling links, link loops, unreadable folders, not a regular file) are in ``Listing.skipped``.
    """
    out = Listing(root, [])
    if not root.is_dir():
        return out
    st = root.stat()
    seen_dirs = {(st.st_dev, st.st_ino): root}
    seen_files: dict[tuple[int, int], list[Path]] = {}
    stack: list[tuple[Path, set[int]]] = [(root, {0})]
    n = len(comps)
    while stack:
        folder, states = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            out.skipped.append(
                (relative_name(folder, root).as_posix() + "/", f"cannot list the folder ({exc.strerror})")
            )
            continue
        for entry in reversed(entries):
            path = Path(entry.path)
            try:
                is_dir = entry.is_dir()
            except OSError:  # a link loop: matched as a name, reported below
                is_dir = False
            nxt = _advance(states, comps, entry.name, is_dir, hidden)
            if not nxt:
                continue
            reach = _closure(nxt, comps)
            if is_dir:
                if not any(i < n for i in reach):
                    continue
                try:
                    dst = entry.stat()
                except OSError as exc:
                    out.skipped.append((relative_name(path, root).as_posix() + "/", _link_reason(path, exc)))
                    continue
                key = (dst.st_dev, dst.st_ino)
                if key in seen_dirs:
                    out.notes.append(
                        f"{printable(relative_name(path, root))}: a link to the folder "
                        f"{printable(relative_name(seen_dirs[key], root))} listed already; not followed again"
                    )
                    continue
                seen_dirs[key] = path
                stack.append((path, nxt))
            elif n in reach and want(entry.name):
                _take_file(entry, root, out, seen_files)
    for paths in seen_files.values():  # a file reached by several names: scored once, under the first name
        first, *others = sorted(paths)
        out.files.append(first)
        for p in others:
            why = f"the same file as {relative_name(first, root).as_posix()} (reached through a link): scored once"
            out.skipped.append((relative_name(p, root).as_posix(), why))
    out.files.sort()
    out.skipped.sort()
    return out


def _image_name(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


def list_input(pattern: str) -> Listing:
    """The files an input names: a folder's image files (:data:`IMAGE_EXTENSIONS`, recursive, hidden names
    too), or the files a glob matches (``**`` recursive) with the glob's fixed leading folder as root, or
    one file. Folders and globs are listed the same way (:func:`walk`: links followed once, loops detected).

    Raises:
        FileNotFoundError: nothing to score (the message says what was searched).
    """
    path = Path(pattern)
    if path.is_dir():
        listing = walk(path, ("**", "*"), hidden=True, want=_image_name)
        what = f"image files ({', '.join(IMAGE_EXTENSIONS)}) under the folder {path}"
    elif glob.has_magic(pattern):
        lead = next(i for i, part in enumerate(path.parts) if glob.has_magic(part))
        root = Path(*path.parts[:lead]) if lead else Path(".")
        listing = walk(root, path.parts[lead:], hidden=False)
        what = f"files matching {pattern}"
    elif path.is_file():
        listing, what = Listing(path.parent, [path]), str(path)
    else:
        raise FileNotFoundError(f"input {pattern} is neither a folder, a file nor a glob that matches files")
    if not listing.files and not listing.skipped:
        raise FileNotFoundError(f"nothing to score: no {what}")
    return listing


def input_files(pattern: str) -> tuple[Path, list[Path]]:
    """``(root, files)`` of :func:`list_input` (the names it skips are in its ``skipped``)."""
    listing = list_input(pattern)
    return listing.root, listing.files


def check_output(output: Path, overwrite: bool, input_root: Path) -> bool:
    """Refuse an output folder inside the input folder, or a non-empty one without ``overwrite`` (predict passes
    ``overwrite or resume``). Changes
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
            f"choose a new or empty folder, pass overwrite=true to replace predict's files there "
            f"({', '.join(OUTPUTS)}), or resume=true to go on with a stopped predict run in it"
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
