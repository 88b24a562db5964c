"""Promotion of an ensemble from registered banks (pipelines/promote/), end to end on a tmp SQLite store.

Members are tiny PRADOT banks (EfficientNet-Lite0, 96 px synthetic screw bags, experiment=ci data) fitted
directly and logged with ``log_pradot_model`` inside runs that record the data params and the version tags
``pipelines/train.py`` writes. Their ``metric.image_auroc`` tags are set by hand and misleading on purpose
(the broken bank's is not the lowest of its group... the multi-stage bank's is the best): promote must not read
them; it chooses on the validation objective and computes every test metric itself, after the choice.
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

from pipelines import config, promote_settings, registry
from pipelines.promote import run as promote
from pipelines.promote.select import PromotionError, select_best
from pradot.names import markdown_cell

REPO = Path(__file__).resolve().parents[2]

NAME = "pradot-synthetic-screw_bag"
ENS = NAME + "-ensemble"


def _register(ns, model, metric: float, label: str) -> str:
    """Log and register a bank as pipelines/train.py does (its data params, its VersionTags)."""
    import mlflow

    from pradot.serving import Calibration

    with mlflow.start_run(run_name=label) as run:
        mlflow.log_params(config.flatten(ns.cfg))  # promote checks the data params against these
        path = model.save(ns.tmp / f"{label}.pt")
        cal = Calibration(threshold=1.0, low=0.0, high=2.0, quantile=0.99, n_images=6)
        c = model.config
        tags = registry.BankTags(
            dataset="synthetic",
            category="screw_bag",
            run_id=run.info.run_id,
            threshold=1.0,
            backbone=c.backbone,
            stages=c.stages,
            image_size=c.image_size,
            alpha=c.alpha,
            n=c.n,
            metrics={"image_auroc": metric},
        )
        uri = registry.log_model(path, cal, tags)
    return registry.register(uri, NAME, tags)  # after the run ended, as train does


@pytest.fixture(scope="module")
def store(tmp_path_factory, mlflow_db_template):
    """A tmp tracking store with five registered versions of NAME:
    v1 (2, 0) good, v2 (2, 0.3) good, v3 (3, 0.3) good, v4 (2, 0) bad (constant prototypes, low tag),
    v5 (2+3, 0.3) multi-stage with the best tag (left out of the default selection)."""
    import dataclasses

    from tests.helpers import copy_store

    tmp = tmp_path_factory.mktemp("promote")
    copy_store(mlflow_db_template, tmp)  # sqlite:///{tmp}/mlflow.db, migrated
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp}/mlflow.db")
    mp.delenv("MLFLOW_RUN_ID", raising=False)
    mp.setenv("TQDM_DISABLE", "1")
    mp.chdir(tmp)
    import mlflow
    from mlflow import MlflowClient

    from pradot import PRADOT
    from pradot.backbone import load_backbone
    from pradot.data import ImageDataset
    from pradot.engine import open_splits
    from pradot.features import extract_features

    mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
    client = MlflowClient()
    client.create_experiment("pradot", artifact_location=(tmp / "artifacts").as_uri())
    mlflow.set_experiment("pradot")
    overrides = ["experiment=ci", "data=synthetic", f"data.root={tmp}/data", f"cache.dir={tmp}/cache"]
    cfg = config.compose("promote", overrides)
    spec, base = config.data_spec(cfg), config.model_config(cfg)
    splits = open_splits(spec)
    ns = SimpleNamespace(tmp=tmp, client=client, cfg=cfg, overrides=overrides, spec=spec, splits=splits, mlflow=mlflow)

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
    # chosen on the validation objective, on validation + pseudo-anomalies; the registry says so
    tags = registry.VersionTags.from_tags(v.tags)
    assert (tags.selection_split, tags.selection_metric, tags.fusion) == ("validation+pseudo", "val_objective", "mean")
    assert 0.0 <= tags.metrics["val_objective"] <= 1.0 and "val_aupro_logical" in tags.metrics
    run = ns.client.get_run(v.tags["run_id"])
    assert run.data.tags["pradot.entry_point"] == "promote"
    assert run.data.tags["pradot.selection_split"] == "validation+pseudo"
    arts = {a.path for d in ("comparison", "figures") for a in ns.client.list_artifacts(run.info.run_id, d)}
    assert {
        "comparison/comparison.csv",
        "comparison/comparison.md",
        "comparison/choice.json",
        "figures/metrics_bar.png",
        "figures/overlays_members_vs_ensemble.png",
    } <= arts
    choice = json.loads(
        Path(
            ns.mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="comparison/choice.json")
        ).read_text()
    )
    by_ref = {c["ref"]: c for c in choice["candidates"]}
    # the broken (2, 0) bank loses its group on the validation objective
    assert (
        by_ref[f"{NAME}/{ns.versions['bad']}"]["validation"]["val_objective"]
        < by_ref[f"{NAME}/{ns.versions['s2a0']}"]["validation"]["val_objective"]
    )
    csv_text = Path(
        ns.mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="comparison/comparison.csv")
    ).read_text()
    # header, the four group winners (three single-stage banks, the multi-stage bank), the baseline (none is
    # registered: fitted by promote), the ensemble
    lines = csv_text.strip().splitlines()
    assert len(lines) == 1 + 4 + 1 + 1 and "[baseline]" in csv_text and lines[0].startswith("model,val_objective")

    # the champion is served with the single-bank contract
    img = next(s for s in ns.splits.test if s.label == 1)
    pyf = mlflow.pyfunc.load_model(f"models:/{ENS}@champion")
    pred = pyf.predict(pd.DataFrame({"image": [_b64(img.image_path)]}))
    assert list(pred.columns[:4]) == ["score", "raw_score", "is_anomaly", "threshold"]
    assert np.isfinite(pred["raw_score"][0]) and 0.0 <= pred["score"][0] <= 1.0
    assert pred["threshold"][0] == pytest.approx(float(v.tags["threshold"]))
    # ... and its raw score is the ensemble's: the max of the mean of the members' maps
    from pradot.data import read_image
    from pradot.ensemble import Ensemble
    from pradot.persistence import load_scoring_model

    art = Path(ns.mlflow.artifacts.download_artifacts(f"models:/{ENS}/1", dst_path=str(ns.tmp / "dl")))
    ens_file = next(p for p in art.rglob("*.pt"))
    ens = load_scoring_model(ens_file)
    assert isinstance(ens, Ensemble) and len(ens) == 3
    x = torch.from_numpy(read_image(img.image_path, 96)).permute(2, 0, 1)[None].float() / 255
    member_maps = [m.score(x)[0] for m in ens.members]
    assert pred["raw_score"][0] == pytest.approx(float(torch.stack(member_maps).mean(0).max()), rel=1e-5)


def test_promote_worse_members_keeps_the_champion(store, capsys):

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
    assert "the server answers after 20-40 s: wait until curl http://127.0.0.1:5001/ping says 200" in out.out
    # the broken bank is below the memory bank promote fitted: the summary says so plainly, the run is tagged
    choice = json.loads(
        Path(
            ns.mlflow.artifacts.download_artifacts(run_id=new.tags["run_id"], artifact_path="comparison/choice.json")
        ).read_text()
    )
    (base,) = [c for c in choice["candidates"] if c["baseline"]]
    assert choice["ensemble_validation"]["val_objective"] < base["validation"]["val_objective"]
    assert "WARNING   : the chosen model is BELOW the memory-bank baseline on the validation objective" in out.out
    assert ns.client.get_run(new.tags["run_id"]).data.tags["pradot.below_baseline"] == "true"


def test_below_baseline_compares_with_the_best_baseline_only():
    from pipelines.promote.choose import Candidate, below_baseline

    def cand(label, value, baseline):
        return Candidate(
            label, label, None, None, ("g",), "bank", metrics={"val_objective": value}, is_baseline=baseline
        )

    cands = [cand("bank", 0.9, False), cand("MB a", 0.7, True), cand("MB b", 0.8, True)]
    assert below_baseline(cands, 0.8, "val_objective") is None  # a tie is not below
    msg = below_baseline(cands, 0.75, "val_objective")
    assert msg and "0.7500 < 0.8000 for MB b" in msg
    assert below_baseline(cands[:1], 0.1, "val_objective") is None  # no baseline among the candidates


def test_promote_without_members_is_a_clear_error(store, capsys):

    ns = store
    n_runs = len(_runs(ns))
    rc = promote.main([*ns.overrides, "category=no_such_category"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "pradot-synthetic-no_such_category" in err and "-e reproduce" in err and "nothing was registered" in err
    assert len(_runs(ns)) == n_runs  # no run was started
    assert not ns.client.search_registered_models("name='pradot-synthetic-no_such_category-ensemble'")


def test_promote_missing_or_bad_explicit_members(store, capsys):

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

    ns = store
    stamp = next((ns.tmp / "data").rglob(".pradot_synthetic.json")).read_text()
    rc = promote.main(["data=synthetic", "backbone=efficientnet_lite0", f"data.root={ns.tmp}/data"])
    err = capsys.readouterr().err
    assert rc == 2 and "trained on other data" in err and "data.generator" in err
    assert next((ns.tmp / "data").rglob(".pradot_synthetic.json")).read_text() == stamp


def test_reproduce_refuses_overrides_it_sets(capsys):
    from pipelines import reproduce

    assert reproduce.main(["category=x", "model.alpha=0.1"]) == 2
    assert "model.alpha is set by reproduce" in capsys.readouterr().err
    assert reproduce.main(["category=x", "tracking.register=false"]) == 2
    assert "must be registered" in capsys.readouterr().err
    cfg = config.compose(
        "reproduce",
        config.parse_overrides(
            ["category=x", "data=synthetic", "metric=au_spro_0.05", "experiment=ci", "stages=2", "alphas=0,0.5"]
        ),
    )
    grid = promote_settings.reproduce_grid(cfg)
    assert grid.members() == [(2, 0.0), (2, 0.5)]
    assert promote_settings.promote_options(cfg).metric == "au_spro_0.05"
    # the members' training config holds no promote/reproduce option
    member = config.training_view(cfg)
    assert "metric" not in member and "stages" not in member and "alphas" not in member and "model" in member


def test_champion_served_in_a_fresh_process(store):
    """What `mlflow models serve` does: load the pyfunc in a new process (pradot.ensemble not imported
    beforehand). Needs pradot.serving / PradotPyfunc to load ensemble files by themselves."""
    ns = store
    img = next(s for s in ns.splits.test if s.label == 0)
    code = (
        "import json, sys, pandas as pd, mlflow.pyfunc\n"
        f"m = mlflow.pyfunc.load_model('models:/{ENS}@champion')\n"
        f"p = m.predict(pd.DataFrame({{'image': [{_b64(img.image_path)!r}]}}))\n"
        "print(json.dumps(p.iloc[0][['score', 'raw_score']].astype(float).to_dict()))\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{ns.tmp}/mlflow.db"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ns.tmp, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert np.isfinite(out["raw_score"])


def test_select_by_ranks_sweep_registered_versions(store):
    """Sweep-registered versions carry metric.val_auroc: select_by=val_auroc keeps the best of each group by it
    before promote scores them; versions without the tag (a model trained with `mlflow run .`) stay candidates,
    scored on promote's objective like the others; test metrics cannot choose."""
    ns = store
    opts = promote_settings.promote_options(
        config.compose(
            "promote", config.parse_overrides(["select_by=val_auroc", "metric=image_auroc", "experiment=ci"])
        )
    )
    assert opts.select_by == "val_auroc" and opts.metric == "image_auroc" and opts.selection_metric == "val_objective"
    # an unset MLproject parameter
    assert (
        promote_settings.promote_options(config.compose("promote", config.parse_overrides(["select_by="]))).select_by
        is None
    )
    for bad in ("select_by=image_auroc", "objective=au_spro_0.05"):
        with pytest.raises(config.ConfigError, match="validation metrics only"):
            promote_settings.promote_options(config.compose("promote", [bad]))
    sweep_like = {"s2a0": 0.7, "bad": 0.9, "s3a3": 0.6}  # the bad (2, 0) bank wins its group on val_auroc
    try:
        for key, val in sweep_like.items():
            ns.client.set_model_version_tag(NAME, ns.versions[key], "metric.val_auroc", str(val))
        sel = select_best(ns.client, NAME, "val_auroc", "synthetic", "screw_bag")
        # the tagged: the best per group by the tag; then the untagged, every one of them
        assert [m.ref for m in sel.members] == [f"{NAME}/{ns.versions[k]}" for k in ("bad", "s3a3", "s2a3", "multi")]
        assert not sel.excluded
        assert any(f"{NAME}/{ns.versions['s2a3']}: no val_auroc tag; a candidate all the same" in n for n in sel.notes)
        every = select_best(ns.client, NAME, None, "synthetic", "screw_bag")  # the default: every version
        assert sorted(m.ref for m in every.members) == sorted(f"{NAME}/{v}" for v in ns.versions.values())
        nothing = select_best(ns.client, NAME, "val_nothing", "synthetic", "screw_bag")  # no version has the tag
        assert sorted(m.ref for m in nothing.members) == sorted(m.ref for m in every.members)
    finally:
        for key in sweep_like:
            ns.client.delete_model_version_tag(NAME, ns.versions[key], "metric.val_auroc")


