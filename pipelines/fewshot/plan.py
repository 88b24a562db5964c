"""The few-shot entry point's settings as one typed :class:`FewShotPlan`, checked before anything starts or
is logged (:func:`fewshot_plan`), and the check that needs the opened dataset (:func:`check_against_data`).

```python
plan = fewshot_plan(config.compose("fewshot", overrides))   # raises ConfigError on bad input
plan.foct, plan.shots, plan.splits, plan.variants()          # FOCTConfig, (1, 2, 4), 10, [Variant(...)]
```
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pipelines import checks, config
from pipelines.config import ConfigError
from pradot.engine import DataSpec
from pradot.fewshot import FOCTConfig
from pradot.fewshot.protocol import Variant, ablation_variants, support_indices

__all__ = ["QUERY_ORDERS", "FewShotPlan", "fewshot_plan", "foct_config", "check_against_data"]

QUERY_ORDERS = ("shuffled", "dataset")


@dataclass(frozen=True)
class FewShotPlan:
    """Everything a few-shot run uses, typed."""

    data: DataSpec
    foct: FOCTConfig
    shots: tuple[int, ...]
    splits: int
    seed: int
    shuffle: bool
    ablation: bool
    register: bool
    model_name: str
    calibration_images: int
    calibration_quantile: float
    device: str
    num_workers: int
    cache_dir: str | None
    weights_path: str | None
    experiment_name: str
    include_backbone: bool
    threads: int | None = None  # torch CPU threads (None: torch's default)

    @property
    def run_name(self) -> str:
        shots = "-".join(str(s) for s in self.shots)
        return f"fewshot-{self.data.kind}-{self.data.category}-{shots}shot"

    def support(self, n_train: int, shots: int, split: int):
        """The sorted train indices of the (shots, split) support (nested across shots, disjoint across splits
        when train/good is large enough: :func:`pradot.fewshot.protocol.support_indices`)."""
        return support_indices(n_train, shots, split, self.seed, max_shots=max(self.shots), splits=self.splits)

    def variants(self) -> list[Variant]:
        """The rows to run: the configured variant, or Table 3's four (``ablation``); the last is registered."""
        return ablation_variants(self.foct, self.ablation)


def _positive_ints(key: str, value: Any) -> tuple[int, ...]:
    try:
        out = tuple(int(x) for x in checks.list_items(value))
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be a list of positive integers (e.g. [1,2,4]), got {value!r}") from None
    if not out or any(x < 1 for x in out) or len(set(out)) != len(out):
        raise ConfigError(f"{key} must be a non-empty list of distinct positive integers, got {value!r}")
    return tuple(sorted(out))


def foct_config(cfg: DictConfig) -> FOCTConfig:
    """FOCT's hyper-parameters: ``fewshot.foct`` with the backbone, stages, image size and seed of the run.

    Raises:
        ConfigError: an unknown key or a value FOCTConfig refuses (the message names it).
    """
    values = dict(OmegaConf.to_container(cfg.fewshot.foct, resolve=True))
    known = {f.name for f in fields(FOCTConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown fewshot.foct keys {unknown}; known: {sorted(known)}")
    values.update(
        backbone=str(cfg.backbone.name),
        stages=config.parse_stages(cfg.backbone.stages),
        image_size=int(cfg.data.image_size),
        seed=int(cfg.seed),
    )
    for key in ("online",):
        values[key] = checks.boolean(f"fewshot.foct.{key}", values[key])
    try:
        return FOCTConfig(**values)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"fewshot.foct: {e}") from None


def fewshot_plan(cfg: DictConfig) -> FewShotPlan:
    """``conf/fewshot.yaml`` (composed) -> :class:`FewShotPlan`.

    Raises:
        ConfigError: bad shots, splits, query order, calibration settings or FOCT hyper-parameters.
    """
    f = cfg.fewshot
    splits = int(f.splits)
    if splits < 1:
        raise ConfigError(f"fewshot.splits must be >= 1 (the paper: 10), got {f.splits!r}")
    order = str(f.query_order)
    if order not in QUERY_ORDERS:
        raise ConfigError(f"fewshot.query_order must be one of {list(QUERY_ORDERS)}, got {order!r}")
    if int(f.calibration_images) < 1:
        raise ConfigError(f"fewshot.calibration_images must be >= 1, got {f.calibration_images!r}")
    threads = f.get("threads")
    if threads is not None and int(threads) < 1:
        raise ConfigError(f"fewshot.threads must be >= 1 or null, got {threads!r}")
    quantile = float(cfg.calibration.quantile)
    if not 0.0 < quantile <= 1.0:
        raise ConfigError(f"calibration.quantile must lie in (0, 1], got {quantile}")
    name = str(f.get("model_name") or f"foct-{cfg.data.kind}-{cfg.category}")
    plan = FewShotPlan(
        data=config.data_spec(cfg),
        foct=foct_config(cfg),
        shots=_positive_ints("fewshot.shots", f.shots),
        splits=splits,
        seed=int(f.seed),
        shuffle=order == "shuffled",
        ablation=checks.boolean("fewshot.ablation", f.ablation),
        register=checks.boolean("fewshot.register", f.register),
        model_name=name,
        calibration_images=int(f.calibration_images),
        calibration_quantile=quantile,
        device=str(cfg.device),
        num_workers=int(cfg.num_workers),
        cache_dir=str(cfg.cache.dir) if cfg.cache.enabled else None,
        weights_path=cfg.backbone.get("weights_path"),
        experiment_name=str(cfg.tracking.experiment_name),
        include_backbone=bool(cfg.tracking.include_backbone),
        threads=int(threads) if threads is not None else None,
    )
    _check_mask_sources(plan)
    return plan


def _check_mask_sources(plan: FewShotPlan) -> None:
    """Build every variant's mask source now (SAM: weights file and package), so a missing one stops the run
    before anything is logged."""
    from pradot.fewshot.foreground import mask_source

    for v in plan.variants():
        try:
            mask_source(v.foreground, sam_checkpoint=plan.foct.sam_checkpoint, sam_model_type=plan.foct.sam_model_type)
        except ValueError as e:
            raise ConfigError(f"fewshot.foct: {e}") from None


def check_against_data(plan: FewShotPlan, n_train: int, n_test: int, test_labels: Sequence[int] | None = None) -> None:
    """Refuse shot counts larger than train/good, and a test split without both normal and anomalous images
    (nothing to measure), before any run is started.

    Raises:
        ConfigError: with the numbers and what to change.
    """
    if max(plan.shots) > n_train:
        raise ConfigError(
            f"fewshot.shots={list(plan.shots)} asks for {max(plan.shots)} support images but "
            f"{plan.data.kind}/{plan.data.category} has {n_train} training images; lower the shots"
        )
    if n_test == 0:
        raise ConfigError(
            f"{plan.data.kind}/{plan.data.category} has no test images: the few-shot protocol scores the test split"
        )
    if test_labels is not None and len(set(int(y) for y in test_labels)) < 2:
        only = "anomalous" if int(test_labels[0]) else "normal"
        raise ConfigError(
            f"{plan.data.kind}/{plan.data.category}: all {n_test} test images are {only}; the "
            f"few-shot protocol's AUROC and F1-max need normal and anomalous test images"
        )
