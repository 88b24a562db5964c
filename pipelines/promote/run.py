"""MLflow entry point `promote`: select members -> compare them with their ensemble -> calibrate -> register
the ensemble -> move the alias when it is better. See :mod:`pipelines.promote` for the rules."""

from __future__ import annotations

import dataclasses
import logging
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from pipelines import cli, config, tracking
from pipelines.promote.compare import (SHOWN_METRICS, compare, fuse_scored, log_comparison_figures, score_members,
                                       to_csv, to_markdown)
from pipelines.promote.select import PromotionError, Selection, download_member, select_members

log = logging.getLogger(__name__)

__all__ = ["PromotionResult", "run_promotion", "run", "main"]


@dataclass
class PromotionResult:
    """What a promotion produced."""

    run_id: str
    experiment_id: str
    tracking_uri: str
    ensemble_name: str
    version: str
    decision: tracking.AliasDecision
    alias: str
    metrics: dict[str, float]
    members: list[str]
    table: str
    member_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    exit_code: int = cli.EXIT_OK

    @property
    def model_uri(self) -> str:
        return f"models:/{self.ensemble_name}/{self.version}"

    def summary(self) -> str:
        holder = self.version if self.decision.moved else self.decision.previous
        return "\n".join([
            "\n== PRADOT promotion finished ==",
            f"run       : {self.run_id} (experiment {self.experiment_id})",
            f"members   : {', '.join(self.members)}",
            self.table,
            f"ensemble  : registered as {self.ensemble_name} v{self.version}",
            f"alias     : {self.alias} {'moved to' if self.decision.moved else 'kept on'} v{holder} "
            f"({self.decision.reason})",
            f"serve it  : mlflow models serve -m models:/{self.ensemble_name}@{self.alias} --env-manager local "
            f"-h 127.0.0.1 -p 5001",
            f"look at it: mlflow ui --backend-store-uri {self.tracking_uri}"])


def _load_ensemble(sel: Selection, normalisation: str, device):
    """Download and load every member, and build the (not yet normalised) ensemble."""
    from pradot.ensemble import Ensemble
    from pradot.model import PRADOT

    models = []
    with tempfile.TemporaryDirectory(prefix="pradot-promote-") as tmp:
        for i, m in enumerate(sel.members):
            path = download_member(m, Path(tmp) / f"member{i}")
            model = PRADOT.load(path, device=device).eval()
            models.append(model)
            path.unlink()
    ens = Ensemble(models, normalisation=normalisation, labels=[m.ref for m in sel.members])
    sizes = sorted({int(x.config.image_size) for x in models})
    if len(sizes) > 1:
        import mlflow

        note = (f"members have image sizes {sizes}: the ensemble works at {ens.image_size} px (the first "
                f"member's); each member scores its input resized to its own size and its map is resized")
        log.warning("%s", note)
        mlflow.set_tag("pradot.image_sizes", note)
    return ens


def _score(settings: config.TrainSettings, ens, opts: config.PromoteOptions):
    """Validation (normalisation, calibration) and test scores of members and ensemble."""
    import mlflow
    import torch

    from pradot.engine import open_splits

    splits = open_splits(dataclasses.replace(settings.data, image_size=ens.image_size))
    bs = settings.evaluation.batch_size
    log.info("scoring %d validation and %d test images with %d members", len(splits.validation),
             len(splits.test), len(ens))
    calib_split, calib_source = (splits.validation, "validation") if splits.validation else \
        (splits.train, "train (no validation images)")
    val_members = score_members(ens, calib_split, ens.image_size, bs)
    if opts.normalisation == "per_member":
        ens.fit_normalisation(member_maps=[torch.from_numpy(v.maps) for v in val_members])
        mlflow.log_dict({"source": calib_source, "stats": ens.stats, "members": list(ens.labels)},
                        "comparison/normalisation_stats.json")
    val_scores = fuse_scored(ens, val_members).scores
    test_members = score_members(ens, splits.test, ens.image_size, bs)
    return splits, (val_scores, calib_source), [*test_members, fuse_scored(ens, test_members)]


def _log_comparison(sel: Selection, opts: config.PromoteOptions, splits, scored, settings, ens):
    import mlflow

    refs = [m.ref for m in sel.members]
    comparison = compare(splits.dataset, scored, [m.describe() for m in sel.members] +
                         [f"ensemble ({opts.normalisation})"], [*refs, "ensemble"])
    if opts.metric not in comparison.ensemble:
        raise PromotionError(f"metric {opts.metric!r} is not computed for {settings.data.kind}; available: "
                             f"{sorted(comparison.ensemble)}")
    keys, rows = comparison.rows()
    table = to_markdown(keys, rows, opts.metric)
    mlflow.log_text(to_csv(keys, rows), "comparison/comparison.csv")
    mlflow.log_text(table, "comparison/comparison.md")
    mlflow.log_dict(comparison.documents, "comparison/metrics.json")
    mlflow.log_metrics(comparison.ensemble)
    for k, f in enumerate(comparison.flats[:-1]):
        mlflow.log_metrics({f"member{k}_{key}": v for key, v in f.items() if key in SHOWN_METRICS})
    log.info("comparison on the test split:\n%s", table)
    log_comparison_figures(splits.dataset, comparison, scored, [m.short() for m in sel.members] + ["ensemble"],
                           opts.metric, ens.image_size, settings.evaluation.n_overlays)
    return comparison, table