def _shuffled_test_labels(monkeypatch, seed: int):
    """open_splits as promote calls it, with the test split's labels and anomaly types permuted."""
    import dataclasses

    from pradot import engine

    real = engine.open_splits

    def shuffled(spec):
        splits = real(spec)
        rng = np.random.default_rng(seed)
        perm = rng.permutation(len(splits.test))
        test = [
            dataclasses.replace(
                s, label=splits.test[j].label, anomaly_type=splits.test[j].anomaly_type, defects=splits.test[j].defects
            )
            for s, j in zip(splits.test, perm)
        ]
        assert [s.label for s in test] != [s.label for s in splits.test]
        return dataclasses.replace(splits, test=test)

    monkeypatch.setattr(engine, "open_splits", shuffled)


def _latest(ns):
    return max(ns.client.search_model_versions(f"name='{ENS}'"), key=lambda v: int(v.version))


def test_search_chooses_members_and_weights_without_reading_test_labels(store, capsys, monkeypatch):
    """fusion=search over every group winner and the baseline: the members and weights are the same when the test
    split's labels are shuffled (the choice never reads them); the test metrics (the report) change."""
    ns = store
    args = [*ns.overrides, "fusion=search", "normalisation=per_member", "selection.weight_step=0.5"]
    assert promote.main(args) == 0, capsys.readouterr().err
    first = _latest(ns)
    _shuffled_test_labels(monkeypatch, seed=3)
    assert promote.main(args) == 0, capsys.readouterr().err
    second = _latest(ns)
    assert int(second.version) == int(first.version) + 1
    for key in ("members", "member_weights", "member_kinds", "metric.val_objective", "fusion", "selection_split"):
        assert second.tags[key] == first.tags[key], key
    assert second.tags["metric.image_auroc"] != first.tags["metric.image_auroc"]  # the report did see the shuffle
    tags = registry.VersionTags.from_tags(first.tags)
    assert tags.fusion == "search" and abs(sum(tags.member_weights) - 1) < 1e-9 and len(tags.member_weights) >= 1
    assert len(tags.member_kinds) == len(tags.members)
    # the alias is decided on the validation objective (the champion re-scored on the same set), not on tests
    assert "val_objective" in second.tags["pradot.promotion"]


