"""What a setting may be, checked before any run starts: numeric ranges and the user-given names that
become folders or registry names. A library settings class's own checks are the range check of its
fields (``PRADOTConfig``: alpha, n, eta, ...): :func:`settings_keys` only adds the key and the override to
its error; :func:`number` checks the keys no library class owns with the same rule
(:func:`pradot.ranges.number`). Every error names the key, the value, the valid range and how to change
it (the Hydra override and, where there is one, the MLproject parameter).

``pipelines.config``'s builders (``train_settings``, ``promote_options``, ...) and the sweep's plan call
these, so a bad value stops an entry point before it opens a dataset, starts an MLflow run or trains.
"""

from __future__ import annotations

import math
import posixpath
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from pradot import ranges
from pradot.errors import InputError
from pradot.ranges import IMAGE_SIZE_RANGE, MAX_N, WHY_SIZE

__all__ = [
    "ConfigError",
    "IMAGE_SIZE_RANGE",
    "MAX_N",
    "how_to_set",
    "boolean",
    "KeyedSettingError",
    "WHY_SIZE",
    "number",
    "interval",
    "settings_keys",
    "training_epochs",
    "counts",
    "registry_name",
    "experiment_name",
    "alias_name",
    "folder_name",
    "path_component",
    "batch_fits_data",
]


class ConfigError(InputError):
    """A bad override or configuration value; the message names the key and how to fix it."""


def list_items(value: Any) -> list:
    """The items of a list setting: a list, tuple or OmegaConf list as it is; text (an MLproject parameter,
    ``"1,2,4"`` or ``"[1,2,4]"``) split at commas. The caller converts and checks the items."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        return list(value)
    return [x for x in str(value).replace("[", "").replace("]", "").split(",") if x.strip()]


def interval(key: str, value: Any, closed: bool = False) -> tuple[float, float]:
    """A ``[min, max]`` fraction setting: ``0 < min <= max < 1`` (``<= 1`` when ``closed``).

    Raises:
        ConfigError: not two numbers in that range, naming ``key``.
    """
    items = list_items(value)
    try:
        lo, hi = (float(items[0]), float(items[1])) if len(items) == 2 else (math.nan, math.nan)
    except ValueError:
        lo = hi = math.nan
    if not (0 < lo <= hi and (hi <= 1 if closed else hi < 1)):
        raise ConfigError(f"{key} must be [min, max] with 0 < min <= max {'<=' if closed else '<'} 1, got {value}")
    return lo, hi


def boolean(key: str, value: Any) -> bool:
    """A true/false setting: a bool, or ``true``/``false``/``1``/``0``/``yes``/``no`` as text (an MLproject
    parameter arrives as a string).

    Raises:
        ConfigError: anything else, naming ``key``.
    """
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in ("true", "false", "1", "0", "yes", "no"):
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    return text in ("true", "1", "yes")


#: keys that MLproject entry points take as their own parameter (-P name=value)
_MLPROJECT = {
    "model.epochs": "epochs",
    "model.batch_ratio": "batch_ratio",
    "model.n": "n",
    "model.alpha": "alpha",
    "model.eta": "eta",
    "model.epsilon": "epsilon",
    "data.image_size": "image_size",
    "seed": "seed",
    "sweep.name": "name",
    "alias": "alias",
    "members": "members",
    "category": "category",
    "quantile": "quantile",
    "threshold": "threshold",
    "model_uri": "model_uri",
    "overwrite": "overwrite",
}


def how_to_set(key: str) -> str:
    """``"override model.epochs=<value> (MLproject: -P epochs=<value>)"``."""
    param = _MLPROJECT.get(key)
    mlproject = f"-P {param}=<value>" if param else f'-P overrides="{key}=<value>"'
    return f"change it with the override {key}=<value> (MLproject: {mlproject})"


class KeyedSettingError(ConfigError):
    """A library :class:`~pradot.ranges.SettingError` with the configuration key that set the value: the
    message adds the key and how to change it; ``key``, ``value`` and ``reason`` stay available (the sweep
    words its own message from them)."""

    def __init__(self, key: str, value: Any, reason: str):
        self.key, self.value, self.reason = key, value, reason
        super().__init__(f"{key}={value!r} {reason}; {how_to_set(key)}")


def number(
    key: str,
    value: Any,
    *,
    integer: bool = False,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
    why: str = "",
) -> int | float:
    """``value`` as an int (``integer``) or a finite float within the bounds (:func:`pradot.ranges.number`,
    the one rule), else :class:`KeyedSettingError` naming ``key`` and the override."""
    try:
        return ranges.number(key, value, integer=integer, lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open, why=why)
    except ranges.SettingError as e:
        raise KeyedSettingError(key, e.value, e.reason) from None


@contextmanager
def settings_keys(keys: Mapping[str, str]) -> Iterator[None]:
    """Around the construction of a library settings object (``PRADOTConfig``, ...), whose own checks are
    the range checks: a :class:`~pradot.ranges.SettingError` becomes a :class:`KeyedSettingError` naming the
    configuration key of the setting (``keys``: setting -> key, e.g. ``{"alpha": "model.alpha"}``; a setting
    not in ``keys`` is named as it is) and the override that changes it."""
    try:
        yield
    except ranges.SettingError as e:
        raise KeyedSettingError(keys.get(e.setting, e.setting), e.value, e.reason) from None


def training_epochs(m: Any) -> int:
    """``model.epochs`` of a training entry point: >= 1, stricter than the library's >= 0 (an untrained
    bank is a valid model object, but registering one is never what a training run means)."""
    return int(
        number(
            "model.epochs",
            m.epochs,
            integer=True,
            lo=1,
            why="passes over the training images; 0 would register an untrained model",
        )
    )


def counts(group: str, values: Any, **minimum: int) -> dict[str, int]:
    """``{key: int}`` of ``values[key]`` for each ``key=minimum`` (``evaluation.batch_size`` >= 1, ...)."""
    return {k: number(f"{group}.{k}", values[k], integer=True, lo=lo) for k, lo in minimum.items()}


def _text(key: str, value: Any, max_length: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{key}={value!r}: a non-empty name is required; {how_to_set(key)}")
    if value != value.strip() or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ConfigError(f"{key}={value!r} has leading/trailing spaces or control characters; {how_to_set(key)}")
    if len(value) > max_length:
        raise ConfigError(f"{key} is {len(value)} characters long, at most {max_length} are allowed; {how_to_set(key)}")
    return value


def _leaves_folder(name: str) -> bool:
    """The name is not one plain relative path component (``..``, ``a/../b``, ``/x``, ``.``)."""
    norm = posixpath.normpath(name)
    return norm != name or norm in (".", "..") or norm.startswith(("../", "/")) or "\\" in name


def registry_name(key: str, value: Any) -> str:
    """A registered model name: what MLflow accepts (no ``/`` or ``:``, no path that leaves its folder),
    at most 256 characters."""
    name = _text(key, value, 256)
    if any(c in name for c in "/:\\") or _leaves_folder(name):
        raise ConfigError(
            f"{key}={value!r} cannot be a registered model name: it may not contain '/', ':' or "
            f"'\\' nor be '.' or '..' (e.g. pradot-mvtec_loco-screw_bag); {how_to_set(key)}"
        )
    return name


def experiment_name(key: str, value: Any) -> str:
    """An MLflow experiment name: non-empty, at most 500 characters, no control characters."""
    return _text(key, value, 500)


_ALIAS = re.compile(r"^[\w\-]+$")


def alias_name(key: str, value: Any) -> str:
    """A registered model alias (MLflow's rule): letters, digits, ``_`` and ``-``; not ``latest`` nor ``v<N>``."""
    name = _text(key, value, 255)
    if not _ALIAS.match(name) or name.lower() == "latest" or re.match(r"^[vV]\d+$", name):
        raise ConfigError(
            f"{key}={value!r} cannot be a model alias: use letters, digits, '_' and '-' only, not "
            f"'latest' nor 'v<number>' (reserved by MLflow), e.g. champion; {how_to_set(key)}"
        )
    return name


_FOLDER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]*$")


