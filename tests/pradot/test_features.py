"""The feature cache is keyed on the images' contents, and a damaged entry is detected and extracted again."""

import io
import json
import logging
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pradot.backbone import load_backbone
from pradot.data import Sample
from pradot.engine import DataSpec, train_features
from pradot.features import FeatureCache, files_fingerprint


def _same_size_rewrite(target: Path, rgb: np.ndarray) -> None:
    """New pixels in ``target``, padded (a tEXt chunk) to its byte size, with its atime/mtime restored."""
    st = target.stat()
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=9)
    data = buf.getvalue()
    body = b"pad\x00" + b"x" * (st.st_size - len(data) - 16)
    chunk = struct.pack(">I", len(body)) + b"tEXt" + body + struct.pack(">I", zlib.crc32(b"tEXt" + body))
    target.write_bytes(data[:-12] + chunk + data[-12:])
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert target.stat().st_size == st.st_size and target.stat().st_mtime_ns == st.st_mtime_ns


@pytest.fixture()
def images(tmp_path):
    folder = tmp_path / "data" / "cat" / "train" / "good"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(4):
        paths.append(folder / f"{i:03d}.png")
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(paths[-1])
    return paths


def _features(paths, cache, tmp_path):
    spec = DataSpec(kind="folder", root=str(tmp_path / "data"), category="cat", image_size=32)
    backbone = load_backbone("tiny_random", (2,))
    feats = train_features(backbone, spec, [Sample(p, "train", "good", 0) for p in paths], cache, "cpu", progress=False)
    return {s: np.array(a) for s, a in feats.items()}


def test_a_content_change_with_the_same_size_and_mtime_gives_fresh_features(images, tmp_path):
    cache = FeatureCache(tmp_path / "cache")
    key = files_fingerprint(images)
    before = _features(images, cache, tmp_path)
    _same_size_rewrite(images[1], np.full((48, 48, 3), 128, np.uint8))
    assert files_fingerprint(images) != key
    cached = _features(images, cache, tmp_path)
    fresh = _features(images, None, tmp_path)
    np.testing.assert_array_equal(cached[2], fresh[2])
    assert not np.allclose(before[2][1], fresh[2][1])
    np.testing.assert_array_equal(before[2][0], fresh[2][0])  # the other images did not change
    assert (cache.misses, cache.hits) == (2, 0)
    # unchanged files, touched: same key (the content decides), a cache hit
    os.utime(images[0])
    assert _features(images, cache, tmp_path)[2].tobytes() == fresh[2].tobytes() and cache.hits == 1
    # the file list's order is part of the key (features are stored in that order)
    assert files_fingerprint(images[::-1]) != files_fingerprint(images)


def _damage_array(folder: Path) -> str:
    npy = folder / "stage2.npy"
    npy.write_bytes(npy.read_bytes()[:-100])
    return "truncated"


def _damage_record(folder: Path) -> str:
    (folder / "stage2.json").write_text('{"shape": [4, ')
    return "unreadable"


def _damage_header(folder: Path) -> str:
    npy = folder / "stage2.npy"
    npy.write_bytes(b"garbage" + npy.read_bytes()[7:])
    return "no readable .npy header"


def _damage_shape(folder: Path) -> str:
    record = json.loads((folder / "stage2.json").read_text())
    record["shape"][0] += 1
    (folder / "stage2.json").write_text(json.dumps(record))
    return "but its record says"


@pytest.mark.parametrize("damage", [_damage_array, _damage_record, _damage_header, _damage_shape])
def test_a_damaged_entry_is_detected_named_and_extracted_again(images, tmp_path, caplog, damage):
    cache = FeatureCache(tmp_path / "cache")
    good = _features(images, cache, tmp_path)
    (folder,) = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    phrase = damage(folder)
    assert FeatureCache.problem(folder, 2) is not None and phrase in FeatureCache.problem(folder, 2)
    with caplog.at_level(logging.WARNING, logger="pradot.features"):
        again = _features(images, cache, tmp_path)
    assert "is damaged, not used" in caplog.text and phrase in caplog.text
    np.testing.assert_array_equal(again[2], good[2])
    assert cache.misses == 2 and FeatureCache.problem(folder, 2) is None  # rewritten intact
    assert _features(images, cache, tmp_path)[2].tobytes() == good[2].tobytes() and cache.hits == 1
