"""Promotion of an ensemble from registered banks (pipelines/promote.py), end to end on a tmp SQLite store.

Members are tiny PRADOT banks (EfficientNet-Lite0, 96 px synthetic screw bags, experiment=ci data) fitted
directly and logged with ``log_pradot_model`` inside runs that record the data params and the version tags
``pipelines/train.py`` writes. Their ``metric.image_auroc`` tags are set by hand: only the selection
reads them (promote recomputes every metric on the test split).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "pipelines"))

NAME = "pradot-synthetic-screw_bag"
ENS = NAME + "-ensemble"


def _register(ns, model, metric: float, label: str) -> str:
    import mlflow
    from common import flatten
    from mlflow_model import log_pradot_model

    from pradot.serving import Calibration

    with mlflow.start_run(run_name=label) as run:
        mlflow.log_params(flatten(ns.cfg))  # what train.py logs: promote checks the data params against these
        path = model.save(ns.tmp / f"{label}.pt")
        cal = Calibration(threshold=1.0, low=0.0, high=2.0, quantile=0.99, n_images=6)
        info = log_pradot_model(path, cal, registered_model_name=NAME)
        c = model.config
        tags = {"alpha": c.alpha, "n": c.n, "stages": ",".join(map(str, c.stages)), "backbone": c.backbone,
                "image_size": c.image_size, "dataset": "synthetic", "category": "screw_bag",
                "run_id": run.info.run_id, "threshold": 1.0, "metric.image_auroc": metric}
        for k, v in tags.items():
            ns.client.set_model_version_tag(NAME, info.registered_model_version, k, str(v))
    return str(info.registered_model_version)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A tmp tracking store with five registered versions of NAME:
    v1 (2, 0) good, v2 (2, 0.3) good, v3 (3, 0.3) good, v4 (2, 0) bad (constant prototypes, low tag),
    v5 (2+3, 0.3) multi-stage with the best tag (left out of the default selection)."""
    import dataclasses

    tmp = tmp_path_factory.mktemp("promote")
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp}/mlflow.db")
    mp.delenv("MLFLOW_RUN_ID", raising=False)
    mp.setenv("TQDM_DISABLE", "1")
    mp.chdir(tmp)
    import mlflow
    from common import compose
    from mlflow import MlflowClient
    from train import specs_from_config

    from pradot import PRADOT
    from pradot.backbone import load_backbone
    from pradot.engine import open_splits
    from pradot.features import extract_features
    from pradot.data import ImageDataset

    mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
    client = MlflowClient()
    client.create_experiment("pradot", artifact_location=(tmp / "artifacts").as_uri())
    mlflow.set_experiment("pradot")
    overrides = ["experiment=ci", "data=synthetic", f"data.root={tmp}/data", f"cache.dir={tmp}/cache"]
    cfg = compose(overrides)
    spec, base = specs_from_config(cfg)
    splits = open_splits(spec)
    ns = SimpleNamespace(tmp=tmp, client=client, cfg=cfg, overrides=overrides, spec=spec, splits=splits,
                         mlflow=mlflow)

    bb = {st: load_backbone("efficientnet_lite0", st) for st in [(2,), (3,), (2, 3)]}
    train_ds = ImageDataset(splits.train, spec.image_size)
    feats = {st: extract_features(bb[st], train_ds, progress=False) for st in [(2,), (3,)]}

    def fitted(stages, alpha, epochs=2):
        m = PRADOT(dataclasses.replace(base, stages=stages, alpha=alpha, epochs=epochs), backbone=bb[stages])
        if epochs:
            m.fit_features(feats[stages], progress=False)
        return m.eval()

    ns.versions = {
        "s2a0": _register(ns, fitted((2,), 0.0), 0.80, "s2a0"),
        "s2a3": _register(ns, fitted((2,), 0.3), 0.85, "s2a3"),
        "s3a3": _register(ns, fitted((3,), 0.3), 0.82, "s3a3"),
    }
    bad = fitted((2,), 0.0, epochs=0)
    bad.banks["2"].features.fill_(0.5)  # identical prototypes: every image's max is 1, image AUROC 0.5
    ns.versions["bad"] = _register(ns, bad, 0.10, "bad")
    ns.versions["multi"] = _register(ns, fitted((2, 3), 0.3, epochs=0), 0.99, "multi")
    yield ns
    mp.undo()


def _b64(path) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode()


def _runs(ns):
    return ns.mlflow.search_runs(experiment_names=["pradot"], output_format="list")


