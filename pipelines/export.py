"""MLflow entry point `export`: a logged model's scorer as one ONNX file (and with ``format=openvino`` its
OpenVINO IR beside it), checked against the served pyfunc.

    python pipelines/export.py model_uri=models:/pradot-synthetic-screw_bag/1
    mlflow run . --env-manager local -e export -P model_uri=models:/pradot-synthetic-screw_bag/1
    pradot-export model_uri=runs:/<run id>/model output=screw_bag.onnx
    pradot-export model_uri=models:/pradot-synthetic-screw_bag/1 format=openvino   # + .xml/.bin beside it

The model's data artifacts are loaded with the installed pyfunc code (:func:`pipelines.trusted.load_pyfunc`;
code bundled with a version is never run); its scoring model and calibration
go to :func:`pradot.export.export_onnx` (resize, normalisation, backbone, banks or memory banks, the model's
post-processing and fusion; the thresholds and quantile table in the file's metadata). Before anything is
published the file is run with onnxruntime on the model's input example and on generated images of other
sizes, and compared with the pyfunc's answers (maps at the input size normalised by the pyfunc map's range,
raw scores); above ``tolerance`` the export fails. With tracking on, the file is logged as an artifact
``onnx/<file>`` of the run the model came from, and a registered version gets the tags ``pradot.onnx``
(``runs:/<run id>/onnx/<file>``) and ``pradot.onnx_parity``. With ``format=openvino`` the IR
(:func:`pradot.export_openvino.export_openvino`) is checked the same way with the OpenVINO runtime, logged as
``openvino/<stem>.xml`` and ``.bin``, and tagged ``pradot.openvino`` / ``pradot.openvino_parity``.
Supported: PRADOT models, memory banks and ensembles of them (:data:`pradot.export.SUPPORTED`).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

if __name__ == "__main__" and not __package__:  # `python pipelines/export.py`: import this checkout's package
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from pipelines import checks, cli, config, tracking  # noqa: E402
from pipelines.names import file_name  # noqa: E402
from pipelines.predict import model_location  # noqa: E402
from pipelines.tags import ONNX, ONNX_PARITY, OPENVINO, OPENVINO_PARITY, SOURCE_MODEL

#: the version tags of a published export, per kind: where it was logged, its parity
PUBLISHED_TAGS = {"onnx": (ONNX, ONNX_PARITY), "openvino": (OPENVINO, OPENVINO_PARITY)}

log = logging.getLogger(__name__)

__all__ = ["ExportSettings", "ExportResult", "export_settings", "source_of", "parity", "run_export", "run", "main"]

#: sizes (height, width) of the generated check images, besides the model's input example
CHECK_SIZES = ((96, 128), (200, 75))
#: export formats: the ONNX file alone, or with its OpenVINO IR beside it
FORMATS = ("onnx", "openvino")


@dataclass(frozen=True)
class ExportSettings:
    model_uri: str
    output: Path | None  # None: <workdir>/<model>.onnx
    overwrite: bool = False
    opset: int = 18
    tolerance: float = 1e-3
    format: str = "onnx"  # "openvino": the ONNX file plus its OpenVINO IR (.xml, .bin) beside it
    tracking: bool = True
    experiment_name: str = "pradot-export"
    workdir: Path = Path(".")


def export_settings(cfg) -> ExportSettings:
    """``conf/export.yaml`` (composed) -> :class:`ExportSettings`, checked before any work.

    Raises:
        ConfigError: a missing or bad value.
    """
    uri = cfg.get("model_uri")
    if uri in (None, ""):
        raise checks.ConfigError(
            "model_uri is required: the model to export (models:/<name>@champion, "
            "models:/<name>/<version>, runs:/<run id>/model or a model folder)"
        )
    trk = cfg.get("tracking") or {}
    out = cfg.get("output")
    return ExportSettings(
        model_uri=model_location(str(uri), cfg.get("workdir")),
        output=Path(str(out)) if out else None,
        overwrite=checks.boolean("overwrite", cfg.get("overwrite", False)),
        opset=checks.number(
            "opset",
            cfg.get("opset", 18),
            integer=True,
            lo=18,
            hi=23,
            why="ONNX opset; 18 is the first with the ops the graph needs",
        ),
        tolerance=checks.number("tolerance", cfg.get("tolerance", 1e-3), lo=0, lo_open=True, hi=1),
        format=_format(cfg.get("format", "onnx")),
        tracking=checks.boolean("tracking.enabled", trk.get("enabled", True)),
        experiment_name=checks.experiment_name(
            "tracking.experiment_name", str(trk.get("experiment_name", "pradot-export"))
        ),
        workdir=Path(str(cfg.get("workdir") or ".")).resolve(),
    )


def _format(value) -> str:
    fmt = str(value or "onnx").strip().lower()
    if fmt not in FORMATS:
        raise checks.ConfigError(
            f"format must be one of {', '.join(FORMATS)} (openvino: the ONNX file and its OpenVINO IR), got {value!r}"
        )
    return fmt


@dataclass(frozen=True)
class Source:
    """Where a model came from: its run (None for a local folder) and registered version (None if not one)."""

    run_id: str | None
    name: str | None
    version: str | None

    @property
    def slug(self) -> str:
        if self.name:
            return f"{self.name}-v{self.version}"
        return f"run-{self.run_id}" if self.run_id else "model"


def source_of(uri: str) -> Source:
    """The run and registered version behind ``models:/<name>/<version>``, ``models:/<name>@<alias>`` or
    ``runs:/<run id>/...``; a folder or another URI has neither.

    Raises:
        UsageError: a registered model, version or alias that does not exist.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    if uri.startswith("runs:/"):
        return Source(uri[len("runs:/") :].split("/")[0], None, None)
    m = re.match(r"^models:/([^/@]+)(?:/(\w+)|@([\w-]+))$", uri)
    if not m or m.group(1).startswith("m-"):
        return Source(None, None, None)
    client = MlflowClient()
    try:
        mv = (
            client.get_model_version_by_alias(m.group(1), m.group(3))
            if m.group(3)
            else client.get_model_version(m.group(1), m.group(2))
        )
    except MlflowException as e:
        raise cli.UsageError(f"model {uri} not found in the registry ({e.message}){tracking.store_hint(uri)}") from None
    return Source(mv.run_id, mv.name, str(mv.version))


