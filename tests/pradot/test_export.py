"""ONNX export (pradot.export): each export-friendly piece against its reference (PIL's resize, the library's
Eq. 6 scorer, scikit-learn's nearest neighbours), the whole graph against the served pyfunc with onnxruntime."""

import base64
import io
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from pradot import PRADOT, PRADOTConfig
from pradot.calibration import Calibration
from pradot.ensemble import Ensemble
from pradot.export import (
    ExportScorer,
    OnnxScorer,
    PILBilinearResize,
    assignment_map,
    bank_constants,
    export_onnx,
    exportable,
    nearest_distance,
    read_metadata,
)
from pradot.export_openvino import OpenVINOScorer, export_openvino
from pradot.memory_bank import MemoryBankConfig, MemoryBankModel
from pradot.scoring import assignment_scores
from pradot.serving import Scorer, encode_png, map_size, resize_map

SIZES = [(64, 64), (50, 70), (130, 90), (200, 41)]  # the model size, up, and down (both of PIL's pass orders)


def pil_resize(img: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR)).astype(np.float32) / 255


def test_resize_is_pil_bilinear_bit_for_bit():
    rng = np.random.default_rng(0)
    module = PILBilinearResize(32)
    for _ in range(40):
        h, w = (int(v) for v in rng.integers(2, 200, 2))
        img = (rng.random((h, w, 3)) * 255).astype(np.uint8)
        out = module(torch.from_numpy(img)[None])[0].permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(out, pil_resize(img, 32), err_msg=f"{h}x{w}")
    # the pass order matters: a tall image that Pillow resizes vertically first differs when done the other way
    img = (rng.random((200, 41, 3)) * 255).astype(np.uint8)
    other = PILBilinearResize(32, vertical_first_rule=False)(torch.from_numpy(img)[None])[0].permute(1, 2, 0).numpy()
    assert (other != pil_resize(img, 32)).any()


def trained_bank(n, alpha, learn=False, seed=0):
    from pradot.model import FeatureShape, PrototypeModel

    cfg = PRADOTConfig(
        backbone="tiny_random",
        stages=(2,),
        image_size=32,
        n=n,
        alpha=alpha,
        batch_size=4,
        epochs=2,
        eta=0.5,
        learn_coordinates=learn,
        seed=seed,
    )
    feats = torch.rand(8, 24, 4, 4, generator=torch.Generator().manual_seed(seed))
    model = PrototypeModel(cfg, {2: FeatureShape(24, (4, 4))})
    model.fit_features({2: feats}, progress=False)
    return model.banks["2"]


@pytest.mark.parametrize(
    "n, alpha, learn", [(2, 0.3, False), (1, 0.0, False), (0.5, 0.3, False), (2, 0.5, True), (1, 1.0, False)]
)
def test_assignment_map_is_eq6_of_the_library(n, alpha, learn):
    bank = trained_bank(n, alpha, learn)
    prototypes_t, spatial, a, copies = bank_constants(bank)
    feats = torch.rand(3, 24, 4, 4)
    feats[1, :, 0, 0] = 0  # a zero feature: cosine 0, never NaN
    mine = assignment_map(feats, prototypes_t, spatial, a, copies)
    ref, _ = assignment_scores(bank, feats)
    assert (copies is not None) == (n >= 1 and not learn)
    torch.testing.assert_close(mine, ref.reshape(3, 4, 4), rtol=1e-5, atol=1e-6)


def test_nearest_distance_is_sklearns_including_exact_hits():
    from sklearn.neighbors import NearestNeighbors

    rng = np.random.default_rng(0)
    bank = rng.normal(size=(1000, 16)).astype(np.float32) * 10
    queries = np.concatenate([rng.normal(size=(50, 16)).astype(np.float32) * 10, bank[:5]])  # 5 on bank rows
    t_bank = torch.from_numpy(bank)
    mine = nearest_distance(torch.from_numpy(queries), t_bank, (t_bank * t_bank).sum(1), chunk=128)
    ref = NearestNeighbors(n_neighbors=1).fit(bank).kneighbors(queries)[0][:, 0]
    np.testing.assert_allclose(mine.numpy(), ref, rtol=1e-5, atol=1e-5)
    assert (mine[-5:] == 0).all()  # the exact distance to the winner: no cancellation error


