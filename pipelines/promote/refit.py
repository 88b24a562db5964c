"""Refit-after-selection (issue 25): every training normal in the promoted model, calibration still held out.

A layout without a validation folder (MVTec AD, VisA, a folder of images) holds back ``data.validation_fraction``
of ``train/good`` (``pradot.engine.open_splits``): the members are trained without those normals, which then
make the validation objective's evaluation set and calibrate the threshold. With ``selection.refit=true``,
after the choice each chosen member is refitted (same class and settings, :meth:`fit` on the training images)
on every normal: the training images plus the held-back ones. The ensemble keeps the choice's weights and
per-member standardisation statistics, and the threshold is calibrated before the refit, both on the held-back
normals' scores of the members as chosen (fitted without them): a cross-fitted calibration, since the refitted
members have seen those normals and would score them too low.

Nothing changes when the data has a validation folder (its normals are not training images) or when no normal
was held back. ``benchmarks/objective_separation.py`` measures whether it helps (the ``refit`` section).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

__all__ = ["held_back", "check_refit", "refit_members", "refit_ensemble"]

log = logging.getLogger(__name__)


def held_back(splits) -> bool:
    """True when the validation normals were held back from the training images (no validation folder)."""
    return bool(splits.validation) and not splits.dataset.samples("validation")


def check_refit(splits) -> None:
    """Raises ``InputError`` (a ValueError) unless normals were held back from the training images."""
    from pradot.errors import InputError

    if not held_back(splits):
        raise InputError(
            "selection.refit needs normals held back from train/good (a layout without a validation folder and "
            "data.validation_fraction > 0, e.g. 0.1); this data has none: drop selection.refit"
        )


def refit_members(models: Sequence, samples: Sequence, image_size: int, progress: bool = False) -> list:
    """Each model refitted from scratch on ``samples`` (its class, config, backbone and device; the
    training images at ``image_size``). Returns the new models in eval mode; the given ones are unchanged."""
    from pradot.data import ImageDataset

    dataset = ImageDataset(list(samples), int(image_size))
    out = []
    for m in models:
        fresh = type(m)(m.config, backbone=m.backbone, device=m.device)
        out.append(fresh.fit(dataset, progress=progress).eval())
    return out


def refit_ensemble(ens, splits, progress: bool = False):
    """``ens`` (a :class:`pradot.ensemble.Ensemble`) with every member refitted on the training images plus the
    held-back validation normals; weights, normalisation statistics and labels kept (see the module docstring).

    Raises:
        ValueError: no normal was held back from the training images (nothing to refit on).
    """
    from pradot.ensemble import Ensemble

    check_refit(splits)
    normals = [*splits.train, *splits.validation]
    log.info("refitting %d member(s) on every normal (%d images)", len(ens.members), len(normals))
    members = refit_members(list(ens.members), normals, ens.image_size, progress=progress)
    return Ensemble(
        members, normalisation=ens.normalisation, stats=ens.stats, labels=ens.labels, weights=ens.weights
    ).eval()
