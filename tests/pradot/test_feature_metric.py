"""PRADOT's ``feature_metric`` option (issue 25): the setting's checks, the per-cell precisions a fit stores
(the same from images and from cached features), old model files loading as cosine, and ONNX export's refusal."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

from pradot.backbone import load_backbone
from pradot.errors import InputError, NotFittedError
from pradot.export import ExportScorer, exportable
from pradot.local_covariance import cell_residual_covariance
from pradot.model import PRADOT, PRADOTConfig
from pradot.ranges import SettingError

SIZE, STAGES = 32, (1, 2)


def _config(**kw) -> PRADOTConfig:
    base = dict(backbone="tiny_random", stages=STAGES, image_size=SIZE, alpha=0.3, n=1, batch_size=4, epochs=1)
    return PRADOTConfig(**{**base, "eta": 0.5, **kw})


class _Images(Dataset):
    def __init__(self, x):
        self.x = x

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"image": self.x[i]}


@pytest.fixture(scope="module")
def setup():
    backbone = load_backbone("tiny_random", STAGES)
    images = torch.rand(10, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    model = PRADOT(_config(feature_metric="mahalanobis"), backbone=backbone).fit(_Images(images), progress=False)
    return backbone, images, model.eval()


def test_the_setting_is_range_checked_once():
    assert _config().feature_metric == "cosine"  # the paper's
    with pytest.raises(SettingError, match=r"feature_metric='euclid' is not allowed.*cosine.*mahalanobis"):
        _config(feature_metric="euclid")
    with pytest.raises(SettingError, match="per-cell prototypes"):
        _config(feature_metric="mahalanobis", n=0.5)
    with pytest.raises(SettingError, match="per-cell prototypes"):
        _config(feature_metric="mahalanobis", learn_coordinates=True)


def test_fit_from_images_stores_the_training_sets_precisions(setup):
    """fit(images) streams the training set in batches; its precisions equal cell_residual_covariance on all
    the training features at once, and fit_features on the cached features stores the same."""
    backbone, images, model = setup
    feats = backbone(images)
    bank_feats = model.prototypes.transform(feats)
    for s in model.prototypes.bank_stages:
        want = cell_residual_covariance(model.banks[str(s)], bank_feats[s]).float()
        torch.testing.assert_close(model.prototypes.metrics[s]["precision"], want, rtol=1e-4, atol=1e-5)
    cached = PRADOT(model.config, backbone=backbone).fit_features(feats, progress=False)
    for s, m in model.prototypes.metrics.items():
        torch.testing.assert_close(cached.prototypes.metrics[s]["precision"], m["precision"], rtol=1e-5, atol=1e-6)
        assert cached.prototypes.metrics[s]["normaliser"] == pytest.approx(m["normaliser"], rel=1e-5)


def test_unfitted_model_is_refused_and_old_files_load_as_cosine(setup):
    backbone, images, model = setup
    with pytest.raises(NotFittedError, match="fit first"):
        PRADOT(_config(feature_metric="mahalanobis"), backbone=backbone).score(images[:1])
    cosine = PRADOT(_config(), backbone=backbone).fit(_Images(images), progress=False).eval()
    state = cosine.state()
    del state["metrics"], state["config"]["feature_metric"]  # a file written before the option
    old = PRADOT.from_state(state)
    assert old.config.feature_metric == "cosine"
    torch.testing.assert_close(old.score(images[:2])[0], cosine.score(images[:2])[0], rtol=0, atol=0)


def test_onnx_export_refuses_the_mahalanobis_term_by_name(setup):
    _, _, model = setup
    assert not exportable(model)
    with pytest.raises(InputError, match="feature_metric='mahalanobis'"):
        ExportScorer(model)