@pytest.fixture(scope="module")
def models():
    """A PRADOT model (cells path), one with feature options, n < 1 and smoothing, a memory bank and an
    ensemble of the three (per-member normalisation, weights), on EfficientNet-Lite0 at 64 px."""
    from pradot.backbone import load_backbone

    torch.manual_seed(0)
    bb = load_backbone("efficientnet_lite0", (2, 3))
    train = [{"image": t} for t in torch.rand(12, 3, 64, 64, generator=torch.Generator().manual_seed(0))]
    common = dict(backbone="efficientnet_lite0", stages=(2, 3), image_size=64, batch_size=4, epochs=1)
    m1 = PRADOT(PRADOTConfig(n=2, alpha=0.3, **common), backbone=bb)
    m1.fit(train, progress=False)
    m2 = PRADOT(
        PRADOTConfig(n=0.5, alpha=0.0, aggregation=3, concat_stages=True, smoothing_sigma=2.0, **common), backbone=bb
    )
    m2.fit(train, progress=False)
    mb = MemoryBankModel(
        MemoryBankConfig(backbone="efficientnet_lite0", stages=(2, 3), image_size=64), backbone=bb
    ).fit(train, progress=False)
    ens = Ensemble([m1, m2, mb], normalisation="per_member", weights=[0.5, 0.25, 0.25])
    ens.fit_normalisation(torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(1)))
    return SimpleNamespace(pradot=m1, options=m2, memory_bank=mb, ensemble=ens)


def served_map(scorer: Scorer, img: np.ndarray):
    rec = scorer.predict([encode_png(img)], return_map=True, map_format="npy")[0]
    return np.load(io.BytesIO(base64.b64decode(rec["anomaly_map"]))), rec["raw_score"]


@pytest.mark.parametrize("kind", ["pradot", "options", "memory_bank", "ensemble"])
def test_export_module_scores_as_the_served_scorer(models, kind):
    """The torch module that is exported, on uint8 images of any size, against the serving path (PIL decode and
    resize, the library's fast scorer / scikit-learn)."""
    model = getattr(models, kind)
    module, scorer = ExportScorer(model).eval(), Scorer(model, Calibration(0.5, 0, 1, 0.99, 3))
    rng = np.random.default_rng(2)
    for h, w in SIZES:
        img = (rng.random((h, w, 3)) * 255).astype(np.uint8)
        with torch.no_grad():
            maps, scores = module(torch.from_numpy(img)[None])
        served, raw = served_map(scorer, img)
        mine = resize_map(maps[0], map_size(h, w, scorer.max_map_side))
        span = float(served.max() - served.min())
        assert np.abs(mine - served).max() / span < 1e-5 and abs(float(scores[0]) - raw) / span < 1e-5


def test_openvino_export_refuses_a_missing_file_and_a_bad_name(tmp_path):
    from pradot.errors import InputError

    with pytest.raises(InputError, match="export the model with pradot.export.export_onnx first"):
        export_openvino(tmp_path / "missing.onnx")
    (tmp_path / "m.onnx").write_bytes(b"")
    with pytest.raises(InputError, match="must end in .xml"):
        export_openvino(tmp_path / "m.onnx", tmp_path / "m.bin")
    with pytest.raises(InputError, match="export it with `export format=openvino` first"):
        OpenVINOScorer(tmp_path / "m.xml")


@pytest.mark.parametrize("banks", ["per_position", "shared"])
def test_export_module_of_a_tiled_model_scores_as_the_served_scorer(models, banks):
    """A tiled model (pradot.tiled): tiles cut and maps stitched in the exported module, against the serving path.
    (onnxruntime on this module's graph agreed to 1e-6 of the map's range; the export itself takes minutes.)"""
    from pradot.tiled import TiledModel
    from pradot.tiling import TileGrid

    # per position: memory banks (cheap to fit 4 times); shared: PRADOT (alpha > 0, the spatial term)
    tile = models.memory_bank if banks == "per_position" else models.pradot
    tile = type(tile)(tile.config, backbone=tile.backbone)
    train = torch.rand(4, 3, 96, 96, generator=torch.Generator().manual_seed(5))
    model = TiledModel.build(tile, TileGrid(96, 64, 32, "linear"), banks).fit(train, progress=False).eval()
    assert exportable(model)
    module, scorer = ExportScorer(model).eval(), Scorer(model, Calibration(0.5, 0, 1, 0.99, 3))
    rng = np.random.default_rng(2)
    for h, w in SIZES[:2]:
        img = (rng.random((h, w, 3)) * 255).astype(np.uint8)
        with torch.no_grad():
            maps, scores = module(torch.from_numpy(img)[None])
        served, raw = served_map(scorer, img)
        mine = resize_map(maps[0], map_size(h, w, scorer.max_map_side))
        span = float(served.max() - served.min())
        assert np.abs(mine - served).max() / span < 1e-5 and abs(float(scores[0]) - raw) / span < 1e-5


