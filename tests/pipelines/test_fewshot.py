"""The few-shot entry point (MLproject `fewshot`, pipelines/fewshot.py): settings refused before any run,
the protocol end to end on the embedded data (tiny recipe) with its runs, tables and registered model, and
the registered model served in-process with the online-update parameter."""

import base64
import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines import config
from pipelines.config import ConfigError
from pipelines.fewshot.plan import check_against_data, fewshot_plan
from pradot.serving import Calibration, Scorer
from tests.helpers import FakeModel, b64, file_bytes, tracking_uri

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def plan_of(*overrides):
    return fewshot_plan(config.compose("fewshot", ["fewshot=ci", *overrides]))


def test_the_ci_recipe_is_the_tiny_protocol():
    plan = plan_of()
    assert plan.shots == (1, 2) and plan.splits == 2 and plan.data.kind == "synthetic"
    assert plan.foct.backbone == "efficientnet_lite0" and plan.foct.stages == (2, 3) and plan.foct.image_size == 96
    assert [v.name for v in plan.variants()] == ["foct"] and plan.threads == 1
    assert [v.name for v in plan_of("fewshot.ablation=true").variants()] == ["vanilla", "ct", "oct", "foct"]
    paper = fewshot_plan(config.compose("fewshot", []))
    assert paper.foct.backbone == "wide_resnet50_2" and paper.foct.image_size == 336 and paper.splits == 10
    assert (paper.foct.top_foreground, paper.foct.top_background, paper.foct.capacity) == (10, 40, 100)
    assert paper.model_name == "foct-mvtec_loco-screw_bag"
    ad = fewshot_plan(config.compose("fewshot", ["fewshot=cpu_ad"]))
    assert (ad.data.kind, ad.data.image_size) == ("mvtec_ad", 256)
    assert ad.data.root == str(Path.cwd() / "data" / "synthetic_ad")  # resolved where the user stands
    assert (ad.foct.top_foreground, ad.foct.top_background, ad.foct.capacity) == (6, 23, 58)


@pytest.mark.parametrize(
    "override,phrase",
    [
        ("fewshot.shots=[0,1]", "positive integers"),
        ("fewshot.shots=abc", "positive integers"),
        ("fewshot.splits=0", "fewshot.splits"),
        ("fewshot.query_order=random", "query_order"),
        ("+fewshot.foct.alpha=0.1", "unknown fewshot.foct keys"),
        ("fewshot.foct.foreground=saliency", "foreground must be one of"),
        ("fewshot.foct.compression=1.5", "lambda"),
        ("fewshot.foct.foreground=sam", "sam_checkpoint"),
        ("fewshot.foct.online=maybe", "true or false"),
    ],
)
def test_bad_settings_are_refused_before_any_run(override, phrase):
    with pytest.raises(ConfigError, match=phrase):
        plan_of(override)


def test_more_shots_than_training_images_and_a_one_class_test_split_are_refused():
    plan = plan_of("fewshot.shots=[1,4]")
    with pytest.raises(ConfigError, match="has 3 training images"):
        check_against_data(plan, n_train=3, n_test=10)
    with pytest.raises(ConfigError, match="all 3 test images are normal"):
        check_against_data(plan, n_train=10, n_test=3, test_labels=[0, 0, 0])
    check_against_data(plan, n_train=10, n_test=3, test_labels=[0, 1, 0])


def test_online_update_is_refused_for_a_model_without_online_memory(mlflow_model):
    import pandas as pd
    from mlflow.exceptions import MlflowException

    wrapper = mlflow_model.PradotPyfunc()
    wrapper.scorer = Scorer(FakeModel(), Calibration(0.5, 0.0, 1.0, 0.99, 3))
    good = b64(file_bytes(Image.fromarray(np.full((12, 9, 3), 200, np.uint8))))
    with pytest.raises(MlflowException) as e:
        wrapper.predict(None, pd.DataFrame({"image": [good]}), params={"online_update": True})
    assert e.value.get_http_status_code() == 400 and "online_update=true needs a few-shot" in e.value.message
    with pytest.raises(MlflowException, match="online_update must be true or false"):
        wrapper.predict(None, pd.DataFrame({"image": [good]}), params={"online_update": "yes"})
    assert len(wrapper.predict(None, pd.DataFrame({"image": [good]}), params={"online_update": False})) == 1


def test_scorer_passes_online_updates_with_the_calibrated_threshold_as_gate():
    class OnlineModel(FakeModel):
        online_memory = True

        def __init__(self):
            super().__init__()
            self.updates = []

        def score(self, images, update=False, update_below=None):
            self.updates.append((len(images), update, update_below))
            return super().score(images)

    model = OnlineModel()
    scorer = Scorer(model, Calibration(0.5, 0.0, 1.0, 0.99, 3), batch_size=2)
    img = b64(file_bytes(Image.fromarray(np.full((12, 9, 3), 10, np.uint8))))
    scorer.predict([img] * 3)
    scorer.predict([img] * 3, online_update=True)
    assert model.updates == [(2, False, None), (1, False, None), (2, True, 0.5), (1, True, 0.5)]