def _check_images(model_dir: str | None, image_size: int) -> list:
    """The model's input example (base64 PNG) and generated images of :data:`CHECK_SIZES` and of the model's
    size, as base64 PNG strings."""
    import numpy as np

    from pradot.serving import encode_png

    images = []
    if model_dir:
        from mlflow.models import Model

        try:
            example = Model.load(model_dir).load_input_example(model_dir)
            images += [str(v) for v in example["image"]] if example is not None else []
        except Exception as e:  # noqa: BLE001 - a model without an example still gets the generated images
            log.info("no input example to check the export on (%s)", e)
    rng = np.random.default_rng(0)
    for h, w in (*CHECK_SIZES, (image_size, image_size)):
        yy, xx = np.mgrid[:h, :w]
        base = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) % 256], -1)
        images.append(encode_png(np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)))
    return images


def parity(scorer, onnx_path: Path, images: Sequence[str], runner=None) -> dict[str, float]:
    """``{"map_max_abs", "score_max_abs"}``: the largest difference between onnxruntime (or ``runner``, an
    object with :meth:`pradot.export.OnnxScorer.score`, e.g. an OpenVINOScorer) and the served scorer
    (``pradot.serving.Scorer``) over ``images`` (base64): maps at the input's size as the server returns them,
    each difference divided by the range of the pyfunc's map; raw scores (the map's maximum) likewise; and the
    last image twice in one batch against it alone."""
    import base64
    import io

    import numpy as np

    from pradot.export import OnnxScorer
    from pradot.serving import decode_image, map_size, resize_map

    onnx_model = runner if runner is not None else OnnxScorer(onnx_path)
    worst_map = worst_score = 0.0
    for value in images:
        rec = scorer.predict([value], return_map=True, map_format="npy")[0]
        served = np.load(io.BytesIO(base64.b64decode(rec["anomaly_map"])))
        rgb = decode_image(value)
        maps, scores = onnx_model.score(rgb)
        mine = resize_map(maps[0], map_size(*rgb.shape[:2], scorer.max_map_side))
        span = max(float(served.max() - served.min()), 1e-12)
        worst_map = max(worst_map, float(np.abs(mine - served).max()) / span)
        worst_score = max(worst_score, abs(float(scores[0]) - rec["raw_score"]) / span)
        if value is images[-1]:  # the batch dimension is dynamic: the image twice in one batch scores the same
            batch_maps, batch_scores = onnx_model.score(np.stack([rgb, rgb]))
            worst_map = max(worst_map, float(np.abs(batch_maps - maps[0]).max()) / span)
            worst_score = max(worst_score, float(np.abs(batch_scores - scores[0]).max()) / span)
    return {"map_max_abs": worst_map, "score_max_abs": worst_score}


