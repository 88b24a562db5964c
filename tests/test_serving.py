"""The serving contract: request decoding and validation, calibration, the Scorer, the MLflow pyfunc
wrapper, and (slow) a registered model served by ``mlflow models serve`` over HTTP."""

import base64
import contextlib
import io
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

from pradot.serving import Calibration, InvalidRequest, Scorer, decode_image, encode_png, load_scoring_model

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


# ------------------------------------------------------------------------------------------ helpers
def file_bytes(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def craft_png(width: int, height: int, idat: bytes | None = None, bit_depth: int = 1, colour: int = 0) -> bytes:
    """A PNG written by hand: an all-black 1-bit grayscale image (valid, ~12 kB for 10000x10000)."""
    if idat is None:
        row = b"\x00" + b"\x00" * ((width * bit_depth + 7) // 8)
        idat = zlib.compress(row * height, 9)
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def huge_png() -> bytes:
    return craft_png(10_000, 10_000)


def rgb_image(h=20, w=30, seed=0) -> np.ndarray:
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


# ----------------------------------------------------------------------------------- decode_image
def test_decode_accepts_base64_variants_and_raw_bytes():
    rgb = rgb_image()
    png = file_bytes(Image.fromarray(rgb))
    urlsafe = base64.urlsafe_b64encode(png).decode().rstrip("=")
    mime = "\n".join(b64(png)[i:i + 76] for i in range(0, len(b64(png)), 76))  # line-wrapped base64
    for value in (b64(png), urlsafe, mime, f"data:image/png;base64,{b64(png)}", f"DATA:image/png;base64,{urlsafe}",
                  png, b64(png).encode()):
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


@pytest.mark.parametrize("value, phrase", [
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
], ids=["not-base64", "bad-char", "empty", "blank", "empty-data-url", "data-url-not-base64", "none", "nan",
        "int", "text", "zero-size", "zero-width"])
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
class FakeModel:
    """map = per-pixel mean of the RGB channels (+ ``ramp`` * x-position); score = max of the map."""

    def __init__(self, size=8, ramp=0.0):
        self.config = SimpleNamespace(image_size=size)
        self.ramp = ramp
        self.calls = []

    def score(self, images):
        self.calls.append((tuple(images.shape), images.dtype, float(images.min()), float(images.max())))
        S = self.config.image_size
        maps = images.mean(1) + self.ramp * torch.linspace(0, 1, S)[None, None, :]
        return maps, maps.amax(dim=(1, 2))


def test_scorer_normalises_scores_and_batches():
    cal = Calibration(threshold=0.5, low=0.25, high=0.75, quantile=0.99, n_images=10)
    model = FakeModel(size=8)
    scorer = Scorer(model, cal, batch_size=2)
    levels = [0.1, 0.45, 0.5, 0.6, 0.9]  # flat grey images of different sizes
    imgs = [b64(file_bytes(Image.fromarray(np.full((10 + 3 * i, 17, 3), round(v * 255), np.uint8))))
            for i, v in enumerate(levels)]
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
    expected = F.interpolate(torch.linspace(0, 1, S).expand(S, S)[None, None], size=(H, W), mode="bilinear",
                             align_corners=False)[0, 0].numpy()
    assert amap.shape == (H, W) and amap.dtype == np.float32
    np.testing.assert_allclose(amap, expected, atol=1e-6)
    (rec,) = scorer.predict([black], return_map=True)
    png = Image.open(io.BytesIO(base64.b64decode(rec["anomaly_map"])))
    assert png.format == "PNG" and png.size == (W, H) and png.mode == "RGB"
    heat = np.asarray(png).astype(int)
    assert heat[:, -3:, 0].mean() > heat[:, :3, 0].mean() + 50  # jet: red where the map is high (right)
    assert heat[:, :3, 2].mean() > heat[:, -3:, 2].mean() + 50  # blue where it is low (left)
    assert sorted(scorer.predict([black])[0]) == ["is_anomaly", "raw_score", "score", "threshold"]


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


def test_load_scoring_model_dispatches_on_the_file_format(tmp_path, tiny_backbone):
    from pradot import PRADOT, PRADOTConfig

    cfg = PRADOTConfig(backbone="tiny_random", stages=(2,), image_size=32, n=1, batch_size=2, epochs=1)
    model = PRADOT(cfg, backbone=tiny_backbone)
    loaded = load_scoring_model(model.save(tmp_path / "m.pt"))
    assert isinstance(loaded, PRADOT) and loaded.config == cfg and not loaded.training
    torch.save({"format": "something-else"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="'something-else'.*pradot-model-v1"):
        load_scoring_model(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="directory"):
        load_scoring_model(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_scoring_model(tmp_path / "missing.pt")
    ensemble = pytest.importorskip("pradot.ensemble")
    ens_path = ensemble.Ensemble([model, PRADOT.load(tmp_path / "m.pt")]).save(tmp_path / "ens.pt")
    assert isinstance(load_scoring_model(ens_path), ensemble.Ensemble)


# ----------------------------------------------------------------------------------- MLflow pyfunc
@pytest.fixture(scope="module")
def mlflow_model():
    sys.path.insert(0, str(REPO / "pipelines"))
    try:
        import mlflow_model
    finally:
        sys.path.remove(str(REPO / "pipelines"))
    return mlflow_model


def test_pyfunc_predict_contract_and_errors(mlflow_model):
    import pandas as pd
    from mlflow.exceptions import MlflowException

    wrapper = mlflow_model.PradotPyfunc()
    wrapper.scorer = Scorer(FakeModel(), Calibration(0.5, 0.0, 1.0, 0.99, 3))
    good = b64(file_bytes(Image.fromarray(np.full((12, 9, 3), 200, np.uint8))))
    out = wrapper.predict(None, pd.DataFrame({"image": [good, good]}))
    assert list(out.columns) == ["score", "raw_score", "is_anomaly", "threshold"] and len(out) == 2
    assert out["raw_score"].iloc[0] == pytest.approx(200 / 255, abs=1e-6) and bool(out["is_anomaly"].iloc[0])
    out = wrapper.predict(None, pd.DataFrame({"image": [good]}), params={"return_map": True})
    assert list(out.columns)[-1] == "anomaly_map"
    assert Image.open(io.BytesIO(base64.b64decode(out["anomaly_map"].iloc[0]))).size == (9, 12)
    with pytest.raises(MlflowException) as e:
        wrapper.predict(None, pd.DataFrame({"img": [good], "other": [1]}))
    assert e.value.error_code == "INVALID_PARAMETER_VALUE" and e.value.get_http_status_code() == 400
    assert "columns received: ['img', 'other']" in e.value.message and '"dataframe_split"' in e.value.message
    with pytest.raises(MlflowException) as e:
        wrapper.predict(None, pd.DataFrame({"image": [good, "%%%"]}))
    assert e.value.error_code == "INVALID_PARAMETER_VALUE" and "row 1: the value is not valid base64" in e.value.message
    sig = mlflow_model.SIGNATURE
    assert sig.inputs.input_names() == ["image"]
    assert sig.outputs.input_names() == ["score", "raw_score", "is_anomaly", "threshold", "anomaly_map"]
    assert {p.name: p.default for p in sig.params.params} == {"return_map": False, "map_format": "png"}
    reqs = mlflow_model.default_pip_requirements()
    assert any(r.startswith("torch==") for r in reqs) and any(r.startswith("mlflow==") for r in reqs)


# --------------------------------------------------------------------------- served model over HTTP
SIZE = 96  # model input; requests are 144x192 images


def scene(seed: int, blotch: bool = False, h: int = 144, w: int = 192) -> np.ndarray:
    """Grey-beige stripes with noise (resolution-independent); ``blotch``: a big magenta disc."""
    g = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w] / float(min(h, w))
    img = 0.5 + 0.15 * np.sin(40 * xx + g.uniform(-0.2, 0.2))[..., None] * np.array([1.0, 0.8, 0.6])
    img = img + g.normal(0, 0.02, (h, w, 3))
    if blotch:
        img[(yy - 0.5) ** 2 + (xx - 0.7) ** 2 < 0.15 ** 2] = [0.9, 0.1, 0.8]
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def blotch_mask(h=144, w=192) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w] / float(min(h, w))
    return (yy - 0.5) ** 2 + (xx - 0.7) ** 2 < 0.15 ** 2


def as_input(rgb: np.ndarray) -> torch.Tensor:
    """What training sees (and what the server does): PIL bilinear resize to SIZE, float [0, 1]."""
    small = np.array(Image.fromarray(rgb).resize((SIZE, SIZE), Image.BILINEAR))
    return torch.from_numpy(small).permute(2, 0, 1).float() / 255.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body=None, timeout=60):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@contextlib.contextmanager
def tracking_uri(uri: str):
    """Use ``uri`` for MLflow in this process, then restore exactly the previous state (the explicitly set
    URI, if any, and the MLFLOW_TRACKING_URI variable, which ``mlflow.set_tracking_uri`` also writes)."""
    import mlflow
    from mlflow.tracking._tracking_service import utils as tracking_utils

    previous_set = getattr(tracking_utils, "_tracking_uri", None)
    previous_env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous_set)
        if previous_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous_env


