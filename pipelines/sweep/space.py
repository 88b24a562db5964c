"""The search space, keyed by the training config's paths (``sweep.search_space`` of ``conf/sweep/``).

    search_space:                                   # -> SearchSpace(dimensions=(
      model:                                        #      Dimension("model.alpha", "uniform", 0.0, 1.0),
        alpha: {type: uniform, low: 0.0, high: 1.0} #      Dimension("model.n", "choice", values=(4, 8)),
        n: {type: choice, values: [4, 8]}           #    ))
        eta: null                                   # null: not searched (the training config's value)

A leaf is a dict with ``type`` (uniform | loguniform | int | choice | const); a bare list is a choice, a
bare value a constant. The short names of earlier releases (``alpha``, ``stages``, ...) are aliases of
the paths, in the YAML and in command-line overrides (:func:`alias_overrides`).

A value is checked by building what the trial would build with it (the trial's ``PRADOTConfig`` and
its banks, :func:`_check_with_library`); only what the library cannot know is checked here (types,
``low < high``, a log range above 0, ``batch_ratio >= 1``, the stage and backbone names).
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from pipelines import checks, config
from pipelines.cli import UsageError

__all__ = [
    "SweepError",
    "SEARCHABLE",
    "ALIASES",
    "SPACE_TYPES",
    "Dimension",
    "SearchSpace",
    "parse_space",
    "canonical_path",
    "alias_overrides",
    "as_number",
]

#: numeric paths and the Python type of their values
NUMERIC: dict[str, type] = {
    "model.alpha": float,
    "model.n": float,
    "model.eta": float,
    "model.epsilon": float,
    "model.batch_ratio": float,
    "model.sinkhorn_iters": int,
}
CATEGORICAL = ("backbone.stages", "backbone.name")
SEARCHABLE: tuple[str, ...] = (*NUMERIC, *CATEGORICAL)
#: the short names of earlier releases
ALIASES: dict[str, str] = {
    "alpha": "model.alpha",
    "n": "model.n",
    "eta": "model.eta",
    "epsilon": "model.epsilon",
    "batch_ratio": "model.batch_ratio",
    "sinkhorn_iters": "model.sinkhorn_iters",
    "stages": "backbone.stages",
    "backbone": "backbone.name",
}
SPACE_TYPES = ("uniform", "loguniform", "int", "choice", "const")
#: whole numbers of these paths are kept as ints (n=4, not 4.0: the prototype count per cell)
_WHOLE = ("model.n", "model.batch_ratio")
_SPEC_KEYS = {"type", "low", "high", "values", "value"}
_PREFIXES = {p.rsplit(".", 1)[0] for p in SEARCHABLE}
_OVERRIDE = re.compile(r"^(?P<head>[+~]*sweep\.search_space\.)(?P<name>\w+)(?P<rest>\.[^=]*)?(?P<value>=.*)?$", re.S)


class SweepError(UsageError):
    """Bad sweep input or environment; the message says what and how to fix it."""


def canonical_path(key: str) -> str:
    """``alpha`` -> ``model.alpha``; a config path stays as it is."""
    return ALIASES.get(key, key)


def alias_overrides(overrides: Sequence[str]) -> list[str]:
    """Command-line overrides with the short names rewritten to config paths, so the README's
    ``sweep.search_space.alpha=null`` and ``+sweep.search_space.stages={...}`` reach the config's keys
    (``sweep.search_space.backbone.stages=...`` is a path already: ``backbone`` is also a namespace)."""
    out = []
    for item in overrides:
        m = _OVERRIDE.match(item)
        namespace = m and m["name"] == "backbone" and (m["rest"] or "").split(".")[1:2] in (["stages"], ["name"])
        if m and m["name"] in ALIASES and not namespace:
            item = f"{m['head']}{ALIASES[m['name']]}{m['rest'] or ''}{m['value'] or ''}"
        out.append(item)
    return out


def as_number(key: str, value: Any, kind: type = float) -> float | int:
    """``value`` as ``kind``, finite; the message names ``key``."""
    if isinstance(value, bool):
        raise SweepError(f"{key}: {value!r} is not a number")
    try:
        x = kind(value)
    except (TypeError, ValueError):
        raise SweepError(f"{key}: {value!r} is not a number") from None
    if isinstance(x, float) and not math.isfinite(x):
        raise SweepError(f"{key}: {value!r} is not finite")
    return x


@dataclass(frozen=True)
class Dimension:
    """One searched (or constant) config path. ``values``: a choice's values, or a constant's one value.
    Stages are kept as ``"2,3"`` (Optuna's choices are plain values, not lists)."""

    path: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    values: tuple = ()

    @property
    def searched(self) -> bool:
        return self.type != "const"

    def spanned(self) -> list:
        """The values a trial may get at the extremes: a choice's values, a range's ends."""
        return list(self.values) if self.type in ("choice", "const") else [self.low, self.high]

    def to_dict(self) -> dict[str, Any]:
        if self.type == "const":
            return {"type": "const", "value": self.values[0]}
        if self.type == "choice":
            return {"type": "choice", "values": list(self.values)}
        return {"type": self.type, "low": self.low, "high": self.high}

    def domain(self):
        """Tune's sampling domain (``int``: ``high`` inclusive)."""
        from ray import tune

        if self.type == "uniform":
            return tune.uniform(self.low, self.high)
        if self.type == "loguniform":
            return tune.loguniform(self.low, self.high)
        if self.type == "int":
            return tune.randint(self.low, self.high + 1)
        return tune.choice(list(self.values))


@dataclass(frozen=True)
class SearchSpace:
    dimensions: tuple[Dimension, ...]

    def get(self, path: str) -> Dimension | None:
        return next((d for d in self.dimensions if d.path == path), None)

    def to_dict(self) -> dict[str, dict]:
        """``{path: spec}`` (the ``sweep/search_space.yaml`` artifact)."""
        return {d.path: d.to_dict() for d in self.dimensions}

    def param_space(self) -> dict[str, Any]:
        """Tune's ``param_space``: ``{path: domain}`` of the searched dimensions (constants are not sampled)."""
        return {d.path: d.domain() for d in self.dimensions if d.searched}

    def spanned(self, path: str, default: Any) -> list:
        d = self.get(path)
        return d.spanned() if d is not None else [default]

    def stage_sets(self, default: Any) -> list[tuple[int, ...]]:
        """Every stage set a trial may use (``default``: the training config's ``backbone.stages``)."""
        return [config.parse_stages(v) for v in self.spanned("backbone.stages", default)]

    def trial_overrides(self, sampled: Mapping[str, Any]) -> dict[str, Any]:
        """``{path: value}`` a trial applies to the training config: the constants and Tune's sampled
        values (keys may be short names: a sweep started by an earlier release)."""
        out = {d.path: d.values[0] for d in self.dimensions if not d.searched}
        out.update({canonical_path(k): v for k, v in sampled.items() if canonical_path(k) in SEARCHABLE})
        if "backbone.stages" in out:
            out["backbone.stages"] = list(config.parse_stages(out["backbone.stages"]))
        return out


# ------------------------------------------------------------------------------------- parsing
def _leaves(raw: Mapping, prefix: str = "") -> list[tuple[str, str, Any]]:
    """(config path, key as written, spec) of every leaf; nested dicts without ``type`` are walked."""
    out = []
    for key, value in raw.items():
        written = f"{prefix}{key}"
        if isinstance(value, Mapping) and value and not (_SPEC_KEYS & set(value)):
            out.extend(_leaves(value, written + "."))
        else:
            out.append((canonical_path(written), written, value))
    return out


def _check_with_library(cfg: DictConfig, path: str, value: Any) -> None:
    """Build the trial's ``PRADOTConfig`` and banks with ``path = value`` (the banks on the finest grid a
    stage can have, so only values no grid accepts fail); the library's message on a bad value."""
    from pradot.prototypes import BankConfig

    with warnings.catch_warnings():  # the paper's batch/n ratio warning is for trials, not for this check
        warnings.simplefilter("ignore")
        m = config.model_config(config.with_overrides(cfg, {path: value}))
        for s in m.stages:
            BankConfig(
                stage=s,
                alpha=m.alpha,
                n=m.n,
                grid=(m.image_size, m.image_size),
                dim=1,
                backbone=m.backbone,
                image_size=m.image_size,
                eta=m.eta,
                epsilon=m.epsilon,
                sinkhorn_iters=m.sinkhorn_iters,
            )


def _checked_value(cfg: DictConfig, path: str, key: str, value: Any) -> Any:
    """One value of a leaf, checked and normalised (stages -> ``"2,3"``, whole n / batch_ratio -> int)."""
    from pradot.backbone import BACKBONES

    if path == "backbone.stages":
        try:
            return ",".join(map(str, config.parse_stages(value, key=key)))
        except config.ConfigError as e:
            raise SweepError(str(e)) from None
    if path == "backbone.name":
        if str(value) not in BACKBONES:
            raise SweepError(f"{key}: unknown backbone {value!r}; available: {list(BACKBONES)}")
        return str(value)
    x = as_number(key, value, NUMERIC[path])
    if path == "model.batch_ratio" and x < 1:
        raise SweepError(f"{key}: {value!r} must be >= 1 (batch size = batch_ratio x n images)")
    if path in _WHOLE and float(x).is_integer():
        x = int(x)
    try:
        _check_with_library(cfg, path, x)
    except checks.KeyedSettingError as e:  # the library's range check, worded for the search space
        what = f"{value!r}" if e.key == path else f"{value!r} makes {e.key}={e.value!r}, which"
        raise SweepError(f"{key}: {what} {e.reason}") from None
    except ValueError as e:
        raise SweepError(f"{key}: {value!r}: {e}") from None
    return x


def _dimension(cfg: DictConfig, path: str, written: str, spec: Any) -> Dimension:
    key = f"sweep.search_space.{written}"
    if not isinstance(spec, Mapping):  # a bare list: a choice; a bare value: a constant
        spec = (
            {"type": "choice", "values": list(spec)}
            if isinstance(spec, (list, tuple))
            else {"type": "const", "value": spec}
        )
    t = str(spec.get("type", "")).lower()
    if t not in SPACE_TYPES:
        raise SweepError(f"{key}: type {spec.get('type')!r} is not one of {list(SPACE_TYPES)}")
    extra = set(spec) - _SPEC_KEYS
    if extra:
        raise SweepError(f"{key}: unknown keys {sorted(extra)} (use type, low, high, values, value)")
    if t == "const":
        if "value" not in spec:
            raise SweepError(f"{key}: type const needs value")
        return Dimension(path, t, values=(_checked_value(cfg, path, key, spec["value"]),))
    if t == "choice":
        values = spec.get("values")
        if not isinstance(values, (list, tuple)) or not values:
            raise SweepError(f"{key}: type choice needs a non-empty list of values")
        return Dimension(path, t, values=tuple(dict.fromkeys(_checked_value(cfg, path, key, v) for v in values)))
    if path in CATEGORICAL:
        raise SweepError(f"{key}: use type choice (or const), not {t}")
    if "low" not in spec or "high" not in spec:
        raise SweepError(f"{key}: type {t} needs low and high")
    lo, hi = (_checked_value(cfg, path, key, spec[k]) for k in ("low", "high"))
    if t == "int":
        lo, hi = int(lo), int(hi)
    if not lo < hi:
        raise SweepError(f"{key}: low {lo} must be < high {hi}")
    if t == "loguniform" and lo <= 0:
        raise SweepError(f"{key}: loguniform needs low > 0, got {lo}")
    return Dimension(path, t, lo, hi)


def parse_space(raw: Mapping | None, cfg: DictConfig) -> SearchSpace:
    """``sweep.search_space`` (a plain dict) -> :class:`SearchSpace`, every value checked against the
    training config ``cfg``.

    Raises:
        SweepError: empty, unknown paths, a path given twice, bad types or values.
    """
    searchable = list(SEARCHABLE)
    if not isinstance(raw, Mapping) or not raw:
        raise SweepError(
            "sweep.search_space is empty: give at least one parameter to search, e.g. "
            "sweep.search_space.model.alpha='{type: uniform, low: 0, high: 1}' "
            f"(parameters: {searchable})"
        )
    leaves = _leaves(raw)
    unknown = [w for p, w, v in leaves if p not in SEARCHABLE and not (v is None and w in _PREFIXES)]
    if unknown:
        raise SweepError(
            f"sweep.search_space: unknown parameter(s) {unknown}; searchable parameters: "
            f"{searchable} (or their short names {list(ALIASES)})"
        )
    given = [(p, w, v) for p, w, v in leaves if v is not None and p in SEARCHABLE]  # null: not searched
    twice = sorted({p for p, _, _ in given if sum(q == p for q, _, _ in given) > 1})
    if twice:
        raise SweepError(f"sweep.search_space: {twice} given twice (as a config path and as its short name)")
    dims = tuple(_dimension(cfg, p, w, v) for p, w, v in given)
    if not dims:
        raise SweepError(f"sweep.search_space is empty (every parameter is null): search at least one of {searchable}")
    if not any(d.searched for d in dims):
        raise SweepError("sweep.search_space has only constants: nothing to search")
    return SearchSpace(dims)
