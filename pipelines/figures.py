"""Which figures a training run logs, and on which images. The drawing itself is :mod:`pradot.viz`.

A figure that fails is skipped with a warning: figures never fail a run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["log_figure", "log_training_figures", "log_evaluation_figures", "log_vpdm_figures"]


def log_figure(name: str, build: Callable) -> None:
    """``build()`` -> a matplotlib figure, logged as ``figures/<name>.png`` of the active run (or skipped
    with a warning when it fails or returns None); ``name`` may hold category or model names: it becomes
    one file name (:func:`pipelines.names.file_name`), never a path."""
    import mlflow

    from pipelines.names import file_name

    try:
        fig = build()
        if fig is not None:
            mlflow.log_figure(fig, f"figures/{file_name(name, '.png')}")
    except Exception as e:  # noqa: BLE001 - a figure must not fail the run
        log.warning("figure %s skipped: %s: %s", name, type(e).__name__, e)


def _pick(scores: np.ndarray, k: int) -> list[int]:
    """Indices of the highest- and lowest-scoring images (k in all)."""
    order = np.argsort(-scores)
    return sorted(set(order[: (k + 1) // 2].tolist()) | set(order[::-1][: k // 2].tolist()))


def _evaluation_figures(splits, scored, size: int, n_overlays: int, history) -> list[int]:
    """Overlays, training curves, ROC and (s)PRO curves; returns the indices of the overlaid images."""
    from pradot import viz
    from pradot.data import read_image
    from pradot.metrics import Saturation, spro_curve
    from pradot.names import printable

    if history is not None:
        log_figure("training_curves", lambda: viz.training_curves_figure(history))
    pick = _pick(scored.scores, min(n_overlays, len(scored.samples)))
    if not pick:  # no test images: nothing else to draw
        return pick
    images = [read_image(scored.samples[i].image_path, size) for i in pick]
    masks = [splits.dataset.load_channels(scored.samples[i], size).any(0) for i in pick]
    titles = [f"{printable(scored.samples[i].relative_id)}  {scored.scores[i]:.3f}" for i in pick]
    log_figure("anomaly_overlays", lambda: viz.overlay_figure(images, scored.maps[pick], titles=titles, masks=masks))
    labels = [s.label for s in scored.samples]
    if len(set(labels)) < 2:  # ROC and (s)PRO curves need good and anomalous images
        return pick
    types = [s.anomaly_type for s in scored.samples]
    scores = scored.scores.tolist()
    by_type = {
        t: (
            [0 if x == "good" else 1 for x in types if x in ("good", t)],
            [s for s, x in zip(scores, types) if x in ("good", t)],
        )
        for t in sorted(set(types) - {"good"})
    }
    log_figure("roc", lambda: viz.roc_figure(labels, scores, by_type=by_type if len(by_type) > 1 else None))
    if scored.samples and any(s.defects for s in scored.samples):

        def pro():
            curves = {}
            for t in sorted(set(types) - {"good"}):
                idx = [i for i, x in enumerate(types) if x in ("good", t)]
                ch = [splits.dataset.load_channels(scored.samples[i], size) for i in idx]
                sat = [[Saturation.coerce(d) for d in scored.samples[i].defects] for i in idx]
                c = spro_curve([scored.maps[i] for i in idx], ch, sat)
                curves[t] = (c.fpr, c.spro)
            return viz.pro_figure(curves, max_fpr=0.3, title="sPRO" if splits.dataset.has_saturation else "PRO")

        log_figure("spro_curves", pro)
    return pick


def log_evaluation_figures(splits, scored, size: int, n_overlays: int) -> list[int]:
    """The figures of a scored test split without training (a memory bank): overlays, ROC and (s)PRO curves."""
    return _evaluation_figures(splits, scored, size, n_overlays, history=None)


def _prototype_figures(model, splits, scored, size: int, stage: int, anomalous: list[int], feats, train_feats):
    """Prototype reconstructions and restored images (paper Fig. 5) from the training features."""
    from pradot import viz
    from pradot.data import read_image
    from pradot.scoring import assignment_scores

    bank = model.banks[str(stage)]
    holder = {}

    def protos():
        holder["p"] = viz.prototype_patches(bank, train_feats, lambda n: read_image(splits.train[n].image_path, size))
        return viz.prototype_figure(holder["p"], bank.config.grid, bank.config.n)

    log_figure("prototypes", protos)
    if "p" not in holder:
        return

    def restored():
        _, idx = assignment_scores(bank, feats)
        rest = [
            viz.restore_image(idx[j].cpu().numpy(), holder["p"], bank.config.grid, size) for j in range(len(anomalous))
        ]
        return viz.restoration_figure(
            [read_image(scored.samples[i].image_path, size) for i in anomalous],
            rest,
            [scored.maps[i] for i in anomalous],
        )

    log_figure("restored_images", restored)


def _umap_figure(model, splits, scored, size: int, stage: int, anomalous: list[int], feats, max_points: int, seed: int):
    import torch

    from pradot import viz

    bank = model.banks[str(stage)]
    H, W = bank.config.grid
    z, c, ab = [], [], []
    for j, i in enumerate(anomalous):
        zz, cc = bank.embeddings(feats[j : j + 1])
        z.append(zz.cpu())
        c.append(cc.cpu())
        ab.append(viz.abnormal_embeddings(splits.dataset.load_channels(scored.samples[i], size).any(0), (H, W)))
    return viz.umap_figure(
        torch.cat(z),
        torch.cat(c),
        np.concatenate(ab),
        bank.features.cpu(),
        bank.coords.cpu(),
        alpha=model.config.alpha,
        max_points=max_points,
        seed=seed,
    )


def log_training_figures(
    model,
    splits,
    scored,
    train_features,
    history,
    *,
    image_size: int,
    n_overlays: int,
    paper_figures: bool,
    umap_max_points: int,
    seed: int,
) -> None:
    """The figures of a training run, on its scored test split ``scored``: overlays, curves and, with
    ``paper_figures``, the paper's Fig. 4-6 (assignment arrows, prototypes, restored images, UMAP) for the
    first stage (the UMAP only when ``umap_max_points`` > 0).
    ``train_features``: ``{stage: (N, D, H, W)}`` (None: no prototype figures)."""
    import torch

    from pradot import viz
    from pradot.data import read_image

    pick = _evaluation_figures(splits, scored, image_size, n_overlays, history)
    if not paper_figures or not pick:
        return
    stage = model.prototypes.bank_stages[0]  # the first bank (the stages' concatenation when concat_stages)
    anomalous = [i for i in pick if scored.samples[i].label == 1][:3] or pick[:3]
    with torch.no_grad():
        test_imgs = (
            torch.stack(
                [
                    torch.from_numpy(read_image(scored.samples[i].image_path, image_size)).permute(2, 0, 1)
                    for i in anomalous
                ]
            ).float()
            / 255.0
        )
        feats = model.prototypes.transform(model.backbone(test_imgs.to(model.device)))[stage]
        if train_features is not None and not model.prototypes.options.identity:  # the banks' features
            train_features = model.prototypes.transform(train_features)
    bank = model.banks[str(stage)]
    for j, i in enumerate(anomalous):
        log_figure(
            f"assignments_{j}",
            lambda i=i, j=j: viz.assignment_figure(
                read_image(scored.samples[i].image_path, image_size),
                bank,
                feats[j : j + 1],
                title=f"{scored.samples[i].relative_id} (stage {stage}, alpha {model.config.alpha})",
            ),
        )
    if train_features is not None:
        _prototype_figures(model, splits, scored, image_size, stage, anomalous, feats, train_features[stage])
    if umap_max_points > 0:  # 0: no UMAP figure (numba compiles UMAP's kernels in every new process: ~20 s)
        log_figure(
            "umap",
            lambda: _umap_figure(model, splits, scored, image_size, stage, anomalous, feats, umap_max_points, seed),
        )


def log_vpdm_figures(model, result, cats, name: str = "vpdm") -> None:
    """VPDM's figures as its paper's Fig. 2 and 3, one row per category (``figures/<name>_reconstructions.png``,
    ``figures/<name>_vague_steps.png``): the category's highest-scoring anomalous test image (its highest-scoring
    image when the split has no anomaly) beside its lowest-scoring normal test image as the reference; ``model``
    a fitted :class:`pradot.vpdm.VPDM`, ``result`` its :class:`pradot.multiclass.MethodResult`, ``cats`` the
    categories' splits."""
    from pradot import viz
    from pradot.data import read_image

    size = int(model.config.image_size)
    rows: dict[str, list] = {k: [] for k in ("refs", "images", "masks", "titles")}
    for c, r in result.categories.items():
        labels = np.array([s.label for s in r.test.samples])
        if not len(labels):
            continue
        bad = np.flatnonzero(labels != 0) if (labels != 0).any() else np.arange(len(labels))
        good = np.flatnonzero(labels == 0) if (labels == 0).any() else np.arange(len(labels))
        pick, ref = (
            r.test.samples[bad[np.argmax(r.test.scores[bad])]],
            r.test.samples[good[np.argmin(r.test.scores[good])]],
        )
        rows["images"].append(read_image(pick.image_path, size))
        rows["refs"].append(read_image(ref.image_path, size))
        rows["masks"].append(np.asarray(cats[c].dataset.load_channels(pick, size)) if pick.label else None)
        rows["titles"].append(f"{c} {pick.anomaly_type}")
    if not rows["images"]:
        return

    def explained():
        return model.explain(np.stack(rows["images"]).transpose(0, 3, 1, 2))

    out: dict = {}

    def fig2():
        out.update(explained())
        return viz.reconstruction_figure(
            rows["refs"], rows["images"], out["x0"], out["reconstruction"], out["maps"], rows["masks"], rows["titles"]
        )

    def fig3():
        if not out:
            out.update(explained())
        return viz.vague_steps_figure(
            rows["images"], out["x0"], out["f_down"], out["y_hat"], out["reconstruction"], rows["masks"], rows["titles"]
        )

    log_figure(f"{name}_reconstructions", fig2)
    log_figure(f"{name}_vague_steps", fig3)
