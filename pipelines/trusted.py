"""A registered model version is data, not code: load a logged PRADOT model with the INSTALLED code.

Each logged model carries its own copy of the pyfunc code (``mlflow_model.py``, MLflow "models from code")
and of the ``pradot`` package (``code/``); ``mlflow.pyfunc.load_model`` executes them. The project's entry
points (``predict``, ``export``) load through :func:`load_pyfunc` instead: it reads the model's ``MLmodel``
file (YAML) for the paths of its two data artifacts, the model file (loaded with ``weights_only``, see
:func:`pradot.serving.load_scoring_model`) and the calibration JSON, and builds the installed
:class:`pipelines.mlflow_model.PradotPyfunc` around them. No file of the version is imported or executed.
When the bundled code differs from the installed code this is logged (it is not run either way).

What ``mlflow models serve`` trusts is different: it runs the version's bundled ``mlflow_model.py`` and puts its
bundled ``pradot`` source first on ``sys.path``, i.e. it executes whatever code the version holds.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["TrustedModel", "load_pyfunc", "bundled_code_differs", "UntrustedModel"]

#: the pyfunc loaders a PRADOT model is logged with (``python_function`` flavor's ``loader_module``: models from
#: code, and a pickled python model of an earlier release; the pickle is never read here either)
PYFUNC_LOADERS = ("mlflow.pyfunc.loaders.code_model", "mlflow.pyfunc.model")
#: the data artifacts a PRADOT model needs
ARTIFACTS = ("model", "calibration")


class UntrustedModel(ValueError):
    """The folder is not a PRADOT pyfunc model this code can load as data (the message says what is wrong)."""


@dataclass
class TrustedModel:
    """The installed :class:`~pipelines.mlflow_model.PradotPyfunc` over a version's data artifacts: the same
    ``predict(data, params=...)`` and ``unwrap_python_model()`` as a loaded ``PyFuncModel``."""

    python_model: Any
    folder: Path
    model_uuid: str | None

    def predict(self, data, params: dict | None = None):
        return self.python_model.predict(None, data, params=params)

    def unwrap_python_model(self):
        return self.python_model


def _inside(folder: Path, rel: str, what: str) -> Path:
    path = (folder / rel).resolve()
    if not path.is_relative_to(folder.resolve()):
        raise UntrustedModel(f"the model's {what} path {rel!r} points outside the model folder {folder}")
    if not path.is_file():
        raise UntrustedModel(f"the model folder {folder} has no {what} file {rel!r}")
    return path


def _digest(paths: list[Path], base: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.relative_to(base).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def _code_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*.py") if "__pycache__" not in p.parts]


def bundled_code_differs(folder: Path, flavor: dict) -> list[str]:
    """Which parts of the version's bundled code differ from the installed code: ``"mlflow_model.py"`` (the
    pyfunc) and ``"pradot"`` (the package source under ``code/``); empty when they are the same."""
    import pradot
    from pipelines import mlflow_model

    out = []
    code = flavor.get("model_code_path")
    if code:
        bundled = folder / Path(str(code)).name
        installed = Path(mlflow_model.__file__).resolve()
        if not bundled.is_file() or bundled.read_bytes() != installed.read_bytes():
            out.append("mlflow_model.py")
    pkg = folder / "code" / "pradot"
    if pkg.is_dir():
        here = Path(pradot.__file__).resolve().parent
        if _digest(_code_files(pkg), pkg) != _digest(_code_files(here), here):
            out.append("pradot")
    return out


def load_pyfunc(model_uri: str, model_config: dict[str, Any] | None = None) -> TrustedModel:
    """Load a logged PRADOT model (a model folder or any MLflow model URI) as data with the installed code.

    ``model_config`` overrides the logged one key by key (e.g. ``{"device": "cpu"}``).

    Raises:
        UntrustedModel: not a PRADOT pyfunc model (no ``MLmodel``, another flavor, an artifact missing or
            outside the model folder). MlflowException / OSError: the URI cannot be resolved or downloaded.
    """
    from mlflow.artifacts import download_artifacts
    from mlflow.models import Model

    from pipelines.mlflow_model import PradotPyfunc

    folder = Path(model_uri) if Path(model_uri).is_dir() else Path(download_artifacts(artifact_uri=model_uri))
    if not (folder / "MLmodel").is_file():
        raise UntrustedModel(f"{model_uri} has no MLmodel file: not a logged MLflow model")
    meta = Model.load(str(folder))
    flavor = meta.flavors.get("python_function") or {}
    if flavor.get("loader_module") not in PYFUNC_LOADERS or not all(
        a in (flavor.get("artifacts") or {}) for a in ARTIFACTS
    ):
        raise UntrustedModel(
            f"{model_uri} is not a PRADOT pyfunc model (loader {flavor.get('loader_module')!r}, artifacts "
            f"{sorted(flavor.get('artifacts') or {})}; expected {PYFUNC_LOADERS[0]} with {list(ARTIFACTS)})"
        )
    artifacts = {
        a: str(_inside(folder, str(flavor["artifacts"][a].get("path", "")), f"{a} artifact")) for a in ARTIFACTS
    }
    differs = bundled_code_differs(folder, flavor)
    if differs:
        log.warning(
            "%s bundles code (%s) that differs from the installed pradot %s; it is not run: the model's data "
            "artifacts are loaded with the installed code",
            model_uri,
            " and ".join(differs),
            __import__("pradot").__version__,
        )
    config = {**(flavor.get("config") or {}), **(model_config or {})}
    from mlflow.pyfunc import PythonModelContext

    python_model = PradotPyfunc()
    python_model.load_context(PythonModelContext(artifacts=artifacts, model_config=config))
    return TrustedModel(python_model, folder, meta.model_uuid)
