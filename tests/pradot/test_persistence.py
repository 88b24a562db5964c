"""Model files: atomic state files, format probing, and loading either format as a scorer."""

import pytest
import torch

from pradot import PRADOT, PRADOTConfig
from pradot.checkpoint import (
    ENSEMBLE_FORMAT,
    ENSEMBLE_FORMATS,
    MEMORY_BANK_FORMAT,
    MODEL_FORMAT,
    file_format,
    load_state,
    save_state,
)
from pradot.ensemble import Ensemble
from pradot.fewshot import FOCT_FORMAT
from pradot.padim import PADIM_FORMAT
from pradot.persistence import load_scoring_model, servable_formats
from pradot.tiled import TILED_FORMAT
from pradot.vpdm import VPDM_FORMAT


@pytest.fixture()
def model(tiny_backbone):
    cfg = PRADOTConfig(backbone="tiny_random", stages=(2,), image_size=32, n=1, batch_size=2, epochs=1)
    return PRADOT(cfg, backbone=tiny_backbone)


def test_save_state_is_atomic_and_probed_without_reading(tmp_path):
    path = save_state({"format": "x", "config": {"a": 1}, "t": torch.arange(3)}, tmp_path / "sub" / "f.pt")
    assert path.is_file() and not list(path.parent.glob("*.tmp"))
    assert file_format(path) == "x"
    assert load_state(path, "x")["t"].tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="format 'y'; found 'x'"):
        load_state(path, "y")


def test_load_scoring_model_dispatches_on_the_file_format(model, tmp_path):
    images = torch.rand(2, 3, 32, 32)
    loaded = load_scoring_model(model.save(tmp_path / "m.pt"))
    assert isinstance(loaded, PRADOT) and loaded.config == model.config and not loaded.training
    torch.testing.assert_close(loaded.score(images)[0], model.score(images)[0], rtol=0, atol=0)
    assert file_format(tmp_path / "m.pt") == MODEL_FORMAT
    ens_path = Ensemble([model, PRADOT.load(tmp_path / "m.pt")]).save(tmp_path / "ens.pt")
    assert file_format(ens_path) == ENSEMBLE_FORMAT
    ens = load_scoring_model(ens_path)
    assert isinstance(ens, Ensemble) and len(ens) == 2 and not ens.training
    assert servable_formats() == sorted(
        [MODEL_FORMAT, *ENSEMBLE_FORMATS, MEMORY_BANK_FORMAT, FOCT_FORMAT, VPDM_FORMAT, PADIM_FORMAT, TILED_FORMAT]
    )
    assert ENSEMBLE_FORMAT in ENSEMBLE_FORMATS and "pradot-ensemble-v1" in ENSEMBLE_FORMATS
    # anything else: a clear error naming both formats
    torch.save({"format": "something-else"}, tmp_path / "other.pt")
    with pytest.raises(
        ValueError, match="'something-else'.*neither a PRADOT model file.*pradot-model-v1.*pradot-ensemble-v1"
    ):
        load_scoring_model(tmp_path / "other.pt")
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ValueError, match="not a torch file"):
        load_scoring_model(tmp_path / "notes.txt")
    with pytest.raises(FileNotFoundError):
        load_scoring_model(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="directory"):
        load_scoring_model(tmp_path)
    with pytest.raises(ValueError, match="not a PRADOT ensemble file"):
        Ensemble.load(tmp_path / "m.pt")
    with pytest.raises(ValueError, match="not a PRADOT model file"):
        PRADOT.load(ens_path)
