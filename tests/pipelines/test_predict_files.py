"""predict on the line (issue 23): a version is data, not code (pipelines/trusted.py); names are data in every
output; a stopped run resumes (``resume=true``) to what an uninterrupted run writes. A tiny untrained model
(random backbone) logged to a tmp SQLite store; predict runs in this process without tracking."""

import csv
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines import predict

NAMES = [b"a_good.png", b"caf\xe9.png", b"=HYPERLINK(1).png", b"d.png", b"e.png"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A logged PRADOT model folder (as downloaded from the store)."""

    from pradot import PRADOT, PRADOTConfig
    from pradot.backbone import load_backbone
    from tests.helpers import logged_model_folder

    tmp = tmp_path_factory.mktemp("model")
    cfg = PRADOTConfig(backbone="tiny_random", stages=(2,), image_size=32, n=1, batch_size=2, epochs=1)
    path = PRADOT(cfg, backbone=load_backbone("tiny_random", (2,))).save(tmp / "m.pt")
    return logged_model_folder(path, tmp)


@pytest.fixture()
def images(tmp_path) -> Path:
    inp = tmp_path / "parts"
    inp.mkdir()
    rng = np.random.default_rng(0)
    for name in NAMES:
        img = Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
        img.save(os.path.join(os.fsencode(inp), name), format="PNG")
    return inp


def _predict(model: Path, inp: Path, out: Path, *extra: str) -> int:
    return predict.main(
        [
            f"model_uri={model}",
            f"input={inp}",
            f"output={out}",
            "batch_size=2",
            "device=cpu",
            "tracking.enabled=false",
            *extra,
        ]
    )


def _rows(out: Path) -> dict[str, dict]:
    with open(out / "scores.csv", newline="", encoding="utf-8") as f:  # strict UTF-8: every cell is valid text
        return {r["path"]: r for r in csv.DictReader(f)}


def test_a_version_is_loaded_as_data_with_the_installed_code(model_dir, images, tmp_path):
    """A version whose bundled mlflow_model.py (and pradot source) was changed: predict loads its artifacts with
    the installed code, the bundled code never runs, and the scores are the untouched version's."""
    crafted = tmp_path / "crafted"
    shutil.copytree(model_dir, crafted)
    marker = tmp_path / "MARKER"
    for code in (crafted / "mlflow_model.py", crafted / "code" / "pradot" / "__init__.py"):
        with open(code, "a") as f:
            f.write(f"\nopen({str(marker)!r}, 'w').write('ran')\n")
    assert _predict(model_dir, images, tmp_path / "plain") == 0
    assert _predict(crafted, images, tmp_path / "crafted_out") == 0
    assert not marker.exists()
    plain, other = _rows(tmp_path / "plain"), _rows(tmp_path / "crafted_out")
    assert plain.keys() == other.keys() and len(plain) == len(NAMES)
    assert all(float(plain[k]["raw_score"]) == float(other[k]["raw_score"]) for k in plain)


def test_odd_names_are_scored_and_written_as_safe_text(model_dir, images, tmp_path):
    out = tmp_path / "out"
    assert _predict(model_dir, images, out) == 0
    rows = _rows(out)
    assert set(rows) == {"a_good.png", "caf\\xe9.png", "'=HYPERLINK(1).png", "d.png", "e.png"}
    assert rows["caf\\xe9.png"]["mask"] == "masks/caf\\xe9.png"
    assert os.path.exists(os.path.join(os.fsencode(out), b"masks", b"caf\xe9.png"))  # the file keeps its bytes
    with open(out / "errors.csv", encoding="utf-8") as f:
        assert len(list(csv.reader(f))) == 1  # the header only


def test_resume_keeps_complete_rows_and_redoes_the_rest(model_dir, images, tmp_path):
    """A run cut short (last rows missing, a row cut mid-line, a kept row's mask file lost) resumed with
    resume=true ends equal to an uninterrupted run; complete rows are not scored again."""
    full = tmp_path / "full"
    assert _predict(model_dir, images, full) == 0
    cut = tmp_path / "cut"
    shutil.copytree(full, cut)
    lines = (cut / "scores.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    header, rows = lines[0], lines[1:]
    (cut / "scores.csv").write_text(header + "".join(rows[:3]) + rows[3][:12], encoding="utf-8")
    lost = next(csv.DictReader([header, rows[1]]))
    (cut / lost["mask"]).unlink()
    kept = next(csv.DictReader([header, rows[0]]))
    before = os.stat(cut / kept["map"]).st_mtime_ns
    assert _predict(model_dir, images, cut, "resume=true") == 0
    assert os.stat(cut / kept["map"]).st_mtime_ns == before  # kept, not scored again
    want, got = _rows(full), _rows(cut)
    assert got.keys() == want.keys()
    for k in want:
        assert {c: v for c, v in got[k].items() if c != "raw_score" and c != "score"} == {
            c: v for c, v in want[k].items() if c != "raw_score" and c != "score"
        }
        assert float(got[k]["raw_score"]) == pytest.approx(float(want[k]["raw_score"]), rel=1e-6)
    assert (cut / lost["mask"]).stat().st_size > 0
    # another operating point: refused, nothing changed
    snapshot = (cut / "scores.csv").read_bytes()
    assert _predict(model_dir, images, cut, "resume=true", "threshold=0.7") == 2
    assert (cut / "scores.csv").read_bytes() == snapshot
    assert _predict(model_dir, images, cut, "resume=true", "overwrite=true") == 2
