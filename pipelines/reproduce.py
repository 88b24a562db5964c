"""MLflow entry point `reproduce`: train the paper's four banks and the memory-bank baseline, and promote their
ensemble.

    python pipelines/reproduce.py category=screw_bag data=mvtec_loco [data_root=...] [hydra overrides...]
    mlflow run . -e reproduce -P category=screw_bag -P overrides="experiment=paper"

The paper's final model (section 4, Table 2) is the average of the maps of four banks,
(stage, alpha) = (2, 0), (2, 0.3), (3, 0), (3, 0.3). This entry point trains them one after the other
(``pipelines.train.run_training``, each its own MLflow run, registered as ``pradot-<dataset>-<category>``),
then the memory-bank baseline (``pipelines.baseline.run_baseline``, registered as ``<model name>-baseline``:
a row of the comparison table), then promotes exactly those four versions (``pipelines.promote.run.run_promotion``;
with ``fusion=search``, e.g. ``experiment=best``, the baseline is a candidate too). Every step is a child
run (``mlflow.parentRunId``) of one ``reproduce`` run (tag ``pradot.entry_point=reproduce``) that records the
members, the ensemble version and the promotion; each step returns its run, version and metrics, which
the next one uses. On real data with ``overrides="experiment=paper"`` it is the one command that
reproduces the paper's model.

Options (``conf/reproduce.yaml``; every other override goes to each training and to promote):
``stages=2,3`` and ``alphas=0,0.3`` (the grid; single stages only), and promote's ``metric``,
``normalisation``, ``alias``, ``force``. ``backbone.stages``, ``model.alpha`` and ``members`` are set per
member and may not be overridden.

Feature cache: entries are per stage (``pradot.features.FeatureCache``), so the two alpha values of
one stage read the same features, and each stage is extracted once for the four trainings.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

if __name__ == "__main__" and not __package__:  # `python pipelines/reproduce.py`: import this checkout's package
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from pipelines import cli, config, promote_settings, tracking  # noqa: E402
from pipelines.baseline import memory_bank_config, run_baseline  # noqa: E402
from pipelines.names import shell_word  # noqa: E402
from pipelines.promote.run import PromotionResult, run_promotion  # noqa: E402
from pipelines.tags import BASELINE, CATEGORY, DATASET, ENSEMBLE, MEMBERS, PROMOTION
from pipelines.train import run_training  # noqa: E402

log = logging.getLogger(__name__)

__all__ = ["ReproduceError", "ReproduceResult", "run", "main"]

#: set per member by reproduce; overriding them is an error
FIXED_KEYS = ("backbone.stages", "model.alpha", "members")


class ReproduceError(cli.UsageError):
    pass


@dataclass
class ReproduceResult:
    run_id: str
    members: list[str]
    promotion: PromotionResult
    exit_code: int = cli.EXIT_OK

    def summary(self) -> str:
        p = self.promotion
        return "\n".join(
            [
                "\n== PRADOT reproduce finished ==",
                f"run       : {self.run_id} (members and promotion are its child runs)",
                f"members   : {', '.join(self.members)}",
                p.table,
                f"ensemble  : {p.ensemble_name} v{p.version}; {p.decision.reason}",
                f"serve it  : mlflow models serve -m {shell_word(p.serve_uri)} --env-manager local -h 127.0.0.1 -p 5001"
                + ("" if p.decision.moved else f"   (this ensemble; @{p.alias} still serves v{p.decision.previous})"),
                "            (the server answers after 20-40 s: wait until curl http://127.0.0.1:5001/ping says 200)",
            ]
        )


def _check_overrides(overrides: Sequence[str], cfg) -> None:
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+~")
        if key in FIXED_KEYS:
            raise ReproduceError(
                f"{key} is set by reproduce for each member (stages {list(cfg.stages)} x alpha "
                f"{list(cfg.alphas)}); use stages=2,3 / alphas=0,0.3 to change the grid"
            )
    if not cfg.tracking.register:
        raise ReproduceError("tracking.register=false: reproduce promotes registered members, they must be registered")


def _train_member(cfg, stage: int, alpha: float, extra: dict[str, str]) -> str:
    """Train one member as a child run (``extra``: its per-stage model settings); returns its registered
    ``name/version``."""
    keys = {"backbone.stages": [stage], "model.alpha": alpha, **extra}
    member = config.training_view(config.with_overrides(cfg, keys))
    log.info("training member stage %d alpha %g %s", stage, alpha, extra or "")
    print(f"\n== reproduce: training member stage {stage}, alpha {alpha:g} {extra or ''} ==", flush=True)
    try:
        out = run_training(
            config.train_settings(member), config.flatten(member), config.resolved_yaml(member), nested=True
        )
    except Exception:
        log.error(
            "training the member (stage %d, alpha %g) failed; its run and log are in the experiment", stage, alpha
        )
        raise
    return f"{out.model_name}/{out.version}"


def run(argv: Sequence[str]) -> ReproduceResult:
    """Train every (stage, alpha) member, then promote them, all as children of one run."""
    import mlflow

    overrides = config.parse_overrides(argv)
    cfg = config.compose("reproduce", overrides)
    grid = promote_settings.reproduce_grid(cfg)
    _check_overrides(overrides, cfg)
    opts = promote_settings.promote_options(cfg)
    settings = config.train_settings(cfg)
    with tracking.entry_run(
        f"reproduce-{settings.data.kind}-{settings.data.category}",
        settings.tracking.experiment_name,
        entry_point="reproduce",
        tags={DATASET: settings.data.kind, CATEGORY: settings.data.category},
    ) as run:
        mlflow.log_params(
            {
                "reproduce.grid": f"stages={list(grid.stages)} alphas={list(grid.alphas)}"
                f" mahalanobis_stages={list(grid.mahalanobis_stages)}",
                "reproduce.overrides": " ".join(overrides)[:6000],
            }
        )
        members = [_train_member(cfg, s, a, grid.overrides(s)) for s, a in grid.members()]
        mlflow.set_tag(MEMBERS, ",".join(members))
        print("\n== reproduce: the memory-bank baseline ==", flush=True)
        view = {k: v for k, v in config.flatten(config.training_view(cfg)).items() if not k.startswith("model.")}
        baseline = run_baseline(settings, memory_bank_config(cfg), view, nested=True)
        mlflow.set_tag(BASELINE, f"{baseline.model_name}/{baseline.version}")
        print(f"\n== reproduce: promoting {', '.join(members)} ==", flush=True)
        promotion = run_promotion(
            settings,
            dataclasses.replace(opts, members=tuple(members)),
            config.flatten(cfg),
            nested=True,
            mb_config=memory_bank_config(cfg),
        )
        mlflow.set_tags(
            {
                ENSEMBLE: f"{promotion.ensemble_name}/{promotion.version}",
                PROMOTION: promotion.decision.reason,
            }
        )
        mlflow.log_text(promotion.table, "comparison/comparison.md")
        mlflow.log_metrics(promotion.metrics)
    return ReproduceResult(run.run_id, members, promotion)


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run_entry(run, argv, failure_note="see the failed run's logs/ artifacts")


if __name__ == "__main__":
    sys.exit(main())