def _log_ensemble(settings, opts, sel: Selection, ens, splits, calibration, calib_source, metrics, run_id):
    """Log the ensemble as the run's model (not registered yet); returns (model URI, version tags)."""
    members = [m.ref for m in sel.members]
    tags = tracking.VersionTags(
        kind="ensemble", dataset=settings.data.kind, category=settings.data.category, run_id=run_id,
        threshold=calibration.threshold, backbone=ens.config.backbone, stages=ens.config.stages,
        image_size=ens.image_size, members=tuple(members), normalisation=opts.normalisation,
        member_stages=tuple(tuple(x.config.stages) for x in ens.members),
        member_alphas=tuple(float(x.config.alpha) for x in ens.members), selection=sel.mode,
        selection_metric=opts.selection_metric, calibration_source=calib_source, metrics=metrics)
    with tempfile.TemporaryDirectory(prefix="pradot-ensemble-") as tmp:
        path = ens.save(Path(tmp) / "pradot_ensemble.pt")
        model_uri = tracking.log_model(path, calibration, tags, tracking.example_image(splits))
    return model_uri, tags


def _register(name: str, model_uri: str, tags, opts: config.PromoteOptions, metrics, run_id: str):
    """After the promote run has ended: register the ensemble (one call, every tag) and decide the alias."""
    from mlflow import MlflowClient

    version = tracking.register(model_uri, name, tags)
    client = MlflowClient()
    decision = tracking.decide_alias(client, name, version, opts.alias, opts.metric, metrics[opts.metric],
                                     opts.force)
    client.set_model_version_tag(name, version, "pradot.promotion", decision.reason)
    for key, value in {"pradot.promotion": decision.reason, "pradot.ensemble": f"{name}/{version}"}.items():
        client.set_tag(run_id, key, value)
    log.info("%s", decision.reason)
    return version, decision


def _log_selection(sel: Selection, opts: config.PromoteOptions, settings: config.TrainSettings) -> None:
    import mlflow

    refs = [m.ref for m in sel.members]
    mlflow.set_tags({"pradot.dataset": settings.data.kind, "pradot.category": settings.data.category,
                     "pradot.members": ",".join(refs), "pradot.selection": sel.mode})
    mlflow.log_params({"promote.members": ",".join(refs), "promote.metric": opts.metric,
                       "promote.select_by": opts.selection_metric, "promote.normalisation": opts.normalisation,
                       "promote.alias": opts.alias, "promote.force": opts.force, "promote.selection": sel.mode})
    if sel.excluded:
        mlflow.set_tag("pradot.excluded", "; ".join(sel.excluded)[:4900])
    for n in sel.notes:
        log.info("%s", n)
    if sel.notes:
        mlflow.log_text("\n".join(sel.notes) + "\n", "comparison/notes.txt")


def _tracked_run(settings: config.TrainSettings, opts: config.PromoteOptions, sel: Selection, device,
                 nested: bool):
    """The promote run: load, compare, calibrate, log the ensemble (unregistered). Returns (run, model URI,
    version tags, comparison, table)."""
    import mlflow

    from pradot.calibration import Calibration
    from pradot.engine import threshold_metrics

    t0 = time.perf_counter()
    with tracking.entry_run(f"promote-{settings.data.kind}-{settings.data.category}",
                            settings.tracking.experiment_name, entry_point="promote", nested=nested) as run:
        _log_selection(sel, opts, settings)
        ens = _load_ensemble(sel, opts.normalisation, device)
        splits, (val_scores, calib_source), scored = _score(settings, ens, opts)
        comparison, table = _log_comparison(sel, opts, splits, scored, settings, ens)
        calibration = Calibration.calibrate(val_scores, settings.calibration_quantile)
        mlflow.set_tag("pradot.calibration_source", calib_source)
        mlflow.log_dict(calibration.to_dict(), "model_files/calibration.json")
        mlflow.log_metrics(threshold_metrics([s.label for s in splits.test], scored[-1].scores,
                                             calibration.threshold))
        model_uri, tags = _log_ensemble(settings, opts, sel, ens, splits, calibration, calib_source,
                                        comparison.ensemble, run.run_id)
        mlflow.log_metric("time_total_seconds", time.perf_counter() - t0)
    return run, model_uri, tags, comparison, table


def run_promotion(settings: config.TrainSettings, opts: config.PromoteOptions, data_params: dict[str, str],
                  nested: bool = False) -> PromotionResult:
    """Select the members (errors before any run), promote in one MLflow run, then register the ensemble
    (after the run ended, one call with every tag) and decide the alias."""
    import mlflow

    from pradot.device import resolve_device

    tracking.setup_tracking()
    sel = select_members(mlflow.MlflowClient(), opts, settings.tracking.model_name, data_params)
    device = resolve_device(settings.device)
    name = opts.ensemble_name or f"{settings.tracking.model_name}-ensemble"
    with tracking.registration(name):
        run, model_uri, tags, comparison, table = _tracked_run(settings, opts, sel, device, nested)
        version, decision = _register(name, model_uri, tags, opts, comparison.ensemble, run.run_id)
    members = [m.ref for m in sel.members]
    return PromotionResult(run.run_id, run.experiment_id, run.tracking_uri, name, version, decision, opts.alias,
                           comparison.ensemble, members, table, dict(zip(members, comparison.flats[:-1])))


def run(argv: Sequence[str]) -> PromotionResult:
    """Compose ``conf/promote.yaml`` with the overrides in ``argv`` and promote."""
    cfg = config.compose("promote", config.parse_overrides(argv))
    return run_promotion(config.train_settings(cfg), config.promote_options(cfg), config.flatten(cfg))


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run_entry(run, argv, failure_note="nothing was registered unless the promote run's pradot.ensemble "
                                                 "tag says so")


if __name__ == "__main__":
    sys.exit(main())
