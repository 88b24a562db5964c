"""Model files are plain data: every file PRADOT writes loads with ``torch.load(weights_only=True)``, and a
crafted file holding a pickled object is refused by every loader without running its code."""

from pathlib import Path

import pytest
import torch

from pradot import PRADOT, PRADOTConfig
from pradot.checkpoint import MODEL_FORMAT, check_plain_state, file_format, file_info, load_state, save_state
from pradot.ensemble import Ensemble
from pradot.persistence import load_scoring_model, model_file_info


class _Payload:
    """Unpickling this writes a marker file: the proof that loading ran code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


@pytest.fixture()
def model(tiny_backbone):
    cfg = PRADOTConfig(backbone="tiny_random", stages=(2,), image_size=32, n=1, batch_size=2, epochs=1)
    return PRADOT(cfg, backbone=tiny_backbone)


def test_every_file_the_project_writes_loads_with_weights_only(model, tiny_backbone, tmp_path):
    from pradot.memory_bank import MemoryBankConfig, MemoryBankModel
    from pradot.persistence import servable_formats

    images = torch.rand(2, 3, 32, 32)
    bank = MemoryBankModel(
        MemoryBankConfig(backbone="tiny_random", stages=(2,), image_size=32), backbone=tiny_backbone
    ).fit_features(tiny_backbone(images))
    paths = (
        model.save(tmp_path / "m.pt"),
        model.save(tmp_path / "m_nobb.pt", include_backbone=False),
        Ensemble(
            [model, model], normalisation="per_member", stats=[{"mean": 0.0, "std": 1.0}] * 2, labels=["a/1", "a/2"]
        ).save(tmp_path / "e.pt"),
        bank.save(tmp_path / "mb.pt"),
        Ensemble([model, bank], labels=["a/1", "b/1"]).save(tmp_path / "e2.pt"),
    )
    for path in paths:
        state = torch.load(path, map_location="cpu", weights_only=True)
        assert isinstance(state, dict) and state["format"] in servable_formats()
    back = load_scoring_model(tmp_path / "e.pt")
    torch.testing.assert_close(
        back.score(images)[1],
        Ensemble([model, model], normalisation="per_member", stats=[{"mean": 0.0, "std": 1.0}] * 2).score(images)[1],
    )
    torch.testing.assert_close(PRADOT.load(tmp_path / "m.pt").score(images)[0], model.score(images)[0])


@pytest.mark.parametrize(
    "loader",
    ["load_state", "file_info", "file_format", "model_file_info", "PRADOT.load", "Ensemble.load", "load_scoring_model"],
)
def test_a_pickled_object_is_refused_and_never_runs(loader, tmp_path):
    marker = tmp_path / "code_ran.txt"
    bad = tmp_path / "model.pt"
    torch.save({"format": MODEL_FORMAT, "config": {}, "x": _Payload(marker)}, bad)
    # the file is a real torch archive: the old loader (weights_only=False) would have run the payload
    assert not marker.exists()
    fn = {
        "load_state": lambda: load_state(bad),
        "file_info": lambda: file_info(bad),
        "file_format": lambda: file_format(bad),
        "model_file_info": lambda: model_file_info(bad),
        "PRADOT.load": lambda: PRADOT.load(bad),
        "Ensemble.load": lambda: Ensemble.load(bad),
        "load_scoring_model": lambda: load_scoring_model(bad),
    }[loader]
    with pytest.raises(ValueError, match=r"is not a PRADOT .*file: it holds a pickled Python object \(getattr\)"):
        fn()
    assert not marker.exists(), f"{loader} ran code from the file"


def test_not_a_torch_file_is_named_so(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ValueError, match="not a torch file"):
        load_state(tmp_path / "notes.txt")


def test_save_refuses_a_state_that_would_not_load_with_weights_only(tmp_path):
    check_plain_state({"a": [1, 2.5, "x", None, (True, torch.zeros(2))], 3: torch.float32})
    with pytest.raises(TypeError, match=r"state\['config'\]\['when'\] is a .*Path"):
        save_state({"format": "x", "config": {"when": Path("/tmp")}}, tmp_path / "f.pt")
    assert not list(tmp_path.iterdir())  # nothing written, not even a temporary file