def test_served_maps_equal_offline_maps(store, capsys):
    """The promoted ensemble through the pyfunc in-process (predict, return_map) equals model.score on the same
    image at the model's size."""
    import io

    import mlflow.pyfunc
    import pandas as pd

    from pradot.data import read_image
    from pradot.persistence import load_scoring_model

    ns = store
    if not ns.client.search_model_versions(f"name='{ENS}'"):
        assert promote.main([*ns.overrides, "fusion=search", "normalisation=per_member"]) == 0, capsys.readouterr().err
    v = _latest(ns)
    img = next(s for s in ns.splits.test if s.label == 1)
    assert read_image(img.image_path).shape[:2] == (96, 96)  # the model's size: no resizing anywhere
    pyf = mlflow.pyfunc.load_model(f"models:/{ENS}/{v.version}")
    pred = pyf.predict(
        pd.DataFrame({"image": [_b64(img.image_path)]}), params={"return_map": True, "map_format": "npy"}
    )
    served = np.load(io.BytesIO(base64.b64decode(pred["anomaly_map"][0])))
    art = Path(ns.mlflow.artifacts.download_artifacts(f"models:/{ENS}/{v.version}", dst_path=str(ns.tmp / "dl2")))
    model = load_scoring_model(next(p for p in art.rglob("*.pt")))
    x = torch.from_numpy(read_image(img.image_path, 96)).permute(2, 0, 1)[None].float() / 255
    maps, scores = model.score(x)
    np.testing.assert_allclose(served, maps[0].numpy(), rtol=1e-5, atol=1e-6)
    assert pred["raw_score"][0] == pytest.approx(float(scores[0]), rel=1e-6)


