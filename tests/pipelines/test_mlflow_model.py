"""The MLflow pyfunc wrapper (pipelines/mlflow_model.py) in-process, and (slow) a registered model served
by ``mlflow models serve`` over HTTP."""

import base64
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from pradot.serving import Calibration, Scorer, encode_png
from tests.helpers import (
    FakeModel,
    b64,
    copy_store,
    craft_png,
    file_bytes,
    free_port,
    http,
    pinged,
    tracking_uri,
    wait_for,
)

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def huge_png() -> bytes:
    return craft_png(10_000, 10_000)


@pytest.fixture(scope="module")
def mlflow_model():
    from pipelines import mlflow_model

    return mlflow_model


# ----------------------------------------------------------------------------------- MLflow pyfunc
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
    assert sig.outputs.input_names() == [
        "score",
        "raw_score",
        "is_anomaly",
        "threshold",
        "anomaly_map",
        "mask",
        "mask_threshold",
    ]
    assert {p.name: p.default for p in sig.params.params} == {
        "return_map": False,
        "map_format": "png",
        "return_mask": False,
        "quantile": None,
        "threshold": None,
        "online_update": False,
    }
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
        img[(yy - 0.5) ** 2 + (xx - 0.7) ** 2 < 0.15**2] = [0.9, 0.1, 0.8]
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def blotch_mask(h=144, w=192) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w] / float(min(h, w))
    return (yy - 0.5) ** 2 + (xx - 0.7) ** 2 < 0.15**2


def as_input(rgb: np.ndarray) -> torch.Tensor:
    """What training sees (and what the server does): PIL bilinear resize to SIZE, float [0, 1]."""
    small = np.array(Image.fromarray(rgb).resize((SIZE, SIZE), Image.BILINEAR))
    return torch.from_numpy(small).permute(2, 0, 1).float() / 255.0


