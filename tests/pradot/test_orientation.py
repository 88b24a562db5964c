"""Orientation: a phone JPEG whose pixels are stored rotated, with an EXIF orientation tag, is read upright
(as a person sees it) everywhere an image is read -- dataset index sizes, masks, training/scoring images,
the serving decoder -- so its anomaly map and its mask align with the image a person sees."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image

from pradot.data import ImageDataset, load_dataset, read_image
from pradot.data.base import image_size_of, read_mask
from pradot.engine import score_samples
from pradot.serving import decode_image
from tests.helpers import FakeModel, b64

H, W = 24, 40  # the upright (seen) size; the stored pixels are W x H


def seen_image() -> np.ndarray:
    """What a person sees: dark, with a bright defect in the top-left corner."""
    img = np.full((H, W, 3), 40, np.uint8)
    img[2:10, 3:13] = 250
    return img


def seen_mask() -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[2:10, 3:13] = 255
    return m


def stored(upright: np.ndarray) -> np.ndarray:
    """The pixels a camera stores with EXIF orientation 6 ("rotate 90 degrees clockwise to display")."""
    return np.ascontiguousarray(np.rot90(upright, k=1))


def exif_bytes(array: np.ndarray, fmt: str) -> bytes:
    img = Image.fromarray(array)
    exif = img.getexif()
    exif[ExifTags.Base.Orientation] = 6
    buf = io.BytesIO()
    img.save(buf, format=fmt, exif=exif.tobytes(), **({"quality": 98} if fmt == "JPEG" else {}))
    return buf.getvalue()


def test_the_stored_pixels_are_rotated_and_tagged():
    data = exif_bytes(stored(seen_image()), "JPEG")
    with Image.open(io.BytesIO(data)) as img:
        assert img.size == (H, W) and img.getexif()[ExifTags.Base.Orientation] == 6  # (width, height) stored


def _dataset(root: Path, mask_with_exif: bool) -> Path:
    cat = root / "part"
    for sub in ("train/good", "test/good", "test/scratch", "ground_truth/scratch"):
        (cat / sub).mkdir(parents=True)
    for i in range(2):
        Image.fromarray(np.full((H, W, 3), 40, np.uint8)).save(cat / "train" / "good" / f"{i}.png")
    Image.fromarray(np.full((H, W, 3), 40, np.uint8)).save(cat / "test" / "good" / "000.png")
    (cat / "test" / "scratch" / "000.jpg").write_bytes(exif_bytes(stored(seen_image()), "JPEG"))
    mask_path = cat / "ground_truth" / "scratch" / "000_mask.png"
    if mask_with_exif:  # a mask saved from the photo's own orientation, tag kept
        mask_path.write_bytes(exif_bytes(stored(seen_mask()), "PNG"))
    else:  # drawn over the upright image in an annotation tool
        Image.fromarray(seen_mask()).save(mask_path)
    return root


@pytest.mark.parametrize("mask_with_exif", [False, True], ids=["plain mask", "mask with EXIF"])
def test_map_and_mask_align_with_the_image_a_person_sees(tmp_path, mask_with_exif):
    ds = load_dataset("mvtec_ad", _dataset(tmp_path, mask_with_exif), "part")
    sample = ds.samples("test")[1]
    assert sample.anomaly_type == "scratch"
    assert image_size_of(sample.image_path) == (H, W)
    np.testing.assert_allclose(read_image(sample.image_path).astype(float), seen_image(), atol=12)
    assert np.array_equal(read_mask(sample.defects[0].mask_path) > 0, seen_mask() > 0)
    channels = ds.load_channels(sample)  # the mask/image size check passes: both are upright
    assert channels.shape == (1, H, W) and np.array_equal(channels[0], seen_mask() > 0)

    size = 32
    scored = score_samples(FakeModel(size=size), ds.samples("test"), size, progress=False)
    amap = scored.maps[1]  # map = mean colour: high exactly on the bright defect
    gt = ds.load_channels(sample, size)[0]
    inside, outside = amap[gt].mean(), amap[~gt].mean()
    assert inside > 0.8 and outside < 0.3, (inside, outside)
    assert np.unravel_index(np.argmax(amap), amap.shape) in set(zip(*np.nonzero(gt)))
    batch = ImageDataset([sample], (H, W))[0]["image"]  # the training path reads the same upright pixels
    assert batch.shape == (3, H, W) and float(batch[:, 5, 7].mean()) > 0.9


def test_serving_decodes_the_upright_image():
    for fmt in ("JPEG", "PNG"):
        rgb = decode_image(b64(exif_bytes(stored(seen_image()), fmt)))
        assert rgb.shape == (H, W, 3), fmt
        np.testing.assert_allclose(rgb.astype(float), seen_image(), atol=12)


def test_images_without_an_orientation_tag_are_unchanged(tmp_path):
    path = tmp_path / "plain.jpg"
    Image.fromarray(stored(seen_image())).save(path, quality=98)
    assert read_image(path).shape == (W, H, 3) and image_size_of(path) == (W, H)
