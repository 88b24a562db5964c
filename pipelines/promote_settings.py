"""The settings of ``promote`` and ``reproduce`` (``conf/promote.yaml``, ``conf/reproduce.yaml``) as typed
objects: :class:`PromoteOptions` and :class:`ReproduceGrid`, built from a composed config
(:func:`pipelines.config.compose`) with the same checks and messages as every other setting (``pipelines.checks``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pipelines import checks
from pipelines.checks import ConfigError

__all__ = ["NORMALISATIONS", "FUSIONS", "PromoteOptions", "promote_options", "ReproduceGrid", "reproduce_grid"]

# ------------------------------------------------------------------------------------- promote
NORMALISATIONS = ("none", "per_member")
#: how promote fuses the chosen members: the paper's mean, or weights searched on the validation objective
FUSIONS = ("mean", "search")


@dataclass(frozen=True)
class PromoteOptions:
    """promote's own settings (``conf/promote.yaml``). Members, weights and the alias are chosen on
    ``objective`` (a validation metric); ``metric`` (a test metric) only orders the report."""

    members: tuple[str, ...] = ()  # () = every registered version, the best per group on the objective
    metric: str = "image_auroc"
    select_by: str | None = None  # a val_* version tag that pre-selects one version per group
    normalisation: str = "none"
    alias: str = "champion"
    force: bool = False
    ensemble_name: str | None = None
    fusion: str = "mean"
    objective: str = "val_objective"
    weight_step: float = 0.25
    max_members: int | None = None
    eval_size: int | None = None
    pseudo: Any = None  # pipelines.objective.PseudoOptions
    refit: bool = False  # refit the chosen members on every normal (pipelines.promote.refit)

    @property
    def selection_metric(self) -> str:
        """What chooses the members: the validation ``objective``."""
        return self.objective


def _names(value: Any) -> tuple[str, ...]:
    if value in (None, ""):
        return ()
    items = value if isinstance(value, (list, tuple)) or OmegaConf.is_list(value) else str(value).split(",")
    return tuple(str(m).strip() for m in items if str(m).strip())


def _validation_key(key: str, value: Any) -> str | None:
    """A ``val_*`` metric name (or None): test metrics never choose."""
    text = str(value).strip() if value not in (None, "") else ""
    if text and not text.startswith("val_"):
        raise ConfigError(
            f"{key}={text!r}: promote chooses on validation metrics only (val_objective, val_auroc, "
            f"...); test metrics such as {text!r} are reported, never used to choose (set metric= "
            f"to order the report by it)"
        )
    return text or None


def _selection(cfg: DictConfig) -> dict:
    from pipelines.objective import PseudoOptions

    sel = cfg.get("selection") or {}
    pa = sel.get("pseudo_anomalies") or {}
    pseudo = PseudoOptions(
        kinds=tuple(str(k) for k in pa.get("kinds", PseudoOptions.kinds)),
        per_image=int(pa.get("per_image", 1)),
        seed=int(pa.get("seed", 0)),
        patch_fraction=checks.interval(
            "selection.pseudo_anomalies.patch_fraction", pa.get("patch_fraction", PseudoOptions.patch_fraction)
        ),
        contrast=checks.interval(
            "selection.pseudo_anomalies.contrast", pa.get("contrast", PseudoOptions.contrast), closed=True
        ),
    )
    step = float(sel.get("weight_step", 0.25))
    if not (0 < step <= 1) or abs(1 / step - round(1 / step)) > 1e-9:
        raise ConfigError(f"selection.weight_step must divide 1 (0.5, 0.25, 0.2, ...), got {step}")
    max_members = sel.get("max_members")
    eval_size = sel.get("eval_size")
    return {
        "weight_step": step,
        "max_members": int(max_members) if max_members not in (None, "") else None,
        "eval_size": int(eval_size) if eval_size not in (None, "") else None,
        "pseudo": pseudo,
        "refit": checks.boolean("selection.refit", sel.get("refit", False)),
    }


def promote_options(cfg: DictConfig) -> PromoteOptions:
    """The promote options of ``conf/promote.yaml`` (top-level keys ``members``, ``fusion``, ...).

    Raises:
        ConfigError: an unknown normalisation or fusion, a test metric as ``objective``/``select_by``, a bad
            weight step.
    """
    normalisation = str(cfg.normalisation)
    if normalisation not in NORMALISATIONS:
        raise ConfigError(
            f"normalisation must be 'none' (the paper: mean of the maps) or 'per_member' "
            f"(standardise each member's map on validation normals), got {normalisation!r}"
        )
    fusion = str(cfg.get("fusion", "mean"))
    if fusion not in FUSIONS:
        raise ConfigError(
            f"fusion must be 'mean' (the paper: the members' maps averaged) or 'search' (members and "
            f"weights chosen on the validation objective), got {fusion!r}"
        )
    return PromoteOptions(
        members=_names(cfg.get("members")),
        metric=str(cfg.metric).strip(),
        select_by=_validation_key("select_by", cfg.get("select_by")),
        normalisation=normalisation,
        alias=checks.alias_name("alias", str(cfg.alias).strip()),
        force=checks.boolean("force", cfg.get("force", False)),
        ensemble_name=checks.registry_name("ensemble_name", str(cfg.ensemble_name))
        if cfg.get("ensemble_name")
        else None,
        fusion=fusion,
        objective=_validation_key("objective", cfg.get("objective", "val_objective")) or "val_objective",
        **_selection(cfg),
    )


# ------------------------------------------------------------------------------------- reproduce
@dataclass(frozen=True)
class ReproduceGrid:
    """The members ``reproduce`` trains: every (stage, alpha) pair (the paper: stages 2, 3 x alpha 0, 0.3);
    the members of ``mahalanobis_stages`` score with ``model.feature_metric=mahalanobis`` (the paper: none)."""

    stages: tuple[int, ...] = (2, 3)
    alphas: tuple[float, ...] = (0.0, 0.3)
    mahalanobis_stages: tuple[int, ...] = ()

    def members(self) -> list[tuple[int, float]]:
        return [(s, a) for s in self.stages for a in self.alphas]

    def overrides(self, stage: int) -> dict[str, str]:
        """The per-stage model settings of a member (``{"model.feature_metric": "mahalanobis"}`` or none)."""
        return {"model.feature_metric": "mahalanobis"} if stage in self.mahalanobis_stages else {}


def _floats(key: str, value: Any) -> tuple[float, ...]:
    try:
        out = tuple(float(x) for x in checks.list_items(value))
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be comma-separated numbers, got {value!r}") from None
    if not out:
        raise ConfigError(f"{key} is empty")
    return out


def reproduce_grid(cfg: DictConfig) -> ReproduceGrid:
    """``stages`` x ``alphas`` and ``mahalanobis_stages`` of ``conf/reproduce.yaml``.

    Raises:
        ConfigError: not numbers, empty, duplicates, or a Mahalanobis stage that is not in ``stages``.
    """
    stages = tuple(int(s) for s in _floats("stages", cfg.stages))
    alphas = _floats("alphas", cfg.alphas)
    if len(set(stages)) != len(stages) or len(set(alphas)) != len(alphas):
        raise ConfigError(f"stages {stages} / alphas {alphas} contain duplicates")
    items = checks.list_items(cfg.get("mahalanobis_stages") or [])
    maha = tuple(int(s) for s in _floats("mahalanobis_stages", items)) if items else ()
    if not set(maha) <= set(stages):
        raise ConfigError(
            f"mahalanobis_stages {list(maha)} must be stages of the grid {list(stages)} (the members that score with "
            f"model.feature_metric=mahalanobis); e.g. mahalanobis_stages=[2] or mahalanobis_stages=[]"
        )
    return ReproduceGrid(stages, alphas, maha)