@pytest.mark.slow
@pytest.mark.usefixtures("sqlite_uri")  # the store at tmp_path/mlflow.db: a copy of the migrated template
def test_mlflow_run_reproduce_end_to_end_serves_the_promoted_ensemble(tmp_path):
    """`mlflow run . -e reproduce` on the default CPU recipe (experiment=ci, two members to stay fast): members,
    the memory-bank baseline and the promotion are child runs; the champion is served with the single-bank
    contract."""
    import mlflow.pyfunc
    import pandas as pd

    from tests.helpers import tracking_uri
    from tests.pipelines.test_train import client_for, mlflow_run

    proc = mlflow_run(
        tmp_path,
        "dataset=synthetic",
        f"data_root={tmp_path}/data",
        f"overrides=experiment=ci cache.dir={tmp_path}/cache stages=2 alphas=0,0.3 evaluation.figures=false",
        entry="reproduce",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    # the comparison table is Markdown: its labels escaped as cells (pradot.names.markdown_cell)
    assert "== PRADOT reproduce finished ==" in proc.stdout and markdown_cell("[baseline]") in proc.stdout
    client = client_for(tmp_path)
    runs = client.search_runs([client.get_experiment_by_name("e2e").experiment_id])
    entry = sorted(r.data.tags.get("pradot.entry_point") for r in runs)
    assert entry == ["baseline", "main", "main", "promote", "reproduce"]
    assert all(r.info.status == "FINISHED" for r in runs)
    champion = client.get_model_version_by_alias(ENS, "champion")
    tags = registry.VersionTags.from_tags(champion.tags)
    assert tags.selection_split == "validation+pseudo" and tags.fusion == "mean" and len(tags.members) == 2
    assert len(client.search_model_versions(f"name='{NAME}-baseline'")) == 1
    img = next(s for s in sorted((tmp_path / "data" / "screw_bag" / "test" / "logical_anomalies").glob("*.png")))
    with tracking_uri(f"sqlite:///{tmp_path}/mlflow.db"):
        pyf = mlflow.pyfunc.load_model(f"models:/{ENS}@champion")
        pred = pyf.predict(pd.DataFrame({"image": [_b64(img)]}))
    assert list(pred.columns[:4]) == ["score", "raw_score", "is_anomaly", "threshold"]
    assert np.isfinite(pred["raw_score"][0]) and pred["threshold"][0] == pytest.approx(
        float(champion.tags["threshold"])
    )


def test_promote_skips_a_half_registered_version(store):
    """A version left by a crash during registration (earlier releases: created, then tagged one call at a
    time, its run never finished) is never a member, even with the best metric tag."""
    from pipelines.promote.select import resolve_explicit

    ns, name = store, "half-registered"
    client = ns.client
    exp = client.get_experiment_by_name("pradot").experiment_id
    client.create_registered_model(name)
    tags = {"stages": "2", "alpha": "0", "dataset": "synthetic", "category": "screw_bag"}
    done = client.create_run(exp)
    client.set_terminated(done.info.run_id, "FINISHED")
    client.create_model_version(name, "file:///x", run_id=done.info.run_id, tags={**tags, "metric.image_auroc": "0.8"})
    cut = client.create_run(exp)  # still RUNNING: the process was killed after "Created version"
    client.create_model_version(name, "file:///x", run_id=cut.info.run_id, tags={**tags, "metric.image_auroc": "0.99"})
    sel = select_best(client, name, None, "synthetic", "screw_bag")  # every complete version
    assert [m.version for m in sel.members] == ["1"]
    assert any(e.startswith(f"{name}/2: incomplete") and "RUNNING" in e for e in sel.excluded), sel.excluded
    client.set_terminated(cut.info.run_id, "FAILED")  # as the next entry run's orphan sweep leaves it
    assert [m.version for m in select_best(client, name, "image_auroc", "synthetic", "screw_bag").members] == ["1"]
    with pytest.raises(PromotionError, match="incomplete registration"):
        resolve_explicit(client, [f"{name}/2"])
