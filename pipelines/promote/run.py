"""MLflow entry point `promote`: select candidates -> score them on the validation objective -> choose members and
weights -> (then only) compare on the test split -> calibrate -> register the ensemble -> move the alias when it
beats the champion on the validation objective. See :mod:`pipelines.promote` for the rules."""

from __future__ import annotations

import dataclasses
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipelines import cli, config, objective, promote_settings, registry, tracking
from pipelines.baseline import baseline_name, fit_baseline, memory_bank_config
from pipelines.names import shell_word, tag_value
from pipelines.promote.choose import (
    Candidate,
    Choice,
    below_baseline,
    choose,
    load_candidates,
    score_on_set,
    set_objective,
)
from pipelines.promote.compare import SHOWN_METRICS, compare, log_comparison_figures, score_members, to_csv, to_markdown
from pipelines.promote.refit import check_refit, refit_ensemble
from pipelines.promote.select import PromotionError, Selection, select_members
from pipelines.tags import (
    BELOW_BASELINE,
    CALIBRATION_SOURCE,
    CATEGORY,
    DATASET,
    ENSEMBLE,
    EXCLUDED,
    MEMBERS,
    OBJECTIVE,
    PROMOTION,
    REFIT,
    SELECTION,
    SELECTION_SPLIT,
)

log = logging.getLogger(__name__)

__all__ = ["PromotionResult", "run_promotion", "run", "main"]


@dataclass
class PromotionResult:
    """What a promotion produced. ``metrics``: the ensemble's test metrics (for information) and its
    validation metrics (``val_*``: what chose it)."""

    run_id: str
    experiment_id: str
    tracking_uri: str
    ensemble_name: str
    version: str
    decision: registry.AliasDecision
    alias: str
    metrics: dict[str, float]
    members: list[str]
    table: str
    member_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    weights: list[float] | None = None
    exit_code: int = cli.EXIT_OK
    warning: str | None = None  # e.g. the chosen model is below the memory-bank baseline (choose.below_baseline)

    @property
    def model_uri(self) -> str:
        return f"models:/{self.ensemble_name}/{self.version}"

    @property
    def serve_uri(self) -> str:
        """The new ensemble: by its alias when the alias moved to it, else by its version."""
        if self.decision.moved:
            return f"models:/{self.ensemble_name}@{self.alias}"
        return f"models:/{self.ensemble_name}/{self.version}"

    def summary(self) -> str:
        holder = self.version if self.decision.moved else self.decision.previous
        weights = "" if self.weights is None else f" (weights {', '.join(f'{w:g}' for w in self.weights)})"
        return "\n".join(
            [
                "\n== PRADOT promotion finished ==",
                f"run       : {self.run_id} (experiment {self.experiment_id})",
                f"members   : {', '.join(self.members)}{weights}  (chosen on the validation objective)",
                self.table,
                f"ensemble  : registered as {self.ensemble_name} v{self.version}",
                f"alias     : {self.alias} {'moved to' if self.decision.moved else 'kept on'} v{holder} "
                f"({self.decision.reason})",
                f"serve it  : mlflow models serve -m {shell_word(self.serve_uri)} --env-manager local "
                "-h 127.0.0.1 -p 5001"
                + ("" if self.decision.moved else f"   (this ensemble; @{self.alias} still serves v{holder})"),
                "            (the server answers after 20-40 s: wait until curl http://127.0.0.1:5001/ping says 200)",
                f"look at it: {tracking.ui_hint(self.tracking_uri)}",
                *([f"WARNING   : {self.warning}"] if self.warning else []),
            ]
        )


def _same_size(cands: list[Candidate], size: int, explicit: bool) -> list[Candidate]:
    """Candidates at the data's image size (fused maps must be on one grid); others are left out with a note,
    or refused when the user named them."""
    other = [c for c in cands if int(c.model.config.image_size) != size]
    if other and explicit:
        raise PromotionError(
            f"members {[c.label for c in other]} work at another image size than data.image_size="
            f"{size}; pass the data.image_size they were trained with (or other members)"
        )
    for c in other:
        log.warning("left out %s: image size %s != data.image_size %s", c.label, c.model.config.image_size, size)
    return [c for c in cands if c not in other]


