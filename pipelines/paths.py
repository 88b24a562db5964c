"""Where paths point: the path settings of a composed config resolved against the folder the user ran the
command from, and the config files Hydra cannot read.

Under ``mlflow run`` the command runs in the project folder, not where the user typed it; MLproject
therefore passes ``workdir`` as an MLflow parameter of type ``path`` (default ``.``), which MLflow makes
absolute in the user's folder before it switches (MLflow 3.17: ``Parameter._compute_path_value``;
an empty ``path`` default would be taken for a URI to download, so ``data_root`` itself stays a string).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from pipelines.argv import literal

__all__ = ["PATH_KEYS", "resolve_paths", "not_utf8_message"]

#: settings that name local files or folders: relative values are resolved against ``workdir`` (URIs such as
#: ``s3://bucket/sweeps`` are left as they are).
PATH_KEYS: tuple[str, ...] = (
    "data_root",
    "data.root",
    "data.options.csv_path",
    "data.options.json_dir",
    "cache.dir",
    "backbone.weights_path",
    "sweep.storage_path",
    "sweep.resume_from",
    "input",
    "output",
)  # input/output: predict, export


def _absolute(value: str, base: str) -> str:
    """``value`` (``~`` expanded) made absolute against ``base``; URIs (``s3://...``) are left as they are."""
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]+://", value):
        return value
    return os.path.abspath(os.path.join(base, os.path.expanduser(value)))


def resolve_paths(cfg: DictConfig) -> DictConfig:
    """Make the path settings of ``cfg`` (``PATH_KEYS`` that are set) absolute, in place, against ``workdir``:
    the folder the user ran the command from. Plain runs leave ``workdir`` unset (the current folder);
    ``mlflow run`` switches to the project folder, so MLproject passes ``workdir`` as an MLflow ``path``
    parameter (default ``.``), which MLflow makes absolute in the user's folder before switching.
    ``cfg.workdir`` is set to the folder used, so the logged config says where paths were resolved."""
    base = _absolute(str(cfg.get("workdir") or ""), os.getcwd()) if cfg.get("workdir") else os.getcwd()
    for key in PATH_KEYS:
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and str(value) != "":
            OmegaConf.update(cfg, key, literal(_absolute(str(value), base)), merge=False)
    if "workdir" in cfg:
        cfg.workdir = literal(base)
    return cfg


def not_utf8_message(conf_dir: Path) -> str:
    """Which config file under ``conf_dir`` is not UTF-8 (Hydra reads only UTF-8) and how to fix it."""
    from pradot.data.text import decode_text

    bad = []
    for path in sorted(Path(conf_dir).rglob("*.yaml")):
        data = path.read_bytes()
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            bad.append(f"{path} (it looks like {decode_text(data)[1]})")
    where = "; ".join(bad) or f"a file under {conf_dir}"
    return f"a configuration file is not UTF-8: {where}. Save it as UTF-8 (with or without a byte-order mark)."
