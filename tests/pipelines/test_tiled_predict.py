"""A tiled model (pradot.tiled) through the served path: logged as an MLflow model, scored by ``predict`` on a
folder, its scores equal the library's ``TiledModel.score`` on the same pixels (images at the model's size, so no
resize differs), and the written maps are the stitched maps' size."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipelines import predict
from tests.helpers import logged_model_folder


def test_predict_scores_a_tiled_model_as_the_library(tmp_path):
    from pradot import PRADOT, PRADOTConfig
    from pradot.backbone import load_backbone
    from pradot.tiled import TiledModel
    from pradot.tiling import TileGrid

    cfg = PRADOTConfig(backbone="tiny_random", stages=(2,), image_size=16, alpha=0.3, n=1, batch_size=2, epochs=1)
    train = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    grid = TileGrid(32, 16, 8, "linear")
    model = TiledModel.build(PRADOT(cfg, backbone=load_backbone("tiny_random", (2,))), grid).fit(train, progress=False)
    path = model.save(tmp_path / "tiled.pt")
    folder = logged_model_folder(path, tmp_path)
    inp = tmp_path / "parts"
    inp.mkdir()
    pixels = (np.random.default_rng(1).random((3, 32, 32, 3)) * 255).astype(np.uint8)
    for i, img in enumerate(pixels):
        Image.fromarray(img).save(inp / f"{i}.png")
    out = tmp_path / "out"
    argv = [f"model_uri={folder}", f"input={inp}", f"output={out}", "device=cpu", "tracking.enabled=false"]
    assert predict.main(argv) == 0
    with open(out / "scores.csv", newline="", encoding="utf-8") as f:
        rows = {r["path"]: r for r in csv.DictReader(f)}
    _, want = model.eval().score(torch.from_numpy(pixels).permute(0, 3, 1, 2))
    got = np.array([float(rows[f"{i}.png"]["raw_score"]) for i in range(3)])
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-6)
    assert Image.open(Path(out) / rows["0.png"]["map"]).size == (32, 32)
