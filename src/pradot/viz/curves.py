"""Curves: image-level ROC, (s)PRO and training curves (matplotlib figures without pyplot)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..names import figure_text
from ._common import _new_figure
from .heatmap import _numpy

__all__ = ["pro_figure", "roc_figure", "training_curves_figure"]


def roc_figure(
    labels: Any,
    scores: Any,
    by_type: Mapping[str, tuple[Any, Any]] | None = None,
    title: str = "image-level ROC",
    panel_size: float = 4.5,
) -> Figure:
    """ROC curves (``sklearn.metrics.roc_curve``) with the AUROC in the legend.

    Args:
        labels, scores: (N,) 0/1 labels (1 = anomalous) and scores of the whole test set.
        by_type: optional ``{name: (labels, scores)}`` subsets (e.g. good + logical anomalies).
    Returns:
        Figure with one axes: one line per curve plus the chance diagonal.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    curves = {"all": (labels, scores), **(dict(by_type) if by_type else {})}
    fig = _new_figure(panel_size + 0.3, panel_size)
    ax = fig.add_subplot(1, 1, 1)
    for name, (y, s) in curves.items():
        y = _numpy(y).astype(int).reshape(-1)
        s = _numpy(s).astype(np.float64).reshape(-1)
        if len(np.unique(y)) < 2:
            ax.plot([], [], label=f"{figure_text(name)}: undefined (one class)")
            continue
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, lw=2 if name == "all" else 1.3, label=f"{figure_text(name)}: AUROC {roc_auc_score(y, s):.3f}")
    ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.set_title(figure_text(title), fontsize=11)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def pro_figure(
    curves: Mapping[str, tuple[Any, Any]], max_fpr: float = 0.3, title: str = "sPRO", panel_size: float = 4.5
) -> Figure:
    """(s)PRO curves over the FPR, up to ``min(1, 1.5 max_fpr)``, with the normalised area up to the
    integration limit (``pradot.metrics.area_under_curve``) in the legend and a vertical line there.

    Args:
        curves: ``{name: (fpr (K,), pro (K,))}``, fpr sorted ascending.
    """
    fig = _new_figure(panel_size + 0.6, panel_size)
    ax = fig.add_subplot(1, 1, 1)
    try:
        from ..metrics import area_under_curve
    except Exception:  # pragma: no cover - metrics unavailable: plot without areas
        area_under_curve = None
    for name, (fpr, pro) in curves.items():
        x = _numpy(fpr).astype(np.float64).reshape(-1)
        y = _numpy(pro).astype(np.float64).reshape(-1)
        label = figure_text(str(name))
        if area_under_curve is not None:
            try:
                label += f": AU-{figure_text(title)}@{max_fpr:g} {area_under_curve(x, y, max_fpr):.3f}"
            except ValueError:
                pass
        ax.plot(x, y, lw=1.5, label=label)
    ax.axvline(max_fpr, color="0.3", ls="--", lw=1, label=f"integration limit {max_fpr:g}")
    ax.set_xlim(0, min(1.0, 1.5 * float(max_fpr)))
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel(figure_text(title))
    ax.set_title(f"{figure_text(title)} curve", fontsize=11)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def _field(obj: Any, name: str):
    return obj[name] if isinstance(obj, Mapping) else getattr(obj, name)


def training_curves_figure(history: Sequence[Any], panel_size: float = 4.0) -> Figure:
    """OT loss and relative prototype change per epoch and stage.

    Args:
        history: ``pradot.model.EpochStats`` list (or dicts with ``epoch``, ``ot_loss`` {stage: float},
            ``change`` {stage: float}).
    Returns:
        Figure with two axes: ``<M, T*>`` per stage (left) and the relative change (right, log scale).
    """
    fig = _new_figure(2 * panel_size + 0.5, panel_size * 0.8)
    ax_l, ax_c = fig.subplots(1, 2)
    epochs = [int(_field(h, "epoch")) for h in history]
    stages = sorted({s for h in history for s in _field(h, "ot_loss")})
    for s in stages:
        ep = [e for e, h in zip(epochs, history) if s in _field(h, "ot_loss")]
        ax_l.plot(
            ep,
            [_field(h, "ot_loss")[s] for h in history if s in _field(h, "ot_loss")],
            marker="o",
            ms=3,
            label=f"stage {s}",
        )
        ch = [(e, _field(h, "change").get(s)) for e, h in zip(epochs, history)]
        ch = [(e, v) for e, v in ch if v is not None and v > 0]
        if ch:
            ax_c.plot(*zip(*ch), marker="o", ms=3, label=f"stage {s}")
    ax_l.set_title("OT loss <M, T*>", fontsize=10)
    ax_c.set_title("relative prototype change", fontsize=10)
    for ax in (ax_l, ax_c):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if stages:
            ax.legend(fontsize=8)
    if any(line.get_ydata().size for line in ax_c.get_lines()):
        ax_c.set_yscale("log")
    if not history:
        ax_l.text(0.5, 0.5, "no epochs", ha="center", va="center", transform=ax_l.transAxes)
    return fig
