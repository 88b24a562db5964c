"""``VPDM`` end to end on an easy synthetic case in feature space, and its scoring contract (score, files,
persistence, export refusal)."""

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from pradot.backbone import load_backbone
from pradot.base import FeatureModel
from pradot.checkpoint import file_format
from pradot.ensemble import MEMBER_CLASSES, Ensemble
from pradot.errors import InputError, InputTypeError, NotFittedError
from pradot.export import ExportScorer, exportable
from pradot.persistence import load_scoring_model, servable_formats
from pradot.vpdm import VPDM, VPDM_FORMAT, VPDMConfig
from pradot.vpdm.scoring import anomaly_map, image_map

TINY = dict(
    backbone="tiny_random",
    stages=(0,),
    image_size=32,
    grid=8,
    downsample=2,
    n_prototypes=8,
    ot_iter=30,
    timesteps=100,
    sampling_steps=10,
    width=32,
    blocks=2,
    epochs=30,
    batch_size=16,
    score_pool=4,
)


@pytest.fixture()
def one_thread():
    """Small networks run faster on one thread than on two contended ones."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def features(n, seed, anomalous=False):
    """Two "categories" (smooth 8-channel templates on an 8 x 8 grid) with small noise; anomalies add a
    strong random 3 x 3 patch."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.randn(2, 8, 2, 2, generator=torch.Generator().manual_seed(123))
    templates = torch.nn.functional.interpolate(templates, (8, 8), mode="bilinear") * 2
    x = templates[torch.arange(n) % 2] + 0.1 * torch.randn(n, 8, 8, 8, generator=g)
    if anomalous:
        r = torch.randint(0, 6, (n, 2), generator=g)  # a 3 x 3 patch inside the 8 x 8 grid
        for i in range(n):
            x[i, :, r[i, 0] : r[i, 0] + 3, r[i, 1] : r[i, 1] + 3] += 5 * torch.randn(8, 1, 1, generator=g)
    return {0: x}


@pytest.fixture(scope="module")
def trained():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = VPDM(VPDMConfig(**TINY), backbone=load_backbone("tiny_random", (0,)))
        return model.fit_features(features(48, 0), progress=False)
    finally:
        torch.set_num_threads(n)


def test_fit_lowers_the_loss_and_scores_anomalies_above_normals(trained, one_thread):
    eps = [r["eps"] for r in trained.history]
    assert len(eps) == TINY["epochs"]
    assert sum(eps[-3:]) / 3 < 0.6 * sum(eps[:3]) / 3  # the skip (eps_skip) starts it well below 1
    _, normal = trained.maps_from_features(features(12, 1))
    _, anomalous = trained.maps_from_features(features(12, 2, anomalous=True))
    auroc = roc_auc_score([0] * 12 + [1] * 12, torch.cat([normal, anomalous]).numpy())
    assert auroc >= 0.9, auroc


def test_score_contract_and_batch_independence(trained, one_thread):
    images = torch.rand(3, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    maps, scores = trained.score(images)
    assert maps.shape == (3, 32, 32) and scores.shape == (3,)
    assert torch.isfinite(maps).all() and (maps >= 0).all()
    maps2, scores2 = trained.score(images[1:2])  # alone: same noise, same answer
    assert torch.allclose(maps2[0], maps[1], atol=1e-5) and torch.allclose(scores2, scores[1:2], atol=1e-5)


def test_save_load_round_trip_through_persistence(trained, tmp_path, one_thread):
    path = trained.save(tmp_path / "vpdm.pt")
    assert file_format(path) == VPDM_FORMAT and VPDM_FORMAT in servable_formats()
    loaded = load_scoring_model(path)
    assert isinstance(loaded, VPDM) and loaded.fitted
    assert loaded.history == trained.history
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    for a, b in zip(trained.score(images), loaded.score(images)):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="not a VPDM model file"):
        VPDM.load(_other_file(tmp_path))


def _other_file(tmp_path):
    torch.save({"format": "pradot-model-v1"}, tmp_path / "other.pt")
    return tmp_path / "other.pt"


