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

``ray=true`` (the cluster at ``$RAY_ADDRESS``, else a private local Ray) or ``ray=<address>`` scores the same
batches on the actors of a Ray cluster (:mod:`pipelines.predict_ray`); this process still lists, checks and
writes everything, so the files are the same and either path resumes the other's folder.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __name__ == "__main__" and not __package__:  # `python pipelines/predict.py`: import this checkout's package
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from pipelines import checks, cli, config, resume, tracking  # noqa: E402
from pipelines.folders import check_output, list_input, output_stems, prepare_output, relative_name  # noqa: E402
from pipelines.names import csv_cell, printable  # noqa: E402
from pipelines.predict_outputs import Scored, open_model, output_rel, score_batch, write_outputs  # noqa: E402

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
    ray: bool = False
    ray_address: str | None = None
    ray_actors: int | None = None

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
        **_ray_settings(cfg),
    )


def _ray_settings(cfg) -> dict[str, Any]:
    """``ray`` (false, true, or a cluster address) and ``ray_actors`` (null: one per GPU, else one per node)."""
    from pipelines.predict_ray import ray_target

    use, address = ray_target(cfg.get("ray", False))
    actors = cfg.get("ray_actors")
    if actors is not None:
        if not use:
            raise checks.ConfigError(f"ray_actors={actors} sizes the Ray path: give ray=true or ray=<address> too")
        actors = checks.number("ray_actors", actors, integer=True, lo=1, hi=4096)
    return {"ray": use, "ray_address": address, "ray_actors": actors}


# ------------------------------------------------------------------------------------- scoring
def load_model(settings: PredictSettings):
    """:func:`pipelines.predict_outputs.open_model` on ``settings.device`` (on the CPU with ``ray``: the driver
    only checks the model, the actors score), and the operating point checked against its calibration (before
    any image is read).

    Raises:
        UsageError: the model cannot be loaded, or the operating point does not fit its calibration.
    """
    from mlflow.exceptions import MlflowException

    from pipelines.trusted import UntrustedModel
    from pradot.serving import InvalidRequest

    try:
        model, scorer = open_model(settings.model_uri, settings, "cpu" if settings.ray else settings.device)
    except (MlflowException, OSError, UntrustedModel) as e:
        raise cli.UsageError(
            f"cannot load the model {settings.model_uri}: {getattr(e, 'message', e)} (give "
            f"models:/<name>/<version>, models:/<name>@<alias>, runs:/<run id>/model or a model "
            f"folder){tracking.store_hint(settings.model_uri)}"
        ) from None
    try:
        scorer.operating_point(settings.quantile, settings.threshold)
    except InvalidRequest as exc:
        raise cli.UsageError(f"{exc} (model {settings.model_uri})") from None
    return model, scorer


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
    wanted = {"map": settings.write_maps, "mask": settings.write_masks, "overlay": settings.write_overlays}
    out = {}
    for f, stem in jobs:
        files = {}
        for kind, on in wanted.items():
            rel = output_rel(kind, stem)
            files[kind] = (csv_cell(rel), settings.output / rel) if on else ("", None)
        out[csv_cell(relative_name(f, root).as_posix())] = files
    return out


#: scores the images to do: ``source(todo)`` yields, batch by batch, ``(index in todo, Scored or the reason the
#: image was not scored)`` for every image, in order (this process: :func:`_local_source`; a Ray cluster:
#: :func:`pipelines.predict_ray.session`)
Source = Callable[[list[tuple[Path, str]]], Iterator[list[tuple[int, Scored | str]]]]


def _local_source(model, calibration, settings: PredictSettings) -> Source:
    """Score in this process, ``batch_size`` images per pyfunc call."""

    def source(todo: list[tuple[Path, str]]) -> Iterator[list[tuple[int, Scored | str]]]:
        for i in range(0, len(todo), settings.batch_size):
            files = [f for f, _ in todo[i : i + settings.batch_size]]
            yield list(enumerate(score_batch(model, calibration, files, settings), start=i))

    return source


def _score_all(settings: PredictSettings, source: Source, jobs, skipped, root: Path, resuming: bool) -> PredictResult:
    """Score ``jobs`` with ``source``, appending to scores.csv / errors.csv batch by batch as the results come
    (each image's files written atomically before its row); ``resuming``: keep the complete rows of the
    earlier run (:func:`pipelines.resume.completed_rows`) and score the rest. Every name goes to the CSVs as
    :func:`pipelines.names.csv_cell` (escaped bytes, no formula)."""
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
        for batch in source(todo) if todo else ():
            for i, outcome in batch:
                f, stem = todo[i]
                rel = csv_cell(relative_name(f, root).as_posix())
                if isinstance(outcome, str):
                    errors.writerow((rel, csv_cell(outcome)))
                    continue
                try:
                    written = write_outputs(settings.output, stem, outcome)
                except OSError as exc:  # e.g. a name the output file system refuses: this image only
                    errors.writerow((rel, csv_cell(f"cannot write its outputs ({type(exc).__name__}: {exc})")))
                    continue
                scores.writerow(outcome.row(rel, {k: csv_cell(v) for k, v in written.items()}))
                n_scored += 1
                n_anomalous += outcome.is_anomaly
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
        FileNotFoundError: no input image. UsageError: a bad output folder or operating point, a ``resume``
        of a folder written with other settings, or (``ray``) a cluster that cannot be joined or used
        (:mod:`pipelines.predict_ray`).
    """
    if settings.ray:
        from pipelines.predict_ray import probe

        probe(settings.ray_address)
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
    with _session(settings, model, scorer, jobs) as (source, notes):
        if not resuming:  # only now: a model that does not load, a cluster not joined leave the folder as it was
            prepare_output(settings.output)
        resume.write_manifest(settings.output, manifest)
        log.info("scoring %d images under %s with %s", len(jobs), printable(root), printable(settings.model_uri))
        if not settings.tracking:
            result = _score_all(settings, source, jobs, skipped, root, resuming)
        else:
            result = _tracked(settings, lambda: _score_all(settings, source, jobs, skipped, root, resuming))
        result.notes.extend(notes)
    return result


@contextlib.contextmanager
def _session(settings: PredictSettings, model, scorer, jobs) -> Iterator[tuple[Source, list[str]]]:
    """Where the images are scored: this process, or (``ray``) the actors of a Ray cluster, joined and checked
    here before any work (:func:`pipelines.predict_ray.session`). Yields the source and notes for the summary."""
    if not settings.ray:
        yield _local_source(model, scorer.calibration, settings), []
        return
    from pipelines.predict_ray import session

    with session(settings, model.folder, [f for f, _ in jobs[:1]]) as (source, notes):
        yield source, notes


def _tracked(settings: PredictSettings, score: Callable[[], PredictResult]) -> PredictResult:
    """``score()`` inside a tracked run: the params, the counts and the two CSV files logged."""
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
                "ray": (settings.ray_address or "true") if settings.ray else "false",
            }
        )
        result = score()
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
