"""Metrics on a pseudo-anomaly evaluation set: the validation objective that chooses models without test labels.

The set is the validation normals plus anomalies synthesised from them (:mod:`pradot.data.pseudo_anomalies`),
each with its kind (``cutpaste``, ``shuffle``, ...) and style (``structural`` / ``logical``). Metrics:

* ``val_auroc``: image AUROC of all pseudo-anomalies against the normals; ``val_auroc_<kind>`` per kind and,
  when there are several styles, ``val_auroc_<style>`` per style (normals vs that style's anomalies);
* with maps and masks, per style: ``val_aupro_<style>``, the area under the PRO curve (connected regions of
  the pseudo-anomaly masks, :func:`pradot.metrics.au_pro`) up to a false-positive rate of ``max_fpr``
  (default 0.05, the limit of the paper's AU-sPRO), on the normals and that style's anomalies;
* ``val_objective`` (with maps): the mean over styles of ``(val_auroc_<style> + val_aupro_<style>) / 2``:
  detection and localisation of both styles weigh alike, so a model cannot win on one style alone.

The sweep (image scores only) and promotion (maps) call :func:`pseudo_metrics`; nothing here reads a test
split.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .classification import image_auroc, loco_image_auroc
from .pro import au_pro

__all__ = ["GOOD", "DEFAULT_MAX_FPR", "OBJECTIVE", "pseudo_metrics", "resize_for_evaluation"]

GOOD = "good"
#: the localisation number's FPR limit
DEFAULT_MAX_FPR = 0.05
#: the key of the combined objective
OBJECTIVE = "val_objective"


def resize_for_evaluation(maps, masks, size: int | None):
    """Maps (N, H, W) resized (bilinear, antialiased) and masks (N, H, W) resized (nearest) to ``size``;
    unchanged when ``size`` is None or already the maps' size. Returns (maps float32, masks bool) arrays."""
    maps = np.asarray(maps, dtype=np.float32)
    masks = np.asarray(masks, dtype=bool)
    if size is None or maps.shape[-1] == int(size) and maps.shape[-2] == int(size):
        return maps, masks
    import torch
    import torch.nn.functional as F

    m = F.interpolate(
        torch.from_numpy(maps)[:, None],
        size=(int(size), int(size)),
        mode="bilinear",
        align_corners=False,
        antialias=True,
    )[:, 0].numpy()
    k = (
        F.interpolate(torch.from_numpy(masks.astype(np.uint8))[:, None], size=(int(size), int(size)), mode="nearest")[
            :, 0
        ]
        .numpy()
        .astype(bool)
    )
    return m, k


def pseudo_metrics(
    groups: Sequence[str],
    styles: Sequence[str],
    scores,
    maps=None,
    masks=None,
    max_fpr: float = DEFAULT_MAX_FPR,
    size: int | None = None,
) -> dict[str, float]:
    """The validation metrics of one model on a pseudo-anomaly set (see the module docstring).

    Args:
        groups: per image, ``"good"`` (a validation normal) or the pseudo-anomaly's kind.
        styles: per image, ``"good"`` or the kind's style (``structural``, ``logical``).
        scores: (N,) image scores.
        maps, masks: optional (N, H, W) anomaly maps and pseudo-anomaly masks (all False for normals): adds the
            per-style localisation and ``val_objective``.
        max_fpr: the PRO curve's FPR limit. size: evaluate the localisation at this size (None: the maps').
    Raises:
        ValueError: no normals, no pseudo-anomalies, or lengths that differ.
    """
    groups = [str(g) for g in groups]
    styles = [str(s) for s in styles]
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if not (len(groups) == len(styles) == len(scores)):
        raise ValueError(f"{len(groups)} groups, {len(styles)} styles and {len(scores)} scores differ in length")
    labels = np.asarray([g != GOOD for g in groups], dtype=int)
    out = {"val_auroc": image_auroc(labels, scores)}
    per_group = loco_image_auroc(groups, scores, good=GOOD)
    per_group.pop("mean")
    out.update({f"val_auroc_{g}": v for g, v in per_group.items()})
    per_style = loco_image_auroc(styles, scores, good=GOOD)
    per_style.pop("mean")
    if len(per_style) > 1:
        out.update({f"val_auroc_{s}": v for s, v in per_style.items()})
    if maps is None:
        return out
    if masks is None or len(maps) != len(scores) or len(masks) != len(scores):
        raise ValueError("the localisation needs one map and one mask per image")
    maps, masks = resize_for_evaluation(maps, masks, size)
    st = np.asarray(styles)
    parts = []
    for s, auroc in per_style.items():
        sel = np.flatnonzero((st == GOOD) | (st == s))
        pro = au_pro(list(masks[sel]), list(maps[sel]), max_fpr=max_fpr)
        out[f"val_aupro_{s}"] = pro
        parts.append((auroc + pro) / 2)
    out[OBJECTIVE] = float(np.mean(parts))
    return out