@pytest.fixture(scope="module")
def served(tmp_path_factory, effnet, mlflow_model, mlflow_db_template):
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

    cfg = PRADOTConfig(
        backbone=effnet.name, stages=tuple(effnet.stages), image_size=SIZE, n=2, batch_size=8, epochs=2, eta=0.5
    )
    model = PRADOT(cfg, backbone=effnet)
    model.fit(Images(), progress=False)
    val_maps, val_scores = model.score(torch.stack([as_input(scene(100 + i)) for i in range(8)]))
    calibration = Calibration.calibrate(val_scores, quantile=0.99, pixel_maps=val_maps)
    model_path = model.save(tmp / "model.pt")

    uri = copy_store(mlflow_db_template, tmp)
    with tracking_uri(uri):
        exp_id = mlflow.create_experiment("serving", artifact_location=(tmp / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=exp_id):
            info = mlflow_model.log_pradot_model(
                model_path,
                calibration,
                registered_model_name="pradot-serving-test",
                input_example_image=scene(7),
                extra_tags={"test": "serving"},
            )
        version = mlflow.MlflowClient().get_model_version("pradot-serving-test", "1")
        assert version.tags.get("test") == "serving"
    assert info.registered_model_version is not None and int(info.registered_model_version) == 1

    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("MLFLOW_RUN_ID", None)
    log_path = tmp / "server.log"
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "models",
        "serve",
        "-m",
        "models:/pradot-serving-test/1",
        "--env-manager",
        "local",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-w",
        "1",
    ]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: pinged(url), 150, "model server", proc, log_path, every=0.5)
        yield SimpleNamespace(url=url, model=model, calibration=calibration, info=info, log=log_path, uri=uri, tmp=tmp)
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
@pytest.mark.parametrize(
    "case", ["not-base64", "not-an-image", "zero-size", "huge", "truncated", "missing-column", "bad-param"]
)
def test_served_model_refuses_bad_payloads(served, case, huge_png):
    png = file_bytes(Image.fromarray(scene(5)))
    rows = {
        "not-base64": ("%%% definitely not base64 %%%", "not valid base64"),
        "not-an-image": (b64(b"hello, I am text"), "not an image"),
        "zero-size": ("", "empty"),
        "huge": (b64(huge_png), "10000x10000"),
        "truncated": (b64(png[: len(png) // 3]), "truncated"),
    }
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


def _flat_png_b64(w: int, h: int) -> str:
    from tests.pradot.test_serving import _flat_png

    return _flat_png(w, h)


def test_pyfunc_answers_413_over_budget_and_503_when_busy(mlflow_model):
    import pandas as pd
    from mlflow.exceptions import MlflowException

    wrapper = mlflow_model.PradotPyfunc()
    wrapper.scorer = Scorer(
        FakeModel(), Calibration(0.5, 0.0, 1.0, 0.99, 3), max_request_pixels=100, max_in_flight=1, wait_s=0.05
    )
    good = b64(file_bytes(Image.fromarray(np.full((8, 8, 3), 200, np.uint8))))
    with pytest.raises(MlflowException) as e:
        wrapper.predict(None, pd.DataFrame({"image": [good, good]}))  # 128 decoded pixels > 100
    assert e.value.get_http_status_code() == 413 and "max_request_pixels" in e.value.message
    assert len(wrapper.predict(None, pd.DataFrame({"image": [good]}))) == 1
    wrapper.scorer._slots.acquire()  # another request is being scored
    try:
        with pytest.raises(MlflowException) as e:
            wrapper.predict(None, pd.DataFrame({"image": [good]}))
        assert e.value.get_http_status_code() == 503 and "max_in_flight" in e.value.message
    finally:
        wrapper.scorer._slots.release()


def test_model_config_sets_the_budgets(mlflow_model, tiny_backbone, tmp_path):
    from pradot import PRADOT, PRADOTConfig

    cfg = PRADOTConfig(backbone="tiny_random", stages=(2,), image_size=32, n=1, batch_size=2, epochs=1)
    model = PRADOT(cfg, backbone=tiny_backbone).save(tmp_path / "m.pt")
    cal = Calibration(0.5, 0.0, 1.0, 0.99, 3).save(tmp_path / "c.json")
    budgets = {
        "max_request_pixels": 7,
        "max_map_side": 64,
        "max_response_bytes": 5,
        "max_in_flight": 3,
        "wait_s": 2.5,
        "max_rows": 9,
    }
    wrapper = mlflow_model.PradotPyfunc()
    wrapper.load_context(
        SimpleNamespace(
            model_config={"device": "cpu", **budgets}, artifacts={"model": str(model), "calibration": str(cal)}
        )
    )
    assert {k: getattr(wrapper.scorer, k) for k in budgets} == budgets
    wrapper.load_context(SimpleNamespace(model_config={}, artifacts={"model": str(model), "calibration": str(cal)}))
    assert (wrapper.scorer.max_request_pixels, wrapper.scorer.max_map_side, wrapper.scorer.max_in_flight) == (
        100_000_000,
        1024,
        1,
    )  # the safe defaults


@pytest.mark.slow
def test_served_model_refuses_over_budget_requests_with_413_and_stays_up(served):
    t0 = time.monotonic()
    big = _flat_png_b64(5000, 5000)  # 25 MP, ~110 KB: the per-image limit
    status, text = invocations(served, [big] * 5)  # 125 MP > the 100 MP request budget
    assert status == 413, (status, text[:500])
    message = json.loads(text)["message"]
    assert "row 4: " in message and "max_request_pixels" in message and "send fewer or smaller images" in message
    two_mp = _flat_png_b64(2000, 1000)  # npy maps: 1024 x 512, 2.7 MB base64 each; 32 MiB fit 12
    status, text = invocations(served, [two_mp] * 13, return_map=True, map_format="npy")
    assert status == 413 and "max_response_bytes" in json.loads(text)["message"], (status, text[:500])
    # the one big image with a map: answered, the map capped at 1024 px a side
    status, text = invocations(served, [big], return_map=True, map_format="npy")
    assert status == 200, text[:500]
    amap = np.load(io.BytesIO(base64.b64decode(json.loads(text)["predictions"][0]["anomaly_map"])))
    assert amap.shape == (1024, 1024) and amap.dtype == np.float32
    # and a normal request still succeeds
    status, text = invocations(served, [encode_png(scene(310))])
    assert status == 200 and len(json.loads(text)["predictions"]) == 1, text[:500]
    assert http("GET", f"{served.url}/ping")[0] == 200
    assert time.monotonic() - t0 < 60


# ------------------------------------------------------------ operating points, masks, predict, export (served)
def npy(value: str) -> np.ndarray:
    return np.load(io.BytesIO(base64.b64decode(value)))


def png(value: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(value))))


@pytest.mark.slow
def test_served_mask_is_the_map_above_the_pixel_threshold(served):
    anomalous = scene(303, blotch=True)
    status, text = invocations(served, [encode_png(anomalous)], return_map=True, map_format="npy", return_mask=True)
    assert status == 200, text[:500]
    (pred,) = json.loads(text)["predictions"]
    amap, mask = npy(pred["anomaly_map"]), png(pred["mask"])
    assert mask.shape == amap.shape == (144, 192) and set(np.unique(mask)) == {0, 255}
    assert pred["mask_threshold"] == pytest.approx(served.calibration.pixel_threshold)
    np.testing.assert_array_equal(mask == 255, amap > served.calibration.pixel_threshold)
    assert (mask[blotch_mask()] == 255).mean() > (mask[~blotch_mask()] == 255).mean()  # it marks the defect


@pytest.mark.slow
def test_served_quantile_moves_is_anomaly_as_the_stored_quantiles_say(served):
    """The validation normals themselves: at q the stored table's image quantile is the threshold, and an image
    is anomalous exactly when its raw score exceeds it (q = 0.5: about half; q = 1: none)."""
    cal = served.calibration
    normals = [encode_png(scene(100 + i)) for i in range(8)]
    counts = []
    for q in (0.5, 0.8, 1.0):
        status, text = invocations(served, normals, quantile=q)
        assert status == 200, text[:500]
        preds = json.loads(text)["predictions"]
        t = float(np.interp(q, cal.levels, cal.image_quantiles))
        assert all(p["threshold"] == pytest.approx(t) for p in preds)
        assert all(p["is_anomaly"] == (p["raw_score"] > t) for p in preds if abs(p["raw_score"] - t) > 1e-6)
        # clear decisions only: the normal that sets the q = 1 threshold scores it again within float32 noise
        # (another batch composition), on either side
        tol = 1e-5 * max(1.0, abs(t))
        counts.append(sum(p["raw_score"] > t + tol for p in preds))
    assert counts[0] >= 3 and counts[-1] == 0 and counts == sorted(counts, reverse=True)
    status, text = invocations(served, normals[:1], threshold=-1.0)
    assert status == 200 and json.loads(text)["predictions"][0]["is_anomaly"] is True


@pytest.mark.slow
@pytest.mark.parametrize(
    "params, phrase",
    [
        ({"quantile": 1.5}, r"quantile must lie in \[0.5, 1\]"),
        ({"quantile": 0.2}, r"quantile must lie in \[0.5, 1\]"),
        ({"quantile": float("nan")}, "finite"),
        ({"quantile": "high"}, "quantile"),
        ({"threshold": "x"}, "threshold"),
        ({"quantile": 0.9, "threshold": 0.5}, "not both"),
        ({"return_mask": "yes"}, "return_mask"),
    ],
)
def test_served_model_refuses_bad_operating_points_with_400_and_stays_up(served, params, phrase):
    status, text = invocations(served, [encode_png(scene(8))], **params)
    assert status == 400, (status, text[:500])
    assert re.search(phrase, json.loads(text)["message"]), text[:800]
    assert http("GET", f"{served.url}/ping")[0] == 200
    status, text = invocations(served, [encode_png(scene(8))], quantile=0.95)
    assert status == 200, text[:500]


def _predict_folder(root: Path) -> None:
    """Nested folders, a JPEG of another size, a grayscale PNG, a corrupt file and a file that is no image."""
    (root / "line1" / "cam2").mkdir(parents=True)
    Image.fromarray(scene(400)).save(root / "a.png")
    Image.fromarray(scene(401, blotch=True)).save(root / "line1" / "b.png")
    Image.fromarray(scene(402, h=120, w=100)).save(root / "line1" / "cam2" / "c.jpg", quality=95)
    Image.fromarray(scene(403)).convert("L").save(root / "line1" / "gray.png")
    (root / "line1" / "cam2" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "notes.txt").write_text("not an image")


@pytest.mark.slow
def test_predict_folder_writes_the_served_models_scores(served, tmp_path, monkeypatch, capsys):
    import csv

    import tifffile

    from pipelines import predict

    monkeypatch.setenv("MLFLOW_TRACKING_URI", served.uri)
    images, out = tmp_path / "images", tmp_path / "out"
    _predict_folder(images)
    argv = ["model_uri=models:/pradot-serving-test/1", f"input={images}", f"output={out}", "batch_size=2"]
    assert predict.main(argv) == 0
    rows = {r["path"]: r for r in csv.DictReader(open(out / "scores.csv"))}
    assert sorted(rows) == ["a.png", "line1/b.png", "line1/cam2/c.jpg", "line1/gray.png"]
    errors = list(csv.DictReader(open(out / "errors.csv")))
    assert [e["path"] for e in errors] == ["line1/cam2/broken.png"] and "not an image" in errors[0]["error"]
    assert "base64" not in errors[0]["error"] and "re-save the file as PNG or JPEG" in errors[0]["error"]
    for rel, row in rows.items():
        stem = Path(rel).with_suffix("").as_posix()
        assert (row["map"], row["mask"], row["overlay"]) == (
            f"maps/{stem}.tiff",
            f"masks/{stem}.png",
            f"overlays/{stem}.png",
        )
        status, text = invocations(
            served, [b64((images / rel).read_bytes())], return_map=True, map_format="npy", return_mask=True
        )
        assert status == 200, text[:300]
        pred = json.loads(text)["predictions"][0]
        # predict scores in batches, the server one image at a time: float32 sums differ in order (as the maps)
        assert float(row["raw_score"]) == pytest.approx(pred["raw_score"], rel=1e-5, abs=1e-7)
        assert float(row["score"]) == pytest.approx(pred["score"], abs=1e-6)
        assert (row["is_anomaly"] == "True") == pred["is_anomaly"]
        assert float(row["threshold"]) == pytest.approx(served.calibration.threshold)
        tiff = tifffile.imread(out / row["map"])
        assert tiff.dtype == np.float32 and tiff.shape == Image.open(images / rel).size[::-1]
        np.testing.assert_allclose(tiff, npy(pred["anomaly_map"]), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(Image.open(out / row["mask"])), png(pred["mask"]))
        assert Image.open(out / row["overlay"]).size == Image.open(images / rel).size
    assert rows["line1/b.png"]["is_anomaly"] == "True" and rows["a.png"]["is_anomaly"] == "False"
    from mlflow import MlflowClient

    client = MlflowClient(served.uri)
    (run,) = client.search_runs([client.get_experiment_by_name("pradot-predict").experiment_id])
    assert run.data.metrics["n_scored"] == 4 and run.data.metrics["n_errors"] == 1
    # never overwritten silently: a second run into the same folder is refused and leaves it as it was
    before = (out / "scores.csv").read_text()
    assert predict.main(argv) == 2
    assert (out / "scores.csv").read_text() == before
    assert predict.main([*argv, "overwrite=true", "quantile=0.5", "tracking.enabled=false"]) == 0
    again = {r["path"]: r for r in csv.DictReader(open(out / "scores.csv"))}
    t = float(np.interp(0.5, served.calibration.levels, served.calibration.image_quantiles))
    assert all(float(r["threshold"]) == pytest.approx(t) for r in again.values())
    # a model that does not load leaves the results there as they were, even with overwrite=true
    before = (out / "scores.csv").read_text()
    bad = ["model_uri=models:/pradot-serving-test/99", f"input={images}", f"output={out}", "overwrite=true"]
    assert predict.main(bad) == 2
    assert (out / "scores.csv").read_text() == before and (out / "maps").is_dir()
    assert f"looked up in the tracking store {served.uri}" in capsys.readouterr().err
    fresh = tmp_path / "fresh"
    assert predict.main([*bad[:2], f"output={fresh}"]) == 2 and not fresh.exists()  # no empty folder left
    # elsewhere, without MLFLOW_TRACKING_URI and without an mlflow.db: a clear error, and no empty store made
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(tmp_path / "images")
    assert predict.main(argv[:2] + [f"output={fresh}"]) == 2
    err = capsys.readouterr().err
    assert "no mlflow.db and MLFLOW_TRACKING_URI is not set" in err and "Traceback" not in err
    assert not (tmp_path / "images" / "mlflow.db").exists() and not fresh.exists()


@pytest.mark.slow
def test_export_logs_an_onnx_file_equal_to_the_served_model(served, tmp_path, monkeypatch):
    """One export with ``format=openvino`` (the ONNX file, then its IR beside it; one torch.onnx export, the
    slow part): both logged, tagged and equal to the served model; an existing file and a bad format refused."""
    from mlflow import MlflowClient

    from pipelines import export
    from pradot.export import OnnxScorer
    from pradot.export_openvino import OpenVINOScorer

    monkeypatch.setenv("MLFLOW_TRACKING_URI", served.uri)
    out = tmp_path / "ov" / "model.onnx"
    assert export.main(["model_uri=models:/pradot-serving-test/1", f"output={out}", "format=openvino"]) == 0
    onnx_model = OnnxScorer(out)
    assert onnx_model.calibration == served.calibration
    assert float(onnx_model.metadata["pixel_threshold"]) == served.calibration.pixel_threshold
    client = MlflowClient(served.uri)
    version = client.get_model_version("pradot-serving-test", "1")
    assert version.tags["pradot.onnx"] == f"runs:/{version.run_id}/onnx/model.onnx"
    assert [a.path for a in client.list_artifacts(version.run_id, "onnx")] == ["onnx/model.onnx"]
    img = scene(404, blotch=True)
    status, text = invocations(served, [encode_png(img)])
    maps, scores = onnx_model.score(img)
    assert abs(float(scores[0]) - json.loads(text)["predictions"][0]["raw_score"]) < 1e-4
    # the IR beside the ONNX file, checked with OpenVINO, logged and tagged like the ONNX file
    ir = OpenVINOScorer(out.with_suffix(".xml"))
    assert ir.calibration == served.calibration and out.with_suffix(".bin").is_file()
    assert version.tags["pradot.openvino"] == f"runs:/{version.run_id}/openvino/model.xml"
    assert "pradot.openvino_parity" in version.tags
    logged = sorted(a.path for a in client.list_artifacts(version.run_id, "openvino"))
    assert logged == ["openvino/model.bin", "openvino/model.xml"]
    ir_maps, ir_scores = ir.score(img)
    assert abs(float(ir_scores[0]) - float(scores[0])) < 1e-4
    assert np.abs(ir_maps - maps).max() / float(maps.max() - maps.min()) < 1e-4
    assert export.main(["model_uri=models:/pradot-serving-test/1", f"output={out}"]) == 2  # exists: refused
    bad = ["model_uri=models:/pradot-serving-test/1", f"output={tmp_path / 'x.onnx'}", "format=tensorrt"]
    assert export.main(bad) == 2 and not (tmp_path / "x.onnx").exists()


@pytest.mark.slow
def test_mlflow_run_predict_resolves_paths_where_it_was_started(served, tmp_path):
    """`mlflow run . -e predict` runs in the project folder: relative input/output are the user's folder's."""
    import csv

    _predict_folder(tmp_path / "images")
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": served.uri,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    env.pop("MLFLOW_RUN_ID", None)
    cmd = [
        str(VENV_BIN / "mlflow"),
        "run",
        str(REPO),
        "--env-manager",
        "local",
        "-e",
        "predict",
        "-P",
        "model_uri=models:/pradot-serving-test/1",
        "-P",
        "input=images",
        "-P",
        "output=results",
        "-P",
        "quantile=0.9",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "results" / "scores.csv")))
    t = float(np.interp(0.9, served.calibration.levels, served.calibration.image_quantiles))
    assert len(rows) == 4 and all(float(r["threshold"]) == pytest.approx(t) for r in rows)
    assert "4 of 5 scored" in proc.stdout
