"""The sweep's settings as a typed plan (pipelines/sweep/plan.py), and the checks that need the data."""

from pathlib import Path

import pytest

from pipelines import config
from pipelines.checks import ConfigError
from pipelines.sweep.plan import (
    RaySettings,
    SchedulerSettings,
    TrialResources,
    check_against_data,
    metric_keys,
    sweep_plan,
)
from pipelines.sweep.space import SweepError

CI = ["experiment=ci", "sweep=ci"]


def _plan(*overrides):
    cfg = config.compose("sweep", [*CI, *overrides])
    return sweep_plan(cfg), cfg


def test_the_ci_plan():
    plan, _ = _plan()
    assert (plan.num_samples, plan.max_concurrent_trials, plan.top_k, plan.epochs) == (4, 2, 2, 2)
    assert (plan.objective, plan.metric, plan.mode) == ("pseudo", "val_objective", "max")
    assert plan.pseudo.localisation and plan.pseudo.eval_size is None
    assert plan.scheduler == SchedulerSettings("asha", (1, 2), grace_period=1, reduction_factor=2, max_t=2)
    assert plan.milestones == (1, 2)
    assert plan.resources == TrialResources(cpu=1.0, gpu=None)  # gpu auto
    assert plan.ray == RaySettings(None, 2, None)
    assert plan.pseudo.kinds == ("cutpaste", "noise", "blotch", "shuffle", "moved_patch")
    assert plan.backbones == ("efficientnet_lite0",) and plan.stage_sets == ((2,),) and plan.union_stages() == (2,)
    assert (plan.feature_store, plan.name, plan.resume) == ("auto", None, False)
    assert plan.storage_path == str(Path.cwd() / ".ray_results")  # resolved where the user stands (pipelines.paths)
    assert plan.stop_after_trials is None and plan.time_budget_s is None and plan.reuse_actors
    record = plan.record({"cpu": 1.0, "gpu": 0.0})
    assert set(record["space"]) == {"model.alpha", "model.n", "model.eta", "model.epsilon", "model.batch_ratio"}
    assert record["scheduler"] == {"type": "asha", "grace_period": 1, "reduction_factor": 2, "max_t": 2}


def test_plan_options():
    plan, _ = _plan(
        "sweep.scheduler.type=fifo",
        "model.epochs=5",
        "sweep.objective=test",
        "sweep.resources.gpu=0.5",
        "sweep.stop_after_trials=2",
        "sweep.time_budget_s=60",
        "sweep.resume=true",
        "sweep.resume_from=/x",
        "sweep.name=s1",
        "sweep.feature_store=object_store",
        "+sweep.search_space.backbone.stages={type:choice,values:[[2],[2,3]]}",
    )
    assert plan.scheduler.to_dict() == {"type": "fifo"} and plan.milestones == (5,)
    assert plan.metric == "test_auroc" and plan.resources.gpu == 0.5
    assert (plan.stop_after_trials, plan.time_budget_s, plan.resume, plan.resume_from, plan.name) == (
        2,
        60.0,
        True,
        "/x",
        "s1",
    )
    assert plan.stage_sets == ((2,), (2, 3)) and plan.union_stages() == (2, 3)
    plan, _ = _plan("model.epochs=9", "sweep.scheduler.grace_period=1", "sweep.scheduler.reduction_factor=3")
    assert plan.milestones == (1, 3, 9) and plan.budget == 9
    assert (plan.max_failures, plan.allow_lost_trials, plan.checkpoint_every) == (2, False, 1)  # the defaults
    plan, _ = _plan(
        "model.epochs=9",
        "sweep.scheduler.max_t=4",
        "sweep.max_failures=0",
        "sweep.allow_lost_trials=true",
        "sweep.checkpoint_every=3",
    )
    assert (plan.budget, plan.max_failures, plan.allow_lost_trials, plan.checkpoint_every) == (4, 0, True, 3)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["sweep.num_samples=0"], "sweep.num_samples must be an integer >= 1"),
        (["sweep.max_concurrent_trials=1.5"], "sweep.max_concurrent_trials must be an integer >= 1"),
        (["sweep.top_k=-1"], "sweep.top_k must be an integer >= 0"),
        (["sweep.objective=loss"], "sweep.objective must be one of ['pseudo', 'test']"),
        (["sweep.mode=up"], "sweep.mode must be max or min"),
        (["sweep.metric=test_auroc"], "sweep.metric 'test_auroc' is not reported by the trials (objective=pseudo)"),
        (["sweep.pseudo_anomalies.kinds=[dent]"], "sweep.pseudo_anomalies.kinds: unknown ['dent']"),
        (["sweep.pseudo_anomalies.patch_fraction=[0.5,0.2]"], "patch_fraction must be [min, max]"),
        (["sweep.pseudo_anomalies.contrast=[0.5,1.5]"], "contrast must be [min, max] with 0 < min <= max <= 1"),
        (["model.epochs=0"], "model.epochs must be >= 1 for a sweep"),
        (["sweep.scheduler.type=hyperband"], "sweep.scheduler.type must be asha or fifo"),
        (["sweep.scheduler.max_t=5"], "sweep.scheduler.max_t=5 exceeds model.epochs=2"),
        (["sweep.scheduler.grace_period=3"], "sweep.scheduler.grace_period=3 exceeds max_t=2"),
        (["sweep.resources.cpu=0"], "sweep.resources.cpu: 0 must be > 0"),
        (["sweep.resources.gpu=-1"], "sweep.resources.gpu: -1.0 must be >= 0"),
        (["sweep.feature_store=s3"], "sweep.feature_store must be auto, disk or object_store"),
        (["sweep.stop_after_trials=-2"], "sweep.stop_after_trials must be an integer >= 1"),
        (["sweep.max_failures=-1"], "sweep.max_failures must be an integer >= 0"),
        (["sweep.checkpoint_every=0"], "sweep.checkpoint_every must be an integer >= 1"),
        (["sweep.allow_lost_trials=maybe"], "sweep.allow_lost_trials must be true or false"),
    ],
)
def test_bad_settings_are_refused(overrides, message):
    with pytest.raises((SweepError, ConfigError)) as e:  # both are bad input: exit 2 with the message
        _plan(*overrides)
    assert message in str(e.value), str(e.value)