def _candidates(settings, opts, sel: Selection, splits, pset, device, mb_config) -> list[Candidate]:
    """Every candidate loaded and scored on the evaluation set."""
    size, bs = settings.data.image_size, settings.evaluation.batch_size
    fit = (lambda: fit_baseline(settings, mb_config, splits.train, device, progress=False)) if mb_config else None
    cands = load_candidates(sel, device, fit_baseline=fit)
    cands = _same_size(cands, size, bool(opts.members))
    for c in cands:
        c.maps = score_on_set(c.model, pset, size, bs)
        c.metrics = set_objective(c.maps, pset, opts.eval_size)
        log.info("%s: %s", c.label, ", ".join(f"{k}={v:.4f}" for k, v in sorted(c.metrics.items())))
    return cands


def _ensemble(cands: list[Candidate], choice: Choice, opts):
    from pradot.ensemble import Ensemble

    return Ensemble(
        [cands[i].model for i in choice.members],
        normalisation=opts.normalisation,
        stats=choice.stats,
        labels=[cands[i].name for i in choice.members],
        weights=choice.weights,
    ).eval()


def _fused(ens, maps: list) -> tuple:
    import torch

    fmaps, fscores = ens.fuse([torch.from_numpy(m) for m in maps])
    return fmaps.numpy().astype("float32"), fscores.numpy()


def _log_choice(cands: list[Candidate], choice: Choice, val_metrics: dict, opts, pset) -> None:
    import mlflow

    doc = {
        "split": pset.split,
        "objective": opts.objective,
        "fusion": opts.fusion,
        "normalisation": opts.normalisation,
        "mode": choice.mode,
        "evaluation_set": pset.identity,
        "candidates": [
            {
                "label": c.label,
                "ref": c.ref,
                "group": list(map(str, c.group)),
                "kind": c.kind,
                "baseline": c.is_baseline,
                "validation": c.metrics,
            }
            for c in cands
        ],
        "winners": [cands[i].label for i in choice.winners],
        "members": [cands[i].label for i in choice.members],
        "weights": choice.weights,
        "stats": choice.stats,
        "ensemble_validation": val_metrics,
        "notes": choice.notes,
    }
    mlflow.log_dict(doc, "comparison/choice.json")
    mlflow.log_metrics({k: v for k, v in val_metrics.items()})
    mlflow.set_tags({SELECTION_SPLIT: pset.split, OBJECTIVE: opts.objective})
    for n in choice.notes:
        log.info("%s", n)


def _compare(cands: list[Candidate], choice: Choice, ens, splits, settings, opts, val_metrics: dict):
    """After the choice: every group winner and the baseline, then the ensemble, on the test split."""
    import mlflow

    from pradot.ensemble import Ensemble

    rows = sorted(set(choice.winners) | {i for i, c in enumerate(cands) if c.is_baseline})
    size, bs = settings.data.image_size, settings.evaluation.batch_size
    scored = score_members(Ensemble([cands[i].model for i in rows]), splits.test, size, bs)
    by_cand = dict(zip(rows, scored))
    fmaps, fscores = _fused(ens, [by_cand[i].maps for i in choice.members])
    ens_scored = dataclasses.replace(scored[0], maps=fmaps, scores=fscores)
    labels = [cands[i].label + (" [baseline]" if cands[i].is_baseline else "") for i in rows]
    weights = "" if choice.weights is None else " w=" + "/".join(f"{w:g}" for w in choice.weights)
    comparison = compare(
        splits.dataset,
        [*scored, ens_scored],
        [*labels, f"ensemble ({opts.fusion}, {opts.normalisation}{weights})"],
        [cands[i].name for i in rows] + ["ensemble"],
    )
    keys, table_rows = comparison.rows()
    for r, i in zip(table_rows, rows):
        r[opts.objective] = cands[i].metrics[opts.objective]
    table_rows[-1][opts.objective] = val_metrics[opts.objective]
    table = to_markdown([*keys, opts.objective], table_rows, opts.metric, first=opts.objective)
    mlflow.log_text(to_csv([opts.objective, *keys], table_rows), "comparison/comparison.csv")
    mlflow.log_text(table, "comparison/comparison.md")
    mlflow.log_dict(comparison.documents, "comparison/metrics.json")
    mlflow.log_metrics(comparison.ensemble)
    for k in range(len(rows)):
        mlflow.log_metrics({f"candidate{k}_{key}": v for key, v in comparison.flats[k].items() if key in SHOWN_METRICS})
    log.info("comparison on the test split (after the choice):\n%s", table)
    log_comparison_figures(
        splits.dataset,
        comparison,
        [*scored, ens_scored],
        [cands[i].short for i in rows] + ["ensemble"],
        opts.metric,
        size,
        settings.evaluation.n_overlays,
    )
    return comparison, table, ens_scored


