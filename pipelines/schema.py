"""Typed schemas of the main config groups (Hydra structured configs), checked when the config is composed.

Each group file in ``conf/`` extends its schema from Hydra's ConfigStore (group ``schema/<group>``) as the
first entry of its defaults list::

    # conf/model/pradot.yaml
    defaults:
      - /schema/model/pradot@_here_
      - _self_

so a value of the wrong type (``model.alpha=abc``, ``data.image_size=big``) or a key the schema does not have
(a misspelt key in a YAML file, or an override without ``+``) fails at compose with Hydra's own message, which
:func:`pipelines.config.compose` completes with the override hint. Ranges are not checked here: they are the
library settings' own checks (``PRADOTConfig``; ``pipelines.checks``), so that each rule lives in one place.

Numbers that the YAML may give as int or float are ``int | float`` (OmegaConf keeps what was written, so
``model.n=16`` logs ``16`` as before); a value MLproject passes in several forms (``backbone.stages``:
``[2, 3]`` or ``"2,3"``) is ``Any`` and parsed by the pipelines.

Where a new key goes: a field of its group's dataclass below (with its default equal to the YAML's, and a
comment), then the key in the group's YAML files. A new file in a group: its first default is the group's
schema, as above. The data group has one schema for every dataset (a recipe may set a dataset's key, e.g.
``data.generator``, whatever dataset the command line chose).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

__all__ = [
    "ModelSchema",
    "TilingSchema",
    "BackboneSchema",
    "DataSchema",
    "register",
    "reason",
]

# OmegaConf reads these annotations at runtime: an int or a float, kept as written (OmegaConf's Union of primitives)
Number = Union[int, float]  # noqa: UP007


@dataclass
class TilingSchema:
    """``model.tiling``: high-resolution images by tiles (ranges: ``pipelines.tiling``)."""

    enabled: bool = False
    tile_size: int = 224
    stride: int = 112
    blend: str = "linear"
    banks: str = "per_position"


@dataclass
class ModelSchema:
    """``conf/model/pradot.yaml``: PRADOT's hyper-parameters (ranges: ``pradot.model_config.PRADOTConfig``)."""

    alpha: Number = 0.3
    n: Number = 16
    eta: Number = 0.95
    epsilon: Number = 0.01
    sinkhorn_iters: int = 100
    batch_ratio: Number = 4
    epochs: int = 50
    learn_coordinates: bool = False
    warm_start: bool = False
    aggregation: int = 1
    concat_stages: bool = False
    smoothing_sigma: Number = 0.0
    feature_metric: str = "cosine"
    tiling: TilingSchema = field(default_factory=TilingSchema)


@dataclass
class BackboneSchema:
    """``conf/backbone/*.yaml``: the frozen feature extractor."""

    name: str = "resnet50"
    stages: Any = field(default_factory=lambda: [2, 3])  # a list, or "2,3" / "2+3" from MLproject
    weights_path: str | None = None


@dataclass
class DataSchema:
    """``conf/data/*.yaml``: a dataset and how its images are read. ``generator`` (the embedded data's
    generator, ``pradot.data.synthetic``) and ``options`` (a loader's options, e.g. Real-IAD's) are on every
    dataset: a recipe sets ``data.generator`` whatever dataset the command line chose (``experiment=ci
    data=mvtec_loco`` composes, as before the schemas), and the pipelines read them only where they apply."""

    kind: str = "mvtec_loco"
    root: str | None = None
    image_size: int = 224
    validation_fraction: Number = 0.0
    augmentation: str | None = "none"
    generator: dict[str, Any] | None = None
    options: dict[str, Any] | None = None


_SCHEMAS: dict[str, dict[str, type]] = {
    "model": {"pradot": ModelSchema},
    "backbone": {"backbone": BackboneSchema},
    "data": {"dataset": DataSchema},
}


def register() -> None:
    """Store the schemas in Hydra's ConfigStore (group ``schema/<group>``); idempotent, called by
    :func:`pipelines.config.compose` before it composes."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for group, schemas in _SCHEMAS.items():
        for name, node in schemas.items():
            store.store(group=f"schema/{group}", name=name, node=node)


def reason(e: BaseException) -> str:
    """Hydra's "Error merging override" hides OmegaConf's reason (a value of the wrong type for the group's
    schema, a key it does not have): ``": <its first line> (...)"``, or ``""`` when there is none to add."""
    cause = e.__cause__
    if cause is None or not str(cause) or str(cause).splitlines()[0] in str(e):
        return ""
    return f": {str(cause).splitlines()[0]} (the groups' typed keys: pipelines/schema.py)"
