"""Pictures of the method, by audience.

* :mod:`.heatmap`: the anomaly map as an RGB heat map over its image, NumPy only (what a model server
  imports: :func:`heatmap_rgb`, :func:`to_rgb_uint8`);
* :mod:`.paper`: the paper's figures: assignment arrows (Fig. 4), prototypes and restored images (Fig. 5),
  UMAP of embeddings and prototypes under cost (1) (Fig. 6);
* :mod:`.vpdm`: VPDM's figures: reconstructions and maps (its paper's Fig. 2), features at each step (Fig. 3);
* :mod:`.curves`: ROC, (s)PRO and training curves;
* :mod:`.report`: figures the pipelines log (overlays, metrics bars, members vs ensemble).

The computations behind Fig. 5 and 6 (:func:`prototype_patches`, :func:`restore_image`,
:func:`abnormal_embeddings`, :func:`block_edges`) live in :mod:`pradot.explain` and are re-exported here.

Every ``*_figure`` function returns a :class:`matplotlib.figure.Figure` built without pyplot (no global
state, no display needed; the Agg canvas is attached), which callers save (``fig.savefig(path)``) or log.
Names are loaded on first use, so ``import pradot.viz`` (or ``pradot.viz.heatmap``) imports no matplotlib.

Conventions: images are ``(S, S, 3)`` (or ``(H0, W0, 3)``) uint8 or float in [0, 1]; ``(3, S, S)``
tensors/arrays and grayscale ``(S, S)`` are accepted and converted. Feature grids and coordinates: see
:mod:`pradot.explain`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..explain import abnormal_embeddings, block_edges, prototype_patches, restore_image
    from .curves import pro_figure, roc_figure, training_curves_figure
    from .heatmap import DEFAULT_CMAP, annotate_overlay, heatmap_rgb, to_rgb_uint8
    from .paper import assignment_figure, position_colors, prototype_figure, restoration_figure, umap_figure
    from .report import comparison_figure, metrics_bar_figure, overlay_figure
    from .vpdm import feature_rgb, reconstruction_figure, vague_steps_figure

#: where each public name lives (module relative to this package)
_HOMES = {
    "DEFAULT_CMAP": ".heatmap",
    "heatmap_rgb": ".heatmap",
    "annotate_overlay": ".heatmap",
    "to_rgb_uint8": ".heatmap",
    "block_edges": "..explain",
    "prototype_patches": "..explain",
    "restore_image": "..explain",
    "abnormal_embeddings": "..explain",
    "assignment_figure": ".paper",
    "prototype_figure": ".paper",
    "restoration_figure": ".paper",
    "position_colors": ".paper",
    "umap_figure": ".paper",
    "roc_figure": ".curves",
    "pro_figure": ".curves",
    "training_curves_figure": ".curves",
    "overlay_figure": ".report",
    "metrics_bar_figure": ".report",
    "comparison_figure": ".report",
    "feature_rgb": ".vpdm",
    "reconstruction_figure": ".vpdm",
    "vague_steps_figure": ".vpdm",
}

__all__ = [
    "DEFAULT_CMAP",
    "to_rgb_uint8",
    "block_edges",
    "heatmap_rgb",
    "annotate_overlay",
    "overlay_figure",
    "assignment_figure",
    "prototype_patches",
    "prototype_figure",
    "restore_image",
    "restoration_figure",
    "abnormal_embeddings",
    "position_colors",
    "umap_figure",
    "roc_figure",
    "pro_figure",
    "training_curves_figure",
    "metrics_bar_figure",
    "comparison_figure",
    "feature_rgb",
    "reconstruction_figure",
    "vague_steps_figure",
]


def __getattr__(name: str) -> Any:
    """Load a public name from its module on first use (PEP 562)."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