def test_unsupported_models_are_refused_with_the_supported_kinds(models):
    assert all(exportable(m) for m in vars(models).values())
    assert not exportable(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="PRADOT models, memory banks"):
        ExportScorer(torch.nn.Linear(2, 2))


@pytest.mark.slow
def test_onnxruntime_and_openvino_equal_the_pyfunc_on_images_of_several_sizes(models, tmp_path):
    """The parity the issue asks: onnxruntime's and OpenVINO's maps (resized to the input as served) and scores
    equal the pyfunc's to 1e-4 (max abs, over the pyfunc map's range), each runtime's first inference
    included; thresholds and quantiles in the metadata (the ONNX file's and the IR's)."""
    from pipelines.mlflow_model import PradotPyfunc

    rng = np.random.default_rng(3)
    val = torch.rand(10, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    # the ensemble holds a PRADOT model, one with feature options and a memory bank: one export (the slow part,
    # ~30 s) runs every member's graph; a PRADOT model alone is exported by tests/pipelines/test_mlflow_model.py
    for kind in ("ensemble",):
        model = getattr(models, kind)
        maps, scores = model.score(val)
        cal = Calibration.calibrate(scores, 0.9, pixel_maps=maps)
        wrapper = PradotPyfunc()
        wrapper.load_context(
            SimpleNamespace(
                model_config={"device": "cpu"},
                artifacts={
                    "model": str(model.save(tmp_path / f"{kind}.pt")),
                    "calibration": str(cal.save(tmp_path / f"{kind}.json")),
                },
            )
        )
        path = export_onnx(model, tmp_path / f"{kind}.onnx", calibration=cal, metadata={"source_model": kind})
        meta = read_metadata(path)
        assert float(meta["image_threshold"]) == cal.threshold and float(meta["pixel_threshold"]) == cal.pixel_threshold
        assert meta["source_model"] == kind and Calibration.from_dict(json.loads(meta["calibration"])) == cal
        onnx_model = OnnxScorer(path)
        xml = export_openvino(path)
        assert xml == path.with_suffix(".xml") and xml.with_suffix(".bin").is_file()
        runtimes = {"onnxruntime": onnx_model, "openvino": OpenVINOScorer(xml)}
        assert runtimes["openvino"].metadata == meta and runtimes["openvino"].calibration == cal
        import pandas as pd

        for h, w in SIZES:
            img = (rng.random((h, w, 3)) * 255).astype(np.uint8)
            rec = wrapper.predict(
                None, pd.DataFrame({"image": [encode_png(img)]}), params={"return_map": True, "map_format": "npy"}
            ).iloc[0]
            served = np.load(io.BytesIO(base64.b64decode(rec["anomaly_map"])))
            span = float(served.max() - served.min())
            for name, runtime in runtimes.items():
                omaps, oscores = runtime.score(img)
                mine = resize_map(omaps[0], (h, w))
                assert np.abs(mine - served).max() / span < 1e-4, (kind, name, h, w)
                assert abs(float(oscores[0]) - rec["raw_score"]) / span < 1e-4, (kind, name, h, w)
                assert bool(runtime.is_anomaly(oscores)[0]) == bool(rec["is_anomaly"])
        # the batch dimension is dynamic: three images in one call score as each alone
        assert isinstance(onnx_model.session.get_inputs()[0].shape[0], str)
        batch = rng.integers(0, 256, (3, 50, 70, 3), dtype=np.uint8)
        for runtime in runtimes.values():
            bmaps, bscores = runtime.score(batch)
            assert bmaps.shape[0] == bscores.shape[0] == 3
            for i in range(3):
                one_map, one_score = runtime.score(batch[i])
                np.testing.assert_allclose(bmaps[i], one_map[0], rtol=1e-5, atol=1e-6)
                np.testing.assert_allclose(bscores[i], one_score[0], rtol=1e-5, atol=1e-6)
