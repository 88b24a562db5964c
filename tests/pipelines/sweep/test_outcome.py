"""What the driver makes of Tune's trials after the sweep (pipelines/sweep/outcome.py, runs.py, tuner.py):
every trial recorded (failed and never-reported ones too), each run closed as Tune ended it, the trial
table, which trials were lost to infrastructure, and the sweep's exit code."""

from types import SimpleNamespace

import cloudpickle
import pytest
from ray.exceptions import RayTaskError

from pipelines import cli
from pipelines.sweep import outcome, runs, tuner
from pipelines.sweep.run import SweepResult


def _trial(tmp_path, trial_id, status, epoch=None, failures=0, error=None):
    """A Tune trial as the driver sees it; ``error``: an exception (Tune pickles Ray's) or text (else)."""
    pickled = text = None
    if isinstance(error, BaseException):
        pickled = tmp_path / f"{trial_id}.pkl"
        pickled.write_bytes(cloudpickle.dumps(error))
    if isinstance(error, str):
        text = tmp_path / f"{trial_id}.txt"
        text.write_text(f"Failure # 1 (occurred at x)\n{error}\n")
    return SimpleNamespace(
        trial_id=trial_id,
        status=status,
        last_result={"epoch": epoch, "val_auroc": 0.5} if epoch else {},
        config={"model.alpha": 0.1},
        num_failures=failures,
        pickled_error_file=str(pickled) if pickled else None,
        error_file=str(text) if text else None,
        get_pickled_error=lambda: None,
        get_error=lambda: None,
    )


def _run(run_id, status="RUNNING", tags=None):
    return SimpleNamespace(
        info=SimpleNamespace(run_id=run_id, status=status),
        data=SimpleNamespace(tags={"pradot.node_id": f"node-{run_id}", "pradot.hostname": "h", **(tags or {})}),
    )


class _Client:
    def __init__(self):
        self.ended = {}

    def log_batch(self, run_id, tags=(), **kw):
        self.ended.setdefault(run_id, {}).update({t.key: t.value for t in tags})

    def set_terminated(self, run_id, status):
        self.ended.setdefault(run_id, {})["status"] = status


def test_every_trial_is_recorded_and_its_run_closed_as_tune_ended_it(tmp_path):
    own_error = RayTaskError("trial_main", "Traceback ...", ValueError("alpha out of range"))
    trials = [
        _trial(tmp_path, "done", "TERMINATED", 10),
        _trial(tmp_path, "asha", "TERMINATED", 2),
        _trial(tmp_path, "dead", "ERROR", 3, failures=3, error="ActorDiedError: The actor died unexpectedly"),
        _trial(tmp_path, "bug", "ERROR", 1, failures=1, error=own_error),
        _trial(tmp_path, "never", "ERROR", None, failures=1, error="NodeDiedError: node gone"),
        _trial(tmp_path, "waiting", "PENDING"),
    ]
    grid = SimpleNamespace(_experiment_analysis=SimpleNamespace(trials=trials))
    found = {t: _run(t) for t in ("done", "asha", "dead", "bug", "waiting")}  # "never" died before its run
    found["done"] = _run("done", "FINISHED", {"pradot.trial_status": "completed", "pradot.epochs_trained": "10"})
    records = {r.trial_id: r for r in outcome.trial_records(grid, found, budget=10, interrupted=True)}
    assert {k: (r.label, r.failure, r.lost, r.attempts) for k, r in records.items()} == {
        "done": ("completed", "", False, 1),
        "asha": ("stopped_early", "", False, 1),
        "dead": ("failed", "infrastructure", True, 3),
        "bug": ("failed", "error", False, 1),
        "never": ("failed", "infrastructure", True, 1),
        "waiting": ("interrupted", "", False, 1),
    }
    assert records["bug"].error == "ValueError: alpha out of range"  # the trial's own error, unwrapped

    client = _Client()
    outcome.close_runs(list(records.values()), client)
    assert "done" not in client.ended  # closed already as it should be: untouched
    assert client.ended["asha"] == {
        "pradot.trial_status": "stopped_early",
        "pradot.epochs_trained": "2",
        "status": "FINISHED",
    }
    assert client.ended["dead"]["status"] == "FAILED" and client.ended["dead"]["pradot.failure"] == "infrastructure"
    assert client.ended["bug"]["pradot.failure"] == "error" and client.ended["waiting"]["status"] == "KILLED"

    table = outcome.table(list(records.values()))
    assert len(table) == 6 and set(table["trial_id"]) == set(records)  # the failed ones too
    row = table.set_index("trial_id").loc["never"]
    assert (row["status"], row["failure"], row["mlflow_run_id"]) == ("ERROR", "infrastructure", "")
    assert table.set_index("trial_id").loc["dead", "node_id"] == "node-dead"

    notice = outcome.lost_notice([records["dead"], records["never"]], allowed=False, resume_hint="  RESUME")
    assert "2 trial(s) lost to infrastructure" in notice and "RESUME" in notice and "allow_lost_trials=true" in notice
    assert "nothing was registered" not in outcome.lost_notice([records["dead"]], allowed=True, resume_hint="")


