"""pradot.io.atomic_write: the target is replaced whole or not at all, and no temporary name is left behind."""

from __future__ import annotations

import os

import pytest

from pradot.io import atomic_write


def test_a_file_is_replaced_only_when_the_block_succeeds(tmp_path):
    target = tmp_path / "sub" / "model.pt"
    with atomic_write(target) as tmp:
        assert tmp.parent == target.parent and tmp.name != target.name and tmp.suffix == ".pt"
        assert not target.exists()  # nothing at the target while writing
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"

    class Boom(Exception):
        pass

    with pytest.raises(Boom), atomic_write(target) as tmp:
        tmp.write_bytes(b"half")
        raise Boom
    assert target.read_bytes() == b"new"  # the old content, whole
    assert sorted(os.listdir(target.parent)) == ["model.pt"]  # the temporary file is gone


def test_a_block_that_writes_nothing_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing was written"), atomic_write(tmp_path / "x.json"):
        pass
    assert list(tmp_path.iterdir()) == []


def test_a_folder_replaces_a_folder_only_when_asked(tmp_path):
    target = tmp_path / "dataset"
    with atomic_write(target) as tmp:
        tmp.mkdir()
        (tmp / "a.txt").write_text("1")
    with pytest.raises(OSError), atomic_write(target) as tmp:
        tmp.mkdir()
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    with atomic_write(target, replace_folder=True) as tmp:
        tmp.mkdir()
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset"]
