"""MLflow entry point `baseline`: a PatchCore-style memory bank (``pradot.memory_bank``) on the same backbone
features as PRADOT, evaluated like a PRADOT bank and registered as ``<model name>-baseline``; with
``memory_bank=padim`` the PaDiM-style model (``pradot.padim``) instead, registered as ``<model name>-padim``
(version tag ``kind=memory_bank``, ``config.baseline=padim``; promote takes it with ``members=...``).

    python pipelines/baseline.py [hydra overrides...]          # e.g. data=synthetic experiment=ci
    mlflow run . -e baseline -P dataset=synthetic -P overrides="experiment=ci"

Settings: the training config (data, backbone, cache, evaluation, calibration, tracking) and the
``memory_bank`` group (``conf/memory_bank/patchcore.yaml``: stages, 3x3 aggregation, concatenated stages,
coreset ratio, smoothing). The training features come from the same feature cache as PRADOT's (raw backbone
features; the aggregation is applied by the model). The run logs the test metrics, figures and ``.tiff`` maps
as ``main`` does, calibrates the threshold on the validation normals and registers the servable model
(``pradot-memory-bank-v1``, same pyfunc and contract). ``promote`` shows the newest registered baseline as a
row of its comparison table and, with ``fusion=search``, offers it as an ensemble candidate.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

if __name__ == "__main__" and not __package__:  # `python pipelines/baseline.py`: import this checkout's package
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from pipelines import cli, config, registry, tracking  # noqa: E402
from pipelines.tags import BACKBONE, BASELINE_KIND, CALIBRATION_SOURCE, CATEGORY, DATASET, KIND

log = logging.getLogger(__name__)

__all__ = ["BaselineRun", "baseline_name", "memory_bank_config", "fit_baseline", "run_baseline", "run", "main"]


def baseline_name(model: str, kind: str = "memory_bank") -> str:
    """The registered baseline of a model name: ``<model name>-baseline`` (the memory bank, what promote takes
    by default), ``<model name>-padim`` (the PaDiM-style model)."""
    return f"{model}-padim" if kind == "padim" else f"{model}-baseline"


def baseline_kind(mb_config) -> str:
    """``"padim"`` for a :class:`pradot.padim.PaDiMConfig`, else ``"memory_bank"``."""
    from pradot.padim import PaDiMConfig

    return "padim" if isinstance(mb_config, PaDiMConfig) else "memory_bank"


def _padim_config(cfg, mb, stages):
    from pradot.padim import PaDiMConfig

    return PaDiMConfig(
        backbone=str(cfg.backbone.name),
        stages=stages,
        image_size=int(cfg.data.image_size),
        n_channels=(int(mb["n_channels"]) if mb.get("n_channels") is not None else None),
        covariance=str(mb.get("covariance", "eps")),
        eps=float(mb.get("eps", 0.01)),
        smoothing_sigma=float(mb.get("smoothing_sigma", 4.0)),
        seed=int(cfg.seed),
    )


def memory_bank_config(cfg):
    """The baseline's settings (the composed ``memory_bank`` group) on the training config's backbone and image
    size (as ``pipelines.sweep.plan.sweep_plan`` builds the sweep's): a ``MemoryBankConfig``, or with
    ``memory_bank.kind=padim`` (``memory_bank=padim``) a ``PaDiMConfig``.

    Raises:
        pipelines.config.ConfigError: a bad value (the message names the key).
    """
    from pradot.memory_bank import MemoryBankConfig

    mb = cfg.get("memory_bank") or {}
    stages = config.parse_stages(
        mb.get("stages") if mb.get("stages") is not None else cfg.backbone.stages, "memory_bank.stages"
    )
    kind = str(mb.get("kind", "memory_bank"))
    if kind not in ("memory_bank", "padim"):
        raise config.ConfigError(
            f"memory_bank.kind must be memory_bank or padim (override memory_bank=padim), got {kind!r}"
        )
    try:
        if kind == "padim":
            return _padim_config(cfg, mb, stages)
        return MemoryBankConfig(
            backbone=str(cfg.backbone.name),
            stages=stages,
            image_size=int(cfg.data.image_size),
            aggregation=int(mb.get("aggregation", 3)),
            concat_stages=bool(mb.get("concat_stages", True)),
            coreset_ratio=float(mb.get("coreset_ratio", 1.0)),
            projection_dim=(int(mb["projection_dim"]) if mb.get("projection_dim") is not None else None),
            smoothing_sigma=float(mb.get("smoothing_sigma", 4.0)),
            seed=int(cfg.seed),
            aggregation_border=str(mb.get("aggregation_border", "zero")),
            align_corners=bool(mb.get("align_corners", False)),
        )
    except ValueError as e:
        raise config.ConfigError(f"memory_bank: {e}") from None


@dataclass
class BaselineRun:
    """What a baseline run produced."""

    run_id: str
    experiment_id: str
    tracking_uri: str
    model_name: str | None
    version: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    exit_code: int = cli.EXIT_OK

    def summary(self) -> str:
        shown = ("image_auroc", "au_spro_0.05", "pixel_auroc", "au_pro_0.3")
        registered = f"registered as {self.model_name} v{self.version}" if self.version else "not registered"
        return "\n".join(
            [
                "\n== memory-bank baseline finished ==",
                f"run     : {self.run_id} (experiment {self.experiment_id})",
                f"model   : {registered}",
                "metrics : " + ", ".join(f"{k}={v:.4f}" for k, v in self.metrics.items() if k in shown),
                f"look at it: {tracking.ui_hint(self.tracking_uri)}",
            ]
        )


def fit_baseline(settings: config.TrainSettings, mb_config, train_samples, device, progress: bool = True):
    """A memory bank (or PaDiM-style model) fitted on the training images' features (from the feature cache when
    it is on)."""
    from pradot.backbone import load_backbone
    from pradot.engine import train_features
    from pradot.features import FeatureCache
    from pradot.memory_bank import MemoryBankModel
    from pradot.padim import PaDiMModel

    backbone = load_backbone(mb_config.backbone, mb_config.stages, weights_path=settings.weights_path, device=device)
    cache = FeatureCache(settings.cache_dir) if settings.cache_dir else None
    feats = train_features(
        backbone, settings.data, train_samples, cache, device, settings.num_workers, settings.weights_path, progress
    )
    cls = PaDiMModel if baseline_kind(mb_config) == "padim" else MemoryBankModel
    return cls(mb_config, backbone=backbone, device=device).fit_features(feats, progress=progress).eval()


def _params(mb_config) -> dict[str, str]:
    return {
        "memory_bank.kind": baseline_kind(mb_config),
        **{
            f"memory_bank.{k}": str(list(v) if isinstance(v, tuple) else v)
            for k, v in dataclasses.asdict(mb_config).items()
        },
    }


def _evaluate_and_log(settings: config.TrainSettings, model, splits, tmp: Path):
    """Test metrics, figures and tiff maps; the calibration on the validation normals."""
    import mlflow

    from pipelines.figures import log_evaluation_figures
    from pradot.engine import calibrate, score_samples, split_metrics, threshold_metrics, write_tiff_maps
    from pradot.metrics.dataset import flat_metrics

    size, bs = settings.data.image_size, settings.evaluation.batch_size
    test = score_samples(model, splits.test, size, bs)
    val = score_samples(model, splits.validation, size, bs)
    metrics, notes = split_metrics(splits.dataset, test)
    flat = flat_metrics(metrics)
    mlflow.log_metrics({**flat, "time_scoring_seconds": test.seconds})
    mlflow.log_dict(metrics, "metrics/metrics.json")
    if notes:
        mlflow.log_text("\n".join(notes), "metrics/notes.txt")
    log_evaluation_figures(splits, test, size, settings.evaluation.n_overlays)
    if settings.evaluation.write_tiffs:
        write_tiff_maps(test, tmp / "anomaly_maps", settings.data.category)
        mlflow.log_artifacts(str(tmp / "anomaly_maps"), "anomaly_maps")
    result = calibrate(
        model,
        splits,
        settings.calibration_quantile,
        size,
        bs,
        validation=val,
        pixel_quantile=settings.calibration_pixel_quantile,
    )
    mlflow.set_tag(CALIBRATION_SOURCE, result.source)
    mlflow.log_dict(result.calibration.to_dict(), "model_files/calibration.json")
    mlflow.log_metrics(threshold_metrics([s.label for s in splits.test], test.scores, result.calibration.threshold))
    return flat, result.calibration


def _tracked_run(settings: config.TrainSettings, mb_config, params: dict[str, str], nested: bool, device):
    """The baseline's MLflow run: fit, evaluate, log the model (unregistered). Returns (run, model URI, version
    tags or None, metrics)."""
    import mlflow

    from pradot.engine import open_splits

    t0 = time.perf_counter()
    spec = settings.data
    with tracking.entry_run(
        f"baseline-{spec.kind}-{spec.category}",
        settings.tracking.experiment_name,
        entry_point="baseline",
        nested=nested,
        tags={
            DATASET: spec.kind,
            CATEGORY: spec.category,
            BACKBONE: mb_config.backbone,
            KIND: "memory_bank",
            BASELINE_KIND: baseline_kind(mb_config),
        },
    ) as run:
        tracking.log_resolved_params({**params, **_params(mb_config)})
        splits = open_splits(spec)
        mlflow.log_params(
            {
                "data.n_train": len(splits.train),
                "data.n_validation": len(splits.validation),
                "data.n_test": len(splits.test),
                "data.resolved_root": str(splits.dataset.root),
            }
        )
        model = fit_baseline(settings, mb_config, splits.train, device)
        mlflow.log_metrics(
            {
                "time_fit_seconds": time.perf_counter() - t0,
                **{f"bank_size_stage{s}": len(m) for s, m in getattr(model, "memory", {}).items()},
            }
        )
        with tempfile.TemporaryDirectory(prefix="pradot-baseline-") as tmp:
            flat, calibration = _evaluate_and_log(settings, model, splits, Path(tmp))
            kind = baseline_kind(mb_config)
            path = model.save(Path(tmp) / f"{kind}.pt", include_backbone=settings.tracking.include_backbone)
            padim = (
                dict(covariance=mb_config.covariance, eps=mb_config.eps, n_channels=mb_config.n_channels)
                if kind == "padim"
                else {}
            )
            tags = (registry.PaDiMTags if kind == "padim" else registry.MemoryBankTags)(
                **padim,
                dataset=spec.kind,
                category=spec.category,
                run_id=run.run_id,
                threshold=calibration.threshold,
                backbone=mb_config.backbone,
                stages=mb_config.stages,
                image_size=mb_config.image_size,
                aggregation=getattr(mb_config, "aggregation", None),
                smoothing_sigma=mb_config.smoothing_sigma,
                coreset_ratio=getattr(mb_config, "coreset_ratio", None),
                config={"baseline": "padim", **dataclasses.asdict(mb_config)} if kind == "padim" else None,
                metrics=flat,
            )
            model_uri = registry.log_model(path, calibration, tags, tracking.example_image(splits))
        mlflow.log_metric("time_total_seconds", time.perf_counter() - t0)
    return run, model_uri, (tags if settings.tracking.register else None), flat


def run_baseline(
    settings: config.TrainSettings, mb_config, params: dict[str, str], nested: bool = False
) -> BaselineRun:
    """Fit, evaluate and log the memory bank in one MLflow run (a child of the active run when ``nested``),
    then, once the run has FINISHED, register it (one call with every tag)."""
    from pradot.device import resolve_device

    device = resolve_device(settings.device)
    name = baseline_name(settings.tracking.model_name, baseline_kind(mb_config)) if settings.tracking.register else None
    with registry.registration(name):
        run, model_uri, tags, flat = _tracked_run(settings, mb_config, params, nested, device)
        version = registry.register(model_uri, name, tags) if name else None
    return BaselineRun(run.run_id, run.experiment_id, run.tracking_uri, name if version else None, version, flat)


def run(argv: Sequence[str]) -> BaselineRun:
    """Compose ``conf/baseline.yaml`` with the overrides in ``argv`` and run the baseline."""
    cfg = config.compose("baseline", config.parse_overrides(argv))
    view = {k: v for k, v in config.flatten(config.training_view(cfg)).items() if not k.startswith("model.")}
    return run_baseline(config.train_settings(cfg), memory_bank_config(cfg), view)


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run_entry(
        run,
        argv,
        failure_note="the MLflow run is marked FAILED and nothing was registered; its "
        "log is under the run's logs/ artifacts",
    )


if __name__ == "__main__":
    sys.exit(main())
