"""A trial without Ray: its evaluation (pradot.metrics on the evaluation set), its config (the training config
plus the sampled values), and its checkpoint, which the driver turns into a servable PRADOT model."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pipelines import config
from pipelines.sweep.evalset import EvalSet, FeatureStore
from pipelines.sweep.plan import sweep_plan
from pipelines.sweep.trial import (
    CHECKPOINT_META,
    CHECKPOINT_MODEL,
    CHECKPOINT_SCORES,
    TrialContext,
    TrialRun,
    _Trial,
    trial_setup,
)

PSEUDO = EvalSet(
    "pseudo",
    "validation+pseudo",
    labels=(0, 0, 0, 1, 1, 1, 1),
    groups=("good",) * 3 + ("cutpaste", "noise", "shuffle", "moved_patch"),
    styles=("good",) * 3 + ("structural", "structural", "logical", "logical"),
    loco_style=False,
    calibration_split="validation+pseudo",
    calibration_source="validation",
)
SCORES = [0.1, 0.2, 0.3, 0.25, 0.9, 0.05, 0.5]


def test_pseudo_objective_metrics():
    out = PSEUDO.evaluate(SCORES)
    # 3 normals x 4 anomalies: cutpaste beats 2 normals, noise 3, shuffle 0, moved_patch 3
    assert out == pytest.approx(
        {
            "val_auroc": 8 / 12,
            "val_auroc_cutpaste": 2 / 3,
            "val_auroc_noise": 1.0,
            "val_auroc_shuffle": 0.0,
            "val_auroc_moved_patch": 1.0,
            "val_auroc_structural": 5 / 6,
            "val_auroc_logical": 3 / 6,
        }
    )
    np.testing.assert_array_equal(PSEUDO.normal_scores(SCORES), [0.1, 0.2, 0.3])
    one_style = EvalSet(
        "pseudo",
        "validation+pseudo",
        (0, 1),
        ("good", "noise"),
        ("good", "structural"),
        False,
        "validation+pseudo",
        "validation",
    )
    assert one_style.evaluate([0.0, 1.0]) == {"val_auroc": 1.0, "val_auroc_noise": 1.0}  # no per-style metric


def test_pseudo_objective_with_localisation_is_promotes_objective():
    """With masks the trials report what promote chooses by: per style, (image AUROC + AU-PRO@0.05 of the maps
    on the normals and that style's masks) / 2, averaged over the styles (checked against pradot.metrics)."""
    import dataclasses

    from pradot.metrics import au_pro

    g = np.random.default_rng(3)
    masks = np.zeros((7, 16, 16), bool)
    masks[3:, 4:9, 5:11] = True
    maps = g.random((7, 16, 16)).astype(np.float32) + 0.8 * masks * g.random((7, 1, 1))
    ev = dataclasses.replace(PSEUDO, masks=masks)
    out = ev.evaluate(SCORES, maps)
    for style, rows in (("structural", [0, 1, 2, 3, 4]), ("logical", [0, 1, 2, 5, 6])):
        assert out[f"val_aupro_{style}"] == pytest.approx(au_pro(list(masks[rows]), list(maps[rows]), max_fpr=0.05))
    expected = np.mean([(5 / 6 + out["val_aupro_structural"]) / 2, (3 / 6 + out["val_aupro_logical"]) / 2])
    assert out["val_objective"] == pytest.approx(expected)
    assert {k: out[k] for k in PSEUDO.evaluate(SCORES)} == PSEUDO.evaluate(SCORES)  # image metrics unchanged
    assert "val_objective" not in ev.evaluate(SCORES)  # no maps: image scores only
    half = dataclasses.replace(ev, eval_size=8).evaluate(SCORES, maps)  # the localisation at 8 x 8
    assert half["val_aupro_logical"] != out["val_aupro_logical"]


@pytest.mark.parametrize("loco_style, expected", [(True, (1.0 + 0.25) / 2), (False, 5 / 8)])
def test_test_objective_metrics(loco_style, expected):
    groups = ("good", "good", "logical_anomalies", "logical_anomalies", "structural_anomalies", "structural_anomalies")
    ev = EvalSet("test", "test", (0, 0, 1, 1, 1, 1), groups, groups, loco_style, "validation", "validation")
    out = ev.evaluate([0.2, 0.4, 0.5, 0.6, 0.3, 0.1])
    # logical: both above both normals (4 of 4 pairs); structural: 0.3 above one normal (1 of 4); all: 5 of 8
    assert out["test_auroc_logical_anomalies"] == 1.0
    assert out["test_auroc_structural_anomalies"] == pytest.approx(1 / 4)
    assert out["test_auroc"] == pytest.approx(expected)


@pytest.fixture(scope="module")
def ctx():
    cfg = config.compose("sweep", ["experiment=ci", "sweep=ci", "model.epochs=2"])
    plan = sweep_plan(cfg)
    return TrialContext(
        train_config=config.training_view(cfg),
        space=plan.space,
        evalset=PSEUDO,
        features=FeatureStore("disk", "/nowhere", {}),
        metric=plan.metric,
        milestones=(1, 2),
        tracking_uri="sqlite:///unused.db",
        parent_run_id="p",
        experiment_id="0",
        data_params={},
    )


def test_a_trial_is_the_training_config_with_the_sampled_values(ctx):
    setup = trial_setup(
        ctx, {"model.alpha": 0.25, "model.n": 2, "model.batch_ratio": 4, "model.eta": 0.5, "model.epsilon": 0.05}
    )
    m = setup.model
    assert (m.alpha, m.n, m.eta, m.epsilon, m.batch_size, m.stages, m.backbone) == (
        0.25,
        2,
        0.5,
        0.05,
        8,
        (2,),
        "efficientnet_lite0",
    )
    params = setup.params()
    assert params["model.alpha"] == "0.25" and params["backbone.stages"] == "[2]" and params["model.batch_size"] == "8"
    assert params["model.batch_ratio"] == "4" and not [k for k in params if k.startswith(("sweep.", "data."))]
    assert setup.hparams() == {
        "alpha": 0.25,
        "n": 2,
        "eta": 0.5,
        "epsilon": 0.05,
        "batch_ratio": 4,
        "sinkhorn_iters": 100,
        "stages": [2],
        "backbone": "efficientnet_lite0",
        "batch_size": 8,
    }
    assert ctx.train_config.model.alpha != 0.25  # the training config itself is untouched


def test_a_checkpoint_becomes_a_servable_model(ctx, effnet, tmp_path):
    from pradot.calibration import Calibration
    from pradot.checkpoint import load_state
    from pradot.model import PRADOT, PrototypeModel

    images = torch.rand(8, 3, 96, 96)
    with torch.no_grad():
        feats = {2: effnet(images)[2].numpy()}
    setup = trial_setup(ctx, {"model.alpha": 0.5, "model.n": 1, "model.batch_ratio": 4, "model.epsilon": 0.1})
    model = PrototypeModel.for_features(setup.model, feats)
    model.fit_features(feats, progress=False)
    trial = _Trial(ctx, setup, TrialRun(None, "run-1"), "t1", model, {2: feats[2][:7]})
    scores = trial.scores(trial.eval_features)
    trial.write_checkpoint(tmp_path, 2, scores, {"val_auroc": 0.5})

    meta = json.loads((tmp_path / CHECKPOINT_META).read_text())
    assert meta["trial_id"] == "t1" and meta["mlflow_run_id"] == "run-1" and meta["epoch"] == 2
    assert meta["hparams"]["batch_ratio"] == 4 and meta["calibration_source"] == "validation"
    np.testing.assert_allclose(np.load(tmp_path / CHECKPOINT_SCORES), scores[:3])  # the normals of PSEUDO
    Calibration.calibrate(np.load(tmp_path / CHECKPOINT_SCORES), 0.99)
    # the driver: banks from the checkpoint + the real backbone = the model the trial scored with
    restored = PRADOT.from_prototypes(PrototypeModel.from_state(load_state(tmp_path / CHECKPOINT_MODEL)), effnet)
    _, served = restored.score(images[:7])
    np.testing.assert_allclose(served.numpy(), scores, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------ a trial Tune restarts
class _Features:
    """Cached features of a tiny dataset (what ``FeatureStore.load`` returns), without a cache folder."""

    cache_keys = ("k",)

    def __init__(self):
        g = np.random.default_rng(0)
        self.arrays = {
            "train": g.random((16, 8, 6, 6), dtype=np.float32),
            PSEUDO.split: g.random((7, 8, 6, 6), dtype=np.float32),
        }

    def load(self, backbone, split, stages):
        return {int(s): self.arrays[split] for s in stages}


class _Tune:
    """Tune's side of one attempt of trial ``t1``: reports are recorded, checkpoints persisted (copied) as
    Tune does, and the driver's callback gets each result Tune takes (``driver``: a ``SweepCallback``);
    ``die_after``: the worker dies right after Tune has that epoch's report and checkpoint; ``stop_at``:
    ``(epoch, taken)``, Tune stops the trial in that epoch's report (``SystemExit``, as Ray does), after
    taking its result (``taken``: a scheduler's stop on it) or without taking it (an interrupt that lands
    between the report and Tune's processing: the checkpoint is on storage but never registered)."""

    class Died(Exception):
        pass

    def __init__(self, store, restore_from=None, die_after=None, driver=None, stop_at=None):
        from ray import tune

        self.store, self.die_after, self.driver, self.stop_at, self.reports = store, die_after, driver, stop_at, []
        self.restore = tune.Checkpoint.from_directory(str(restore_from)) if restore_from else None

    def report(self, metrics, checkpoint=None):
        import shutil

        epoch = metrics["epoch"]
        taken = self.stop_at is None or self.stop_at[0] != epoch or self.stop_at[1]
        if checkpoint is not None:
            shutil.copytree(checkpoint.path, self.store / (f"epoch_{epoch}" if taken else f"untaken_{epoch}"))
        if taken:
            self.reports.append(metrics)
            if self.driver is not None:
                self.driver.on_trial_result(0, [], SimpleNamespace(trial_id="t1"), dict(metrics))
        if self.stop_at is not None and self.stop_at[0] == epoch:
            raise SystemExit(0)
        if epoch == self.die_after:
            raise self.Died("the node died")

    def install(self, monkeypatch):
        from ray import tune

        monkeypatch.setattr(tune, "report", self.report)
        monkeypatch.setattr(tune, "get_checkpoint", lambda: self.restore)
        monkeypatch.setattr(
            tune,
            "get_context",
            lambda: SimpleNamespace(get_trial_id=lambda: "t1", get_trial_name=lambda: "trial_main_t1"),
        )


@pytest.mark.parametrize("every, restart", [(1, 3), (2, 2)])
@pytest.mark.usefixtures("sqlite_uri")  # the store at tmp_path/mlflow.db: a copy of the migrated template
def test_a_restarted_trial_continues_from_its_checkpoint_and_logs_each_epoch_once(
    ctx, tmp_path, monkeypatch, every, restart
):
    """The essence of case fault-06 (a resumed or retried trial): killed right after reporting epoch 3 of
    6, then restarted with its last checkpoint (epoch 3, or 2 with sweep.checkpoint_every=2), the trial
    trains the epochs after it only, its MLflow run holds every epoch exactly once (epoch 3 is reported
    again by the restarted attempt with checkpoint_every=2), it is tagged completed with 2 attempts, and
    its bank equals an uninterrupted trial's."""
    import dataclasses

    from mlflow import MlflowClient

    from pipelines.sweep import runs, trial
    from pradot.checkpoint import load_state

    monkeypatch.setattr(
        runs,
        "where_tags",
        lambda: {"pradot.node_id": "n1", "pradot.hostname": "h", "pradot.pid": "1", "pradot.node_ip": "127.0.0.1"},
    )
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    sampled = {"model.alpha": 0.4, "model.n": 1, "model.batch_ratio": 4, "model.eta": 0.6, "model.epsilon": 0.05}
    six = config.with_overrides(ctx.train_config, {"model.epochs": 6})

    def attempt(parent, tune_side):
        tune_side.install(monkeypatch)
        c = dataclasses.replace(
            ctx,
            train_config=six,
            features=_Features(),
            milestones=(6,),
            tracking_uri=client.tracking_uri,
            parent_run_id=parent,
            experiment_id=exp,
            checkpoint_every=every,
        )
        trial.trial_main(sampled, c)

    from pipelines.sweep.tuner import SweepCallback

    exp = client.create_experiment("restart", artifact_location=str(tmp_path / "artifacts"))
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir(), (tmp_path / "c").mkdir()
    driver = SweepCallback(client.tracking_uri, exp, "killed", 6)
    first = _Tune(tmp_path / "a", die_after=3, driver=driver)
    with pytest.raises(_Tune.Died):
        attempt("killed", first)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [f"epoch_{e}" for e in range(every, 4, every)]
    driver = SweepCallback(client.tracking_uri, exp, "killed", 6)  # a resumed sweep: a new driver
    second = _Tune(tmp_path / "b", restore_from=tmp_path / "a" / f"epoch_{restart}", driver=driver)
    attempt("killed", second)
    attempt("reference", _Tune(tmp_path / "c", driver=SweepCallback(client.tracking_uri, exp, "reference", 6)))

    assert [r["epoch"] for r in first.reports] == [1, 2, 3]
    assert [r["epoch"] for r in second.reports] == list(range(restart + 1, 7))
    run = runs.find_trial_runs(client, exp, "killed")["t1"]
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_auroc"))
    assert steps == [1, 2, 3, 4, 5, 6]
    tags = run.data.tags
    assert (run.info.status, tags["pradot.trial_status"], tags["pradot.epochs_trained"]) == (
        "FINISHED",
        "completed",
        "6",
    )
    assert tags["pradot.attempts"] == "2" and tags["pradot.restored_from_epoch"] == str(restart)
    assert "pradot.error" not in tags and tags["pradot.hostname"] == "h"  # the failed attempt's tags are gone
    restarted = load_state(tmp_path / "b" / "epoch_6" / CHECKPOINT_MODEL)["banks"]
    reference = load_state(tmp_path / "c" / "epoch_6" / CHECKPOINT_MODEL)["banks"]
    for s in reference:
        torch.testing.assert_close(restarted[s]["features"], reference[s]["features"], rtol=0, atol=0)
    halfway = load_state(tmp_path / "a" / f"epoch_{restart}" / CHECKPOINT_MODEL)["banks"]
    assert not torch.equal(halfway[2]["features"], reference[2]["features"])


@pytest.mark.usefixtures("sqlite_uri")  # the store at tmp_path/mlflow.db: a copy of the migrated template
def test_a_failed_trial_is_tagged_with_where_and_why(ctx, tmp_path, monkeypatch):
    """One set of failure tags: the trial's own error is ``error``; a node that lacks the cache is
    ``infrastructure`` (the same tags the driver writes for a node that died)."""
    import dataclasses

    from mlflow import MlflowClient

    from pipelines.sweep import runs, trial

    monkeypatch.setattr(
        runs,
        "where_tags",
        lambda: {"pradot.node_id": "n1", "pradot.hostname": "h", "pradot.pid": "7", "pradot.node_ip": "127.0.0.1"},
    )
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("fail", artifact_location=str(tmp_path / "artifacts"))
    _Tune(tmp_path).install(monkeypatch)
    missing = FeatureStore(
        "disk", str(tmp_path / "no-cache"), {"efficientnet_lite0/train": {"split": "train", "stages": [2]}}
    )
    c = dataclasses.replace(
        ctx, features=missing, tracking_uri=client.tracking_uri, parent_run_id="p", experiment_id=exp
    )
    with pytest.raises(OSError, match="are not in"):
        trial.trial_main({"model.alpha": 0.4, "model.n": 1, "model.batch_ratio": 4}, c)
    tags = runs.find_trial_runs(client, exp, "p")["t1"].data.tags
    assert (tags["pradot.trial_status"], tags["pradot.failure"]) == ("failed", "infrastructure")
    assert tags["pradot.error"].startswith("NodeSetupError: the cached features") and tags["pradot.pid"] == "7"
    assert runs.failure_tags(ValueError("bad value"))["pradot.failure"] == "error"


@pytest.mark.parametrize("taken", [False, True])
def test_a_stop_in_the_window_between_report_and_bookkeeping_neither_repeats_nor_skips_an_epoch(
    ctx, tmp_path, monkeypatch, taken
):
    """Case fault-06 under load, placed on purpose: Tune stops the trial inside its report of epoch 3
    (the interrupt), before taking that result (its checkpoint is on storage, unregistered) or after taking
    it. The MLflow run holds exactly the epochs Tune took; the sweep resumed from Tune's last registered
    checkpoint reports the next epoch once, trains to the end and ends with the uninterrupted trial's bank."""
    import dataclasses

    from mlflow import MlflowClient

    from pipelines.sweep import runs, trial
    from pipelines.sweep.tuner import SweepCallback
    from pradot.checkpoint import load_state

    monkeypatch.setattr(
        runs,
        "where_tags",
        lambda: {"pradot.node_id": "n1", "pradot.hostname": "h", "pradot.pid": "1", "pradot.node_ip": "127.0.0.1"},
    )
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("window", artifact_location=str(tmp_path / "artifacts"))
    sampled = {"model.alpha": 0.4, "model.n": 1, "model.batch_ratio": 4, "model.eta": 0.6, "model.epsilon": 0.05}
    c = dataclasses.replace(
        ctx,
        train_config=config.with_overrides(ctx.train_config, {"model.epochs": 6}),
        features=_Features(),
        milestones=(6,),
        tracking_uri=client.tracking_uri,
        experiment_id=exp,
    )

    def attempt(parent, tune_side):
        tune_side.install(monkeypatch)
        trial.trial_main(sampled, dataclasses.replace(c, parent_run_id=parent))

    for d in "abc":
        (tmp_path / d).mkdir()
    first = _Tune(tmp_path / "a", driver=SweepCallback(client.tracking_uri, exp, "stopped", 6), stop_at=(3, taken))
    with pytest.raises(SystemExit):
        attempt("stopped", first)
    run = runs.find_trial_runs(client, exp, "stopped")["t1"]
    took = 3 if taken else 2
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_auroc")) == list(range(1, took + 1))
    last = tmp_path / "a" / f"epoch_{took}"  # what Tune restores the resumed trial from
    second = _Tune(tmp_path / "b", restore_from=last, driver=SweepCallback(client.tracking_uri, exp, "stopped", 6))
    attempt("stopped", second)
    attempt("reference", _Tune(tmp_path / "c", driver=SweepCallback(client.tracking_uri, exp, "reference", 6)))
    assert [r["epoch"] for r in second.reports] == list(range(took + 1, 7))
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_auroc")]
    assert sorted(steps) == [1, 2, 3, 4, 5, 6]  # each epoch once: none repeated, none skipped
    ref = runs.find_trial_runs(client, exp, "reference")["t1"]
    want = {m.step: m.value for m in client.get_metric_history(ref.info.run_id, "val_auroc")}
    assert {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_auroc")} == want
    restarted = load_state(tmp_path / "b" / "epoch_6" / CHECKPOINT_MODEL)["banks"]
    reference = load_state(tmp_path / "c" / "epoch_6" / CHECKPOINT_MODEL)["banks"]
    for s in reference:
        torch.testing.assert_close(restarted[s]["features"], reference[s]["features"], rtol=0, atol=0)
