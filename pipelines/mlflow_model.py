"""PRADOT as an MLflow pyfunc model: log, register and serve one trained model with its calibration.

```python
from pipelines.mlflow_model import log_pradot_model
from pradot.serving import Calibration
info = log_pradot_model("outputs/model.pt", Calibration.calibrate(val_scores), registered_model_name="pradot-screw_bag")
# mlflow models serve -m models:/pradot-screw_bag/1 --env-manager local -h 127.0.0.1 -p 5001
```

The request/response contract is :mod:`pradot.serving`'s (this class only adapts it to pandas and
MLflow errors): POST ``/invocations`` with
``{"dataframe_split": {"columns": ["image"], "data": [["<base64 PNG/JPEG>"], ...]}}`` (optionally
``"params": {"return_map": true, "map_format": "png", "return_mask": true, "quantile": 0.995}`` or
``"threshold": <raw score>`` instead of ``quantile``) and get
``{"predictions": [{"score", "raw_score", "is_anomaly", "threshold"[, "anomaly_map"][, "mask",
"mask_threshold"]}, ...]}``. A bad operating point (a quantile outside the stored table's [0.5, 1], NaN, a
string, both ``quantile`` and ``threshold``) answers HTTP 400 like a bad image. A bad
image answers HTTP 400 with the reason and the row's index; a request over its budgets (rows, decoded
pixels, bytes of returned maps) HTTP 413 naming the limit; a request that waited too long for its turn
(``max_in_flight``) HTTP 503. A request without the ``image`` column is
refused (400) by MLflow's schema enforcement before this class sees it ("Model is missing inputs
['image']. Note that there were extra inputs: [...]"); called in-process without a signature check,
:meth:`PradotPyfunc.predict` raises its own message with the columns received and the expected payload.

Packaging ("models from code", MLflow 3): this file itself is the model's code (``python_model=<this
file>``; it ends with ``mlflow.models.set_model``), so nothing is pickled. The model's artifacts are the
PRADOT ``.pt`` file (config, prototype banks and backbone weights: serving needs no internet) and the
calibration JSON. By default the ``pradot`` package source is shipped with the model (``code_paths``),
so an environment built from ``requirements.txt`` (``--env-manager virtualenv/uv/conda``) only needs
PyPI packages; with ``--env-manager local`` the current environment is used.

Ensembles: ``load_context`` loads the ``model`` artifact with :func:`pradot.persistence.load_scoring_model`,
which dispatches on the file's ``"format"``: ``pradot-model-v1`` (``PRADOT.save``) and
``pradot-ensemble-v1``/``-v2`` (``pradot.ensemble.Ensemble.save``), ``pradot-memory-bank-v1``
(``pradot.memory_bank.MemoryBankModel.save``) and ``pradot-padim-v1`` (``pradot.padim.PaDiMModel.save``) are
served by this same class and contract.
This file is the model's code (copied into every logged model): it imports only ``pradot`` and MLflow,
never the rest of ``pipelines``.

Few-shot models (``pradot-foct-v1``, :mod:`pradot.fewshot`) are served by the same class; the request
parameter ``online_update`` (default false) lets normal-looking request images calibrate the model's online
episodic memory. That memory lives in the serving process (one per worker, reset when it restarts).
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from pradot.errors import InputError
from pradot.serving import (
    EXPECTED_PAYLOAD,
    Calibration,
    InvalidRequest,
    RequestTooLarge,
    Scorer,
    ServerBusy,
    encode_png,
    load_scoring_model,
    model_file_info,
    servable_formats,
)

__all__ = [
    "PradotPyfunc",
    "PayloadTooLarge",
    "SCORER_CONFIG",
    "SIGNATURE",
    "default_pip_requirements",
    "log_pradot_model",
]

INPUT_COLUMN = "image"
OUTPUT_COLUMNS = ("score", "raw_score", "is_anomaly", "threshold")

SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", INPUT_COLUMN)]),
    outputs=Schema(
        [
            ColSpec("double", "score"),
            ColSpec("double", "raw_score"),
            ColSpec("boolean", "is_anomaly"),
            ColSpec("double", "threshold"),
            ColSpec("string", "anomaly_map", required=False),
            ColSpec("string", "mask", required=False),
            ColSpec("double", "mask_threshold", required=False),
        ]
    ),
    params=ParamSchema(
        [
            ParamSpec("return_map", "boolean", False),
            ParamSpec("map_format", "string", "png"),
            ParamSpec("return_mask", "boolean", False),
            ParamSpec("quantile", "double", None),  # an operating point from the normals' quantile table
            ParamSpec("threshold", "double", None),  # or a raw score threshold (not both)
            ParamSpec("online_update", "boolean", False),  # few-shot (FOCT) models: calibrate the online memory
        ]
    ),
)

#: distributions the served model imports (pinned to this environment's versions when logging)
SERVING_DISTRIBUTIONS = (
    "mlflow",
    "torch",
    "torchvision",
    "timm",
    "numpy",
    "pillow",
    "pandas",
    "matplotlib",
    "tqdm",
    "scikit-learn",
)  # scikit-learn: the memory bank's nearest-neighbour search


#: ``model_config`` keys passed to :class:`pradot.serving.Scorer` (its defaults apply to those not given)
SCORER_CONFIG = (
    "batch_size",
    "max_pixels",
    "max_rows",
    "max_request_pixels",
    "max_map_side",
    "max_response_bytes",
    "max_in_flight",
    "wait_s",
)


#: allocations from this size up are given back to the OS when freed (:func:`return_large_blocks`)
DEFAULT_MMAP_THRESHOLD = 4 * 1024 * 1024


def return_large_blocks(threshold: int = DEFAULT_MMAP_THRESHOLD) -> bool:
    """Make the C allocator (glibc) serve allocations of ``threshold`` bytes and more with ``mmap``, so they go
    back to the OS when freed. By default glibc raises that threshold up to 32 MiB as large blocks are freed,
    and a server's request threads then keep decoded images in their own heaps: measured on 6 threads
    scoring 25 MP images, +615 MB resident at the peak and +375 MB after, against +190 MB and +50 MB with a
    4 MiB threshold. Process-wide: the server calls it once at start (:meth:`PradotPyfunc.load_context`).
    Returns False where it is not available (not glibc)."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_mmap_threshold = -3  # glibc's M_MMAP_THRESHOLD
    return bool(mallopt(m_mmap_threshold, int(threshold)))


