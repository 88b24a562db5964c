"""Foreground mask sources: Otsu's threshold against scikit-image, the border prior on features with a known
object, and SAM's clear errors (no weights, no package) and its glue (prompt, downsampling) with a stand-in
for the segment_anything package."""

import sys
import types

import numpy as np
import pytest
import torch
from skimage.filters import threshold_otsu

from pradot.fewshot.foreground import (
    AllForeground,
    BorderContrast,
    ForegroundError,
    SamForeground,
    mask_source,
    otsu_threshold,
)


def test_otsu_matches_scikit_image():
    g = torch.Generator().manual_seed(0)
    for i in range(5):
        v = torch.cat([torch.randn(200 + 50 * i, generator=g), torch.randn(80, generator=g) * 0.4 + 3 + i])
        assert otsu_threshold(v) == pytest.approx(threshold_otsu(v.double().numpy(), nbins=256), rel=1e-9)


def _scene(texture_only=False, seed=0):
    """(1, 8, 12, 12) features: background around a 4 x 5 object with other features."""
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(1, 8, 12, 12, generator=g) * 0.1
    truth = torch.zeros(1, 12, 12, dtype=torch.bool)
    if not texture_only:
        truth[0, 4:8, 3:8] = True
        f[:, :, 4:8, 3:8] += torch.tensor([3.0, -2, 1, 0, 2, 0, -1, 1])[None, :, None, None]
    return f, truth


def test_border_prior_finds_the_object_and_calls_a_texture_background():
    f, truth = _scene()
    assert torch.equal(BorderContrast().masks(f), truth)
    f, _ = _scene(texture_only=True, seed=1)
    assert BorderContrast().masks(f).float().mean() < 0.1
    assert AllForeground().masks(f).all() and AllForeground().masks(f).shape == (1, 12, 12)


def test_mask_source_names_and_errors(tmp_path):
    assert isinstance(mask_source("border"), BorderContrast) and mask_source("none").spec() == {"name": "none"}
    with pytest.raises(ForegroundError, match="foreground must be one of"):
        mask_source("saliency")
    with pytest.raises(ForegroundError, match="sam_checkpoint"):
        mask_source("sam")
    with pytest.raises(ForegroundError, match="not found"):
        mask_source("sam", sam_checkpoint=str(tmp_path / "missing.pth"))
    weights = tmp_path / "sam_vit_b.pth"
    weights.write_bytes(b"weights")
    with pytest.raises(ForegroundError, match="vit_b"):
        mask_source("sam", sam_checkpoint=str(weights), sam_model_type="vit_x")


def test_sam_without_the_package_says_how_to_install_it(tmp_path, monkeypatch):
    weights = tmp_path / "sam_vit_b.pth"
    weights.write_bytes(b"weights")
    monkeypatch.setitem(sys.modules, "segment_anything", None)  # import fails
    with pytest.raises(ForegroundError, match="pip install segment-anything"):
        SamForeground(weights)


def test_sam_glue_prompts_the_whole_image_and_downsamples_the_best_mask(tmp_path, monkeypatch):
    weights = tmp_path / "sam_vit_b.pth"
    weights.write_bytes(b"weights")
    calls = {}

    class Predictor:
        def __init__(self, model):
            calls["model"] = model

        def set_image(self, image, image_format="RGB"):
            calls["image"] = image

        def predict(self, box=None, multimask_output=True):
            calls["box"] = box
            h, w = calls["image"].shape[:2]
            good = np.zeros((h, w), bool)
            good[8:24, 16:32] = True  # what the best-rated mask covers
            return np.stack([np.ones((h, w), bool), good, np.zeros((h, w), bool)]), np.array([0.2, 0.9, 0.1]), None

    class Model:
        def to(self, device):
            return self

        def eval(self):
            return self

    fake = types.SimpleNamespace(
        sam_model_registry={"vit_b": lambda checkpoint: calls.setdefault("ckpt", checkpoint) and Model()},
        SamPredictor=Predictor,
    )
    monkeypatch.setitem(sys.modules, "segment_anything", fake)
    src = SamForeground(weights, "vit_b")
    images = torch.zeros(1, 3, 32, 48)
    m = src.masks(torch.zeros(1, 4, 4, 6), images)
    assert calls["ckpt"] == str(weights) and calls["image"].shape == (32, 48, 3) and calls["image"].dtype == np.uint8
    assert calls["box"].tolist() == [0, 0, 47, 31]
    expected = torch.zeros(1, 4, 6, dtype=torch.bool)
    expected[0, 1:3, 2:4] = True  # 8 px cells: rows 8-24, columns 16-32
    assert torch.equal(m, expected)
    assert src.spec() == {"name": "sam", "checkpoint": str(weights), "model_type": "vit_b"}
    with pytest.raises(ValueError, match="need the images"):
        src.masks(torch.zeros(1, 4, 4, 6), None)