@dataclass
class ExportResult:
    path: Path
    model_uri: str
    parity: dict[str, float]
    artifact_uri: str | None = None
    run_id: str | None = None
    exit_code: int = cli.EXIT_OK
    openvino: Path | None = None  # the IR's .xml (format=openvino)
    openvino_parity: dict[str, float] | None = None
    openvino_uri: str | None = None

    def summary(self) -> str:
        logged = f"\nlogged as : {self.artifact_uri}" if self.artifact_uri else ""
        ov = []
        if self.openvino is not None and self.openvino_parity is not None:
            ov = [
                f"openvino  : {self.openvino} (+ .bin)"
                + (f", logged as {self.openvino_uri}" if self.openvino_uri else ""),
                f"parity    : maps {self.openvino_parity['map_max_abs']:.2e}, raw scores "
                f"{self.openvino_parity['score_max_abs']:.2e}, OpenVINO vs the served pyfunc",
            ]
        return "\n".join(
            [
                "\n== PRADOT export finished ==",
                f"model     : {self.model_uri}",
                f"onnx      : {self.path}" + logged,
                f"parity    : maps {self.parity['map_max_abs']:.2e}, "
                f"raw scores {self.parity['score_max_abs']:.2e} (max abs "
                f"difference over the map's range), onnxruntime vs the served pyfunc",
                f"run it    : python -c \"from pradot.export import OnnxScorer; print(OnnxScorer('{self.path}')"
                f".metadata['image_threshold'])\"",
                *ov,
            ]
        )


def _output(settings: ExportSettings, source: Source) -> Path:
    path = settings.output or settings.workdir / file_name(source.slug, ".onnx")
    if path.suffix.lower() != ".onnx":
        path = path / file_name(source.slug, ".onnx") if path.is_dir() else path.with_suffix(".onnx")
    taken = [p for p in (path, *_ir_files(path, settings)) if p.exists()]
    if taken and not settings.overwrite:
        raise cli.UsageError(f"{taken[0]} exists; choose another output or pass overwrite=true to replace it")
    return path


def _ir_files(path: Path, settings: ExportSettings) -> list[Path]:
    """The OpenVINO IR files written beside the ONNX file (format=openvino), else none."""
    return [path.with_suffix(".xml"), path.with_suffix(".bin")] if settings.format == "openvino" else []


def _publish(paths: Sequence[Path], source: Source, checked: dict[str, float], kind: str = "onnx") -> str | None:
    """Log the files in the source model's run under ``<kind>/`` and tag its registered version
    (``pradot.<kind>``: the first file's URI, ``pradot.<kind>_parity``); returns that URI."""
    from mlflow import MlflowClient

    if source.run_id is None:
        return None
    client = MlflowClient()
    for path in paths:
        client.log_artifact(source.run_id, str(path), kind)
    uri = f"runs:/{source.run_id}/{kind}/{paths[0].name}"
    if source.name:
        client.set_model_version_tag(source.name, source.version, PUBLISHED_TAGS[kind][0], uri)
        client.set_model_version_tag(
            source.name,
            source.version,
            PUBLISHED_TAGS[kind][1],
            f"map {checked['map_max_abs']:.2e}, score {checked['score_max_abs']:.2e}",
        )
    return uri


