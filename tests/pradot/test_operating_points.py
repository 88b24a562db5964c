"""Thresholds and masks: the pixel threshold and quantile table of a Calibration (NumPy's quantile is the
oracle), request operating points and masks of the Scorer, calibration files of earlier releases."""

import base64
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from pradot.calibration import QUANTILE_LEVELS, Calibration
from pradot.serving import InvalidRequest, RequestTooLarge, Scorer, decode_image, encode_png
from tests.helpers import FakeModel, b64, file_bytes


def calibrated(seed=0, n=40, size=8, pixel_quantile=None):
    rng = np.random.default_rng(seed)
    maps = rng.gamma(2.0, 0.1, (n, size, size)).astype(np.float32)
    scores = maps.reshape(n, -1).max(1)
    return Calibration.calibrate(scores, 0.99, pixel_maps=maps, pixel_quantile=pixel_quantile), scores, maps


def test_pixel_threshold_and_the_quantile_table_are_numpys_quantiles():
    cal, scores, maps = calibrated(pixel_quantile=0.995)
    assert cal.pixel_threshold == pytest.approx(np.quantile(maps.ravel(), 0.995), rel=1e-6)
    assert cal.threshold == pytest.approx(np.quantile(scores, 0.99))
    assert set(QUANTILE_LEVELS) <= set(cal.levels) and {0.99, 0.995} <= set(cal.levels)
    np.testing.assert_allclose(cal.image_quantiles, np.quantile(scores, cal.levels))
    np.testing.assert_allclose(cal.pixel_quantiles, np.quantile(maps.ravel(), cal.levels), rtol=1e-6)
    assert cal.pixel_quantiles[-1] == pytest.approx(maps.max()) and cal.image_quantiles[0] == pytest.approx(
        np.median(scores)
    )
    same, _, _ = calibrated()  # pixel_quantile defaults to the image quantile
    assert same.pixel_quantile == 0.99 and same.pixel_threshold == pytest.approx(
        np.quantile(maps.ravel(), 0.99), rel=1e-6
    )


def test_operating_points_read_the_table():
    cal, scores, maps = calibrated()
    op = cal.operating_point()
    assert (op.threshold, op.mask_threshold, op.quantile, op.source) == (
        cal.threshold,
        cal.pixel_threshold,
        0.99,
        "calibrated",
    )
    at = cal.operating_point(quantile=0.99)  # a stored level: the calibrated thresholds exactly
    assert (at.threshold, at.mask_threshold) == (cal.threshold, cal.pixel_threshold)
    op = cal.operating_point(quantile=0.9)
    assert op.threshold == pytest.approx(np.quantile(scores, 0.9))
    assert op.mask_threshold == pytest.approx(np.quantile(maps.ravel(), 0.9), rel=1e-6)
    mid = cal.operating_point(quantile=0.955)  # between the levels 0.95 and 0.96: linear in q
    lo, hi = np.quantile(scores, [0.95, 0.96])
    assert mid.threshold == pytest.approx(lo + 0.5 * (hi - lo))
    raw = cal.operating_point(threshold=0.123)
    assert (raw.threshold, raw.mask_threshold, raw.quantile) == (0.123, 0.123, None)


@pytest.mark.parametrize(
    "kwargs, phrase",
    [
        ({"quantile": 0.3}, r"quantile must lie in \[0.5, 1\]"),
        ({"quantile": 1.5}, r"quantile must lie in \[0.5, 1\]"),
        ({"quantile": float("nan")}, "finite"),
        ({"threshold": float("inf")}, "finite"),
        ({"quantile": "0.99"}, "must be a number"),
        ({"threshold": True}, "must be a number"),
        ({"quantile": 0.99, "threshold": 1.0}, "not both"),
    ],
)
def test_bad_operating_points_are_refused(kwargs, phrase):
    cal, _, _ = calibrated()
    with pytest.raises(ValueError, match=phrase):
        cal.operating_point(**kwargs)


def test_calibration_files_of_earlier_releases_load_and_serve(tmp_path):
    old = {"threshold": 1.0, "low": 0.0, "high": 2.0, "quantile": 0.99, "n_images": 3}
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps(old))
    cal = Calibration.load(path)
    assert (cal.threshold, cal.pixel_threshold, cal.levels) == (1.0, None, ())
    op = cal.operating_point()
    assert op.threshold == op.mask_threshold == 1.0  # masks fall back to the image threshold
    with pytest.raises(ValueError, match="no quantile table"):
        cal.operating_point(quantile=0.9)
    assert cal.operating_point(threshold=0.5).threshold == 0.5
    new, _, _ = calibrated()
    assert Calibration.load(new.save(tmp_path / "new.json")) == new  # one type writes and reads it
    assert Calibration.calibrate([0.1, 0.2, 0.3], 0.9).pixel_threshold is None  # image scores only (a sweep)


# ----------------------------------------------------------------------------------- the Scorer
class RampModel(FakeModel):
    """map = the image's mean over channels (+ a left-to-right ramp): masks have both values."""


def png_array(value: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(value))))