def test_promote_default_selection_registers_champion_and_serves(store, capsys):
    import promote
    import mlflow.pyfunc
    import pandas as pd

    ns = store
    rc = promote.main([*ns.overrides])
    out = capsys.readouterr()
    assert rc == 0, out.err
    v = ns.client.get_model_version_by_alias(ENS, "champion")
    assert str(v.version) == "1"
    members = v.tags["members"].split(",")
    # best single-stage bank per (stage, alpha group): the bad (2, 0) bank and the multi-stage bank are not picked
    assert members == [f"{NAME}/{ns.versions[k]}" for k in ("s2a0", "s2a3", "s3a3")]
    assert v.tags["pradot.promotion"].startswith("promoted:")
    assert float(v.tags["metric.image_auroc"]) > 0.5
    run = ns.client.get_run(v.tags["run_id"])
    assert run.data.tags["pradot.entry_point"] == "promote"
    assert "multi-stage" in run.data.tags["pradot.excluded"]
    arts = {a.path for d in ("comparison", "figures") for a in ns.client.list_artifacts(run.info.run_id, d)}
    assert {"comparison/comparison.csv", "comparison/comparison.md", "figures/metrics_bar.png",
            "figures/overlays_members_vs_ensemble.png"} <= arts
    csv_text = Path(ns.mlflow.artifacts.download_artifacts(run_id=run.info.run_id,
                                                           artifact_path="comparison/comparison.csv")).read_text()
    assert len(csv_text.strip().splitlines()) == 1 + 3 + 1  # header, three members, the ensemble

    # the champion is served with the single-bank contract (in this process pradot.ensemble is imported,
    # which registers its loader with pradot.serving)
    img = next(s for s in ns.splits.test if s.label == 1)
    pyf = mlflow.pyfunc.load_model(f"models:/{ENS}@champion")
    pred = pyf.predict(pd.DataFrame({"image": [_b64(img.image_path)]}))
    assert list(pred.columns[:4]) == ["score", "raw_score", "is_anomaly", "threshold"]
    assert np.isfinite(pred["raw_score"][0]) and 0.0 <= pred["score"][0] <= 1.0
    assert pred["threshold"][0] == pytest.approx(float(v.tags["threshold"]))
    # ... and its raw score is the ensemble's: the max of the mean of the members' maps
    from pradot.data import read_image
    from pradot.ensemble import Ensemble, load_scoring_model

    art = Path(ns.mlflow.artifacts.download_artifacts(f"models:/{ENS}/1", dst_path=str(ns.tmp / "dl")))
    ens_file = next(p for p in art.rglob("*.pt"))
    ens = load_scoring_model(ens_file)
    assert isinstance(ens, Ensemble) and len(ens) == 3
    x = torch.from_numpy(read_image(img.image_path, 96)).permute(2, 0, 1)[None].float() / 255
    member_maps = [m.score(x)[0] for m in ens.members]
    assert pred["raw_score"][0] == pytest.approx(float(torch.stack(member_maps).mean(0).max()), rel=1e-5)