@pytest.fixture(scope="module")
def mlflow_model():
    from pipelines import mlflow_model

    return mlflow_model


def png_b64(path) -> str:
    buf = io.BytesIO()
    Image.open(path).convert("RGB").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.mark.slow
@pytest.mark.usefixtures("sqlite_uri")  # the store at tmp_path/mlflow.db: a copy of the migrated template
def test_fewshot_protocol_end_to_end_and_the_served_model(tmp_path, capsys):
    import mlflow
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("MLFLOW_RUN_ID", None)
    env.pop("MLFLOW_EXPERIMENT_ID", None)
    cmd = [
        str(VENV_BIN / "mlflow"),
        "run",
        str(REPO),
        "-e",
        "fewshot",
        "--env-manager",
        "local",
        "--experiment-name",
        "fewshot-e2e",
        "-P",
        "recipe=ci",
        "-P",
        f"data_root={tmp_path}/synthetic",
        "-P",
        f"overrides=cache.dir={tmp_path}/cache",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "| foct | 1 | 2 |" in proc.stdout and "as foct-synthetic-screw_bag v1" in proc.stdout

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("fewshot-e2e")
    runs = client.search_runs([exp.experiment_id])
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    assert sorted((r.data.params["shots"], r.data.params["split"]) for r in children) == [
        ("1", "0"),
        ("1", "1"),
        ("2", "0"),
        ("2", "1"),
    ]
    child = children[0]
    for key in (
        "image_auroc",
        "pixel_auroc",
        "image_f1_max",
        "pixel_f1_max",
        "au_spro_0.05",
        "seconds_per_query",
        "episodic_memory_max",
    ):
        assert key in child.data.metrics, key
    assert child.data.metrics["episodic_memory_max"] < 10  # capacity L = 10 in the ci recipe
    assert len(client.get_metric_history(child.info.run_id, "query_seconds")) == 12  # one per test image
    supports = {r.data.params["support"] for r in children if r.data.params["shots"] == "1"}
    assert len(supports) == 2  # the splits draw different supports
    pm = parent[0].data.metrics
    assert {"foct.1shot.image_auroc_mean", "foct.2shot.image_auroc_std"} <= set(pm)
    arts = {a.path for a in client.list_artifacts(parent[0].info.run_id, "summary")}
    assert arts == {"summary/fewshot_summary.md", "summary/fewshot_summary.csv", "summary/per_split.csv"}

    version = client.get_model_version("foct-synthetic-screw_bag", "1")
    assert version.tags["pradot.kind"] == "fewshot" and version.tags["shots"] == "2"
    assert len(version.tags["support"].split(",")) == 2 and version.tags["calibration_source"] == "validation"

    with tracking_uri(uri):
        served = mlflow.pyfunc.load_model("models:/foct-synthetic-screw_bag/1")
    import pandas as pd

    foct = served.unwrap_python_model().scorer.model
    assert len(foct.episodic) == 0  # registered with a fresh episodic memory
    root = tmp_path / "synthetic" / "screw_bag"
    normals = [png_b64(p) for p in sorted((root / "validation" / "good").glob("*.png"))]
    out = served.predict(pd.DataFrame({"image": normals}))
    assert list(out.columns) == ["score", "raw_score", "is_anomaly", "threshold"] and len(foct.episodic) == 0
    out = served.predict(pd.DataFrame({"image": normals}), params={"online_update": True})
    below = int((~out["is_anomaly"]).sum())
    assert below >= 1 and foct.queries_seen == below and len(foct.episodic) > 0
    size = len(foct.episodic)
    noise = b64(file_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 96, 3), np.uint8))))
    out = served.predict(pd.DataFrame({"image": [noise]}), params={"online_update": True})
    assert bool(out["is_anomaly"].iloc[0]) and len(foct.episodic) == size and foct.queries_seen == below

    # the folder entry point scores with the registered few-shot model; ONNX export refuses it by name
    from pipelines import export, predict

    with tracking_uri(uri):
        argv = [
            "model_uri=models:/foct-synthetic-screw_bag/1",
            f"input={root / 'validation' / 'good'}",
            f"output={tmp_path / 'predicted'}",
            "tracking.enabled=false",
            "write.overlays=false",
        ]
        assert predict.main(argv) == 0
        rows = list(csv.DictReader(open(tmp_path / "predicted" / "scores.csv")))
        assert len(rows) == len(normals) and all(float(r["threshold"]) == version_threshold(served) for r in rows)
        onnx = tmp_path / "foct.onnx"
        assert (
            export.main(["model_uri=models:/foct-synthetic-screw_bag/1", f"output={onnx}", "tracking.enabled=false"])
            == 2
        )
    assert not onnx.exists()
    assert "FOCT model; ONNX export supports PRADOT models" in capsys.readouterr().err