def _champion_value(opts, pset, size: int, batch_size: int):
    """``holder_value`` for the alias decision: the champion re-scored on the same evaluation set."""

    def value(champ):
        import mlflow

        from pradot.checkpoint import file_format
        from pradot.persistence import load_scoring_model, servable_formats

        try:
            with tempfile.TemporaryDirectory(prefix="pradot-champion-") as tmp:
                local = Path(mlflow.artifacts.download_artifacts(f"models:/{champ.name}/{champ.version}", dst_path=tmp))
                path = next(p for p in sorted(local.rglob("*.pt")) if file_format(p) in servable_formats())
                maps = score_on_set(load_scoring_model(path), pset, size, batch_size)
            return set_objective(maps, pset, opts.eval_size)[opts.objective]
        except Exception as e:  # noqa: BLE001 - an unreadable champion: compare with its tag
            log.warning(
                "could not re-score the champion v%s (%s: %s); comparing with its tag",
                champ.version,
                type(e).__name__,
                e,
            )
            return None

    return value


def _log_ensemble(settings, opts, choice: Choice, cands, ens, splits, calibration, calib_source, metrics, pset, run_id):
    """In the promote run: log the ensemble (not yet registered) with its version tags. Returns (model URI, tags)."""
    members = [cands[i].name for i in choice.members]
    tags = registry.EnsembleTags(
        dataset=settings.data.kind,
        category=settings.data.category,
        run_id=run_id,
        threshold=calibration.threshold,
        backbone=ens.config.backbone,
        stages=ens.config.stages,
        image_size=ens.image_size,
        members=tuple(members),
        normalisation=opts.normalisation,
        member_stages=tuple(tuple(x.config.stages) for x in ens.members),
        member_alphas=tuple(float(getattr(x.config, "alpha", float("nan"))) for x in ens.members),
        member_kinds=tuple(cands[i].kind for i in choice.members),
        member_weights=tuple(choice.weights or ()),
        selection=choice.mode,
        selection_metric=opts.objective,
        selection_split=pset.split,
        objective="pseudo",
        fusion=opts.fusion,
        calibration_source=calib_source,
        metrics=metrics,
    )
    with tempfile.TemporaryDirectory(prefix="pradot-ensemble-") as tmp:
        path = ens.save(Path(tmp) / "pradot_ensemble.pt")
        model_uri = registry.log_model(path, calibration, tags, tracking.example_image(splits))
    return model_uri, tags


