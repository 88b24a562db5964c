"""The validation objective's evaluation set, shared by ``sweep`` and ``promote``: the validation normals plus
pseudo-anomalies made from them (``pradot.data.pseudo_anomalies``), scored by ``pradot.metrics.pseudo``.

Nothing here reads the test split: a sweep ranks its trials and promote chooses members, fusion weights and the
alias on this set only; test metrics are computed afterwards, for the report.

* :func:`pseudo_groups`: each image's group (``good`` or the pseudo-anomaly's kind) and style, known before
  any image is made (the sweep keys its cached features on them);
* :func:`build_pseudo_set`: the images and masks;
* :func:`evaluate`: the metrics of a model's scores (and maps) on the set, the one call both entry points make.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pradot.data.pseudo_anomalies import DEFAULT_CONTRAST, DEFAULT_PATCH_FRACTION
from pradot.errors import InputError

__all__ = ["SPLIT", "GOOD", "PseudoOptions", "PseudoSet", "pseudo_groups", "build_pseudo_set", "evaluate"]

#: the name of the evaluation split (tags, features' cache keys)
SPLIT = "validation+pseudo"
GOOD = "good"


@dataclass(frozen=True)
class PseudoOptions:
    """What ``pradot.data.pseudo_anomalies`` makes from the normals (promote's ``selection.pseudo_anomalies``;
    the sweep's ``PseudoAnomalySettings`` has the same fields): sizes log-uniform in ``patch_fraction`` x the
    image side, contrasts uniform in ``contrast`` (graded, so that the image AUROC does not saturate)."""

    kinds: tuple[str, ...] = ("cutpaste", "noise", "blotch", "shuffle", "moved_patch")
    per_image: int = 1
    seed: int = 0
    patch_fraction: tuple[float, float] = DEFAULT_PATCH_FRACTION
    contrast: tuple[float, float] = DEFAULT_CONTRAST

    def identity(self) -> dict:
        return _identity(self)


def _identity(pseudo: Any) -> dict:
    """What the images made with ``pseudo`` (either settings type) depend on besides the normals."""
    from pradot.data.pseudo_anomalies import pseudo_identity

    return pseudo_identity(
        pseudo.kinds, pseudo.per_image, pseudo.seed, tuple(pseudo.patch_fraction), contrast=tuple(pseudo.contrast)
    )


def pseudo_groups(n_normals: int, pseudo: Any) -> tuple[list[str], list[str]]:
    """(groups, styles) of the set made from ``n_normals`` images with ``pseudo`` (kinds, per_image): the
    normals first, then the anomalies in the order :func:`build_pseudo_set` makes them."""
    from pradot.data.pseudo_anomalies import KIND_STYLE, assign_kinds

    made = [k for _, _, k in assign_kinds(n_normals, pseudo.kinds, pseudo.per_image)]
    return [GOOD] * n_normals + made, [GOOD] * n_normals + [KIND_STYLE[k] for k in made]


@dataclass
class PseudoSet:
    """The evaluation set: ``images`` (N, S, S, 3) uint8 (normals, then pseudo-anomalies), their ``groups`` and
    ``styles``, ``masks`` (N, S, S) bool (False for the normals), and where the normals come from."""

    images: np.ndarray
    groups: list[str]
    styles: list[str]
    masks: np.ndarray
    normals_source: str  # "validation" or "train (no validation images)"
    identity: dict

    @property
    def labels(self) -> list[int]:
        return [int(g != GOOD) for g in self.groups]

    @property
    def normal(self) -> np.ndarray:
        return np.asarray([g == GOOD for g in self.groups])

    @property
    def split(self) -> str:
        return SPLIT if self.normals_source == "validation" else "train+pseudo"


def build_pseudo_set(normals: Sequence, size: int, pseudo: Any, normals_source: str = "validation") -> PseudoSet:
    """The normals (samples with ``image_path``) read at ``size`` px, and the pseudo-anomalies made from them.

    Raises:
        ValueError: no normal image.
    """
    from pradot.data import read_image
    from pradot.data.pseudo_anomalies import make_pseudo_anomalies

    if not normals:
        raise InputError("the validation objective needs normal images to make pseudo-anomalies from")
    images = [read_image(s.image_path, size) for s in normals]
    made = make_pseudo_anomalies(
        images,
        kinds=pseudo.kinds,
        per_image=pseudo.per_image,
        seed=pseudo.seed,
        patch_fraction=tuple(pseudo.patch_fraction),
        contrast=tuple(pseudo.contrast),
    )
    groups, styles = pseudo_groups(len(images), pseudo)
    assert groups[len(images) :] == made.kinds
    masks = np.concatenate([np.zeros((len(images), *made.masks.shape[1:]), bool), made.masks])
    ident = _identity(pseudo)
    return PseudoSet(
        np.concatenate([np.stack(images), made.images]),
        groups,
        styles,
        masks,
        normals_source,
        {**ident, "normals": normals_source, "n_normals": len(images), "size": int(size)},
    )


def evaluate(
    groups: Sequence[str], styles: Sequence[str], scores, maps=None, masks=None, size: int | None = None
) -> dict[str, float]:
    """The objective's metrics (``pradot.metrics.pseudo.pseudo_metrics``): ``val_auroc`` and its per-kind and
    per-style parts from image scores; with maps and masks also ``val_aupro_<style>`` and ``val_objective``."""
    from pradot.metrics.pseudo import pseudo_metrics

    return pseudo_metrics(groups, styles, scores, maps=maps, masks=masks, size=size)
