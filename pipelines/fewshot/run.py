"""MLflow entry point `fewshot`: FOCT's few-shot protocol, tracked.

    python pipelines/fewshot.py [hydra overrides...]      # e.g. fewshot=cpu fewshot.ablation=true
    mlflow run . -e fewshot -P dataset=mvtec_ad -P category=bottle

One parent run; one child run per (variant, shots, split) with its support images, metrics and per-query
seconds and episodic-memory sizes (step = position in the stream); the parent holds the summary (mean and
std over splits) as metrics and as tables (``summary/fewshot_summary.md``, ``.csv``, ``per_split.csv``) and,
with ``fewshot.register``, a served few-shot model (:mod:`pipelines.fewshot.register`).
"""

from __future__ import annotations

import csv
import io
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipelines import cli, config, registry, tracking
from pipelines.fewshot.data import FeatureSet, images_of, load_features, support_pool
from pipelines.fewshot.plan import FewShotPlan, check_against_data, fewshot_plan
from pipelines.fewshot.register import Logged, Registered, log_fewshot
from pipelines.names import tag_value
from pipelines.tags import BACKBONE, CATEGORY, DATASET, FEWSHOT_VARIANT, METHOD, REGISTRATION

log = logging.getLogger(__name__)

__all__ = ["FewShotRun", "run_fewshot", "run", "main"]


@dataclass
class FewShotRun:
    """What a few-shot run produced."""

    run_id: str
    experiment_id: str
    tracking_uri: str
    table: str
    rows: list[dict] = field(default_factory=list)
    summary_rows: list[dict] = field(default_factory=list)
    registered: Registered | None = None
    exit_code: int = cli.EXIT_OK

    def summary(self) -> str:
        lines = [
            "\n== few-shot (FOCT) run finished ==",
            f"tracking store : {self.tracking_uri}",
            f"run            : {self.run_id} (experiment {self.experiment_id})",
            "",
            self.table,
        ]
        if self.registered is not None:
            lines.append(f"model          : {self.registered.note}")
        lines.append(f"look at it     : {tracking.ui_hint(self.tracking_uri)}")
        return "\n".join(lines)


@dataclass
class _Context:
    """What every child run shares."""

    plan: FewShotPlan
    splits: object
    backbone: object
    device: object
    pool: FeatureSet
    test: FeatureSet


def _child(ctx: _Context, variant, shots: int, split: int) -> dict:
    """One (variant, shots, split): fit on the support, stream the test split, log; returns the row."""
    import mlflow
    from mlflow.entities import Metric

    from pradot.fewshot.foreground import mask_source
    from pradot.fewshot.protocol import fewshot_metrics, query_order, run_split

    plan, splits = ctx.plan, ctx.splits
    support = plan.support(len(splits.train), shots, split)
    order = query_order(len(splits.test), split, plan.seed, plan.shuffle)
    cfg = variant.apply(plan.foct)
    masks = mask_source(
        cfg.foreground, sam_checkpoint=cfg.sam_checkpoint, sam_model_type=cfg.sam_model_type, device=ctx.device
    )
    name = f"{variant.name}-{shots}shot-split{split}"
    with tracking.entry_run(
        name, plan.experiment_name, entry_point="fewshot", nested=True, tags={FEWSHOT_VARIANT: variant.name}
    ) as run:
        names = [str(Path(s.image_path).relative_to(splits.dataset.root)) for s in ctx.pool.samples_at(support)]
        mlflow.log_params(
            {
                "variant": variant.name,
                "shots": shots,
                "split": split,
                "online": cfg.online,
                "foreground": cfg.foreground,
                "distance": cfg.distance,
                "support": tag_value(",".join(names), 6000),
            }
        )
        needs = masks.needs_images
        result = run_split(
            cfg,
            ctx.backbone,
            ctx.pool.take(support),
            ctx.test.features,
            order,
            device=ctx.device,
            masks=masks,
            support_images=images_of(ctx.pool.samples_at(support), cfg.image_size) if needs else None,
            test_image=(lambda i: images_of([splits.test[i]], cfg.image_size)) if needs else None,
        )
        metrics, notes = fewshot_metrics(splits.dataset, splits.test, result.maps, result.scores)
        metrics.update(
            seconds_per_query=float(result.seconds.mean()),
            semantic_memory=float(result.semantic_size),
            episodic_memory_max=float(result.episodic_sizes.max()),
        )
        mlflow.log_metrics(metrics)
        now = int(time.time() * 1000)
        mlflow.MlflowClient().log_batch(
            run.run_id,
            metrics=[
                Metric(key, float(v), now, step)
                for step, (t, e) in enumerate(zip(result.seconds, result.episodic_sizes))
                for key, v in (("query_seconds", t), ("episodic_memory", e))
            ],
        )
        if notes:
            mlflow.log_text("\n".join(notes), "metrics/notes.txt")
    log.info("%s: %s", name, ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())))
    return {"variant": variant.name, "shots": shots, "split": split, **metrics}


