import pytest


@pytest.fixture(scope="session")
def effnet_23():
    """EfficientNet-Lite0 (offline ImageNet weights), stages 2 and 3 (FOCT's patch features)."""
    from pradot.backbone import load_backbone

    return load_backbone("efficientnet_lite0", (2, 3))
