"""MLflow entry point `main`: train one PRADOT bank, evaluate it, log everything, register the model.

    python pipelines/train.py [hydra overrides...]          # e.g. data=synthetic experiment=cpu_demo
    mlflow run . -P category=screw_bag                      # the same through the MLproject

Logs to MLflow: the resolved training config (params), per-epoch OT loss and prototype change, final
metrics, timings, the resolved config, figures (overlays, assignments, prototypes, restorations, UMAP,
curves), the test maps as official .tiff files, and a pyfunc model (bank + backbone weights +
calibrated threshold) registered as ``pradot-<dataset>-<category>``.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

if __name__ == "__main__" and not __package__:  # `python pipelines/train.py`: import this checkout's package
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from pipelines import checks, cli, config, registry, tracking  # noqa: E402
from pipelines.figures import log_training_figures  # noqa: E402
from pipelines.names import tag_value  # noqa: E402
from pipelines.tags import (
    BACKBONE,
    CALIBRATION_N_IMAGES,
    CALIBRATION_SOURCE,
    CATEGORY,
    DATASET,
    DEVICE,
    TEST_METRICS,
    TEST_METRICS_NOTE,
)

log = logging.getLogger(__name__)

__all__ = ["DemoFailure", "TrainRun", "run_training", "run", "main", "test_metrics_status"]

SHOWN_METRICS = ("image_auroc", "au_spro_0.05", "pixel_auroc", "au_pro_0.3", "au_pro_0.05", "sample_auroc")
#: characters of the notes kept in a tag (the whole notes are the artifact metrics/notes.txt)
NOTE_CHARS = 1000


class DemoFailure(RuntimeError):
    """Raised on purpose by ``debug.fail_at_epoch`` (to test that crashed runs are recorded as FAILED)."""


@dataclass
class TrainRun:
    """What a training run produced."""

    run_id: str
    experiment_id: str
    tracking_uri: str
    model_uri: str
    model_name: str | None  # registered model (None: tracking.register=false)
    version: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    exit_code: int = cli.EXIT_OK
    notes: list[str] = field(default_factory=list)  # why test metrics were skipped, blank masks, ...

    def summary(self) -> str:
        registered = f"  registered as {self.model_name} v{self.version}" if self.model_name else ""
        shown = {k: v for k, v in self.metrics.items() if k in SHOWN_METRICS}
        notes = [f"note           : {n}" for n in self.notes]
        return "\n".join(
            [
                "\n== PRADOT run finished ==",
                f"tracking store : {self.tracking_uri}",
                f"run            : {self.run_id} (experiment {self.experiment_id})",
                f"model          : {self.model_uri}{registered}",
                "metrics        : " + (", ".join(f"{k}={v:.4f}" for k, v in shown.items()) or "(none: see the notes)"),
                *notes,
                f"look at it     : {tracking.ui_hint(self.tracking_uri)}",
            ]
        )


def _epoch_logger(settings: config.TrainSettings):
    """The per-epoch callback: metrics to MLflow, a line to the log, and ``debug.fail_at_epoch``."""
    import mlflow

    def on_epoch(stats):
        metrics = {"epoch_seconds": stats.seconds}
        for s in stats.ot_loss:
            metrics[f"ot_loss_stage{s}"] = stats.ot_loss[s]
            metrics[f"prototype_change_stage{s}"] = stats.change[s]
        mlflow.log_metrics(metrics, step=stats.epoch)
        log.info("epoch %d: %s", stats.epoch, ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        if settings.fail_at_epoch is not None and stats.epoch >= settings.fail_at_epoch:
            raise DemoFailure(
                f"debug.fail_at_epoch={settings.fail_at_epoch}: failing on purpose after epoch {stats.epoch}"
            )

    return on_epoch


def _train(settings: config.TrainSettings, splits, device):
    from pradot.data import build_train_augmentation
    from pradot.engine import train_model
    from pradot.features import FeatureCache

    spec = settings.data
    if settings.tiling is not None:  # model.tiling.enabled: a TiledModel of PRADOT banks (pipelines.tiling)
        from pipelines.tiling import train_tiled

        return train_tiled(settings, splits, device, _epoch_logger(settings))
    aug_name = spec.augmentation if spec.augmentation not in (None, "none", "None") else None
    return train_model(
        settings.model,
        spec,
        splits.train,
        cache=FeatureCache(settings.cache_dir) if settings.cache_dir else None,
        device=device,
        weights_path=settings.weights_path,
        callback=_epoch_logger(settings),
        num_workers=settings.num_workers,
        augmentation=build_train_augmentation(aug_name, seed=spec.seed) if aug_name else None,
    )


def test_metrics_status(flat: dict[str, float], notes: Sequence[str]) -> str:
    """``"complete"``, ``"partial"`` (some metrics skipped: a note says ``... skipped: <why>``) or ``"skipped"``
    (no test metric is defined, e.g. a dataset without anomalies)."""
    if not flat:
        return "skipped"
    return "partial" if any(" skipped: " in n for n in notes) else "complete"


def _score(settings: config.TrainSettings, model, splits):
    """The test and validation splits' maps and scores: (test, validation)."""
    from pradot.engine import score_samples

    size, bs = settings.data.image_size, settings.evaluation.batch_size
    log.info("scoring %d test images", len(splits.test))
    return score_samples(model, splits.test, size, bs), score_samples(model, splits.validation, size, bs)


