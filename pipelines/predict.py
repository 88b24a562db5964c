"""MLflow entry point `predict`: score a folder of images with a logged model and write the results.

    python pipelines/predict.py model_uri=models:/pradot-synthetic-screw_bag/1 input=new_parts output=out
    mlflow run . --env-manager local -e predict -P model_uri=models:/pradot-synthetic-screw_bag/1 \\
        -P input=new_parts -P output=out
    pradot-predict model_uri=runs:/<run id>/model input="parts/**/*.jpg" output=out

The model's data artifacts are loaded with the installed pyfunc code (:func:`pipelines.trusted.load_pyfunc`:
code bundled with a version is never run) and every image goes through the pyfunc's ``predict`` with base64
file bytes, as a request to ``mlflow models serve`` does: the scores are the served model's.
Writes, mirroring the input tree (``<rel>`` = the image's path under the input folder, without extension):

* ``scores.csv``: path, score, raw_score, is_anomaly, threshold, mask_threshold and the files written;
* ``maps/<rel>.tiff`` (float32, the raw anomaly map at the input's size up to ``max_map_side``),
  ``masks/<rel>.png`` (255 = map > mask threshold), ``overlays/<rel>.png`` (the heat map over the image);
* ``errors.csv``: path and reason of every name the input matched that was not scored (unreadable, corrupt,
  too large, a dangling link or link loop, the same file reached twice, an output name clash); the others
  go on. Names are written as text every reader accepts (:mod:`pipelines.names`);
* ``predict.json``: the model and operating point, for ``resume=true`` (:mod:`pipelines.resume`).

Images are read, scored and written ``batch_size`` at a time: memory does not grow with the folder. An
output folder that is not empty is refused unless ``overwrite=true`` (score everything again) or
``resume=true`` (keep the complete rows of a stopped run with the same settings, score the rest). With
``tracking.enabled`` the run (params, counts, ``scores.csv``, ``errors.csv``) is logged to the tracking store.
"""

from __future__ import annotations

import base64
import csv
import io
import logging
import os
import re
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __name__ == "__main__" and not __package__:  # `python pipelines/predict.py`: import this checkout's package
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from pipelines import checks, cli, config, resume, tracking  # noqa: E402
from pipelines.folders import check_output, list_input, output_stems, prepare_output, relative_name  # noqa: E402
from pipelines.names import csv_cell, printable  # noqa: E402

log = logging.getLogger(__name__)

__all__ = [
    "PredictSettings",
    "PredictResult",
    "predict_settings",
    "model_location",
    "load_model",
    "run_prediction",
    "run",
    "main",
]

SCORE_COLUMNS = ("path", "score", "raw_score", "is_anomaly", "threshold", "mask_threshold", "map", "mask", "overlay")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


@dataclass(frozen=True)
class PredictSettings:
    """What ``predict`` does (``conf/predict.yaml``)."""

    model_uri: str
    input: str
    output: Path
    overwrite: bool = False
    resume: bool = False
    batch_size: int = 8
    quantile: float | None = None
    threshold: float | None = None
    device: str = "auto"
    max_map_side: int = 4096
    write_maps: bool = True
    write_masks: bool = True
    write_overlays: bool = True
    tracking: bool = True
    experiment_name: str = "pradot-predict"

    @property
    def params(self) -> dict[str, Any]:
        """The pyfunc's request parameters."""
        op = (
            {"quantile": self.quantile}
            if self.quantile is not None
            else ({"threshold": self.threshold} if self.threshold is not None else {})
        )
        return {"return_map": True, "map_format": "npy", "return_mask": True, **op}


def _required(cfg, key: str, what: str) -> str:
    value = cfg.get(key)
    if value in (None, ""):
        raise checks.ConfigError(f"{key} is required: {what} (override {key}=<value>; MLproject: -P {key}=<value>)")
    return str(value)