def test_export_refuses_vpdm_by_name(trained):
    assert not exportable(trained)
    with pytest.raises(TypeError, match="VPDM"):
        ExportScorer(trained)


def test_untrained_and_bad_features_are_refused():
    model = VPDM(VPDMConfig(**TINY), backbone=load_backbone("tiny_random", (0,)))
    with pytest.raises(NotFittedError, match="not fitted"):
        model.score(torch.rand(1, 3, 32, 32))
    with pytest.raises(NotFittedError, match="not fitted"):
        model.maps_from_features(features(1, 0))
    with pytest.raises(InputError, match="missing"):
        model.fit_features({1: torch.zeros(2, 8, 8, 8)})
    with pytest.raises(InputError, match="empty"):
        model.fit_features({0: torch.zeros(0, 8, 8, 8)})
    with pytest.raises(InputError, match="backbone stages"):
        VPDM(VPDMConfig(**TINY), backbone=load_backbone("tiny_random", (1,)))


def test_is_a_feature_model_that_ensembles_refuse(trained):
    """VPDM implements the model contract (:class:`pradot.base.FeatureModel`, checked in full by
    ``tests/pradot/test_contract.py``) but is no ensemble member kind (``ensemble.MEMBER_CLASSES``)."""
    assert isinstance(trained, FeatureModel) and trained.KIND == "vpdm" and trained.FORMAT == VPDM_FORMAT
    assert VPDM_FORMAT not in MEMBER_CLASSES
    with pytest.raises(InputTypeError, match="VPDM"):
        Ensemble([trained])


def test_load_without_stored_backbone_takes_the_given_one(trained, tmp_path, one_thread):
    """``save(path, include_backbone=False)`` and ``load(path, backbone=...)`` (options of the contract's
    save/load passed on to state/from_state) score as the original."""
    path = trained.save(tmp_path / "light.pt", include_backbone=False)
    loaded = VPDM.load(path, backbone=trained.backbone)
    x = features(2, 3)
    for a, b in zip(trained.maps_from_features(x), loaded.maps_from_features(x)):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "option", [{"condition": "nearest"}, {"condition": "low_pass"}, {"endpoint": "standard"}, {"ot_weight": 0.0}]
)
def test_ablation_options_train_and_score(option, one_thread):
    """Table 3's rows as options: each trains one epoch and scores with finite values."""
    cfg = VPDMConfig(**(TINY | {"epochs": 1} | option))
    model = VPDM(cfg, backbone=load_backbone("tiny_random", (0,))).fit_features(features(16, 0), progress=False)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in model.history)
    maps, scores = model.maps_from_features(features(2, 1))
    assert torch.isfinite(maps).all() and torch.isfinite(scores).all()
    if option.get("condition") == "low_pass":  # no prototypes, no transport
        assert model.history[0]["ot"] == 0.0