class PayloadTooLarge(MlflowException):
    """A request over its budgets: HTTP 413 (MLflow's error codes have no 413; its scoring server answers
    with the exception's ``get_http_status_code()``)."""

    def __init__(self, message: str):
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)

    def get_http_status_code(self) -> int:
        return 413


class PradotPyfunc(mlflow.pyfunc.PythonModel):
    """Serves a scoring model (artifact ``model``) with its calibration (artifact ``calibration``).

    ``model_config`` (optional, at logging, or ``mlflow.pyfunc.load_model(..., model_config=...)``):
    ``device`` ("auto" = CUDA if available, "cpu", ...), the request budgets of
    :class:`pradot.serving.Scorer` (:data:`SCORER_CONFIG`): ``batch_size``, ``max_pixels``, ``max_rows``,
    ``max_request_pixels``, ``max_map_side``, ``max_response_bytes``, ``max_in_flight``, ``wait_s``, and
    ``mmap_threshold`` (bytes, default 4 MiB, 0 = the C library's default; see
    :func:`return_large_blocks`).
    """

    def load_context(self, context):
        cfg = dict(context.model_config or {})
        if int(cfg.get("mmap_threshold", DEFAULT_MMAP_THRESHOLD)) > 0:
            return_large_blocks(int(cfg.get("mmap_threshold", DEFAULT_MMAP_THRESHOLD)))
        model = load_scoring_model(context.artifacts["model"], device=cfg.get("device", "auto"))
        calibration = Calibration.load(context.artifacts["calibration"])
        self.scorer = Scorer(model, calibration, **{k: cfg[k] for k in SCORER_CONFIG if k in cfg})

    @staticmethod
    def _images(model_input) -> list:
        if isinstance(model_input, pd.DataFrame):
            if INPUT_COLUMN not in model_input.columns:
                raise MlflowException(
                    f"the input has no {INPUT_COLUMN!r} column (columns received: "
                    f"{[str(c) for c in model_input.columns]}); expected payload: {EXPECTED_PAYLOAD}",
                    error_code=INVALID_PARAMETER_VALUE,
                )
            return model_input[INPUT_COLUMN].tolist()
        if isinstance(model_input, dict) and INPUT_COLUMN in model_input:
            v = model_input[INPUT_COLUMN]
            return [v] if isinstance(v, (str, bytes)) else list(v)
        if isinstance(model_input, (list, tuple, np.ndarray, pd.Series)):
            return list(np.asarray(model_input, dtype=object).ravel())
        raise MlflowException(
            f"expected a DataFrame with an {INPUT_COLUMN!r} column, got "
            f"{type(model_input).__name__}; expected payload: {EXPECTED_PAYLOAD}",
            error_code=INVALID_PARAMETER_VALUE,
        )

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        params = dict(params or {})
        images = self._images(model_input)
        try:
            rows = self.scorer.predict(
                images,
                return_map=params.get("return_map", False),
                map_format=params.get("map_format", "png"),
                return_mask=params.get("return_mask", False),
                quantile=params.get("quantile"),
                threshold=params.get("threshold"),
                online_update=params.get("online_update", False),
            )
        except RequestTooLarge as exc:
            raise PayloadTooLarge(str(exc)) from None
        except InvalidRequest as exc:
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None
        except ServerBusy as exc:
            raise MlflowException(str(exc), error_code=TEMPORARILY_UNAVAILABLE) from None
        except Exception as exc:  # a server-side failure, not the client's: HTTP 500
            raise MlflowException(f"scoring failed: {type(exc).__name__}: {exc}", error_code=INTERNAL_ERROR) from exc
        columns = (
            list(OUTPUT_COLUMNS)
            + (["anomaly_map"] if params.get("return_map", False) else [])
            + (["mask", "mask_threshold"] if params.get("return_mask", False) else [])
        )
        return pd.DataFrame(rows, columns=columns)