def model_location(uri: str, workdir: str | None) -> str:
    """An MLflow model URI as given (``models:/...``, ``runs:/...``, ``file:...``), or a local model folder
    made absolute against ``workdir`` (the folder the user ran the command from)."""
    if _SCHEME.match(uri):
        return uri
    return os.path.abspath(os.path.join(workdir or os.getcwd(), os.path.expanduser(uri)))


def predict_settings(cfg) -> PredictSettings:
    """``conf/predict.yaml`` (composed) -> :class:`PredictSettings`, every value checked before any work.

    Raises:
        ConfigError: a missing or bad value (the message names the key).
    """
    from pradot.device import resolve_device

    model_uri = model_location(
        _required(
            cfg,
            "model_uri",
            "the model to use (models:/<name>@champion, "
            "models:/<name>/<version>, runs:/<run id>/model or a model folder)",
        ),
        cfg.get("workdir"),
    )
    if not _SCHEME.match(model_uri) and not Path(model_uri).is_dir():
        raise checks.ConfigError(
            f"model_uri {model_uri} is not a model folder (no such folder); give models:/<name>/<version>, "
            f"models:/<name>@<alias>, runs:/<run id>/model or the folder of a logged model"
        )
    inp = _required(cfg, "input", "a folder of images or a glob")
    out = Path(_required(cfg, "output", "a new or empty folder for the results"))
    quantile = cfg.get("quantile")
    threshold = cfg.get("threshold")
    if quantile is not None and threshold is not None:
        raise checks.ConfigError(f"give quantile or threshold, not both (quantile={quantile}, threshold={threshold})")
    if quantile is not None:
        quantile = checks.number("quantile", quantile, lo=0.5, hi=1, why="a quantile of the normals' scores")
    if threshold is not None:
        threshold = checks.number("threshold", threshold, why="a raw anomaly-score threshold")
    resolve_device(str(cfg.device))
    overwrite = checks.boolean("overwrite", cfg.get("overwrite", False))
    resume_run = checks.boolean("resume", cfg.get("resume", False))
    if overwrite and resume_run:
        raise checks.ConfigError(
            "give overwrite=true (score everything again) or resume=true (keep what is done), not both"
        )
    write, trk = cfg.get("write") or {}, cfg.get("tracking") or {}
    return PredictSettings(
        model_uri=model_uri,
        input=inp,
        output=out,
        overwrite=overwrite,
        resume=resume_run,
        batch_size=checks.number("batch_size", cfg.get("batch_size", 8), integer=True, lo=1, hi=256),
        quantile=quantile,
        threshold=threshold,
        device=str(cfg.device),
        max_map_side=checks.number("max_map_side", cfg.get("max_map_side", 4096), integer=True, lo=16, hi=16384),
        write_maps=checks.boolean("write.maps", write.get("maps", True)),
        write_masks=checks.boolean("write.masks", write.get("masks", True)),
        write_overlays=checks.boolean("write.overlays", write.get("overlays", True)),
        tracking=checks.boolean("tracking.enabled", trk.get("enabled", True)),
        experiment_name=checks.experiment_name(
            "tracking.experiment_name", str(trk.get("experiment_name", "pradot-predict"))
        ),
    )


# ------------------------------------------------------------------------------------- scoring
def load_model(settings: PredictSettings):
    """The pyfunc the model server runs, with predict's budgets (maps at the input's size up to
    ``max_map_side``; a batch's maps and masks within the response budget); its calibration; and the
    operating point checked against it (before any image is read).

    Raises:
        UsageError: the operating point does not fit the model's calibration.
    """
    from mlflow.exceptions import MlflowException

    from pipelines.trusted import UntrustedModel, load_pyfunc
    from pradot.serving import InvalidRequest, batch_budgets

    side, bs = settings.max_map_side, settings.batch_size
    try:
        model = load_pyfunc(settings.model_uri, model_config={"device": settings.device})
    except (MlflowException, OSError, UntrustedModel) as e:
        raise cli.UsageError(
            f"cannot load the model {settings.model_uri}: {getattr(e, 'message', e)} (give "
            f"models:/<name>/<version>, models:/<name>@<alias>, runs:/<run id>/model or a model "
            f"folder){tracking.store_hint(settings.model_uri)}"
        ) from None
    served = model.unwrap_python_model()
    # predict's budgets, as constructor arguments of a new Scorer (a logged model_config only lets MLflow
    # override the keys it was logged with)
    served.scorer = scorer = served.scorer.with_budgets(**batch_budgets(served.scorer.budgets, bs, side))
    try:
        scorer.operating_point(settings.quantile, settings.threshold)
    except InvalidRequest as exc:
        raise cli.UsageError(f"{exc} (model {settings.model_uri})") from None
    return model, scorer


