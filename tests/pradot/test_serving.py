"""The serving contract of the library: request decoding and validation, calibration, the Scorer.
(The MLflow pyfunc and the HTTP server: tests/pipelines/test_mlflow_model.py.)"""

import base64
import io
import json
import time
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from pradot.serving import Calibration, InvalidRequest, Scorer, decode_image
from tests.helpers import FakeModel, b64, craft_png, file_bytes, rgb_image


@pytest.fixture(scope="module")
def huge_png() -> bytes:
    return craft_png(10_000, 10_000)


# ----------------------------------------------------------------------------------- decode_image
def test_decode_accepts_base64_variants_and_raw_bytes():
    rgb = rgb_image()
    png = file_bytes(Image.fromarray(rgb))
    urlsafe = base64.urlsafe_b64encode(png).decode().rstrip("=")
    mime = "\n".join(b64(png)[i : i + 76] for i in range(0, len(b64(png)), 76))  # line-wrapped base64
    for value in (
        b64(png),
        urlsafe,
        mime,
        f"data:image/png;base64,{b64(png)}",
        f"DATA:image/png;base64,{urlsafe}",
        png,
        b64(png).encode(),
    ):
        out = decode_image(value)
        assert out.dtype == np.uint8 and out.shape == (20, 30, 3)
        np.testing.assert_array_equal(out, rgb)
    smooth = np.dstack([np.tile(np.linspace(0, 255, 30, dtype=np.uint8), (20, 1))] * 3)
    jpeg = decode_image(b64(file_bytes(Image.fromarray(smooth), "JPEG", quality=95)))
    assert jpeg.shape == (20, 30, 3) and np.abs(jpeg.astype(int) - smooth).mean() < 5


def test_decode_converts_grayscale_rgba_palette_16bit_to_rgb():
    gray = np.arange(600, dtype=np.uint8).reshape(20, 30)
    out = decode_image(b64(file_bytes(Image.fromarray(gray))))
    assert out.shape == (20, 30, 3) and np.array_equal(out[..., 0], gray) and np.array_equal(out[..., 2], gray)
    rgba = np.dstack([rgb_image(), np.full((20, 30), 255, np.uint8)])
    rgba[0, 0, 3] = 0  # transparent pixel: composited on black, as read_image does
    out = decode_image(b64(file_bytes(Image.fromarray(rgba, "RGBA"))))
    assert out.shape == (20, 30, 3) and np.array_equal(out[1:, 1:], rgba[1:, 1:, :3]) and (out[0, 0] == 0).all()
    out = decode_image(b64(file_bytes(Image.fromarray(rgb_image()).convert("P"))))
    assert out.shape == (20, 30, 3)
    v16 = np.full((20, 30), 65535, np.uint16)
    v16[0, 0] = 0
    out = decode_image(b64(file_bytes(Image.fromarray(v16))))
    assert out.shape == (20, 30, 3) and out[5, 5, 0] == 255 and out[0, 0, 0] == 0  # full 16-bit range scaled


@pytest.mark.parametrize(
    "value, phrase",
    [
        ("%%% not base64 %%%", "not valid base64"),
        ("QUJD*", "not valid base64"),
        ("", "empty"),
        ("   ", "empty"),
        ("data:image/png;base64,", "empty"),
        ("data:image/png,rawtext", "data URL must be base64"),
        (None, "missing"),
        (float("nan"), "missing"),
        (42, "expected a base64 string"),
        (b64(b"just some text, not an image"), "not an image"),
        (b64(craft_png(0, 0, idat=zlib.compress(b""))), "zero size"),
        (b64(craft_png(0, 40, idat=zlib.compress(b""))), "zero size"),
    ],
    ids=[
        "not-base64",
        "bad-char",
        "empty",
        "blank",
        "empty-data-url",
        "data-url-not-base64",
        "none",
        "nan",
        "int",
        "text",
        "zero-size",
        "zero-width",
    ],
)
def test_decode_refuses_bad_payloads(value, phrase):
    with pytest.raises(InvalidRequest, match=phrase):
        decode_image(value)