def test_the_training_configs_own_values_are_checked():
    with pytest.raises(ValueError, match=r"model\.eta=2 is out of range: it must be a number in \[0, 1\]"):
        _plan("model.eta=2", "sweep.search_space.model.eta=null")


def test_metric_keys():
    keys = metric_keys("pseudo", ["cutpaste", "shuffle"])
    assert {
        "val_auroc",
        "val_auroc_cutpaste",
        "val_auroc_shuffle",
        "val_auroc_logical",
        "val_auroc_structural",
        "ot_loss",
        "epoch",
    } <= set(keys)
    assert "val_auroc_structural" not in metric_keys("pseudo", ["cutpaste", "noise"])  # one style only
    assert {"test_auroc", "test_auroc_logical_anomalies"} <= set(metric_keys("test", test_types=["logical_anomalies"]))
    assert "val_objective" not in keys
    assert {"val_aupro_logical", "val_aupro_structural", "val_objective"} <= set(
        metric_keys("pseudo", ["cutpaste", "shuffle"], localisation=True)
    )


def test_localisation_setting():
    plan, _ = _plan("sweep.pseudo_anomalies.localisation=false")
    assert not plan.pseudo.localisation and plan.metric == "val_auroc"
    with pytest.raises(SweepError, match="'val_objective' is not reported"):
        _plan("sweep.pseudo_anomalies.localisation=false", "sweep.metric=val_objective")
    assert _plan("sweep.pseudo_anomalies.eval_size=64")[0].pseudo.eval_size == 64
    with pytest.raises(ValueError, match="localisation must be true or false"):
        _plan("sweep.pseudo_anomalies.localisation=maybe")
    with pytest.raises(SweepError, match="eval_size must be an integer >= 8"):
        _plan("sweep.pseudo_anomalies.eval_size=2")


def test_checks_against_the_data():
    plan, cfg = _plan()
    check_against_data(plan, cfg, n_train=16, n_validation=6, test_types=[])
    with pytest.raises(SweepError, match=r"batch size 16 \(n=2 x batch_ratio=8\) but the training split has only 10"):
        check_against_data(plan, cfg, n_train=10, n_validation=6, test_types=[])
    with pytest.raises(SweepError, match="objective=pseudo needs validation images"):
        check_against_data(plan, cfg, n_train=16, n_validation=0, test_types=[])
    plan, cfg = _plan("sweep.metric=val_auroc_moved_patch")
    with pytest.raises(SweepError, match="2 validation images make only the pseudo-anomaly kinds"):
        check_against_data(plan, cfg, n_train=16, n_validation=2, test_types=[])
    plan, cfg = _plan("sweep.objective=test")
    with pytest.raises(SweepError, match="objective=test needs anomalous test images"):
        check_against_data(plan, cfg, n_train=16, n_validation=0, test_types=[])
    plan, cfg = _plan("sweep.objective=test", "sweep.metric=test_auroc_dents")
    with pytest.raises(SweepError, match="'test_auroc_dents' is not reported"):
        check_against_data(plan, cfg, n_train=16, n_validation=0, test_types=["scratch"])