@pytest.fixture(scope="module")
def served(tmp_path_factory, effnet, mlflow_model):
    """Train a tiny PRADOT, calibrate it, log + register it in a local store, serve models:/<name>/1."""
    import mlflow
    from torch.utils.data import Dataset

    from pradot import PRADOT, PRADOTConfig

    tmp = tmp_path_factory.mktemp("serving")
    train_images = [as_input(scene(i)) for i in range(16)]

    class Images(Dataset):
        def __len__(self):
            return len(train_images)

        def __getitem__(self, i):
            return {"image": train_images[i], "label": 0, "index": i}

    cfg = PRADOTConfig(backbone=effnet.name, stages=tuple(effnet.stages), image_size=SIZE, n=2, batch_size=8,
                       epochs=2, eta=0.5)
    model = PRADOT(cfg, backbone=effnet)
    model.fit(Images(), progress=False)
    _, val_scores = model.score(torch.stack([as_input(scene(100 + i)) for i in range(8)]))
    calibration = Calibration.calibrate(val_scores, quantile=0.99)
    model_path = model.save(tmp / "model.pt")

    uri = f"sqlite:///{tmp}/mlflow.db"
    with tracking_uri(uri):
        exp_id = mlflow.create_experiment("serving", artifact_location=(tmp / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=exp_id):
            info = mlflow_model.log_pradot_model(model_path, calibration, registered_model_name="pradot-serving-test",
                                                 input_example_image=scene(7), extra_tags={"test": "serving"})
        version = mlflow.MlflowClient().get_model_version("pradot-serving-test", "1")
        assert version.tags.get("test") == "serving"
    assert info.registered_model_version is not None and int(info.registered_model_version) == 1

    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("MLFLOW_RUN_ID", None)
    log_path = tmp / "server.log"
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/pradot-serving-test/1",
           "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 150
        while True:
            try:
                if http("GET", f"{url}/ping", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"model server did not come up (exit code {proc.poll()}):\n"
                            f"{log_path.read_text()[-4000:]}")
            time.sleep(0.5)
        yield SimpleNamespace(url=url, model=model, calibration=calibration, info=info, log=log_path)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # the server and its uvicorn child (own session)
            proc.wait(timeout=20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def invocations(served, values, **params):
    body = {"dataframe_split": {"columns": ["image"], "data": [[v] for v in values]}}
    if params:
        body["params"] = params
    return http("POST", f"{served.url}/invocations", body)


@pytest.mark.slow
def test_served_model_scores_normal_below_anomalous(served):
    normal, anomalous = scene(300), scene(301, blotch=True)
    status, text = invocations(served, [encode_png(normal), encode_png(anomalous)])
    assert status == 200, text
    preds = json.loads(text)["predictions"]
    assert [sorted(p) for p in preds] == [["is_anomaly", "raw_score", "score", "threshold"]] * 2
    assert preds[0]["score"] < preds[1]["score"] and preds[0]["raw_score"] < preds[1]["raw_score"]
    assert preds[1]["is_anomaly"] and preds[1]["score"] == 1.0
    assert preds[0]["threshold"] == pytest.approx(served.calibration.threshold)
    # the server scores exactly as the library does on the same (resized) images
    _, local = served.model.score(torch.stack([as_input(normal), as_input(anomalous)]))
    np.testing.assert_allclose([p["raw_score"] for p in preds], local.numpy(), rtol=1e-4)


@pytest.mark.slow
def test_served_model_returns_maps_at_the_input_size(served):
    anomalous = scene(302, blotch=True)
    status, text = invocations(served, [encode_png(anomalous)], return_map=True)
    assert status == 200, text
    (pred,) = json.loads(text)["predictions"]
    png = Image.open(io.BytesIO(base64.b64decode(pred["anomaly_map"])))
    assert png.format == "PNG" and png.size == (192, 144)
    status, text = invocations(served, [encode_png(anomalous)], return_map=True, map_format="npy")
    assert status == 200, text
    amap = np.load(io.BytesIO(base64.b64decode(json.loads(text)["predictions"][0]["anomaly_map"])))
    assert amap.shape == (144, 192)
    mask = blotch_mask()
    assert amap[mask].mean() > 3 * amap[~mask].mean()  # the map is hot on the defect, cool elsewhere
    # the hottest pixel lies on the defect or within ~one stride-8 feature cell of it (16 px here: the
    # 192-px-wide request is scored at 96 px)
    distance = ndimage.distance_transform_edt(~mask)[np.unravel_index(np.argmax(amap), amap.shape)]
    assert distance < 24, distance


@pytest.mark.slow
@pytest.mark.parametrize("case", ["not-base64", "not-an-image", "zero-size", "huge", "truncated", "missing-column",
                                  "bad-param"])
def test_served_model_refuses_bad_payloads(served, case, huge_png):
    png = file_bytes(Image.fromarray(scene(5)))
    rows = {"not-base64": ("%%% definitely not base64 %%%", "not valid base64"),
            "not-an-image": (b64(b"hello, I am text"), "not an image"),
            "zero-size": ("", "empty"),
            "huge": (b64(huge_png), "10000x10000"),
            "truncated": (b64(png[: len(png) // 3]), "truncated")}
    t0 = time.monotonic()
    if case in rows:
        value, phrase = rows[case]
        status, text = invocations(served, [encode_png(scene(6)), value])
        phrase = f"row 1: .*{phrase}"
    elif case == "missing-column":
        body = {"dataframe_split": {"columns": ["img"], "data": [[b64(png)]]}}
        status, text = http("POST", f"{served.url}/invocations", body)
        phrase = r"missing inputs \['image'\]"
    else:
        status, text = invocations(served, [b64(png)], map_format="gif")
        phrase = "map_format must be one of"
    assert 400 <= status < 500, (status, text[:500])
    message = json.loads(text)["message"]
    assert re.search(phrase, message), message[-1000:]
    assert time.monotonic() - t0 < 20
    assert http("GET", f"{served.url}/ping")[0] == 200