def test_decode_refuses_truncated_and_disallowed_images():
    png = file_bytes(Image.fromarray(rgb_image(64, 64)))
    with pytest.raises(InvalidRequest, match="truncated or corrupt"):
        decode_image(b64(png[: len(png) // 2]))
    with pytest.raises(InvalidRequest, match="not an image"):  # GIF is not an allowed format
        decode_image(b64(file_bytes(Image.fromarray(rgb_image()), "GIF")))
    assert isinstance(InvalidRequest("x"), ValueError)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # PIL warns above 89 M pixels
def test_decode_refuses_huge_images_from_the_header(huge_png):
    assert len(huge_png) < 20_000
    t0 = time.perf_counter()
    with pytest.raises(InvalidRequest, match=r"10000x10000 = 100000000 pixels, more than the 25000000"):
        decode_image(b64(huge_png))
    assert time.perf_counter() - t0 < 0.5  # decoding 10^8 pixels would take far longer (and 300 MB)
    small_limit = file_bytes(Image.fromarray(rgb_image(100, 100)))
    with pytest.raises(InvalidRequest, match="more than the 5000 allowed"):
        decode_image(b64(small_limit), max_pixels=5000)
    # PIL's own decompression-bomb guard, reached when max_pixels is raised above PIL's limit
    bomb = craft_png(100_000, 100_000, idat=zlib.compress(b"\x00"))
    with pytest.raises(InvalidRequest, match="too large"):
        decode_image(b64(bomb), max_pixels=10**12)


# ------------------------------------------------------------------------------------ Calibration
def test_calibration_math_and_persistence(tmp_path):
    scores = np.linspace(1.0, 3.0, 101)
    cal = Calibration.calibrate(torch.tensor(scores), quantile=0.9)
    assert cal.threshold == pytest.approx(np.quantile(scores, 0.9)) == pytest.approx(2.8)
    assert (cal.low, cal.high, cal.quantile, cal.n_images) == (1.0, 3.0, 0.9, 101)
    assert cal.normalise(cal.threshold) == pytest.approx(0.5)
    assert cal.normalise(cal.threshold + 0.5) == pytest.approx(0.75)  # slope 1 / (high - low) = 1/2
    assert cal.normalise(cal.threshold - 0.5) == pytest.approx(0.25)
    assert cal.normalise(100.0) == 1.0 and cal.normalise(-100.0) == 0.0
    np.testing.assert_allclose(cal.normalise([2.8, 3.3, 0.0]), [0.5, 0.75, 0.0])
    assert isinstance(cal.normalise(2.0), float)
    assert cal.raw_range() == pytest.approx((1.8, 3.8))
    assert Calibration.from_dict(cal.to_dict()) == cal
    assert Calibration.load(cal.save(tmp_path / "c" / "calibration.json")) == cal
    assert json.loads((tmp_path / "c" / "calibration.json").read_text())["threshold"] == pytest.approx(2.8)
    assert Calibration.calibrate([1.0, 2.0, 3.0], quantile=1.0).threshold == 3.0


def test_calibration_degenerate_and_invalid():
    flat = Calibration.calibrate([2.0] * 5)
    assert (flat.threshold, flat.low, flat.high) == (2.0, 2.0, 2.0)
    assert flat.normalise(2.0) == 0.5 and flat.normalise(2.1) == 1.0 and flat.normalise(1.9) == 0.0
    for bad, kw in (([], {}), ([1.0, float("nan")], {}), ([1.0], {"quantile": 1.5})):
        with pytest.raises(ValueError):
            Calibration.calibrate(bad, **kw)
    with pytest.raises(ValueError, match="missing"):
        Calibration.from_dict({"threshold": 1.0})


# ------------------------------------------------------------------------------------------ Scorer
def test_scorer_normalises_scores_and_batches():
    cal = Calibration(threshold=0.5, low=0.25, high=0.75, quantile=0.99, n_images=10)
    model = FakeModel(size=8)
    scorer = Scorer(model, cal, batch_size=2)
    levels = [0.1, 0.45, 0.5, 0.6, 0.9]  # flat grey images of different sizes
    imgs = [
        b64(file_bytes(Image.fromarray(np.full((10 + 3 * i, 17, 3), round(v * 255), np.uint8))))
        for i, v in enumerate(levels)
    ]
    out = scorer.predict(imgs)
    assert [c[0] for c in model.calls] == [(2, 3, 8, 8), (2, 3, 8, 8), (1, 3, 8, 8)]
    assert all(c[1] == torch.float32 and 0.0 <= c[2] and c[3] <= 1.0 for c in model.calls)
    assert [sorted(r) for r in out] == [["is_anomaly", "raw_score", "score", "threshold"]] * 5
    for r, v in zip(out, levels):
        raw = round(v * 255) / 255
        assert r["raw_score"] == pytest.approx(raw, abs=1e-6)
        assert r["score"] == pytest.approx(min(max(0.5 + (raw - 0.5) / 0.5, 0.0), 1.0), abs=1e-6)
        assert r["threshold"] == 0.5 and r["is_anomaly"] == (raw > 0.5)
        assert isinstance(r["score"], float) and isinstance(r["is_anomaly"], bool)
    assert [r["is_anomaly"] for r in out] == [False, False, True, True, True]  # 0.5 -> 128/255 > 0.5


def test_scorer_resizes_the_map_back_to_the_input():
    S, (H, W) = 8, (30, 50)
    model = FakeModel(size=S, ramp=1.0)  # black image: the map is the ramp 0..1 along x
    cal = Calibration(threshold=0.5, low=0.0, high=1.0, quantile=0.99, n_images=10)
    scorer = Scorer(model, cal)
    black = b64(file_bytes(Image.fromarray(np.zeros((H, W, 3), np.uint8))))
    (rec,) = scorer.predict([black], return_map=True, map_format="npy")
    amap = np.load(io.BytesIO(base64.b64decode(rec["anomaly_map"])))
    expected = F.interpolate(
        torch.linspace(0, 1, S).expand(S, S)[None, None], size=(H, W), mode="bilinear", align_corners=False
    )[0, 0].numpy()
    assert amap.shape == (H, W) and amap.dtype == np.float32
    np.testing.assert_allclose(amap, expected, atol=1e-6)
    (rec,) = scorer.predict([black], return_map=True)
    png = Image.open(io.BytesIO(base64.b64decode(rec["anomaly_map"])))
    assert png.format == "PNG" and png.size == (W, H) and png.mode == "RGB"
    heat = np.asarray(png).astype(int)
    assert heat[:, -3:, 0].mean() > heat[:, :3, 0].mean() + 50  # jet: red where the map is high (right)
    assert heat[:, :3, 2].mean() > heat[:, -3:, 2].mean() + 50  # blue where it is low (left)
    assert sorted(scorer.predict([black])[0]) == ["is_anomaly", "raw_score", "score", "threshold"]


def test_map_formats_bare_heatmap_and_annotated_overlay():
    """``heatmap`` is the bare colour-mapped map (what ``heatmap_rgb`` draws from the ``npy`` map); ``overlay``
    (``png``, its earlier name) is the map over the image with the colour bar, the threshold's tick and the
    score, at the image's size."""
    from pradot.viz import heatmap_rgb

    S, (H, W) = 8, (96, 128)
    model = FakeModel(size=S, ramp=1.0)
    cal = Calibration(threshold=0.5, low=0.0, high=1.0, quantile=0.99, n_images=10)
    scorer = Scorer(model, cal)
    black = b64(file_bytes(Image.fromarray(np.zeros((H, W, 3), np.uint8))))

    def answer(fmt):
        (rec,) = scorer.predict([black], return_map=True, map_format=fmt)
        raw = base64.b64decode(rec["anomaly_map"])
        return rec, (np.load(io.BytesIO(raw)) if fmt == "npy" else np.asarray(Image.open(io.BytesIO(raw))))

    rec, amap = answer("npy")
    vmin, vmax = cal.raw_range(rec["threshold"])
    _, bare = answer("heatmap")
    np.testing.assert_array_equal(bare, heatmap_rgb(amap, vmin, vmax))
    _, overlay = answer("overlay")
    _, png = answer("png")
    np.testing.assert_array_equal(overlay, png)
    assert overlay.shape == (H, W, 3)
    plain = heatmap_rgb(amap, vmin, vmax, image=np.zeros((H, W, 3), np.uint8))
    changed = (overlay != plain).any(-1)
    assert changed[:, : W // 2].sum() > 0 and changed[H // 2 :, W // 4 : W * 3 // 4].sum() == 0  # label, bar only
    bar = overlay[H // 5 : H - 4, W - 4].astype(int)  # the colour bar: vmax (red) at the top, vmin (blue) below
    assert bar[0, 0] > bar[0, 2] + 50 and bar[-1, 2] > bar[-1, 0] + 50
    assert (overlay[H // 2 :, W - 8 : W - 2] == 255).all(-1).any()  # threshold 0.5 of [0, 1]: tick in the lower half
    with pytest.raises(InvalidRequest, match="map_format must be one of"):
        scorer.predict([black], return_map=True, map_format="gif")


def test_scorer_validates_every_row_before_scoring():
    model = FakeModel()
    scorer = Scorer(model, Calibration(1.0, 0.0, 2.0, 0.99, 3), max_rows=4)
    good = b64(file_bytes(Image.fromarray(rgb_image())))
    with pytest.raises(InvalidRequest) as e:
        scorer.predict([good, "%%%", good, ""])
    msg = str(e.value)
    assert "2 of 4 images are invalid" in msg and "row 1:" in msg and "row 3:" in msg and "row 0" not in msg
    assert model.calls == []  # nothing scored
    for kwargs, phrase in (({"return_map": "yes"}, "return_map"), ({"map_format": "gif"}, "map_format")):
        with pytest.raises(InvalidRequest, match=phrase):
            scorer.predict([good], **kwargs)
    with pytest.raises(InvalidRequest, match="no images"):
        scorer.predict([])
    with pytest.raises(InvalidRequest, match="more than the 4 allowed"):
        scorer.predict([good] * 5)


# ---------------------------------------------------------------------------------- request budgets
def _flat_png(w: int, h: int, fill: int = 90) -> str:
    """A flat RGB PNG written row by row (small on the wire, w x h pixels when decoded), base64."""
    import struct

    from tests.helpers import png_chunk

    row = b"\x00" + bytes([fill]) * (3 * w)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(h)) + comp.flush()
    return b64(
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def big_flat() -> str:
    return _flat_png(5000, 5000)  # 25 MP, the per-image limit; ~110 KB as base64


def test_maps_are_capped_in_size_and_float32(big_flat):
    from pradot.serving import map_size

    assert map_size(5000, 5000, 1024) == (1024, 1024) and map_size(1000, 3000, 1024) == (341, 1024)
    assert map_size(144, 192, 1024) == (144, 192)  # smaller inputs: the input's size, as before
    scorer = Scorer(FakeModel(size=8), Calibration(0.5, 0.0, 1.0, 0.99, 3))
    (rec,) = scorer.predict([big_flat], return_map=True, map_format="npy")
    amap = np.load(io.BytesIO(base64.b64decode(rec["anomaly_map"])))
    assert amap.shape == (1024, 1024) and amap.dtype == np.float32
    assert len(rec["anomaly_map"]) < 6 * 2**20  # was 133 MB at the input's size
    np.testing.assert_allclose(amap, 90 / 255, atol=1e-6)  # a flat image's map, resized
    (rec,) = scorer.predict([_flat_png(3000, 1000)], return_map=True)
    assert Image.open(io.BytesIO(base64.b64decode(rec["anomaly_map"]))).size == (1024, 341)


def test_a_request_over_its_pixel_budget_is_refused_before_decoding_more(big_flat):
    from pradot.serving import RequestTooLarge

    model = FakeModel(size=8)
    scorer = Scorer(model, Calibration(0.5, 0.0, 1.0, 0.99, 3), max_request_pixels=60_000_000)
    assert len(scorer.validate([big_flat, big_flat])) == 2  # 50 MP: within the budget
    truncated = big_flat[: len(big_flat) // 2]  # the third row's header says 25 MP: refused before its pixels
    with pytest.raises(
        RequestTooLarge,
        match=r"row 2: .*more than the 60000000 decoded pixels allowed per request "
        r"\(max_request_pixels; this row brings the total to 75000000\)",
    ):
        scorer.predict([big_flat, big_flat, truncated])
    assert model.calls == []
    assert isinstance(RequestTooLarge("x"), InvalidRequest)  # a client error (HTTP 413 when served)
    with pytest.raises(RequestTooLarge, match=r"more than the 4 allowed per request \(max_rows\)"):
        Scorer(model, Calibration(0.5, 0.0, 1.0, 0.99, 3), max_rows=4).predict([big_flat] * 5)


def test_returned_bytes_are_budgeted_from_the_headers():
    from pradot.serving import RequestTooLarge

    model = FakeModel(size=8)
    scorer = Scorer(model, Calibration(0.5, 0.0, 1.0, 0.99, 3), max_response_bytes=13 * 2**20)
    row = _flat_png(1024, 1024)  # a 1024 x 1024 npy map: 4 MiB, 5.3 MiB as base64
    assert len(scorer.predict([row, row], return_map=True, map_format="npy")) == 2
    calls = len(model.calls)
    with pytest.raises(
        RequestTooLarge,
        match=r"row 2: the maps asked for would exceed the 13631488 bytes of maps "
        r"allowed per answer \(max_response_bytes",
    ):
        scorer.predict([row, row, row], return_map=True, map_format="npy")
    assert len(model.calls) == calls  # refused before scoring
    assert len(scorer.predict([row, row, row], return_map=True)) == 3  # PNG maps: 3 bytes a pixel fit
    assert len(scorer.predict([row] * 8)) == 8  # no maps: nothing returned to budget


def test_work_in_flight_is_bounded_per_process():
    import threading

    from pradot.serving import ServerBusy

    class Slow(FakeModel):
        active = peak = 0

        def score(self, images):
            Slow.active += 1
            Slow.peak = max(Slow.peak, Slow.active)
            time.sleep(0.3)
            Slow.active -= 1
            return super().score(images)

    row = b64(file_bytes(Image.fromarray(rgb_image())))
    cal = Calibration(0.5, 0.0, 1.0, 0.99, 3)
    waiting = Scorer(Slow(), cal, max_in_flight=1, wait_s=30)
    results = []
    threads = [threading.Thread(target=lambda: results.append(waiting.predict([row]))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and Slow.peak == 1  # the four requests were scored one after the other
    impatient = Scorer(Slow(), cal, max_in_flight=1, wait_s=0.05)
    busy = threading.Thread(target=impatient.predict, args=([row],))
    busy.start()
    time.sleep(0.1)
    with pytest.raises(
        ServerBusy,
        match=r"scoring 1 request\(s\) already \(max_in_flight\) and this one waited "
        r"0.05 s \(wait_s\)",
    ):
        impatient.predict([row])
    busy.join()
    assert len(impatient.predict([row])) == 1  # free again
    with pytest.raises(ValueError, match="max_in_flight"):
        Scorer(Slow(), cal, max_in_flight=0)


def test_a_large_request_allocates_no_full_size_temporaries(big_flat):
    """numpy memory (tracemalloc sees it) of a 25 MP request with a PNG map and one with an npy map: before,
    the full-size RGB (75 MB) and float64 heat-map temporaries (~3 GB) were allocated."""
    import tracemalloc

    scorer = Scorer(FakeModel(size=8), Calibration(0.5, 0.0, 1.0, 0.99, 3))
    for fmt in ("png", "npy"):
        tracemalloc.start()
        try:
            scorer.predict([big_flat], return_map=True, map_format=fmt)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 64 * 2**20, (fmt, peak)


# ------------------------------------------------------------------------------- budgets and imports
def test_with_budgets_is_a_new_scorer_with_those_budgets():
    from pradot.serving import BUDGET_NAMES

    model, cal = FakeModel(size=8), Calibration(0.5, 0.0, 1.0, 0.99, 3)
    scorer = Scorer(model, cal, max_rows=2, map_alpha=0.3)
    wider = scorer.with_budgets(max_rows=5, wait_s=1.5)
    assert wider is not scorer and wider.model is model and wider.calibration is cal and wider.map_alpha == 0.3
    assert wider.budgets == {**scorer.budgets, "max_rows": 5, "wait_s": 1.5}
    assert set(wider.budgets) == set(BUDGET_NAMES) and scorer.max_rows == 2  # the original is unchanged
    with pytest.raises(ValueError, match="not serving budgets"):
        scorer.with_budgets(max_rowz=3)
    with pytest.raises(ValueError, match="must be >= 1"):
        scorer.with_budgets(max_rows=0)


def test_batch_budgets_let_a_batch_of_maps_and_masks_through():
    """``batch_budgets`` (what pradot-predict asks for) turns a scorer that refuses a batch of .npy maps and
    masks into one that answers it; budgets already large enough are kept."""
    from pradot.serving import RequestTooLarge, batch_budgets

    tight = Scorer(FakeModel(size=8), Calibration(0.5, 0.0, 1.0, 0.99, 3), max_rows=1, max_response_bytes=10)
    rows = [b64(file_bytes(Image.fromarray(rgb_image(64, 48, seed=k)))) for k in range(3)]
    with pytest.raises(RequestTooLarge):
        tight.predict(rows, return_map=True, map_format="npy", return_mask=True)
    budgets = batch_budgets(tight.budgets, batch_size=3, max_map_side=32)
    out = tight.with_budgets(**budgets).predict(rows, return_map=True, map_format="npy", return_mask=True)
    maps = [np.load(io.BytesIO(base64.b64decode(r["anomaly_map"]))) for r in out]
    assert [m.shape for m in maps] == [(32, 24)] * 3  # the longer side scaled to max_map_side
    assert budgets["max_rows"] == 3 and budgets["max_map_side"] == 32
    assert budgets["max_request_pixels"] == max(tight.max_request_pixels, 3 * tight.max_pixels)
    roomy = Scorer(FakeModel(size=8), Calibration(0.5, 0.0, 1.0, 0.99, 3), max_rows=100)
    assert batch_budgets(roomy.budgets, 3, 32)["max_response_bytes"] == roomy.max_response_bytes
    assert batch_budgets(roomy.budgets, 3, 32)["max_rows"] == 100
    with pytest.raises(ValueError, match="must be >= 1"):
        batch_budgets(roomy.budgets, 0, 32)


def test_serving_imports_no_matplotlib():
    """The serving path (decode, score, PNG heat maps) needs NumPy and PIL only."""
    import subprocess
    import sys

    code = (
        "import sys, pradot.serving; from pradot.serving.scorer import heatmap_rgb; "
        "heatmap_rgb([[0.0, 1.0]], 0.0, 1.0); assert 'matplotlib' not in sys.modules, 'matplotlib imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
