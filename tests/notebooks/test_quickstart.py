"""notebooks/quickstart.ipynb, executed as a user runs it (nbclient, the engine of `jupyter execute`), on the
CI recipe: it trains on the embedded data, shows the maps with the truth and the decision, the assignments,
the prototypes, and serves the champion when promote set one (else the model it trained)."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[2]


def _texts(nb) -> str:
    out = []
    for c in nb.cells:
        for o in c.get("outputs", []) if c.cell_type == "code" else []:
            out.append(o.get("text", ""))
            out.append(o.get("data", {}).get("text/plain", ""))
    return "\n".join(out)


@pytest.mark.slow
@pytest.mark.usefixtures("sqlite_uri")  # the store at tmp_path/mlflow.db: a copy of the migrated template
def test_quickstart_notebook_is_a_tour_that_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("PRADOT_SYNTHETIC_ROOT", str(tmp_path / "synthetic"))
    monkeypatch.setenv("PRADOT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PRADOT_NOTEBOOK_RECIPE", "ci")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)

    nb = nbformat.read(REPO / "notebooks" / "quickstart.ipynb", as_version=4)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(REPO / "notebooks")}}
    ).execute()
    text = _texts(nb)
    assert "== PRADOT run finished ==" in text and "pradot-synthetic-screw_bag v1" in text
    # the decision is stated against the truth: anomalous images are "detected" or "MISSED", never "normal"
    assert "truth" in text and ("detected" in text or "MISSED" in text)
    assert "no champion yet" in text and "models:/pradot-synthetic-screw_bag/1" in text
    assert "mlflow models serve -m 'models:/pradot-synthetic-screw_bag/1'" in text
    figures = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(figures) == 3, "maps, assignments and prototypes are shown"
    # the first figure's titles give the truth first, then the decision
    maps_cell = next(c for c in nb.cells if c.cell_type == "code" and "overlay_figure(" in c.source)
    assert 'f"truth: {table.truth[i]}\\n{table.verdict[i]}' in maps_cell.source