def _test_metrics(splits, test, pixel_threshold: float):
    """Log the test metrics that are defined (the others are skipped with a note: tag ``pradot.test_metrics``
    and ``metrics/notes.txt``); AD-style data with masks also get ``seg_f1`` at the calibrated pixel threshold
    (MVTec AD 2's SegF1). Returns (flat metrics, notes)."""
    import mlflow

    from pradot.engine import split_metrics
    from pradot.metrics.dataset import flat_metrics

    metrics, notes = split_metrics(splits.dataset, test, threshold=pixel_threshold)
    flat = flat_metrics(metrics)
    status = test_metrics_status(flat, notes)
    mlflow.log_metrics(flat)
    mlflow.log_dict(metrics, "metrics/metrics.json")
    mlflow.set_tag(TEST_METRICS, status)
    if notes:
        mlflow.log_text("\n".join(notes) + "\n", "metrics/notes.txt")
        mlflow.set_tag(TEST_METRICS_NOTE, tag_value("; ".join(notes), NOTE_CHARS))
    log.info("metrics (%s): %s", status, ", ".join(f"{k}={v:.4f}" for k, v in sorted(flat.items())) or "none")
    return flat, notes


def _calibrate(settings: config.TrainSettings, model, splits, test, val):
    """The threshold on the validation normals (else the training images, said in a tag)."""
    import mlflow

    from pradot.engine import calibrate, threshold_metrics

    result = calibrate(
        model,
        splits,
        settings.calibration_quantile,
        settings.data.image_size,
        settings.evaluation.batch_size,
        validation=val,
        pixel_quantile=settings.calibration_pixel_quantile,
    )
    cal = result.calibration
    mlflow.set_tags({CALIBRATION_SOURCE: result.source, CALIBRATION_N_IMAGES: str(cal.n_images)})
    mlflow.log_dict(cal.to_dict(), "model_files/calibration.json")
    mlflow.log_metrics(
        {
            "image_threshold": cal.threshold,
            "pixel_threshold": cal.mask_threshold,
            **threshold_metrics([s.label for s in splits.test], test.scores, cal.threshold),
            **threshold_metrics([s.label for s in val.samples], val.scores, cal.threshold, "val"),
        }
    )
    return result


def _log_artifacts_and_model(settings: config.TrainSettings, result, splits, test, calibrated, flat, notes, run_id):
    """Maps, figures and the (unregistered) model. Returns (model_uri, the version tags to register with, or
    None when ``tracking.register`` is off)."""
    import mlflow

    from pradot.engine import write_tiff_maps

    spec = settings.data
    model = result.model
    calibration = calibrated.calibration
    with tempfile.TemporaryDirectory() as tmp:
        if settings.evaluation.write_tiffs and test.samples:
            write_tiff_maps(test, Path(tmp) / "anomaly_maps", spec.category)
            mlflow.log_artifacts(str(Path(tmp) / "anomaly_maps"), "anomaly_maps")
        ev = settings.evaluation
        log_training_figures(
            model,
            splits,
            test,
            result.features,
            result.history,
            image_size=spec.image_size,
            n_overlays=ev.n_overlays,
            paper_figures=ev.figures and settings.tiling is None,  # Fig. 4-6 draw one bank on one image
            umap_max_points=ev.umap_max_points,
            seed=spec.seed,
        )
        model_path = model.save(Path(tmp) / "pradot_model.pt", include_backbone=settings.tracking.include_backbone)
        m = settings.model
        tags = registry.BankTags(
            dataset=spec.kind,
            category=spec.category,
            run_id=run_id,
            threshold=calibration.threshold,
            backbone=m.backbone,
            stages=m.stages,
            image_size=m.image_size,
            alpha=m.alpha,
            n=m.n,
            eta=m.eta,
            epsilon=m.epsilon,
            batch_size=m.batch_size,
            epochs=m.epochs,
            feature_metric=m.feature_metric,
            metrics=flat,
            calibration_source=calibrated.source,
            calibration_n_images=calibration.n_images,
            test_metrics=test_metrics_status(flat, notes),
            test_metrics_note="; ".join(notes)[:NOTE_CHARS] or None,
        )
        model_uri = registry.log_model(model_path, calibration, tags, tracking.example_image(splits))
    return model_uri, (tags if settings.tracking.register else None)