def test_initial_weights_depend_on_the_seed_only():
    torch.manual_seed(123)
    a = VPDM(VPDMConfig(**TINY), backbone=load_backbone("tiny_random", (0,)))
    torch.manual_seed(456)
    b = VPDM(VPDMConfig(**TINY), backbone=load_backbone("tiny_random", (0,)))
    c = VPDM(VPDMConfig(**(TINY | {"seed": 1})), backbone=load_backbone("tiny_random", (0,)))
    sa, sb, sc = (m.denoiser.state_dict() for m in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_eps_skip_is_the_least_squares_noise_predictor_of_unit_gaussian_features():
    """With ``eps_skip`` the untrained (zero-output) network predicts ``sqrt(1 - alpha^t) (x^t - y_hat)``: for
    ``x^0 ~ N(y_hat, I)`` that is the least-squares linear predictor of the noise from ``x^t - y_hat``
    (checked against numpy's lstsq), and its loss ``alpha^t`` lies below the 1.0 of predicting zero."""
    model = VPDM(VPDMConfig(**TINY), backbone=load_backbone("tiny_random", (0,)))
    g = torch.Generator().manual_seed(0)
    y = torch.randn(64, 8, 8, 8, generator=g)
    x0 = y + torch.randn(y.shape, generator=g)
    for t in (5, 50, 100):
        noise = torch.randn(y.shape, generator=g)
        a = float(model.schedule.alpha[t - 1])
        xt = a**0.5 * x0 + (1 - a**0.5) * y + (1 - a) ** 0.5 * noise
        with torch.no_grad():
            pred = model.eps(xt, y, torch.full((64,), t))
        d = (xt - y).flatten().double().numpy()[:, None]
        coef = np.linalg.lstsq(d, noise.flatten().double().numpy(), rcond=None)[0][0]
        assert torch.allclose(pred, (xt - y) * (1 - a) ** 0.5, atol=1e-5)
        assert abs(coef - (1 - a) ** 0.5) < 0.02
        assert abs(float(((pred - noise) ** 2).mean()) - a) < 0.03
    off = VPDM(VPDMConfig(**(TINY | {"eps_skip": False})), backbone=load_backbone("tiny_random", (0,)))
    with torch.no_grad():
        assert torch.equal(off.eps(xt, y, torch.full((64,), 100)), torch.zeros_like(xt))


def test_files_without_eps_skip_load_without_it(trained):
    """A model file written before ``eps_skip`` existed was trained without the skip and must score so."""
    state = trained.state(include_backbone=False)
    del state["config"]["eps_skip"]
    assert VPDM.from_state(state, backbone=trained.backbone).config.eps_skip is False


def test_start_step_starts_from_the_images_own_noised_features(trained, one_thread):
    """``start_step`` t0 < T: Algorithm 2 from ``x^t0`` of Eq. 14. At t0 = 1 the chain is one step from
    ``x^1`` (noise std ``sqrt(1 - alpha^1)`` = 0.01) so the reconstruction nearly equals the input; from T it
    depends on the input only through ``y_hat``. The tiny case still separates its anomalies from t0 = T/2."""
    x0 = trained.grid(features(4, 1))
    near = VPDM.from_state(trained.state(include_backbone=False), backbone=trained.backbone)
    near.config.start_step = 1
    rec_near, _ = near.reconstruct(x0)
    rec_far, _ = trained.reconstruct(x0)
    assert float((rec_near - x0).abs().max()) < 0.1 < float((rec_far - x0).abs().max())
    near.config.start_step = TINY["timesteps"] // 2
    _, normal = near.maps_from_features(features(12, 1))
    _, anomalous = near.maps_from_features(features(12, 2, anomalous=True))
    assert roc_auc_score([0] * 12 + [1] * 12, torch.cat([normal, anomalous]).numpy()) >= 0.9


def test_n_draws_averages_the_maps_of_seeds_seed_to_seed_plus_n(trained, one_thread):
    x0 = trained.grid(features(3, 1))
    two = VPDM.from_state(trained.state(include_backbone=False), backbone=trained.backbone)
    two.config.n_draws = 2
    expected = (
        anomaly_map(x0, trained.reconstruct(x0, draw=0)[0]) + anomaly_map(x0, trained.reconstruct(x0, draw=1)[0])
    ) / 2
    assert torch.allclose(two.maps_from_grid(x0), image_map(expected, TINY["image_size"]), atol=1e-5)
    assert not torch.allclose(trained.reconstruct(x0, draw=0)[0], trained.reconstruct(x0, draw=1)[0])


def test_explain_gives_the_steps_of_fig3_and_the_maps_of_score(trained, one_thread):
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = trained.explain(images)
    assert out["x0"].shape == out["y_hat"].shape == out["reconstruction"].shape == (2, trained.channels, 8, 8)
    assert out["f_down"].shape == (2, trained.channels, 4, 4)
    assert torch.equal(out["maps"], trained.score(images)[0])
    y_hat, _ = trained.condition(out["x0"])
    assert torch.allclose(out["y_hat"], y_hat)