def test_promote_worse_members_keeps_the_champion(store, capsys):
    import promote

    ns = store
    bad = f"{NAME}/{ns.versions['bad']}"
    rc = promote.main([*ns.overrides, f"members={bad}", "normalisation=per_member"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    champion = ns.client.get_model_version_by_alias(ENS, "champion")
    assert str(champion.version) == "1"  # the alias stayed
    new = max(ns.client.search_model_versions(f"name='{ENS}'"), key=lambda v: int(v.version))
    assert str(new.version) == "2" and new.tags["members"] == bad and new.tags["normalisation"] == "per_member"
    assert float(new.tags["metric.image_auroc"]) < float(champion.tags["metric.image_auroc"])
    reason = new.tags["pradot.promotion"]
    assert reason.startswith("kept:") and "v1" in reason
    assert ns.client.get_run(new.tags["run_id"]).data.tags["pradot.promotion"] == reason
    assert "kept on v1" in out.out


def test_promote_without_members_is_a_clear_error(store, capsys):
    import promote

    ns = store
    n_runs = len(_runs(ns))
    rc = promote.main([*ns.overrides, "category=no_such_category"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "pradot-synthetic-no_such_category" in err and "-e reproduce" in err and "nothing was registered" in err
    assert len(_runs(ns)) == n_runs  # no run was started
    assert not ns.client.search_registered_models(f"name='pradot-synthetic-no_such_category-ensemble'")


def test_promote_missing_or_bad_explicit_members(store, capsys):
    import promote

    ns = store
    n_versions = len(ns.client.search_model_versions(f"name='{ENS}'"))
    rc = promote.main([*ns.overrides, f"members={NAME}/{ns.versions['s2a0']},{NAME}/99"])
    err = capsys.readouterr().err
    assert rc == 2 and f"{NAME}/99" in err and "does not exist" in err and "versions [1, 2, 3, 4, 5]" in err
    rc = promote.main([*ns.overrides, "members=not-a-model/1"])
    assert rc == 2 and "no registered model named 'not-a-model'" in capsys.readouterr().err
    rc = promote.main([*ns.overrides, "members=justaname"])
    assert rc == 2 and "is not 'name/version'" in capsys.readouterr().err
    rc = promote.main([*ns.overrides, f"members={NAME}/1,{NAME}/1"])
    assert rc == 2 and "listed twice" in capsys.readouterr().err
    rc = promote.main([*ns.overrides, f"members={ENS}/1"])  # registered by the first test
    assert rc == 2 and "ensembles cannot be members" in capsys.readouterr().err
    rc = promote.main([*ns.overrides, "normalisation=zscore"])
    assert rc == 2 and "per_member" in capsys.readouterr().err
    assert len(ns.client.search_model_versions(f"name='{ENS}'")) == n_versions


def test_promote_refuses_other_data_than_the_members(store, capsys):
    """Without experiment=ci the synthetic generator options differ from the members' training: promote
    refuses (instead of regenerating the dataset and evaluating on other images)."""
    import promote

    ns = store
    stamp = next((ns.tmp / "data").rglob(".pradot_synthetic.json")).read_text()
    rc = promote.main(["data=synthetic", f"data.root={ns.tmp}/data"])
    err = capsys.readouterr().err
    assert rc == 2 and "trained on other data" in err and "data.generator" in err
    assert next((ns.tmp / "data").rglob(".pradot_synthetic.json")).read_text() == stamp


def test_reproduce_refuses_overrides_it_sets():
    import reproduce

    with pytest.raises(reproduce.ReproduceError, match="set by reproduce"):
        reproduce.split_argv(["category=x", "model.alpha=0.1"])
    stages, alphas, promote_opts, rest = reproduce.split_argv(
        ["category=x", "data=synthetic", "metric=au_spro_0.05", "experiment=ci"])
    assert stages == (2, 3) and alphas == (0.0, 0.3)
    assert promote_opts == ["metric=au_spro_0.05"] and rest == ["category=x", "data=synthetic", "experiment=ci"]


def test_champion_served_in_a_fresh_process(store):
    """What `mlflow models serve` does: load the pyfunc in a new process (pradot.ensemble not imported
    beforehand). Needs pradot.serving / PradotPyfunc to load ensemble files by themselves."""
    ns = store
    img = next(s for s in ns.splits.test if s.label == 0)
    code = (
        "import json, sys, pandas as pd, mlflow.pyfunc\n"
        f"m = mlflow.pyfunc.load_model('models:/{ENS}@champion')\n"
        f"p = m.predict(pd.DataFrame({{'image': [{_b64(img.image_path)!r}]}}))\n"
        "print(json.dumps(p.iloc[0][['score', 'raw_score']].astype(float).to_dict()))\n")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{ns.tmp}/mlflow.db",
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "pipelines")])}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ns.tmp,
                         timeout=240)
    if res.returncode != 0 and "pradot-ensemble-v1" in res.stderr and "servable formats" in res.stderr:
        pytest.xfail("PradotPyfunc.load_context does not load ensemble files yet (see pipelines/promote.py "
                     "report: call pradot.ensemble.load_scoring_model or register the ensemble loader)")
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert np.isfinite(out["raw_score"])


def test_select_by_ranks_sweep_registered_versions(store):
    """Sweep-registered versions carry metric.val_auroc only: the default ranking (image_auroc) skips them
    and says how to use them; select_by=val_auroc ranks by it (best per group), the others are excluded."""
    import promote

    ns = store
    opts, rest = promote.split_argv(["select_by=val_auroc", "metric=image_auroc", "experiment=ci"])
    assert opts.select_by == "val_auroc" and opts.metric == "image_auroc" and rest == ["experiment=ci"]
    assert promote.split_argv(["select_by="])[0].select_by is None  # an unset MLproject parameter
    sweep_like = {"s2a0": 0.7, "bad": 0.9, "s3a3": 0.6}  # the bad (2, 0) bank wins its group on val_auroc
    try:
        for key, val in sweep_like.items():
            ns.client.set_model_version_tag(NAME, ns.versions[key], "metric.val_auroc", str(val))
        sel = promote.select_best(ns.client, NAME, "val_auroc", ns.cfg)
        assert [m.ref for m in sel.members] == [f"{NAME}/{ns.versions[k]}" for k in ("bad", "s3a3")]
        assert any(f"{NAME}/{ns.versions['s2a3']}: no metric.val_auroc" in e for e in sel.excluded)
        default = promote.select_best(ns.client, NAME, "image_auroc", ns.cfg)  # unchanged by the new tags
        assert [m.ref for m in default.members] == [f"{NAME}/{ns.versions[k]}" for k in ("s2a0", "s2a3", "s3a3")]
        with pytest.raises(promote.PromotionError, match="select_by=val_auroc"):
            promote.select_best(ns.client, NAME, "au_spro_0.05", ns.cfg)  # no version has it: the hint
    finally:
        for key in sweep_like:
            ns.client.delete_model_version_tag(NAME, ns.versions[key], "metric.val_auroc")