def file_wording(reason: str) -> str:
    """The server's reason for a bad request row, told about a file: its advice on what to send (e.g. a
    base64-encoded PNG or JPEG) becomes what to do with the file."""
    return re.sub(r"; send [^;]*$", "; re-save the file as PNG or JPEG, or remove it from the input", reason)


def _predict(model, payloads: list[str], params: dict) -> list[dict | str]:
    """One record per payload, or the reason it failed: a batch with bad rows is scored again row by row."""
    import pandas as pd
    from mlflow.exceptions import MlflowException

    try:
        return model.predict(pd.DataFrame({"image": payloads}), params=params).to_dict("records")
    except MlflowException as exc:
        if exc.get_http_status_code() not in (400, 413):
            raise
        if len(payloads) == 1:
            return [file_wording(re.sub(r"^1 of 1 images are invalid: row 0: ", "", exc.message))]
    return [r for p in payloads for r in _predict(model, [p], params)]


def _batches(jobs: list[tuple[Path, str]], size: int) -> Iterator[list[tuple[Path, str, str | None, str | None]]]:
    """``(file, stem, base64 bytes or None, read error or None)``, ``size`` at a time."""
    for i in range(0, len(jobs), size):
        out = []
        for f, stem in jobs[i : i + size]:
            try:
                out.append((f, stem, base64.b64encode(f.read_bytes()).decode("ascii"), None))
            except OSError as exc:
                out.append((f, stem, None, f"cannot read the file ({type(exc).__name__}: {exc})"))
        yield out


def _write(rec: dict, stem: str, payload: str, settings: PredictSettings, calibration) -> dict[str, str]:
    """The map, mask and overlay files of one record; their paths relative to the output folder."""
    import numpy as np
    import tifffile
    from PIL import Image

    from pradot.serving import decode_image
    from pradot.serving.scorer import overlay_label
    from pradot.viz import annotate_overlay, heatmap_rgb

    out: dict[str, str] = {}
    amap = np.load(io.BytesIO(base64.b64decode(rec["anomaly_map"])))
    files = {
        "map": (settings.write_maps, f"maps/{stem}.tiff"),
        "mask": (settings.write_masks, f"masks/{stem}.png"),
        "overlay": (settings.write_overlays, f"overlays/{stem}.png"),
    }
    for kind, (wanted, rel) in files.items():
        if not wanted:
            continue
        path = settings.output / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind == "map":
            tifffile.imwrite(path, amap.astype(np.float32))
        elif kind == "mask":
            path.write_bytes(base64.b64decode(rec["mask"]))
        else:
            rgb = Image.fromarray(decode_image(payload)).resize(amap.shape[::-1], Image.BILINEAR)
            vmin, vmax = calibration.raw_range(rec["threshold"])
            overlay = heatmap_rgb(amap, vmin, vmax, image=np.asarray(rgb))
            label = overlay_label(rec["score"], rec["is_anomaly"])
            Image.fromarray(annotate_overlay(overlay, vmin, vmax, rec["threshold"], label)).save(path)
        out[kind] = rel
    return out


