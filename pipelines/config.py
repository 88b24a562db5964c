"""The one path from the command line to typed objects (promote's and reproduce's own: ``pipelines.promote_settings``):
argv -> Hydra overrides -> a composed config
(``conf/<entry point>.yaml``) -> the dataclasses the pipelines and the library take.

    argv   ["data=synthetic", "model.alpha=0.3", "members=a/1,b/2"]
      -> parse_overrides      Hydra overrides (pipelines/argv.py: one argv item is one value)
      -> compose("train")     the resolved DictConfig of conf/train.yaml + overrides
      -> train_settings(cfg)  TrainSettings(data=DataSpec, model=PRADOTConfig, evaluation=..., ...)

Nothing below the entry points reads a DictConfig: they receive these objects.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pipelines import checks, schema
from pipelines.argv import CONF_DIR, keep_as_text, parse_overrides
from pipelines.checks import ConfigError
from pipelines.paths import not_utf8_message, resolve_paths
from pipelines.tiling import TilingSettings, tiling_settings
from pradot.backbone import check_weights
from pradot.engine import DataSpec, batch_size_for
from pradot.model import PRADOTConfig

__all__ = [
    "CONF_DIR",
    "ConfigError",
    "parse_overrides",
    "compose",
    "flatten",
    "parse_stages",
    "data_spec",
    "model_config",
    "model_name",
    "training_view",
    "with_overrides",
    "EvaluationSettings",
    "TrackingSettings",
    "TrainSettings",
    "train_settings",
]


def compose(root: str, overrides: Sequence[str] = ()) -> DictConfig:
    """The resolved config of ``conf/<root>.yaml`` with ``overrides``.

    Raises:
        ConfigError: a bad key or value (the message names the override and where the keys are).
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    schema.register()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            cfg = hydra_compose(config_name=root, overrides=list(overrides))
        OmegaConf.resolve(cfg)
        keep_as_text(cfg)  # a name's ``${`` stays text
    except (HydraException, OmegaConfBaseException) as e:
        text, hint = str(e), _did_you_mean(root, str(e))
        if hint:  # a misspelt key: not Hydra's "To append to your config use +key", which would train without it
            text = re.sub(r"\s*To append to your config use \+\S+", "", text)
        raise ConfigError(
            f"bad configuration override: {text}{schema.reason(e)}{hint}\n(overrides: "
            f"{' '.join(overrides)}; the config groups and keys are in {CONF_DIR})"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(not_utf8_message(CONF_DIR)) from None
    return resolve_paths(cfg)


def _did_you_mean(root: str, message: str) -> str:
    """For Hydra's "Could not override 'key'" (a key the config does not have): the existing keys closest to it,
    so that a typo is not "fixed" by appending it with ``+key`` as Hydra suggests."""
    import difflib

    m = re.search(r"Could not override '([^']+)'", message)
    if not m:
        return ""
    try:
        leaves = list(flatten(compose(root)))
    except ConfigError:
        return ""
    parts = [k.split(".") for k in leaves]
    keys = sorted({".".join(p[:i]) for p in parts for i in range(1, len(p) + 1)})  # groups and leaves
    close = difflib.get_close_matches(m.group(1), keys, n=3, cutoff=0.8)
    return f"\ndid you mean {' or '.join(close)}? (a new key needs +; a misspelt one does not)" if close else ""


def flatten(cfg: DictConfig | Mapping, prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"model.alpha": "0.3", ...}`` (lists as strings), e.g. for MLflow params."""
    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    out: dict[str, str] = {}
    for k, v in container.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)
    return out


#: roots whose own top-level keys are not training settings (promote's options, reproduce's grid)
_ENTRY_ROOTS = ("promote", "reproduce")


def _own_keys(root: str) -> set[str]:
    return {k for k in OmegaConf.load(CONF_DIR / f"{root}.yaml") if k != "defaults"}


def training_view(cfg: DictConfig) -> DictConfig:
    """The training part of any entry point's config: without the ``sweep`` group and without the
    top-level options of promote/reproduce (what a training run logs as params)."""
    drop = {"sweep", "memory_bank"}.union(*(_own_keys(r) for r in _ENTRY_ROOTS))
    return OmegaConf.create({k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in drop})


def with_overrides(cfg: DictConfig, values: Mapping[str, Any]) -> DictConfig:
    """A copy of ``cfg`` with dotted keys set (``{"model.alpha": 0.3, "backbone.stages": [2]}``)."""
    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    for key, value in values.items():
        OmegaConf.update(out, key, list(value) if isinstance(value, tuple) else value, merge=False)
    return out


# ------------------------------------------------------------------------------------- typed values
def parse_stages(value: Any, key: str = "backbone.stages") -> tuple[int, ...]:
    """``[2, 3]``, ``(2,)``, ``"2,3"``, ``"[2,3]"``, ``"2+3"`` or ``2`` -> ``(2, 3)`` (sorted, unique).

    Raises:
        ConfigError: not a non-empty list of stage indices in 0..4.
    """
    v = value
    if isinstance(v, str):
        v = checks.list_items(v.replace("+", ","))
    if isinstance(v, (int, float)):
        v = [v]
    try:
        stages = tuple(sorted({int(s) for s in v}))
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: {value!r} is not a list of stage indices") from None
    if not stages or any(s < 0 or s > 4 for s in stages):
        raise ConfigError(f"{key}: stages must be a non-empty list of indices in 0..4, got {value!r}")
    return stages


def _image_size(cfg: DictConfig) -> int:
    lo, hi = checks.IMAGE_SIZE_RANGE
    return checks.number("data.image_size", cfg.data.image_size, integer=True, lo=lo, hi=hi, why=checks.WHY_SIZE)


def data_spec(cfg: DictConfig) -> DataSpec:
    """The dataset to open: kind, root (``data_root`` over ``data.root``), category, size, validation split.

    Raises:
        ConfigError: ``data.image_size`` or ``data.validation_fraction`` out of range.
    """
    data_root = cfg.get("data_root") or cfg.data.root
    fraction = checks.number(
        "data.validation_fraction",
        cfg.data.get("validation_fraction", 0.0),
        lo=0,
        hi=1,
        hi_open=True,
        why="share of train/good held out for calibration",
    )
    return DataSpec(
        kind=str(cfg.data.kind),
        root=(str(data_root) if data_root else None),
        category=checks.path_component("category", str(cfg.category)),
        image_size=_image_size(cfg),
        validation_fraction=fraction,
        augmentation=cfg.data.get("augmentation"),
        generator=(dict(cfg.data.generator) if cfg.data.get("generator") else None),
        seed=int(cfg.seed),
        options=(
            {k: v for k, v in OmegaConf.to_container(cfg.data.options).items() if v is not None}
            if cfg.data.get("options")
            else None
        ),
    )


#: PRADOTConfig's settings -> the configuration keys that set them (errors name the key and its override)
_MODEL_GROUP = (
    "alpha",
    "n",
    "eta",
    "epsilon",
    "sinkhorn_iters",
    "epochs",
    "aggregation",
    "smoothing_sigma",
    "feature_metric",
)
MODEL_KEYS = {"backbone": "backbone.name", "stages": "backbone.stages", "image_size": "data.image_size", "seed": "seed"}
MODEL_KEYS.update({k: f"model.{k}" for k in _MODEL_GROUP}, batch_ratio="model.batch_ratio")


def model_config(cfg: DictConfig) -> PRADOTConfig:
    """PRADOT's hyper-parameters from the ``model`` and ``backbone`` groups. PRADOTConfig's own checks are the
    range checks; a bad value raises :class:`checks.KeyedSettingError` naming the key and the override."""
    m = cfg.model
    with checks.settings_keys(MODEL_KEYS):
        return PRADOTConfig(
            backbone=str(cfg.backbone.name),
            stages=parse_stages(cfg.backbone.stages),
            image_size=cfg.data.image_size,
            alpha=m.alpha,
            n=m.n,
            eta=m.eta,
            epsilon=m.epsilon,
            sinkhorn_iters=m.sinkhorn_iters,
            batch_size=batch_size_for(m.n, m.batch_ratio),
            epochs=m.epochs,
            seed=cfg.seed,
            learn_coordinates=bool(m.learn_coordinates),
            warm_start=bool(m.warm_start),
            aggregation=m.get("aggregation", 1),
            concat_stages=bool(m.get("concat_stages", False)),
            smoothing_sigma=m.get("smoothing_sigma", 0.0),
            feature_metric=str(m.get("feature_metric", "cosine")),
        )


def _checked_model(cfg: DictConfig) -> PRADOTConfig:
    """:func:`model_config` for a training run: the data's image size and the training's epochs (>= 1) first,
    then the library's checks (ConfigError naming the key)."""
    _image_size(cfg)
    checks.training_epochs(cfg.model)
    try:
        return model_config(cfg)
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(f"model settings: {e} ({checks.how_to_set('model.batch_ratio')})") from None


def model_name(cfg: DictConfig) -> str:
    """The registered model's name: ``tracking.model_name``, else ``pradot-<dataset>-<category>``.

    Raises:
        ConfigError: not a name the registry accepts, or one that would leave its folder (``../x``).
    """
    return checks.registry_name(
        "tracking.model_name", str(cfg.tracking.get("model_name") or f"pradot-{cfg.data.kind}-{cfg.category}")
    )


@dataclass(frozen=True)
class EvaluationSettings:
    batch_size: int = 16
    n_overlays: int = 8
    figures: bool = True
    umap_max_points: int = 3000
    write_tiffs: bool = True


@dataclass(frozen=True)
class TrackingSettings:
    experiment_name: str = "pradot"
    register: bool = True
    model_name: str = ""
    include_backbone: bool = True


@dataclass(frozen=True)
class TrainSettings:
    """Everything a training run uses, typed (``train_settings`` builds it from ``conf/train.yaml``)."""

    data: DataSpec
    model: PRADOTConfig
    device: str
    num_workers: int
    cache_dir: str | None  # None: the feature cache is off
    weights_path: str | None
    evaluation: EvaluationSettings
    calibration_quantile: float
    tracking: TrackingSettings
    fail_at_epoch: int | None = None
    calibration_pixel_quantile: float | None = None  # None: calibration_quantile (masks: map > pixel threshold)
    tiling: TilingSettings | None = None  # model.tiling (pipelines.tiling); None: whole images

    @property
    def run_name(self) -> str:
        stages = "+".join(str(s) for s in self.model.stages)
        return f"{self.data.kind}-{self.data.category}-s{stages}-a{self.model.alpha}-n{self.model.n}"


def _evaluation(cfg: DictConfig) -> EvaluationSettings:
    e = cfg.evaluation
    return EvaluationSettings(
        figures=bool(e.figures),
        write_tiffs=bool(e.write_tiffs),
        **checks.counts("evaluation", e, batch_size=1, n_overlays=0, umap_max_points=0),
    )


def _tracking(cfg: DictConfig) -> TrackingSettings:
    t = cfg.tracking
    return TrackingSettings(
        experiment_name=checks.experiment_name("tracking.experiment_name", str(t.experiment_name)),
        register=bool(t.register),
        model_name=model_name(cfg),
        include_backbone=bool(t.include_backbone),
    )


def train_settings(cfg: DictConfig) -> TrainSettings:
    """``conf/train.yaml`` (composed) -> :class:`TrainSettings`: every value checked before any work.

    Raises:
        ConfigError: a value out of range or a name the registry refuses (the message names the key).
        pradot.device.DeviceError: ``device`` names a device this machine does not have.
        pradot.backbone.BackboneError: the backbone's weights are neither here nor downloadable now.
    """
    from pradot.device import resolve_device

    debug = cfg.get("debug") or {}
    fail_at = debug.get("fail_at_epoch") if debug else None
    resolve_device(str(cfg.device))
    quantile = checks.number(
        "calibration.quantile",
        cfg.calibration.quantile,
        lo=0,
        lo_open=True,
        hi=1,
        why="the decision threshold is this quantile of the validation normals' scores",
    )
    pixel_q = cfg.calibration.get("pixel_quantile")
    if pixel_q is not None:
        pixel_q = checks.number(
            "calibration.pixel_quantile",
            pixel_q,
            lo=0,
            lo_open=True,
            hi=1,
            why="the pixel threshold is this quantile of the validation normals' map pixels",
        )
    settings = TrainSettings(
        data=data_spec(cfg),
        model=_checked_model(cfg),
        device=str(cfg.device),
        num_workers=checks.number("num_workers", cfg.num_workers, integer=True, lo=0),
        cache_dir=str(cfg.cache.dir) if cfg.cache.enabled else None,
        weights_path=cfg.backbone.get("weights_path"),
        evaluation=_evaluation(cfg),
        calibration_quantile=quantile,
        tracking=_tracking(cfg),
        fail_at_epoch=int(fail_at) if fail_at is not None else None,
        calibration_pixel_quantile=pixel_q,
        tiling=tiling_settings(cfg),
    )
    # last, after the settings' own checks: the backbone's weights can be had (one line, not a download
    # retried for minutes in the middle of the run)
    check_weights(settings.model.backbone, settings.weights_path)
    return settings


def resolved_yaml(cfg: DictConfig) -> str:
    """The resolved config as YAML (logged with every run)."""
    return OmegaConf.to_yaml(cfg)