def _batch_fits(m, kind: str, n_train: int) -> None:
    """A batch needs that many training images (:func:`checks.batch_fits_data`); on the embedded synthetic
    data the error also gives the recipe sized for it."""
    try:
        checks.batch_fits_data(m.batch_size, m.n, None, n_train)
    except checks.ConfigError as e:
        if kind != "synthetic":
            raise
        raise checks.ConfigError(f"{e}. For the embedded data: {cli.SYNTHETIC_COMMAND}") from None


def _tracked_run(settings: config.TrainSettings, params: dict[str, str], resolved_yaml: str, nested: bool, device):
    """The MLflow run: train, evaluate, log (the model unregistered). Returns (run, model URI, version tags or
    None, metrics, timings, notes)."""
    import mlflow
    import torch

    from pradot.engine import open_splits

    t_start = time.perf_counter()
    spec, m = settings.data, settings.model
    with tracking.entry_run(
        settings.run_name, settings.tracking.experiment_name, entry_point="main", nested=nested
    ) as run:
        torch.manual_seed(spec.seed)
        mlflow.set_tags(
            {
                DATASET: spec.kind,
                CATEGORY: spec.category,
                BACKBONE: m.backbone,
                DEVICE: str(device),
            }
        )
        tracking.log_resolved_params({**params, "model.batch_size": str(m.batch_size)})
        mlflow.log_text(resolved_yaml, "config/resolved_config.yaml")
        log.info("dataset %s / %s (root %s)", spec.kind, spec.category, spec.root)
        splits = open_splits(spec)
        log.info("train %d, validation %d, test %d images", len(splits.train), len(splits.validation), len(splits.test))
        _batch_fits(m, spec.kind, len(splits.train))  # before any feature is extracted
        mlflow.log_params(
            {
                "data.n_train": len(splits.train),
                "data.n_validation": len(splits.validation),
                "data.n_test": len(splits.test),
                "data.resolved_root": str(splits.dataset.root),
            }
        )
        result = _train(settings, splits, device)
        test, val = _score(settings, result.model, splits)
        calibrated = _calibrate(settings, result.model, splits, test, val)
        flat, notes = _test_metrics(splits, test, calibrated.calibration.mask_threshold)
        timings = {
            **result.timings,
            "scoring_seconds": test.seconds,
            "scoring_seconds_per_image": test.seconds / max(1, len(splits.test)),
            "total_seconds": time.perf_counter() - t_start,
        }
        mlflow.log_metrics({f"time_{k}": v for k, v in timings.items()})
        model_uri, tags = _log_artifacts_and_model(settings, result, splits, test, calibrated, flat, notes, run.run_id)
    return run, model_uri, tags, flat, timings, notes


def run_training(
    settings: config.TrainSettings, params: dict[str, str], resolved_yaml: str, nested: bool = False
) -> TrainRun:
    """Train, evaluate and log in one MLflow run (a child of the active run when ``nested``), then, once the run
    has FINISHED, register the model (one call with every tag: no version of an unfinished run exists). The
    registered model's name is claimed before the run (:func:`pipelines.registry.registration`)."""
    from pradot.device import resolve_device

    device = resolve_device(settings.device)
    name = settings.tracking.model_name if settings.tracking.register else None
    with registry.registration(name):
        run, model_uri, tags, flat, timings, notes = _tracked_run(settings, params, resolved_yaml, nested, device)
        version = registry.register(model_uri, name, tags) if name else None
    if version:
        model_uri = f"models:/{name}/{version}"
    return TrainRun(
        run.run_id,
        run.experiment_id,
        run.tracking_uri,
        model_uri,
        name if version else None,
        version,
        flat,
        timings,
        notes=notes,
    )


def run(argv: Sequence[str]) -> TrainRun:
    """Compose ``conf/train.yaml`` with the overrides in ``argv`` and train."""
    cfg = config.compose("train", config.parse_overrides(argv))
    # training params only: an experiment recipe may also set promote's options (experiment=best)
    return run_training(
        config.train_settings(cfg), config.flatten(config.training_view(cfg)), config.resolved_yaml(cfg)
    )


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run_entry(
        run,
        argv,
        failure_note="the MLflow run is marked FAILED and nothing was registered; its "
        "log is under the run's logs/ artifacts",
    )


if __name__ == "__main__":
    sys.exit(main())
