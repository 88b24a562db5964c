"""After the sweep: the ``top_k`` trials' banks (their last checkpoint) registered as versions of
``pradot-<dataset>-<category>``, each logged in its trial's run, with the real backbone attached
(``PRADOT.from_prototypes``) and a threshold calibrated on the validation normals (else the training images).
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from pipelines import config, registry, tracking
from pipelines.sweep.plan import SweepPlan
from pipelines.sweep.trial import CHECKPOINT_META, CHECKPOINT_MODEL, CHECKPOINT_SCORES
from pipelines.tags import REGISTERED_MODEL, REGISTERED_VERSION

__all__ = ["ranked", "register_top_k"]

log = logging.getLogger(__name__)


def ranked(grid, plan: SweepPlan) -> list:
    """The trials with a checkpoint and a finite ``plan.metric``, best first."""
    candidates = [
        r
        for r in grid
        if r.error is None
        and r.checkpoint is not None
        and isinstance(r.metrics.get(plan.metric), (int, float))
        and math.isfinite(r.metrics[plan.metric])
    ]
    return sorted(candidates, key=lambda r: r.metrics[plan.metric], reverse=(plan.mode == "max"))


class _Backbones:
    """The real backbones (with weights), loaded on first use and shared by the banks that need them."""

    def __init__(self, cfg: DictConfig):
        self._weights = {str(cfg.backbone.name): cfg.backbone.get("weights_path")}
        self._loaded: dict[tuple, Any] = {}

    def get(self, name: str, stages: tuple[int, ...]):
        from pradot.backbone import load_backbone

        key = (name, tuple(stages))
        if key not in self._loaded:
            self._loaded[key] = load_backbone(name, key[1], weights_path=self._weights.get(name), device="cpu")
        return self._loaded[key]


def _version_tags(
    model_config, meta: dict, plan: SweepPlan, value: float, rank: int, parent_id: str, data_spec, threshold: float
) -> registry.BankTags:
    m, hp = model_config, meta["hparams"]
    return registry.BankTags(
        dataset=data_spec.kind,
        category=data_spec.category,
        run_id=meta["mlflow_run_id"],
        threshold=threshold,
        backbone=m.backbone,
        stages=tuple(m.stages),
        image_size=m.image_size,
        alpha=m.alpha,
        n=m.n,
        eta=m.eta,
        epsilon=m.epsilon,
        batch_size=m.batch_size,
        feature_metric=m.feature_metric,
        sweep_run_id=parent_id,
        sweep_rank=rank,
        trial_id=meta["trial_id"],
        objective=plan.objective,
        batch_ratio=hp["batch_ratio"],
        epochs_trained=meta["epoch"],
        calibration_source=meta["calibration_source"],
        sweep_metric=plan.metric,
        sweep_score=value,
        config={k: hp[k] for k in sorted(hp)},
        # what pipelines/promote ranks banks by (promote select_by=val_objective or val_auroc for a pseudo sweep)
        metrics={
            k: v
            for k, v in meta["metrics"].items()
            if k.startswith(("val_auroc", "val_aupro", "val_objective", "test_auroc"))
        },
    )


def _register(
    folder: Path,
    value: float,
    rank: int,
    plan: SweepPlan,
    cfg: DictConfig,
    backbones: _Backbones,
    parent_id: str,
    example,
) -> dict:
    """Register one checkpoint in its trial's run; returns its ``sweep/registered.json`` record."""
    import mlflow

    from pradot.calibration import Calibration
    from pradot.checkpoint import load_state
    from pradot.model import PRADOT, PrototypeModel

    meta = json.loads((folder / CHECKPOINT_META).read_text())
    prototypes = PrototypeModel.from_state(load_state(folder / CHECKPOINT_MODEL))
    m = prototypes.config
    model = PRADOT.from_prototypes(prototypes, backbones.get(m.backbone, tuple(m.stages)))
    calibration = Calibration.calibrate(np.load(folder / CHECKPOINT_SCORES), float(cfg.calibration.quantile))
    tags = _version_tags(m, meta, plan, value, rank, parent_id, config.data_spec(cfg), calibration.threshold)
    name = config.model_name(cfg)
    with (
        tempfile.TemporaryDirectory(prefix="pradot-reg-") as tmp,
        mlflow.start_run(run_id=meta["mlflow_run_id"], nested=True),
    ):
        path = model.save(Path(tmp) / "pradot_model.pt", include_backbone=bool(cfg.tracking.include_backbone))
        model_uri = registry.log_model(path, calibration, tags, example)
    version = registry.register(model_uri, name, tags)  # the trial's run has ended: one call, every tag
    client = mlflow.MlflowClient()
    for key, text in {REGISTERED_MODEL: name, REGISTERED_VERSION: version}.items():
        client.set_tag(meta["mlflow_run_id"], key, text)
    log.info("registered %s v%s (trial %s, %s=%.4f)", name, version, meta["trial_id"], plan.metric, value)
    return {
        "rank": rank,
        "trial_id": meta["trial_id"],
        "run_id": meta["mlflow_run_id"],
        "name": name,
        "version": version,
        plan.metric: value,
    }


def register_top_k(grid, plan: SweepPlan, cfg: DictConfig, splits, parent_id: str) -> list[dict]:
    """Register the best ``plan.top_k`` trials (none when ``tracking.register`` is off); returns their records."""
    chosen = ranked(grid, plan)[: plan.top_k]
    if not chosen or plan.top_k == 0 or not cfg.tracking.register:
        return []
    backbones, example = _Backbones(cfg), tracking.example_image(splits)
    out = []
    for rank, result in enumerate(chosen, 1):
        with result.checkpoint.as_directory() as folder:
            out.append(
                _register(
                    Path(folder), float(result.metrics[plan.metric]), rank, plan, cfg, backbones, parent_id, example
                )
            )
    return out