def folder_name(key: str, value: Any) -> str:
    """A name that becomes one folder (e.g. ``sweep.name`` under ``sweep.storage_path``): letters, digits
    and ``._+=-``, starting with a letter or digit, so it cannot leave its parent folder."""
    name = _text(key, value, 200)
    if not _FOLDER.match(name) or _leaves_folder(name):
        raise ConfigError(
            f"{key}={value!r} cannot be a folder name: use letters, digits and . _ + = - only, "
            f"starting with a letter or digit (no '/', no '..'); {how_to_set(key)}"
        )
    return name


def path_component(key: str, value: Any) -> str:
    """A name that becomes one component of a path (e.g. ``category``: ``<data root>/<category>/...`` and
    ``anomaly_maps/<category>/...``): not empty, not ``.`` or ``..``, no ``/`` or ``\\``, at most 255 bytes."""
    name = _text(key, value, 255)
    if len(name.encode("utf-8", "surrogatepass")) > 255:  # NAME_MAX counts bytes, not characters
        raise ConfigError(
            f"{key} is {len(name.encode('utf-8', 'surrogatepass'))} bytes long in UTF-8, at most 255 fit in "
            f"one folder name; {how_to_set(key)}"
        )
    if "/" in name or "\\" in name or name in (".", ".."):
        raise ConfigError(
            f"{key}={value!r} must be one folder name (no '/', '\\', '.' or '..'), so that the paths "
            f"made from it stay in their folder; {how_to_set(key)}"
        )
    return name


def batch_fits_data(batch_size: int, n: float, batch_ratio: float | None, n_train: int) -> None:
    """A batch (``batch_ratio`` x n images, drawn without replacement, ``drop_last``) needs at least that many
    training images; say which keys to change when it does not."""
    if n_train >= batch_size:
        return
    ratio = f"model.batch_ratio={batch_ratio:g} x " if batch_ratio is not None else ""
    raise ConfigError(
        f"the batch size {batch_size} ({ratio}model.n={n:g}) is larger than the {n_train} training "
        f"images, so no batch could be drawn; lower model.batch_ratio or model.n "
        f"({how_to_set('model.batch_ratio')}), or add training images"
    )