@dataclass
class PredictResult:
    """What a predict run produced."""

    output: Path
    model_uri: str
    n_images: int
    n_scored: int
    n_errors: int
    n_anomalous: int
    seconds: float
    run_id: str | None = None
    exit_code: int = cli.EXIT_OK
    notes: list[str] = field(default_factory=list)

    @property
    def metrics(self) -> dict[str, float]:
        return {
            "n_images": self.n_images,
            "n_scored": self.n_scored,
            "n_errors": self.n_errors,
            "n_anomalous": self.n_anomalous,
            "seconds": self.seconds,
            "images_per_second": self.n_scored / self.seconds if self.seconds > 0 else 0.0,
        }

    def summary(self) -> str:
        run = f"\nrun       : {self.run_id}" if self.run_id else ""
        errors = f" (see {self.output / 'errors.csv'})" if self.n_errors else ""
        return "\n".join(
            [
                "\n== PRADOT predict finished ==",
                f"model     : {self.model_uri}",
                f"images    : {self.n_scored} of {self.n_images} scored, {self.n_anomalous} anomalous, "
                f"{self.n_errors} errors{errors}",
                f"results   : {self.output / 'scores.csv'} (maps/, masks/, overlays/ beside it)",
                f"speed     : {self.metrics['images_per_second']:.2f} images/s ({self.seconds:.1f} s)" + run,
                *[f"note      : {n}" for n in self.notes],
            ]
        )


def _expected(jobs, root: Path, settings: PredictSettings) -> dict[str, dict[str, tuple[str, Path | None]]]:
    """For each job, by its ``path`` cell: the cell and file of each output it writes (resume's check)."""
    wanted = {"map": (settings.write_maps, "maps", ".tiff"), "mask": (settings.write_masks, "masks", ".png")}
    wanted["overlay"] = (settings.write_overlays, "overlays", ".png")
    out = {}
    for f, stem in jobs:
        files = {}
        for kind, (on, folder, ext) in wanted.items():
            rel = f"{folder}/{stem}{ext}"
            files[kind] = (csv_cell(rel), settings.output / rel) if on else ("", None)
        out[csv_cell(relative_name(f, root).as_posix())] = files
    return out


