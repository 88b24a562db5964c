"""Shared wiring of the pipelines: Hydra config composition from command-line arguments, typed specs
from the config, MLflow tracking setup and run-log capture. The pradot library stays free of all this.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

from omegaconf import DictConfig, OmegaConf

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
PIPELINES = Path(__file__).resolve().parent
if str(PIPELINES) not in sys.path:  # so sibling modules import when run as scripts
    sys.path.insert(0, str(PIPELINES))
try:  # the project installed (make setup) or, in a bare conda env made from conda.yaml, its src/ folder
    import pradot  # noqa: F401
except ImportError:
    sys.path.insert(0, str(REPO / "src"))

log = logging.getLogger("pradot")

#: tracking store used when MLFLOW_TRACKING_URI is not set: a SQLite file in the working directory
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def parse_overrides(argv: Sequence[str]) -> list[str]:
    """Hydra overrides from argv: ``key=value`` items (whitespace-separated ones split, as MLflow passes
    the ``overrides`` parameter as one quoted string), ``--key value`` pairs (MLflow's extra ``-P``
    parameters), and items with an empty value (``key=``: an MLproject parameter left unset) dropped."""
    items: list[str] = []
    argv = list(argv)
    i = 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--") and "=" not in a:
            if i + 1 >= len(argv):
                raise SystemExit(f"error: option {a} needs a value (use key=value overrides)")
            items.append(f"{a[2:]}={argv[i + 1]}")
            i += 2
            continue
        items.extend(a.split())
        i += 1
    out = []
    for it in items:
        if it.startswith("~"):  # Hydra's delete syntax: ~key or ~key=value
            out.append(it)
            continue
        if "=" not in it:
            raise SystemExit(f"error: {it!r} is not a key=value override (see conf/ for the keys)")
        key, value = it.split("=", 1)
        if value == "":
            continue
        out.append(f"{key}={value}")
    return out


def compose(overrides: Sequence[str], config_name: str = "config") -> DictConfig:
    """The resolved Hydra config (conf/ + overrides), with a clear error for bad keys or values."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            cfg = hydra_compose(config_name=config_name, overrides=list(overrides))
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as e:
        raise SystemExit(f"error: bad configuration override: {e}\n(overrides: {' '.join(overrides)}; "
                         f"the config groups and keys are in {CONF_DIR})") from None
    return cfg


def flatten(cfg, prefix: str = "") -> dict[str, str]:
    """Nested config -> {"model.alpha": "0.3", ...} (lists as strings) for MLflow params."""
    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    out: dict[str, str] = {}
    for k, v in container.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)
    return out


def setup_tracking() -> str:
    """Use MLFLOW_TRACKING_URI when set, else the SQLite file in the working directory."""
    import mlflow

    uri = os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    mlflow.set_tracking_uri(uri)
    return uri


@contextlib.contextmanager
def run_log(name: str = "run.log") -> Iterator[Path]:
    """Capture the pradot loggers (and warnings) to a file for the lifetime of the block; the caller logs
    it as an artifact, also when the run fails."""
    folder = Path(tempfile.mkdtemp(prefix="pradot-log-"))
    path = folder / name
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(logging.Formatter("[pradot] %(message)s"))
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    root.addHandler(stream)
    for noisy in ("matplotlib", "PIL", "urllib3", "alembic", "numba", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.captureWarnings(True)
    try:
        yield path
    finally:
        handler.flush()
        root.removeHandler(handler)
        root.removeHandler(stream)
        logging.captureWarnings(False)