def test_a_trial_stopped_by_the_interrupt_is_unfinished_whatever_the_grid_says(tmp_path):
    """Ctrl+C: Tune saves its state (running trials RUNNING / PENDING), then stops them, and the in-memory grid
    calls them TERMINATED. The saved status decides: the trial is interrupted (its run KILLED), and a resume
    continues it; a trial that ended before the interrupt keeps its label."""
    trials = [_trial(tmp_path, "asha", "TERMINATED", 2), _trial(tmp_path, "cut", "TERMINATED", 3)]
    grid = SimpleNamespace(_experiment_analysis=SimpleNamespace(trials=trials))
    saved = {"asha": "TERMINATED", "cut": "RUNNING"}
    assert outcome.unfinished(saved) == ["cut"] and outcome.unfinished({"a": "TERMINATED", "b": "ERROR"}) == []
    # an error is final whatever was saved before it (a worker killed with no retry left)
    assert outcome.trial_status("ERROR", "RUNNING") == "ERROR" and outcome.trial_status("PENDING", None) == "PENDING"
    assert (
        outcome.trial_status("TERMINATED", "PENDING") == "PENDING"
        and outcome.trial_status("TERMINATED", None) == "TERMINATED"
    )
    found = {t: _run(t, "FINISHED", {"pradot.trial_status": "stopped_early"}) for t in ("asha", "cut")}
    records = {r.trial_id: r for r in outcome.trial_records(grid, found, budget=8, interrupted=True, saved=saved)}
    assert {k: (r.tune_status, r.label, r.run_status) for k, r in records.items()} == {
        "asha": ("TERMINATED", "stopped_early", "FINISHED"),
        "cut": ("RUNNING", "interrupted", "KILLED"),
    }
    client = _Client()
    outcome.close_runs(list(records.values()), client)
    assert client.ended["cut"] == {
        "pradot.trial_status": "interrupted",
        "pradot.epochs_trained": "3",
        "status": "KILLED",
    }
    assert (
        client.ended["asha"]["pradot.trial_status"] == "stopped_early" and client.ended["asha"]["status"] == "FINISHED"
    )


@pytest.mark.parametrize(
    "error, kind",
    [
        (OSError("storage unreachable"), "infrastructure"),
        (ValueError("x"), "error"),
        (RayTaskError("f", "tb", FileNotFoundError("cache")), "infrastructure"),
        (RayTaskError("f", "tb", RuntimeError("bug")), "error"),
    ],
)
def test_failure_kinds(error, kind):
    assert runs.failure_kind(error) == kind
    assert tuner.error_tags(error)["pradot.failure"] == kind


def test_a_sweep_that_lost_trials_exits_non_zero():
    def result(state):
        return SweepResult(
            state,
            "p",
            "/f",
            "u",
            "val_auroc",
            "synthetic",
            "screw_bag",
            4,
            4,
            3,
            1,
            1,
            notice="1 trial(s) lost",
            best={"val_auroc": 0.9},
        )

    assert result("incomplete").exit_code == cli.EXIT_FAILED and "1 trial(s) lost" in result("incomplete").summary()
    assert result("interrupted").exit_code == cli.EXIT_INTERRUPTED and result("finished").exit_code == cli.EXIT_OK


def test_the_promote_hint_carries_the_sweeps_own_overrides():
    """The `next` line is a command to run as it is: promote must score on the data and recipe the sweep used."""
    reg = [{"name": "pradot-synthetic-screw_bag", "version": "2", "trial_id": "t", "val_objective": 0.8}]

    def hint(overrides):
        r = SweepResult(
            "finished",
            "p",
            "/f",
            "u",
            "val_objective",
            "synthetic",
            "screw_bag",
            4,
            4,
            4,
            registered=reg,
            best={"val_objective": 0.8},
            overrides=overrides,
        )
        return next(line for line in r.summary().splitlines() if line.startswith("next"))

    assert hint(["experiment=cpu_demo", "data_root=/d"]).endswith(
        '-P select_by=val_objective -P overrides="experiment=cpu_demo data_root=/d"'
    )
    assert hint([]).endswith("-P select_by=val_objective")
    assert "(plus the sweep's data and training overrides)" in hint(None)  # a resumed sweep: not known here
