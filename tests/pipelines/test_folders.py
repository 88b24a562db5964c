"""Every file the user points at is accounted for, once (pipelines/folders.py), and names are data
(pipelines/names.py). The oracle is a direct listing of the real tree (``os.walk`` without following links,
``os.path.realpath``), not the code under test."""

import csv
import io
import os
import time
from pathlib import Path

import pytest

from pipelines.folders import list_input, output_stems
from pipelines.names import csv_cell, printable


def _tree(tmp_path: Path) -> Path:
    """in/a.png, in/sub/b.png, in/sub/notes.txt, out-of-tree extra/c.png linked as in/ext; link loops to
    ancestors (latest -> ., up -> ..), a dangling link, a self loop, a file link to a.png."""
    inp = tmp_path / "in"
    (inp / "sub").mkdir(parents=True)
    (tmp_path / "extra").mkdir()
    for p in (inp / "a.png", inp / "sub" / "b.png", tmp_path / "extra" / "c.png"):
        p.write_bytes(b"\x89PNG fake")
    (inp / "sub" / "notes.txt").write_text("not an image")
    os.symlink(".", inp / "latest")
    os.symlink("..", inp / "sub" / "up")
    os.symlink(tmp_path / "extra", inp / "ext")
    os.symlink(inp / "missing.png", inp / "dangling.png")
    os.symlink("self.png", inp / "self.png")
    os.symlink("a.png", inp / "alias.png")
    return inp


def _real_images(root: Path) -> set[str]:
    """The oracle: the real regular image files reachable from ``root`` (links resolved), each once."""
    out = set()
    for d, _, names in os.walk(root, followlinks=False):
        for n in names:
            p = os.path.join(d, n)
            if n.endswith(".png") and os.path.isfile(p):
                out.add(os.path.realpath(p))
    out.add(os.path.realpath(root / "ext" / "c.png"))  # the linked folder outside the tree is followed once
    return out


@pytest.mark.parametrize("form", ["folder", "glob"])
def test_each_file_is_listed_once_and_every_unscored_name_has_its_reason(tmp_path, form):
    inp = _tree(tmp_path)
    pattern = str(inp) if form == "folder" else f"{inp}/**/*.png"
    t0 = time.perf_counter()
    listing = list_input(pattern)
    assert time.perf_counter() - t0 < 5  # two loops to ancestors: listing still ends after one pass
    got = [os.path.realpath(f) for f in listing.files]
    assert len(got) == len(set(got)) and set(got) == _real_images(inp)
    jobs, clashes = output_stems(listing.files, listing.root)
    assert len(jobs) == 3 and not clashes
    reasons = dict(listing.skipped)
    assert set(reasons) == {"dangling.png", "self.png", "alias.png"}
    assert "dangling link" in reasons["dangling.png"] and "missing.png" in reasons["dangling.png"]
    assert "loop" in reasons["self.png"]
    assert "same file as a.png" in reasons["alias.png"]
    assert any("latest" in n and "not followed again" in n for n in listing.notes)


def test_glob_and_folder_list_the_same_files(tmp_path):
    inp = _tree(tmp_path)
    by_folder, by_glob = list_input(str(inp)), list_input(f"{inp}/**/*.png")
    assert by_folder.files == by_glob.files and by_folder.skipped == by_glob.skipped
    top = list_input(f"{inp}/*.png")  # no **: the top folder only, as glob.glob
    assert [f.name for f in top.files] == ["a.png"]


# ------------------------------------------------------------------------------------- names are data
@pytest.mark.parametrize(
    "name, cell",
    [
        ("plain.png", "plain.png"),
        (os.fsdecode(b"caf\xe9.png"), "caf\\xe9.png"),  # Latin-1 bytes: escaped, not an error
        ("=HYPERLINK(1).png", "'=HYPERLINK(1).png"),  # a formula is text
        ("-1+2.png", "'-1+2.png"),
        ("@SUM.png", "'@SUM.png"),
        ("line\nbreak.png", "line\\x0abreak.png"),  # one name, one row
        ("ünïcode.png", "ünïcode.png"),  # valid UTF-8 unchanged
    ],
)
def test_names_become_safe_csv_cells(name, cell):
    assert csv_cell(name) == cell
    buf = io.StringIO()
    csv.writer(buf).writerow([csv_cell(name), 1.5])
    buf.getvalue().encode("utf-8")  # strict UTF-8 accepts every cell
    (row,) = csv.reader(io.StringIO(buf.getvalue()))
    assert row == [cell, "1.5"]
    assert printable(name).encode("utf-8").decode("utf-8") == printable(name)