def version_threshold(served) -> float:
    return float(served.unwrap_python_model().scorer.calibration.threshold)


# ------------------------------------------------------------------ a registered few-shot model over HTTP
def _scene(seed: int, blotch: bool = False, size: int = 96) -> np.ndarray:
    """A grey-beige striped sheet with noise; ``blotch``: a big magenta disc."""
    g = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / float(size)
    img = 0.5 + 0.15 * np.sin(40 * xx + g.uniform(-0.2, 0.2))[..., None] * np.array([1.0, 0.8, 0.6])
    img = img + g.normal(0, 0.02, (size, size, 3))
    if blotch:
        img[(yy - 0.5) ** 2 + (xx - 0.6) ** 2 < 0.15**2] = [0.9, 0.1, 0.8]
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


@pytest.mark.slow
@pytest.mark.usefixtures("sqlite_uri")  # the store at tmp_path/mlflow.db: a copy of the migrated template
def test_served_fewshot_model_keeps_its_online_state_per_process(tmp_path, effnet_fewshot, mlflow_model):
    """`mlflow models serve` of a registered FOCT model: online_update=false never changes what the server
    answers; anomalous images sent with online_update=true change nothing either; normal ones do."""
    import json
    import signal

    import mlflow
    import torch

    from pradot.fewshot import FOCT, FOCTConfig
    from tests.helpers import free_port, http, pinged, wait_for

    def tensor(rgb):
        return torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0

    cfg = FOCTConfig(
        backbone="efficientnet_lite0",
        image_size=96,
        top_foreground=2,
        top_background=4,
        capacity=12,
        hidden=16,
        steps=3,
        lr=1e-3,
    )
    model = FOCT(cfg, backbone=effnet_fewshot).fit(torch.stack([tensor(_scene(i)) for i in range(2)]))
    _, val = model.score(torch.stack([tensor(_scene(10 + i)) for i in range(6)]))
    path = model.save(tmp_path / "foct.pt")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with tracking_uri(uri):
        exp = mlflow.create_experiment("serve", artifact_location=(tmp_path / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=exp):
            mlflow_model.log_pradot_model(
                path,
                Calibration.calibrate(val.numpy(), 1.0),
                registered_model_name="foct-serve",
                input_example_image=_scene(7),
            )
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("MLFLOW_RUN_ID", None)
    with open(tmp_path / "server.log", "w") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "models",
                "serve",
                "-m",
                "models:/foct-serve/1",
                "--env-manager",
                "local",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-w",
                "1",
            ],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"

    def ask(images, **params):
        body = {
            "dataframe_split": {"columns": ["image"], "data": [[b64(file_bytes(Image.fromarray(i)))] for i in images]}
        }
        if params:
            body["params"] = params
        status, text = http("POST", f"{url}/invocations", body)
        assert status == 200, text
        return json.loads(text)["predictions"]

    try:
        wait_for(lambda: pinged(url), 150, "model server", proc, tmp_path / "server.log", every=0.5)
        probes = [_scene(100), _scene(101, blotch=True)]
        first = [p["raw_score"] for p in ask(probes)]
        assert first[0] < first[1]
        assert [p["raw_score"] for p in ask(probes)] == first  # default: no state change
        anomalous = ask([_scene(200 + i, blotch=True) for i in range(3)], online_update=True)
        assert all(p["is_anomaly"] for p in anomalous)
        assert [p["raw_score"] for p in ask(probes)] == first  # anomalies were kept out of the memory
        normal = ask([_scene(300 + i) for i in range(4)], online_update=True)
        assert not all(p["is_anomaly"] for p in normal)
        after = [p["raw_score"] for p in ask(probes)]
        assert after != first and after[0] <= first[0] + 1e-6  # normal features entered: the normal probe is no worse
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def effnet_fewshot():
    from pradot.backbone import load_backbone

    return load_backbone("efficientnet_lite0", (2, 3))


def test_the_cpu_recipes_calibrate_a_quantile_their_normals_can_carry():
    """fewshot=cpu (and cpu_ad) calibrate on fewshot.calibration_images normals: at least what the quantile
    needs (pradot.calibration.min_normals), so the project's own small-sample warning does not fire."""
    from pradot.calibration import min_normals

    for recipe in ("cpu", "cpu_ad"):
        plan = fewshot_plan(config.compose("fewshot", [f"fewshot={recipe}"]))
        assert plan.calibration_images >= min_normals(plan.calibration_quantile), recipe