def _csv(rows: Sequence[dict]) -> str:
    """``rows`` as CSV, text cells (variant, split names) as :func:`pradot.names.csv_cell`."""
    from pradot.names import csv_cell

    keys = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows({k: csv_cell(v) if isinstance(v, str) else v for k, v in r.items()} for r in rows)
    return buf.getvalue()


def _log_summary(rows: list[dict]) -> tuple[str, list[dict]]:
    """Mean/std over splits -> parent metrics ``<variant>.<k>shot.<metric>_{mean,std}`` and the tables."""
    import mlflow

    from pradot.fewshot.protocol import markdown_table, summarise

    summary = summarise(rows)
    mlflow.log_metrics(
        {
            f"{r['variant']}.{r['shots']}shot.{k}": v
            for r in summary
            for k, v in r.items()
            if k.endswith(("_mean", "_std"))
        }
    )
    table = markdown_table(summary)
    mlflow.log_text(table, "summary/fewshot_summary.md")
    mlflow.log_text(_csv(summary), "summary/fewshot_summary.csv")
    mlflow.log_text(_csv(rows), "summary/per_split.csv")
    return table, summary


def _open(plan: FewShotPlan):
    """Splits, backbone and the features every child reads (support pool and test split)."""
    import mlflow

    from pradot.backbone import load_backbone
    from pradot.device import resolve_device
    from pradot.engine import open_splits

    splits = open_splits(plan.data)
    check_against_data(plan, len(splits.train), len(splits.test), [s.label for s in splits.test])
    mlflow.log_params(
        {
            "data.n_train": len(splits.train),
            "data.n_validation": len(splits.validation),
            "data.n_test": len(splits.test),
            "data.resolved_root": str(splits.dataset.root),
        }
    )
    device = resolve_device(plan.device)
    backbone = load_backbone(plan.foct.backbone, plan.foct.stages, weights_path=plan.weights_path, device=device)
    pool_idx = support_pool(plan, len(splits.train))
    pool = load_features(plan, backbone, splits.train, pool_idx, "train", device)
    test = load_features(plan, backbone, splits.test, range(len(splits.test)), "test", device)
    return _Context(plan, splits, backbone, device, pool, test)


def _log_model(plan: FewShotPlan, ctx: _Context, rows: list[dict], run_id: str) -> Logged:
    """The served model: the last variant, split 0 of the largest shot count, logged in the run."""
    variant = plan.variants()[-1]
    best = [r for r in rows if r["variant"] == variant.name and r["shots"] == max(plan.shots) and r["split"] == 0][0]
    return log_fewshot(
        plan,
        variant,
        ctx.splits,
        ctx.backbone,
        ctx.pool,
        ctx.device,
        run_id,
        {k: v for k, v in best.items() if isinstance(v, float)},
    )


def run_fewshot(plan: FewShotPlan, params: dict[str, str], resolved_yaml: str) -> FewShotRun:
    """The protocol in one parent run (children per (variant, shots, split)); with ``register``, the served
    model is logged in that run and registered once it has FINISHED (one call with every tag)."""
    import mlflow
    import torch

    if plan.threads is not None:
        torch.set_num_threads(plan.threads)
    with registry.registration(plan.model_name if plan.register else None):
        with tracking.entry_run(plan.run_name, plan.experiment_name, entry_point="fewshot") as run:
            mlflow.set_tags(
                {
                    DATASET: plan.data.kind,
                    CATEGORY: plan.data.category,
                    BACKBONE: plan.foct.backbone,
                    METHOD: "foct",
                }
            )
            tracking.log_resolved_params(params)
            mlflow.log_text(resolved_yaml, "config/resolved_config.yaml")
            ctx = _open(plan)
            rows = [
                _child(ctx, variant, shots, split)
                for variant in plan.variants()
                for shots in plan.shots
                for split in range(plan.splits)
            ]
            table, summary = _log_summary(rows)
            logged = _log_model(plan, ctx, rows, run.run_id) if plan.register else None
        registered: Registered | None = logged.register(plan.model_name) if logged is not None else None
    if registered is not None:  # registry.register tags the run pradot.registered=<name>/<version>
        mlflow.MlflowClient().set_tag(run.run_id, REGISTRATION, registered.note)
    return FewShotRun(run.run_id, run.experiment_id, run.tracking_uri, table, rows, summary, registered)


def run(argv: Sequence[str]) -> FewShotRun:
    """Compose ``conf/fewshot.yaml`` with the overrides in ``argv``, check them, run the protocol."""
    cfg = config.compose("fewshot", config.parse_overrides(argv))
    plan = fewshot_plan(cfg)
    return run_fewshot(plan, config.flatten(cfg), config.resolved_yaml(cfg))


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run_entry(
        run, argv, failure_note="the MLflow run is marked FAILED; its log is under the run's logs/ artifacts"
    )
