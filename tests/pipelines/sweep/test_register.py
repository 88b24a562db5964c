"""What a sweep-registered version is tagged with (pipelines/sweep/register.py), written and read by the one
tag type (pipelines.registry.VersionTags)."""

from types import SimpleNamespace

from pipelines import config
from pipelines.registry import VersionTags
from pipelines.sweep.plan import sweep_plan
from pipelines.sweep.register import _version_tags, ranked
from pradot.model import PRADOTConfig

META = {
    "trial_id": "t1",
    "mlflow_run_id": "run-1",
    "epoch": 2,
    "calibration_source": "validation",
    "hparams": {
        "alpha": 0.5,
        "n": 1,
        "eta": 0.5,
        "epsilon": 0.05,
        "batch_ratio": 4,
        "sinkhorn_iters": 100,
        "stages": [2],
        "backbone": "efficientnet_lite0",
        "batch_size": 4,
    },
    "metrics": {
        "val_objective": 0.912345678,
        "val_auroc": 0.95,
        "val_auroc_noise": 1.0,
        "val_aupro_structural": 0.4,
        "ot_loss": 0.1,
        "epoch": 2,
    },
}


def _plan():
    return sweep_plan(config.compose("sweep", ["experiment=ci", "sweep=ci"]))


def test_sweep_version_tags():
    m = PRADOTConfig(
        backbone="efficientnet_lite0",
        stages=(2,),
        image_size=96,
        alpha=0.5,
        n=1,
        eta=0.5,
        epsilon=0.05,
        batch_size=4,
        epochs=2,
    )
    spec = SimpleNamespace(kind="synthetic", category="screw_bag")
    tags = _version_tags(m, META, _plan(), 0.912345678, 1, "parent", spec, 0.25).to_tags()
    assert {
        k: tags[k]
        for k in (
            "sweep_run_id",
            "sweep_rank",
            "trial_id",
            "run_id",
            "objective",
            "alpha",
            "n",
            "stages",
            "backbone",
            "batch_ratio",
            "batch_size",
            "epochs_trained",
            "threshold",
            "dataset",
            "category",
            "calibration_source",
            "image_size",
        )
    } == {
        "sweep_run_id": "parent",
        "sweep_rank": "1",
        "trial_id": "t1",
        "run_id": "run-1",
        "objective": "pseudo",
        "alpha": "0.5",
        "n": "1",
        "stages": "2",
        "backbone": "efficientnet_lite0",
        "batch_ratio": "4",
        "batch_size": "4",
        "epochs_trained": "2",
        "threshold": "0.25",
        "dataset": "synthetic",
        "category": "screw_bag",
        "calibration_source": "validation",
        "image_size": "96",
    }
    # the sweep's metric as its own tag, promote's metric.<name> tags, the trial's hyper-parameters as JSON
    assert tags["val_objective"] == "0.912346" and tags["sweep_metric"] == "val_objective"
    assert tags["metric.val_objective"] == "0.91235" and tags["metric.val_auroc"] == "0.95"
    assert tags["metric.val_auroc_noise"] == "1.0" and tags["metric.val_aupro_structural"] == "0.4"
    assert "metric.ot_loss" not in tags and "epochs" not in tags
    assert tags["config"] == (
        '{"alpha": 0.5, "backbone": "efficientnet_lite0", "batch_ratio": 4, "batch_size": 4, '
        '"epsilon": 0.05, "eta": 0.5, "n": 1, "sinkhorn_iters": 100, "stages": [2]}'
    )
    back = VersionTags.from_tags(tags)
    assert back.sweep_score == 0.912346 and back.config == META["hparams"] and back.sweep_rank == 1


def test_ranked_keeps_finished_trials_with_a_checkpoint_best_first():
    def result(value, error=None, checkpoint="c"):
        return SimpleNamespace(metrics={"val_objective": value}, error=error, checkpoint=checkpoint)

    grid = [
        result(0.5),
        result(0.9),
        result(0.7, error="boom"),
        result(0.8, checkpoint=None),
        result(float("nan")),
        result(None),
        result(0.6),
    ]
    assert [r.metrics["val_objective"] for r in ranked(grid, _plan())] == [0.9, 0.6, 0.5]