def _register(name: str, model_uri: str, tags, opts, metrics, holder_value, run_id: str):
    """After the promote run has ended: register the ensemble (one call, every tag) and decide the alias on
    the validation objective."""
    from mlflow import MlflowClient

    version = registry.register(model_uri, name, tags)
    client = MlflowClient()
    decision = registry.decide_alias(
        client,
        name,
        version,
        opts.alias,
        opts.objective,
        metrics[opts.objective],
        opts.force,
        holder_value=holder_value,
    )
    client.set_model_version_tag(name, version, PROMOTION, decision.reason)
    for key, value in {PROMOTION: decision.reason, ENSEMBLE: f"{name}/{version}"}.items():
        client.set_tag(run_id, key, value)
    log.info("%s", decision.reason)
    return version, decision


def _log_selection(sel: Selection, opts: promote_settings.PromoteOptions, settings: config.TrainSettings) -> None:
    import mlflow

    refs = [m.ref for m in sel.members]
    mlflow.set_tags(
        {
            DATASET: settings.data.kind,
            CATEGORY: settings.data.category,
            MEMBERS: tag_value(",".join(refs), 4900),
            SELECTION: sel.mode,
        }
    )
    mlflow.log_params(
        {
            "promote.members": tag_value(",".join(refs), 6000),
            "promote.metric": opts.metric,
            "promote.objective": opts.objective,
            "promote.fusion": opts.fusion,
            "promote.select_by": opts.select_by or "",
            "promote.normalisation": opts.normalisation,
            "promote.weight_step": opts.weight_step,
            "promote.max_members": opts.max_members,
            "promote.alias": opts.alias,
            "promote.force": opts.force,
            "promote.selection": sel.mode,
            "promote.baseline": sel.baseline.ref if sel.baseline else "fitted by promote",
        }
    )
    if sel.excluded:
        mlflow.set_tag(EXCLUDED, tag_value("; ".join(sel.excluded), 4900))
        for e in sel.excluded:  # on the console too: a version left out silently looks like a bug
            log.warning("left out %s", e)
    for n in sel.notes:
        log.info("%s", n)
    if sel.notes:
        mlflow.log_text("\n".join(sel.notes) + "\n", "comparison/notes.txt")


def _evaluation_set(settings, splits, opts) -> objective.PseudoSet:
    if splits.validation:
        return objective.build_pseudo_set(splits.validation, settings.data.image_size, opts.pseudo)
    log.warning("no validation images: the validation objective uses the training images as normals")
    return objective.build_pseudo_set(
        splits.train, settings.data.image_size, opts.pseudo, normals_source="train (no validation images)"
    )


def _calibrate(settings, ens, cands, choice, pset, splits):
    """The threshold on the validation normals' fused scores (else the training images', as ``main`` does)."""
    from pradot.calibration import Calibration
    from pradot.engine import score_samples

    q, q_pix = settings.calibration_quantile, settings.calibration_pixel_quantile
    if pset.normals_source == "validation":
        maps, scores = _fused(ens, [cands[i].maps[pset.normal] for i in choice.members])
        return Calibration.calibrate(scores, q, pixel_maps=maps, pixel_quantile=q_pix), "validation"
    scored = score_samples(ens, splits.train, ens.image_size, settings.evaluation.batch_size)
    return Calibration.calibrate(scored.scores, q, pixel_maps=scored.maps, pixel_quantile=q_pix), pset.normals_source


@dataclass
class _Promoted:
    """What the promote run logged: the ensemble to register and what the alias decision needs."""

    run: tracking.EntryRun
    model_uri: str
    tags: registry.EnsembleTags
    metrics: dict[str, float]
    table: str
    members: list[str]
    member_metrics: dict[str, dict[str, float]]
    weights: list[float] | None
    holder_value: object
    warning: str | None = None


