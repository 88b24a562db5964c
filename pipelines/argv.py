"""argv -> Hydra overrides: every ``key=value`` item is one value, quoted for Hydra when Hydra would read
it otherwise; only the MLproject parameter ``overrides`` holds several (split like shell words).

    ["data_root=/My Data", "members=a/1,b/2", "overrides=experiment=ci seed=1"]
      -> ["data_root='/My Data'", "members='a/1,b/2'", "experiment=ci", "seed=1"]
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from pathlib import Path

from pipelines.checks import ConfigError

__all__ = ["CONF_DIR", "ConfigError", "OVERRIDES_KEY", "parse_overrides", "keep_as_text", "literal"]

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


#: the one argv item that holds several overrides (the MLproject parameter ``overrides``)
OVERRIDES_KEY = "overrides"


def literal(value: str) -> str:
    """``value`` with each ``${`` escaped for OmegaConf (``\\${``, and the backslashes before it doubled),
    so that the text of a name is kept and never resolved (``a${HOME}`` stays ``a${HOME}``)."""
    return re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", value)


def keep_as_text(cfg) -> None:
    """After ``OmegaConf.resolve(cfg)``, in place: a string that still holds ``${`` is text (a name given as
    ``\\${`` or a resolved value), so it is escaped again (:func:`literal`); otherwise OmegaConf
    would resolve it on the next read. Call once per resolved config."""
    from omegaconf import DictConfig, ListConfig

    for key in cfg.keys() if isinstance(cfg, DictConfig) else range(len(cfg)):
        value = cfg._get_node(key)._value()
        if isinstance(value, (DictConfig, ListConfig)):
            keep_as_text(value)
        elif isinstance(value, str) and "${" in value:
            cfg[key] = literal(value)


def _quote_for_hydra(value: str) -> str:
    """``value`` as a single-quoted Hydra string of that exact text: a quote is escaped, and so are the
    backslashes that precede a quote or end the value (Hydra keeps any other backslash as it is, e.g.
    ``C:\\data``); ``${`` is escaped for OmegaConf (:func:`literal`)."""
    out = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", literal(value))
    out = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, out)
    return f"'{out}'"


def _hydra_value(item: str) -> str:
    """``key=value`` as Hydra reads it, the value one value exactly as given: quoted when Hydra would read
    it otherwise (``members=a/1,b/2`` is a sweep to Hydra; ``x=(1)``, ``x=it's``, ``x=/data/Bäder`` syntax
    errors; ``x= a`` loses its space). Values Hydra reads as numbers, booleans, lists or null are kept as
    typed. ``${`` is text, never an interpolation (a name is data: ``category=${oc.env:SECRET}`` must not
    read the environment); interpolations belong in the config files."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    key, value = item.split("=", 1)
    parser = OverridesParser.create()
    try:
        parsed = parser.parse_override(item)
        plain = not isinstance(parsed.value(), str) or parsed.value() == value
        if "${" not in value and not parsed.is_sweep_override() and plain:
            return item
    except HydraException:
        pass
    quoted = f"{key}={_quote_for_hydra(value)}"
    try:
        ok = parser.parse_override(quoted).value() == literal(value)
    except HydraException:
        ok = False
    if not ok:
        raise ConfigError(f"{key}: the value {value!r} cannot be passed to Hydra as one string")
    return quoted


def _split_overrides(value: str) -> list[str]:
    """The ``overrides`` parameter's value split like a shell would (quotes group, backslashes escape):
    ``"experiment=ci data_root='/My Data'"`` -> ``["experiment=ci", "data_root=/My Data"]``."""
    try:
        return shlex.split(value)
    except ValueError as e:  # an unbalanced quote
        raise ConfigError(
            f"{OVERRIDES_KEY}={value!r}: {e} (quote values that hold spaces, e.g. "
            f"{OVERRIDES_KEY}=\"data_root='/my data' seed=1\")"
        ) from None


def parse_overrides(argv: Sequence[str]) -> list[str]:
    """Hydra overrides from argv. Each ``key=value`` item is one override whose value is taken as written
    (spaces, commas, parentheses, quotes and non-ASCII letters included: ``_hydra_value`` quotes it for
    Hydra); only the item ``overrides=...`` (the MLproject parameter, one string) holds several, split
    like a shell splits words. ``--key value`` pairs (MLflow's extra ``-P`` parameters) are overrides too;
    items with an empty value (``key=``: an MLproject parameter left unset) are dropped.

    Raises:
        ConfigError: an item is not ``key=value``, an option has no value, or ``overrides`` has an unbalanced quote.
    """
    items: list[str] = []
    argv = list(argv)
    i = 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--") and "=" not in a:
            if i + 1 >= len(argv):
                raise ConfigError(f"option {a} needs a value (use key=value overrides)")
            items.append(f"{a[2:]}={argv[i + 1]}")
            i += 2
            continue
        if a.startswith(OVERRIDES_KEY + "="):
            items.extend(_split_overrides(a[len(OVERRIDES_KEY) + 1 :]))
        else:
            items.append(a)
        i += 1
    out = []
    for it in items:
        if it.startswith("~"):  # Hydra's delete syntax: ~key or ~key=value
            out.append(it)
            continue
        if "=" not in it:
            raise ConfigError(f"{it!r} is not a key=value override (see {CONF_DIR} for the keys)")
        key, value = it.split("=", 1)
        if value == "":
            continue
        out.append(_hydra_value(f"{key}={value}"))
    return out