def _score_all(
    settings: PredictSettings, model, calibration, jobs, skipped, root: Path, resuming: bool
) -> PredictResult:
    """Score ``jobs`` batch by batch, appending to scores.csv / errors.csv as they come; ``resuming``: keep
    the complete rows of the earlier run (:func:`pipelines.resume.completed_rows`) and score the rest. Every
    name goes to the CSVs as :func:`pipelines.names.csv_cell` (escaped bytes, no formula)."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    kept = resume.completed_rows(settings.output, SCORE_COLUMNS, _expected(jobs, root, settings)) if resuming else {}
    resume.rewrite_scores(settings.output, SCORE_COLUMNS, kept.values())
    todo = [(f, stem) for f, stem in jobs if csv_cell(relative_name(f, root).as_posix()) not in kept]
    if resuming:
        log.info("resume: %d images kept from the earlier run, %d to score", len(kept), len(todo))
    n_scored, n_anomalous = len(kept), sum(str(r[3]) == "True" for r in kept.values())
    with (
        open(settings.output / "scores.csv", "a", newline="", encoding="utf-8") as fs,
        open(settings.output / "errors.csv", "w", newline="", encoding="utf-8") as fe,
    ):
        scores, errors = csv.writer(fs), csv.writer(fe)
        errors.writerow(("path", "error"))
        errors.writerows((csv_cell(p), csv_cell(r)) for p, r in skipped)
        n = len(jobs) + len(skipped)
        bar = tqdm(total=n, desc="predict", unit="image", disable=None)
        bar.update(n - len(todo))
        for batch in _batches(todo, settings.batch_size):
            readable = [b for b in batch if b[2] is not None]
            results = iter(_predict(model, [b[2] for b in readable], settings.params) if readable else [])
            for f, stem, payload, read_error in batch:
                rel = csv_cell(relative_name(f, root).as_posix())
                rec = read_error or next(results)
                if isinstance(rec, str):
                    errors.writerow((rel, csv_cell(rec)))
                    continue
                try:
                    files = _write(rec, stem, payload, settings, calibration)
                except OSError as exc:  # e.g. a name the output file system refuses: this image only
                    errors.writerow((rel, csv_cell(f"cannot write its outputs ({type(exc).__name__}: {exc})")))
                    continue
                scores.writerow(
                    (
                        rel,
                        rec["score"],
                        rec["raw_score"],
                        bool(rec["is_anomaly"]),
                        rec["threshold"],
                        rec["mask_threshold"],
                        *(csv_cell(files.get(k, "")) for k in ("map", "mask", "overlay")),
                    )
                )
                n_scored += 1
                n_anomalous += bool(rec["is_anomaly"])
            fs.flush()
            fe.flush()
            bar.update(len(batch))
        bar.close()
    return PredictResult(
        settings.output, settings.model_uri, n, n_scored, n - n_scored, n_anomalous, time.perf_counter() - t0
    )


def _manifest(settings: PredictSettings, model) -> dict[str, Any]:
    """What ``predict.json`` records: what decides the scores and files (a resumed run must match it)."""
    return {
        "model_uri": settings.model_uri,
        "model_uuid": getattr(model, "model_uuid", None),
        "params": settings.params,
        "max_map_side": settings.max_map_side,
        "write": [settings.write_maps, settings.write_masks, settings.write_overlays],
    }


def run_prediction(settings: PredictSettings) -> PredictResult:
    """Check the input and output, load the model, score every image (see the module docstring); a tracked run
    when ``settings.tracking``.

    Raises:
        FileNotFoundError: no input image. UsageError: a bad output folder or operating point, or a
        ``resume`` of a folder written with other settings.
    """
    listing = list_input(settings.input)
    root = listing.root
    check_output(settings.output, settings.overwrite or settings.resume, root)
    jobs, clashes = output_stems(listing.files, root)
    skipped = sorted([*listing.skipped, *clashes])
    for note in listing.notes:
        log.info("input: %s", note)
    tracking.require_store(settings.model_uri)
    tracking.setup_tracking()
    model, scorer = load_model(settings)
    manifest = _manifest(settings, model)
    resuming = settings.resume and resume.check_manifest(settings.output, manifest)
    if not resuming:  # only now: a model that does not load leaves the output folder as it was
        prepare_output(settings.output)
    resume.write_manifest(settings.output, manifest)
    log.info("scoring %d images under %s with %s", len(jobs), printable(root), printable(settings.model_uri))
    if not settings.tracking:
        return _score_all(settings, model, scorer.calibration, jobs, skipped, root, resuming)
    import mlflow

    name = printable(settings.output.name)
    with tracking.entry_run(f"predict-{name}", settings.experiment_name, entry_point="predict") as run:
        tracking.log_resolved_params(
            {
                "model_uri": printable(settings.model_uri),
                "input": printable(settings.input),
                "output": printable(settings.output),
                "resume": settings.resume,
                "batch_size": settings.batch_size,
                "quantile": settings.quantile if settings.quantile is not None else "",
                "threshold": settings.threshold if settings.threshold is not None else "",
                "max_map_side": settings.max_map_side,
            }
        )
        result = _score_all(settings, model, scorer.calibration, jobs, skipped, root, resuming)
        mlflow.log_metrics(result.metrics)
        mlflow.log_artifact(str(settings.output / "scores.csv"), "predict")
        mlflow.log_artifact(str(settings.output / "errors.csv"), "predict")
        result.run_id = run.run_id
    return result


def run(argv: Sequence[str]) -> PredictResult:
    """Compose ``conf/predict.yaml`` with the overrides in ``argv`` and predict."""
    return run_prediction(predict_settings(config.compose("predict", config.parse_overrides(argv))))


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run_entry(
        run, argv, failure_note="the predict run is marked FAILED; the rows written so far are in the output folder"
    )


if __name__ == "__main__":
    sys.exit(main())