def _tracked_run(settings, opts, sel: Selection, device, nested: bool, mb_config) -> _Promoted:
    """The promote run: candidates scored on the validation objective, the choice, the test comparison (after
    the choice), calibration, the ensemble logged (unregistered)."""
    import mlflow

    from pradot.engine import open_splits, threshold_metrics

    t0 = time.perf_counter()
    with tracking.entry_run(
        f"promote-{settings.data.kind}-{settings.data.category}",
        settings.tracking.experiment_name,
        entry_point="promote",
        nested=nested,
    ) as run:
        _log_selection(sel, opts, settings)
        splits = open_splits(settings.data)
        if opts.refit:
            check_refit(splits)  # before any work
        pset = _evaluation_set(settings, splits, opts)
        cands = _candidates(settings, opts, sel, splits, pset, device, mb_config)
        choice = choose(cands, opts, pset, explicit=bool(opts.members))  # the choice: no test image, no label
        ens = _ensemble(cands, choice, opts)
        val_metrics = set_objective(_fused(ens, [cands[i].maps for i in choice.members])[0], pset, opts.eval_size)
        _log_choice(cands, choice, val_metrics, opts, pset)
        if warning := below_baseline(cands, val_metrics[opts.objective], opts.objective):
            log.warning("%s", warning)
            mlflow.set_tag(BELOW_BASELINE, "true")
        calibration, calib_source = _calibrate(settings, ens, cands, choice, pset, splits)
        if opts.refit:  # after the choice and the calibration, both on the held-back normals (cross-fitted)
            ens = refit_ensemble(ens, splits)
            mlflow.set_tag(REFIT, f"chosen members refitted on {len(splits.train) + len(splits.validation)} normals")
        comparison, table, ens_test = _compare(cands, choice, ens, splits, settings, opts, val_metrics)  # report
        mlflow.set_tag(CALIBRATION_SOURCE, calib_source)
        mlflow.log_dict(calibration.to_dict(), "model_files/calibration.json")
        mlflow.log_metrics(threshold_metrics([s.label for s in splits.test], ens_test.scores, calibration.threshold))
        metrics = {**comparison.ensemble, **val_metrics}
        model_uri, tags = _log_ensemble(
            settings, opts, choice, cands, ens, splits, calibration, calib_source, metrics, pset, run.run_id
        )
        mlflow.log_metric("time_total_seconds", time.perf_counter() - t0)
    return _Promoted(
        run,
        model_uri,
        tags,
        metrics,
        table,
        [cands[i].name for i in choice.members],
        {cands[i].name: cands[i].metrics for i in choice.members},
        choice.weights,
        _champion_value(opts, pset, ens.image_size, settings.evaluation.batch_size),
        warning,
    )


def run_promotion(
    settings: config.TrainSettings,
    opts: promote_settings.PromoteOptions,
    data_params: dict[str, str],
    nested: bool = False,
    mb_config=None,
) -> PromotionResult:
    """Select the candidates (errors before any run), choose and log the ensemble in one MLflow run, then
    register it (after the run ended, one call with every tag) and decide the alias."""
    import mlflow

    from pradot.device import resolve_device

    tracking.setup_tracking()
    base = settings.tracking.model_name
    sel = select_members(mlflow.MlflowClient(), opts, base, data_params, baseline_name(base))
    device = resolve_device(settings.device)
    name = opts.ensemble_name or f"{base}-ensemble"
    with registry.registration(name):
        p = _tracked_run(settings, opts, sel, device, nested, mb_config)
        version, decision = _register(name, p.model_uri, p.tags, opts, p.metrics, p.holder_value, p.run.run_id)
    return PromotionResult(
        p.run.run_id,
        p.run.experiment_id,
        p.run.tracking_uri,
        name,
        version,
        decision,
        opts.alias,
        p.metrics,
        p.members,
        p.table,
        p.member_metrics,
        p.weights,
        warning=p.warning,
    )


def run(argv: Sequence[str]) -> PromotionResult:
    """Compose ``conf/promote.yaml`` with the overrides in ``argv`` and promote."""
    cfg = config.compose("promote", config.parse_overrides(argv))
    return run_promotion(
        config.train_settings(cfg),
        promote_settings.promote_options(cfg),
        config.flatten(cfg),
        mb_config=memory_bank_config(cfg),
    )


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run_entry(
        run, argv, failure_note="nothing was registered unless the promote run's pradot.ensemble tag says so"
    )


if __name__ == "__main__":
    sys.exit(main())