def _export(settings: ExportSettings, source: Source) -> ExportResult:
    from mlflow.artifacts import download_artifacts

    from pipelines.trusted import load_pyfunc
    from pradot.export import SUPPORTED, export_onnx, exportable

    path = _output(settings, source)
    model_dir = settings.model_uri if Path(settings.model_uri).is_dir() else download_artifacts(settings.model_uri)
    scorer = load_pyfunc(model_dir, model_config={"device": "cpu"}).unwrap_python_model().scorer  # installed code
    if not exportable(scorer.model):
        raise cli.UsageError(
            f"{settings.model_uri} is a {type(scorer.model).__name__} model; ONNX export supports "
            f"{SUPPORTED} (PRADOT with model.feature_metric=cosine only). Serve it with `mlflow models serve` or "
            "score folders with the predict "
            "entry point instead"
        )
    export_onnx(
        scorer.model,
        path,
        calibration=scorer.calibration,
        opset=settings.opset,
        metadata={
            "source_model": settings.model_uri,
            "source_run": source.run_id or "",
            "registered_version": f"{source.name}/{source.version}" if source.name else "",
        },
    )
    images = _check_images(model_dir, scorer.image_size)
    checked = parity(scorer, path, images)
    log.info("onnxruntime vs pyfunc: %s", checked)
    result = ExportResult(path, settings.model_uri, checked)
    if max(checked.values()) <= settings.tolerance and settings.format == "openvino":
        from pradot.export_openvino import OpenVINOScorer, export_openvino

        result.openvino = export_openvino(path)
        result.openvino_parity = parity(scorer, path, images, runner=OpenVINOScorer(result.openvino))
        log.info("OpenVINO vs pyfunc: %s", result.openvino_parity)
        checked = {k: max(v, result.openvino_parity[k]) for k, v in checked.items()}
    if max(checked.values()) > settings.tolerance:
        for p in (path, *_ir_files(path, settings)):
            p.unlink(missing_ok=True)
        raise RuntimeError(
            f"the exported graph differs from the served model by {checked} (tolerance "
            f"{settings.tolerance}; onnxruntime {result.parity}, OpenVINO {result.openvino_parity}); "
            "nothing was written or logged"
        )
    return result


def run_export(settings: ExportSettings) -> ExportResult:
    """Export, check and (with tracking) publish; see the module docstring.

    Raises:
        UsageError: a bad URI or output, or a model kind ONNX export does not support. RuntimeError: parity
            failed.
    """
    tracking.require_store(settings.model_uri)
    tracking.setup_tracking()
    source = source_of(settings.model_uri)
    if not settings.tracking:
        return _export(settings, source)
    import mlflow

    with tracking.entry_run(f"export-{source.slug}", settings.experiment_name, entry_point="export") as run:
        tracking.log_resolved_params(
            {
                "model_uri": settings.model_uri,
                "opset": settings.opset,
                "tolerance": settings.tolerance,
                "format": settings.format,
            }
        )
        result = _export(settings, source)
        mlflow.log_metrics({f"parity_{k}": v for k, v in result.parity.items()})
        result.artifact_uri = _publish([result.path], source, result.parity)
        tags = {ONNX: result.artifact_uri or str(result.path), SOURCE_MODEL: settings.model_uri}
        if result.openvino is not None and result.openvino_parity is not None:
            mlflow.log_metrics({f"parity_openvino_{k}": v for k, v in result.openvino_parity.items()})
            ir = [result.openvino, result.openvino.with_suffix(".bin")]
            result.openvino_uri = _publish(ir, source, result.openvino_parity, "openvino")
            tags[OPENVINO] = result.openvino_uri or str(result.openvino)
        mlflow.set_tags(tags)
        result.run_id = run.run_id
    return result


def run(argv: Sequence[str]) -> ExportResult:
    """Compose ``conf/export.yaml`` with the overrides in ``argv`` and export."""
    return run_export(export_settings(config.compose("export", config.parse_overrides(argv))))


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run_entry(run, argv, failure_note="the export run is marked FAILED; no ONNX file was logged")


if __name__ == "__main__":
    sys.exit(main())
