"""What a setting may be, checked before any run starts: numeric ranges and the user-given names that
become folders or registry names. Every error names the key, the value, the valid range and how to change
it (the Hydra override and, where there is one, the MLproject parameter).

``pipelines.config``'s builders (``train_settings``, ``promote_options``, ...) and the sweep's plan call
these, so a bad value stops an entry point before it opens a dataset, starts an MLflow run or trains.
"""

from __future__ import annotations

import math
import posixpath
import re
from collections.abc import Sequence
from typing import Any

from pradot.errors import InputError

__all__ = [
    "ConfigError",
    "IMAGE_SIZE_RANGE",
    "MAX_N",
    "how_to_set",
    "boolean",
    "number",
    "interval",
    "model_values",
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


#: input side in pixels: below 16 the deepest stages have no feature cell left (stride 32); above 4096 one
#: image's stage-2 features alone take 0.5 GB (ResNet-50: 512 channels at stride 8) and training cannot fit
#: a batch in memory. The paper works at 256-512 px.
IMAGE_SIZE_RANGE = (16, 4096)
WHY_SIZE = "pixels a side; the deepest stages need >= 16, and above 4096 one image's features alone take gigabytes"
#: prototypes per feature cell: a batch needs at least n images (B >= n, the paper's B = 4n) and no dataset
#: in the field has more than a few thousand training images per category; the paper uses 16.
MAX_N = 1024

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


def _range_text(lo, hi, lo_open: bool, hi_open: bool) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo}"
    return f"{'<' if hi_open else '<='} {hi}"


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
    """``value`` as an int (``integer``) or a finite float within the bounds, else :class:`ConfigError`."""
    what = "an integer" if integer else "a number"
    valid = _range_text(lo, hi, lo_open, hi_open)
    reason = f" ({why})" if why else ""
    try:
        x = float(value)
        if integer and not (math.isfinite(x) and x.is_integer()):
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(
            f"{key}={value!r} is not {what}; it must be {what} {valid}{reason}; {how_to_set(key)}"
        ) from None
    ok = (
        math.isfinite(x)
        and (lo is None or (x > lo if lo_open else x >= lo))
        and (hi is None or (x < hi if hi_open else x <= hi))
    )
    if not ok:
        raise ConfigError(f"{key}={value!r} is out of range: it must be {what} {valid}{reason}; {how_to_set(key)}")
    return int(x) if integer else x


def model_values(m: Any, seed: Any) -> dict[str, Any]:
    """The checked numbers of the ``model`` group (and ``seed``) as :class:`pradot.model.PRADOTConfig` keywords
    (``batch_ratio`` is checked here, the batch size is the caller's)."""
    n = number(
        "model.n",
        m.n,
        lo=0,
        lo_open=True,
        hi=MAX_N,
        why="prototypes per feature cell (n < 1: one prototype per 1/n x 1/n cells); a batch needs >= n images",
    )
    number("model.batch_ratio", m.batch_ratio, lo=0, lo_open=True, hi=MAX_N, why="batch size = batch_ratio x n images")
    return dict(
        n=n,
        alpha=number("model.alpha", m.alpha, lo=0, hi=1, why="0 = global prototypes, > 0 = local"),
        eta=number("model.eta", m.eta, lo=0, hi=1, why="EMA momentum of the prototypes"),
        epsilon=number("model.epsilon", m.epsilon, lo=0, lo_open=True, why="entropic regularisation"),
        sinkhorn_iters=number("model.sinkhorn_iters", m.sinkhorn_iters, integer=True, lo=1),
        epochs=number(
            "model.epochs",
            m.epochs,
            integer=True,
            lo=1,
            why="passes over the training images; 0 would register an untrained model",
        ),
        seed=number("seed", seed, integer=True),
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