# ------------------------------------------------------------------------------------- logging
def _pin(dist: str) -> str | None:
    try:
        version = importlib_metadata.version(dist)
    except importlib_metadata.PackageNotFoundError:
        return None
    return f"{dist}=={version.split('+')[0]}"  # drop local tags (torch's +cpu / +cu121)


def default_pip_requirements() -> list[str]:
    """This environment's versions of :data:`SERVING_DISTRIBUTIONS` (``pradot`` itself travels as code)."""
    return [p for p in (_pin(d) for d in SERVING_DISTRIBUTIONS) if p]


def _as_calibration(calibration) -> Calibration:
    if isinstance(calibration, Calibration):
        return calibration
    if isinstance(calibration, dict):
        return Calibration.from_dict(calibration)
    if isinstance(calibration, (str, Path)):
        return Calibration.load(calibration)
    raise TypeError(f"calibration must be a Calibration, a dict or a JSON path, got {type(calibration).__name__}")


def _example_rgb(image, size: int) -> np.ndarray:
    """The input example: the given image (path, array, PIL image, bytes/base64), or a generated one;
    shrunk to at most ``size`` pixels a side to keep the stored example small."""
    from PIL import Image

    from pradot.serving import decode_image

    if image is None:
        yy, xx = np.mgrid[:size, :size]
        rgb = np.stack(
            [xx * 255 // max(size - 1, 1), yy * 255 // max(size - 1, 1), np.full_like(xx, 128)], axis=-1
        ).astype(np.uint8)
    elif isinstance(image, (str, Path)) and Path(str(image)).is_file():
        from pradot.data.images import read_image

        rgb = read_image(image)
    elif isinstance(image, Image.Image):
        rgb = decode_image(_png_bytes(image))
    elif isinstance(image, np.ndarray):
        rgb = np.asarray(image)
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise InputError(f"input_example_image array must be (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
    else:
        rgb = decode_image(image)
    h, w = rgb.shape[:2]
    if max(h, w) > size:
        scale = size / max(h, w)
        rgb = np.asarray(
            Image.fromarray(rgb).resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
        )
    return rgb


def _png_bytes(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def log_pradot_model(
    model_path,
    calibration,
    artifact_name: str = "model",
    registered_model_name: str | None = None,
    input_example_image=None,
    pip_requirements: list[str] | None = None,
    extra_tags: dict[str, Any] | None = None,
    include_package_code: bool = True,
    model_config: dict[str, Any] | None = None,
):
    """Log a saved PRADOT model (``PRADOT.save`` file) and its calibration as an MLflow pyfunc model.

    Args:
        model_path: the model file (any format :func:`pradot.serving.load_scoring_model` serves).
        calibration: a :class:`~pradot.serving.Calibration`, its dict, or a JSON file.
        artifact_name: the logged model's name (``name=`` of ``mlflow.pyfunc.log_model``).
        registered_model_name: register the model under this name (version in ``info.registered_model_version``),
            after logging it, with all ``extra_tags`` in the same call.
        input_example_image: the input example (image path, (H, W, 3) uint8 array, PIL image, bytes or
            base64); a generated gradient when None. Stored as a base64 PNG.
        pip_requirements: default :func:`default_pip_requirements` (this environment's versions).
        extra_tags: tags for the logged model (and the registered version).
        include_package_code: ship the ``pradot`` source with the model (``code_paths``).
        model_config: see :class:`PradotPyfunc` (default ``{"device": "auto"}``).
    Returns:
        ``mlflow.models.model.ModelInfo`` (``model_uri``, ``model_id``, ``registered_model_version``, ...).
    """
    import pradot

    model_path = Path(model_path).resolve()
    if not model_path.is_file():
        raise FileNotFoundError(f"no model file at {model_path}")
    info = model_file_info(model_path)
    if info.get("format") not in servable_formats():
        raise InputError(f"{model_path} has format {info.get('format')!r}; servable formats: {servable_formats()}")
    cal = _as_calibration(calibration)
    config = dict(info.get("config") or {})
    image_size = int(config.get("image_size", 224))
    tags = {str(k): str(v) for k, v in (extra_tags or {}).items()}
    tags.setdefault("pradot.format", str(info["format"]))  # pipelines.tags.FORMAT (this file imports only pradot)
    metadata = {
        "pradot": {
            "format": info["format"],
            "image_size": image_size,
            "backbone": config.get("backbone"),
            "stages": list(config.get("stages") or []),
            "calibration": cal.to_dict(),
            "input_column": INPUT_COLUMN,
            "package_version": pradot.__version__,
        }
    }

    with tempfile.TemporaryDirectory(prefix="pradot-log-") as tmp:
        tmp = Path(tmp)
        cal_path = cal.save(tmp / "calibration.json")
        code_paths = None
        if include_package_code:
            pkg = tmp / "code" / "pradot"
            shutil.copytree(
                Path(pradot.__file__).resolve().parent,
                pkg,
                ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"),
            )
            code_paths = [str(pkg)]
        example = pd.DataFrame({INPUT_COLUMN: [encode_png(_example_rgb(input_example_image, image_size))]})
        model_info = mlflow.pyfunc.log_model(
            name=artifact_name,
            python_model=Path(__file__).resolve(),
            artifacts={"model": str(model_path), "calibration": str(cal_path)},
            code_paths=code_paths,
            signature=SIGNATURE,
            input_example=example,
            pip_requirements=pip_requirements if pip_requirements is not None else default_pip_requirements(),
            model_config=dict(model_config) if model_config is not None else {"device": "auto"},
            metadata=metadata,
            tags=tags,
        )
    if registered_model_name:  # one call with every tag: never a version without its tags
        version = mlflow.register_model(model_info.model_uri, registered_model_name, tags=tags)
        model_info.registered_model_version = int(version.version)
    return model_info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Log (and register) a saved PRADOT model as an MLflow pyfunc model.")
    p.add_argument("--model", required=True, help="PRADOT .pt file (PRADOT.save)")
    p.add_argument("--calibration", required=True, help="calibration JSON (pradot.serving.Calibration.save)")
    p.add_argument("--name", default=None, help="registered model name")
    p.add_argument("--example", default=None, help="an image file for the input example")
    p.add_argument("--experiment", default=None, help="MLflow experiment name")
    a = p.parse_args(argv)
    if a.experiment:
        mlflow.set_experiment(a.experiment)
    info = log_pradot_model(a.model, a.calibration, registered_model_name=a.name, input_example_image=a.example)
    print(f"model_uri={info.model_uri}")
    if info.registered_model_version is not None:
        print(f"registered: models:/{a.name}/{info.registered_model_version}")
    return 0


# MLflow "models from code": loading the model runs this file and takes the model set here.
mlflow.models.set_model(PradotPyfunc())

if __name__ == "__main__":
    sys.exit(main())