def test_masks_are_the_returned_map_above_the_mask_threshold():
    rng = np.random.default_rng(1)
    maps = rng.random((30, 8, 8)).astype(np.float32)
    cal = Calibration.calibrate(maps.reshape(30, -1).max(1), 0.99, pixel_maps=maps, pixel_quantile=0.6)
    scorer = Scorer(RampModel(size=8, ramp=0.6), cal)
    img = b64(file_bytes(Image.fromarray((rng.random((30, 45, 3)) * 255).astype(np.uint8))))
    (rec,) = scorer.predict([img], return_map=True, map_format="npy", return_mask=True)
    amap = np.load(io.BytesIO(base64.b64decode(rec["anomaly_map"])))
    mask = png_array(rec["mask"])
    assert mask.shape == amap.shape == (30, 45) and mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 255}
    np.testing.assert_array_equal(mask == 255, amap > cal.pixel_threshold)
    assert rec["mask_threshold"] == cal.pixel_threshold
    # a request's raw threshold is the mask's too
    t = float(np.quantile(amap, 0.7))
    (r,) = scorer.predict([img], return_mask=True, threshold=t)
    assert r["mask_threshold"] == t == r["threshold"] and r["is_anomaly"]
    np.testing.assert_array_equal(png_array(r["mask"]) == 255, amap > t)
    # without return_mask the answer is as before
    assert set(scorer.predict([img])[0]) == {"score", "raw_score", "is_anomaly", "threshold"}


def test_request_quantiles_move_is_anomaly_as_the_stored_table_says():
    images = [b64(file_bytes(Image.fromarray(np.full((6, 6, 3), v, np.uint8)))) for v in range(50, 206, 13)]
    vals = [r["raw_score"] for r in Scorer(FakeModel(size=8), Calibration(0.5, 0, 1, 0.99, 3)).predict(images)]
    cal = Calibration.calibrate(vals, 0.99)  # these images are the normals
    scorer = Scorer(FakeModel(size=8), cal)
    levels = np.array(cal.levels)
    seen = []
    for q in (0.5, 0.75, 0.9, 0.99, 1.0):
        recs = scorer.predict(images, quantile=q)
        t = float(np.interp(q, levels, cal.image_quantiles))
        assert all(r["threshold"] == pytest.approx(t) for r in recs)
        assert [r["is_anomaly"] for r in recs] == [r["raw_score"] > t for r in recs]
        assert all((r["score"] > 0.5) == r["is_anomaly"] for r in recs if abs(r["raw_score"] - t) > 1e-9)
        seen.append(sum(r["is_anomaly"] for r in recs))
    assert seen == sorted(seen, reverse=True) and seen[0] >= 6 and seen[-1] == 0


@pytest.mark.parametrize(
    "params, phrase",
    [
        ({"quantile": 0.1}, r"quantile must lie in \[0.5, 1\]"),
        ({"quantile": float("nan")}, "finite"),
        ({"quantile": "high"}, "must be a number"),
        ({"quantile": 0.9, "threshold": 0.3}, "not both"),
        ({"return_mask": "yes"}, "return_mask must be true or false"),
    ],
)
def test_bad_request_parameters_are_invalid_requests(params, phrase):
    scorer = Scorer(FakeModel(size=8), calibrated()[0])
    img = b64(file_bytes(Image.fromarray(np.zeros((5, 5, 3), np.uint8))))
    with pytest.raises(InvalidRequest, match=phrase):
        scorer.predict([img], **params)


def test_masks_count_against_the_response_budget():
    scorer = Scorer(FakeModel(size=8), calibrated()[0], max_response_bytes=20_000)
    small = b64(file_bytes(Image.fromarray(np.zeros((50, 50, 3), np.uint8))))
    big = b64(file_bytes(Image.fromarray(np.zeros((200, 200, 3), np.uint8))))
    assert len(scorer.predict([small], return_mask=True)) == 1
    with pytest.raises(RequestTooLarge, match="max_response_bytes"):
        scorer.predict([big], return_mask=True)
    assert len(scorer.predict([big])) == 1  # the same image without a mask


def test_requests_are_read_upright_like_read_image(tmp_path):
    """An RGB JPEG with an EXIF orientation is scored and mapped as a person sees it (and as training reads it)."""
    from pradot.data import read_image

    rgb = np.zeros((20, 40, 3), np.uint8)
    rgb[:, :20] = 255
    img = Image.fromarray(rgb)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    path = tmp_path / "rotated.jpg"
    img.save(path, "JPEG", exif=exif.tobytes(), quality=95)
    upright = read_image(path)
    assert upright.shape == (40, 20, 3)
    scorer = Scorer(FakeModel(size=8), calibrated()[0])
    (rec,) = scorer.predict([b64(path.read_bytes())], return_map=True, map_format="npy")
    amap = np.load(io.BytesIO(base64.b64decode(rec["anomaly_map"])))
    assert amap.shape == (40, 20)
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(np.array(Image.fromarray(upright).resize((8, 8), Image.BILINEAR)))
        .permute(2, 0, 1)
        .float()[None]
        .div(255)
        .mean(1, keepdim=True),
        size=(40, 20),
        mode="bilinear",
        align_corners=False,
    )[0, 0]
    np.testing.assert_allclose(amap, expected.numpy(), atol=1e-6)
    np.testing.assert_array_equal(decode_image(encode_png(upright)), upright)
