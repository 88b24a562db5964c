"""Candidates, the baseline and the chosen ensemble side by side on the test split (after the choice, for the
report): score every model once, compute each model's metrics with the engine's official definitions, and write
the comparison table and figures."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass

import numpy as np

__all__ = ["SHOWN_METRICS", "score_members", "Comparison", "compare", "to_csv", "to_markdown", "log_comparison_figures"]

#: metrics shown in the markdown table / bar chart when present (the CSV has all of them)
SHOWN_METRICS = (
    "image_auroc",
    "image_auroc_logical_anomalies",
    "image_auroc_structural_anomalies",
    "au_spro_0.05",
    "au_spro_0.3",
    "pixel_auroc",
    "au_pro_0.3",
)


class _StackedMembers:
    """For ``engine.score_samples``: maps (B, K, S, S) and scores (B, K) of the K members at once."""

    def __init__(self, ensemble):
        self.ensemble = ensemble
        self.config = ensemble.config

    def score(self, images):
        import torch

        maps = torch.stack(self.ensemble.member_maps(images), 1)
        return maps, maps.flatten(2).amax(2)


def score_members(ensemble, samples, image_size: int, batch_size: int):
    """One ``Scored`` per member (maps at the ensemble's size), with one backbone pass per shared network."""
    from pradot.engine import Scored, score_samples

    K = len(ensemble)
    if not samples:
        empty = np.zeros((0, image_size, image_size), np.float32)
        return [Scored([], empty, np.zeros(0), 0.0) for _ in range(K)]
    st = score_samples(_StackedMembers(ensemble), samples, image_size, batch_size)
    return [Scored(st.samples, np.ascontiguousarray(st.maps[:, k]), st.scores[:, k], st.seconds) for k in range(K)]


@dataclass
class Comparison:
    """Per model (members, then the ensemble): its label, metrics (official shape and flat)."""

    labels: list[str]
    flats: list[dict[str, float]]
    documents: dict[str, dict]

    @property
    def ensemble(self) -> dict[str, float]:
        return self.flats[-1]

    def rows(self) -> tuple[list[str], list[dict]]:
        keys = sorted({k for f in self.flats for k in f})
        return keys, [
            {"model": lab, **{k: f.get(k, float("nan")) for k in keys}} for lab, f in zip(self.labels, self.flats)
        ]


def compare(dataset, scored_models, labels, refs) -> Comparison:
    """Metrics of each scored model (members then ensemble) on the test split."""
    from pradot.engine import split_metrics
    from pradot.metrics.dataset import flat_metrics

    flats, docs = [], {}
    for ref, sc in zip(refs, scored_models):
        metrics, _ = split_metrics(dataset, sc)
        flats.append(flat_metrics(metrics))
        docs[ref] = metrics
    return Comparison(list(labels), flats, docs)


def to_csv(keys, rows) -> str:
    """``rows`` as CSV: the model name a text cell (:func:`pradot.names.csv_cell`), floats with 6 decimals."""
    from pradot.names import csv_cell

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["model", *keys])
    w.writeheader()
    for r in rows:
        w.writerow(
            {k: (f"{v:.6f}" if isinstance(v, float) else csv_cell(str(v)) if k == "model" else v) for k, v in r.items()}
        )
    return buf.getvalue()


def to_markdown(keys, rows, metric: str, first: str | None = None) -> str:
    """The table of ``rows`` with ``first`` (e.g. the validation objective), ``metric`` and :data:`SHOWN_METRICS`;
    model names as :func:`pradot.names.markdown_cell`."""
    from pradot.names import markdown_cell

    shown = [k for k in dict.fromkeys([*([first] if first else []), metric, *SHOWN_METRICS]) if k in keys]
    lines = ["| model | " + " | ".join(shown) + " |", "|---|" + "---|" * len(shown)]
    for r in rows:
        lines.append(
            f"| {markdown_cell(str(r['model']))} | "
            + " | ".join("" if math.isnan(r[k]) else f"{r[k]:.4f}" for k in shown)
            + " |"
        )
    return "\n".join(lines) + "\n"


def _pick_rows(ensemble_scored, k: int) -> list[int]:
    """The most anomalous test images by the ensemble, then one normal one."""
    order = np.argsort(-ensemble_scored.scores)
    samples = ensemble_scored.samples
    pick = [i for i in order if samples[i].label == 1][: max(1, k - 1)]
    pick += [i for i in order[::-1] if samples[i].label == 0][:1]
    return pick or list(order[:k])


def log_comparison_figures(
    dataset, comparison: Comparison, scored_models, short_labels, metric: str, image_size: int, n_overlays: int
) -> None:
    """Bar chart of the shown metrics, and overlays of members vs ensemble on a few test images."""
    from pathlib import Path

    from pipelines.figures import log_figure
    from pradot import viz
    from pradot.data import read_image
    from pradot.names import printable

    keys, rows = comparison.rows()
    shown = [k for k in dict.fromkeys([metric, *SHOWN_METRICS]) if k in keys][:6]
    log_figure("metrics_bar", lambda: viz.metrics_bar_figure(rows, shown, title="candidates vs ensemble (test split)"))
    if not scored_models[-1].samples:
        return
    pick = _pick_rows(scored_models[-1], max(2, min(6, n_overlays)))
    samples = scored_models[-1].samples

    def build():
        return viz.comparison_figure(
            [read_image(samples[i].image_path, image_size) for i in pick],
            [sc.maps[pick] for sc in scored_models],
            short_labels,
            [sc.scores[pick] for sc in scored_models],
            titles=[
                f"{printable(samples[i].anomaly_type)}\n{printable(Path(samples[i].image_path).stem)}" for i in pick
            ],
            masks=[dataset.load_channels(samples[i], image_size).any(0) for i in pick],
        )

    log_figure("overlays_members_vs_ensemble", build)
