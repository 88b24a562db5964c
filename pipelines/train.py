"""MLflow entry point `main`: train one PRADOT bank, evaluate it, log everything, register the model.

    python pipelines/train.py [hydra overrides...]          # e.g. data=synthetic experiment=cpu_demo
    mlflow run . -P category=screw_bag                      # the same through the MLproject

Logs to MLflow: every resolved config value (params), per-epoch OT loss and prototype change, final
metrics, timings, the resolved config, figures (overlays, assignments, prototypes, restorations, UMAP,
curves), the test maps as official .tiff files, and a pyfunc model (bank + backbone weights +
calibrated threshold) registered as ``pradot-<dataset>-<category>``.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import compose, flatten, parse_overrides, run_log, setup_tracking  # noqa: E402

log = logging.getLogger("pradot.train")


class DemoFailure(RuntimeError):
    """Raised on purpose by ``debug.fail_at_epoch`` (to test that crashed runs are recorded as FAILED)."""


def specs_from_config(cfg):
    """Typed arguments for the library from the resolved config."""
    from pradot.engine import DataSpec, batch_size_for
    from pradot.model import PRADOTConfig

    data_root = cfg.get("data_root") or cfg.data.root
    spec = DataSpec(kind=str(cfg.data.kind), root=(str(data_root) if data_root else None),
                    category=str(cfg.category), image_size=int(cfg.data.image_size),
                    validation_fraction=float(cfg.data.get("validation_fraction", 0.0)),
                    augmentation=cfg.data.get("augmentation"),
                    generator=(dict(cfg.data.generator) if cfg.data.get("generator") else None),
                    seed=int(cfg.seed))
    m = cfg.model
    model_cfg = PRADOTConfig(backbone=str(cfg.backbone.name), stages=tuple(cfg.backbone.stages),
                             image_size=spec.image_size, alpha=float(m.alpha), n=float(m.n), eta=float(m.eta),
                             epsilon=float(m.epsilon), sinkhorn_iters=int(m.sinkhorn_iters),
                             batch_size=batch_size_for(m.n, m.batch_ratio), epochs=int(m.epochs),
                             seed=int(cfg.seed), learn_coordinates=bool(m.learn_coordinates),
                             warm_start=bool(m.warm_start))
    return spec, model_cfg


def log_resolved_params(mlflow, params: dict[str, str]) -> None:
    """Log the resolved config. Under `mlflow run` the MLproject parameters are already logged as the user
    gave them (e.g. ``seed=''`` for "conf default"); a resolved value that differs goes to ``resolved.<key>``."""
    run = mlflow.active_run()
    existing = mlflow.get_run(run.info.run_id).data.params
    out = {}
    for k, v in params.items():
        if k in existing and existing[k] != v:
            out[f"resolved.{k}"] = v
        elif k not in existing:
            out[k] = v
    mlflow.log_params(out)


def model_name(cfg) -> str:
    return str(cfg.tracking.get("model_name") or f"pradot-{cfg.data.kind}-{cfg.category}")


def log_figures(mlflow, model, splits, scored, spec, feats_train, cfg, history, curves_input):
    """Figures of the paper (Fig. 2, 4, 5, 6) and the evaluation curves. A figure that fails is skipped
    with a warning: figures never fail a training run."""
    import torch

    from pradot import viz
    from pradot.data import read_image

    def attempt(name, fn):
        try:
            fig = fn()
            if fig is not None:
                mlflow.log_figure(fig, f"figures/{name}.png")
        except Exception as e:  # noqa: BLE001 - a figure must not fail the run
            log.warning("figure %s skipped: %s: %s", name, type(e).__name__, e)

    size = spec.image_size
    stage = model.config.stages[0]
    bank = model.banks[str(stage)]
    k = min(int(cfg.evaluation.n_overlays), len(scored.samples))
    # a sample of test images: the highest- and lowest-scoring, and anomalous ones first
    order = np.argsort(-scored.scores)
    pick = sorted(set(order[: (k + 1) // 2].tolist()) | set(order[::-1][: k // 2].tolist()))
    images = [read_image(scored.samples[i].image_path, size) for i in pick]
    masks = [splits.dataset.load_channels(scored.samples[i], size).any(0) for i in pick]
    titles = [f"{scored.samples[i].relative_id}  {scored.scores[i]:.3f}" for i in pick]
    attempt("anomaly_overlays", lambda: viz.overlay_figure(images, scored.maps[pick], titles=titles, masks=masks))
    attempt("training_curves", lambda: viz.training_curves_figure(history))
    labels, scores, types = curves_input
    by_type = {t: ([0 if x == "good" else 1 for x in types if x in ("good", t)],
                   [s for s, x in zip(scores, types) if x in ("good", t)])
               for t in sorted(set(types) - {"good"})}
    attempt("roc", lambda: viz.roc_figure(labels, scores, by_type=by_type if len(by_type) > 1 else None))
    if scored.samples and any(s.defects for s in scored.samples):
        from pradot.metrics import spro_curve, Saturation

        def pro():
            curves = {}
            for t in sorted(set(types) - {"good"}):
                idx = [i for i, x in enumerate(types) if x in ("good", t)]
                ch = [splits.dataset.load_channels(scored.samples[i], size) for i in idx]
                sat = [[Saturation.coerce(d) for d in scored.samples[i].defects] for i in idx]
                c = spro_curve([scored.maps[i] for i in idx], ch, sat)
                curves[t] = (c.fpr, c.spro)
            return viz.pro_figure(curves, max_fpr=0.3, title="sPRO" if splits.dataset.has_saturation else "PRO")
        attempt("spro_curves", pro)

    if not cfg.evaluation.figures:
        return
    anomalous = [i for i in pick if scored.samples[i].label == 1][:3] or pick[:3]
    with torch.no_grad():
        test_imgs = torch.stack([torch.from_numpy(read_image(scored.samples[i].image_path, size)).permute(2, 0, 1)
                                 for i in anomalous]).float() / 255.0
        feats = model.backbone(test_imgs.to(model.device_))[stage]
    for j, i in enumerate(anomalous):
        attempt(f"assignments_{j}", lambda i=i, j=j: viz.assignment_figure(
            read_image(scored.samples[i].image_path, size), bank, feats[j:j + 1],
            title=f"{scored.samples[i].relative_id} (stage {stage}, alpha {model.config.alpha})"))
    train_feats = feats_train[stage] if feats_train is not None else None
    if train_feats is not None:
        def get_image(n):
            return read_image(splits.train[n].image_path, size)

        patches_holder = {}

        def protos():
            patches_holder["p"] = viz.prototype_patches(bank, train_feats, get_image)
            return viz.prototype_figure(patches_holder["p"], bank.config.grid, bank.config.n)
        attempt("prototypes", protos)
        if "p" in patches_holder:
            from pradot.scoring import assignment_scores

            def restored():
                _, idx = assignment_scores(bank, feats)
                rest = [viz.restore_image(idx[j].cpu().numpy(), patches_holder["p"], bank.config.grid, size)
                        for j in range(len(anomalous))]
                return viz.restoration_figure([read_image(scored.samples[i].image_path, size) for i in anomalous],
                                              rest, [scored.maps[i] for i in anomalous])
            attempt("restored_images", restored)

    def umap():
        H, W = bank.config.grid
        z, c, ab = [], [], []
        for j, i in enumerate(anomalous):
            zz, cc = bank.embeddings(feats[j:j + 1])
            z.append(zz.cpu())
            c.append(cc.cpu())
            ab.append(viz.abnormal_embeddings(splits.dataset.load_channels(scored.samples[i], size).any(0), (H, W)))
        return viz.umap_figure(torch.cat(z), torch.cat(c), np.concatenate(ab), bank.features.cpu(), bank.coords.cpu(),
                               alpha=model.config.alpha, max_points=int(cfg.evaluation.umap_max_points),
                               seed=int(cfg.seed))
    attempt("umap", umap)


def run_training(cfg, mlflow) -> dict:
    """The pipeline body (inside an active MLflow run)."""
    import torch

    from pradot.engine import (flat_metrics, open_splits, resolve_device, score_samples, split_metrics,
                               train_model, write_tiff_maps)
    from pradot.features import FeatureCache
    from pradot.data import build_train_augmentation

    t_start = time.perf_counter()
    spec, model_cfg = specs_from_config(cfg)
    device = resolve_device(str(cfg.device))
    torch.manual_seed(int(cfg.seed))
    mlflow.set_tags({"pradot.dataset": spec.kind, "pradot.category": spec.category,
                     "pradot.backbone": model_cfg.backbone, "pradot.device": str(device),
                     "pradot.entry_point": "main"})
    params = flatten(cfg)
    params["model.batch_size"] = str(model_cfg.batch_size)
    log_resolved_params(mlflow, params)
    from omegaconf import OmegaConf
    mlflow.log_text(OmegaConf.to_yaml(cfg), "config/resolved_config.yaml")

    log.info("dataset %s / %s (root %s)", spec.kind, spec.category, spec.root)
    splits = open_splits(spec)
    log.info("train %d, validation %d, test %d images", len(splits.train), len(splits.validation), len(splits.test))
    mlflow.log_params({"data.n_train": len(splits.train), "data.n_validation": len(splits.validation),
                       "data.n_test": len(splits.test), "data.resolved_root": str(splits.dataset.root)})

    fail_at = cfg.get("debug", {}).get("fail_at_epoch") if cfg.get("debug") else None

    def on_epoch(stats):
        metrics = {"epoch_seconds": stats.seconds}
        for s in stats.ot_loss:
            metrics[f"ot_loss_stage{s}"] = stats.ot_loss[s]
            metrics[f"prototype_change_stage{s}"] = stats.change[s]
        mlflow.log_metrics(metrics, step=stats.epoch)
        log.info("epoch %d: %s", stats.epoch, ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        if fail_at is not None and stats.epoch >= int(fail_at):
            raise DemoFailure(f"debug.fail_at_epoch={fail_at}: failing on purpose after epoch {stats.epoch}")

    cache = FeatureCache(cfg.cache.dir) if cfg.cache.enabled else None
    aug_name = spec.augmentation if spec.augmentation not in (None, "none", "None") else None
    augmentation = build_train_augmentation(aug_name, seed=spec.seed) if aug_name else None
    result = train_model(model_cfg, spec, splits.train, cache=cache, device=device,
                         weights_path=cfg.backbone.get("weights_path"), callback=on_epoch,
                         num_workers=int(cfg.num_workers), augmentation=augmentation)
    model = result.model

    log.info("scoring %d test images", len(splits.test))
    test = score_samples(model, splits.test, spec.image_size, int(cfg.evaluation.batch_size))
    val = score_samples(model, splits.validation, spec.image_size, int(cfg.evaluation.batch_size))
    metrics, notes = split_metrics(splits.dataset, test)
    flat = flat_metrics(metrics)
    mlflow.log_metrics(flat)
    mlflow.log_dict(metrics, "metrics/metrics.json")
    timings = {**result.timings, "scoring_seconds": test.seconds,
               "scoring_seconds_per_image": test.seconds / max(1, len(splits.test)),
               "total_seconds": time.perf_counter() - t_start}
    mlflow.log_metrics({f"time_{k}": v for k, v in timings.items()})
    if notes:
        mlflow.log_text("\n".join(notes), "metrics/notes.txt")
    log.info("metrics: %s", ", ".join(f"{k}={v:.4f}" for k, v in sorted(flat.items())))

    # calibration on the validation normals (or, without any, on the train images: said in a tag)
    from pradot.serving import Calibration
    if len(val.scores):
        calib = Calibration.calibrate(val.scores, float(cfg.calibration.quantile))
        mlflow.set_tag("pradot.calibration_source", "validation")
    else:
        train_scored = score_samples(model, splits.train, spec.image_size, int(cfg.evaluation.batch_size))
        calib = Calibration.calibrate(train_scored.scores, float(cfg.calibration.quantile))
        mlflow.set_tag("pradot.calibration_source", "train (no validation images)")
    mlflow.log_dict(calib.to_dict(), "model_files/calibration.json")
    labels = [s.label for s in splits.test]
    if len(set(labels)) > 1:
        pred = test.scores > calib.threshold
        mlflow.log_metrics({"test_recall_at_threshold": float(np.mean(pred[np.array(labels) == 1])),
                            "test_fpr_at_threshold": float(np.mean(pred[np.array(labels) == 0]))})

    with tempfile.TemporaryDirectory() as tmp:
        if cfg.evaluation.write_tiffs:
            write_tiff_maps(test, Path(tmp) / "anomaly_maps", spec.category)
            mlflow.log_artifacts(str(Path(tmp) / "anomaly_maps"), "anomaly_maps")
        feats_train = None
        if cache is not None:
            from pradot.engine import feature_identity
            feats_train = cache.load(feature_identity(spec, model_cfg.backbone, model_cfg.stages, splits.train,
                                                      "train", cfg.backbone.get("weights_path")))
        log_figures(mlflow, model, splits, test, spec, feats_train, cfg, result.history,
                    (labels, test.scores.tolist(), [s.anomaly_type for s in splits.test]))

        model_path = model.save(Path(tmp) / "pradot_model.pt", include_backbone=bool(cfg.tracking.include_backbone))
        from mlflow_model import log_pradot_model
        name = model_name(cfg) if cfg.tracking.register else None
        example = next((s for s in splits.test if s.label == 0), splits.test[0] if splits.test else splits.train[0])
        info = log_pradot_model(model_path, calib, registered_model_name=name,
                                input_example_image=example.image_path,
                                extra_tags={"dataset": spec.kind, "category": spec.category})
    if name:
        from mlflow import MlflowClient
        client = MlflowClient()
        version = str(info.registered_model_version)
        tags = {"alpha": model_cfg.alpha, "n": model_cfg.n, "stages": ",".join(map(str, model_cfg.stages)),
                "backbone": model_cfg.backbone, "image_size": model_cfg.image_size, "epsilon": model_cfg.epsilon,
                "eta": model_cfg.eta, "batch_size": model_cfg.batch_size, "epochs": model_cfg.epochs,
                "dataset": spec.kind, "category": spec.category, "run_id": mlflow.active_run().info.run_id,
                "threshold": calib.threshold, **{f"metric.{k}": round(v, 5) for k, v in flat.items()}}
        for k, v in tags.items():
            client.set_model_version_tag(name, version, k, str(v))
        log.info("registered model %s version %s", name, version)
    return {"metrics": flat, "model_uri": info.model_uri, "registered": (name, info.registered_model_version),
            "timings": timings}


def main(argv=None) -> int:
    overrides = parse_overrides(sys.argv[1:] if argv is None else argv)
    cfg = compose(overrides)
    uri = setup_tracking()
    import mlflow

    from pradot.backbone import BackboneError
    from pradot.data import DatasetError

    if not os.environ.get("MLFLOW_RUN_ID"):  # under `mlflow run` the run (and its experiment) exist already
        mlflow.set_experiment(str(cfg.tracking.experiment_name))
    with run_log() as logfile:
        try:
            with mlflow.start_run(run_name=f"{cfg.data.kind}-{cfg.category}-a{cfg.model.alpha}-n{cfg.model.n}") as run:
                try:
                    out = run_training(cfg, mlflow)
                except BaseException as e:
                    log.error("run failed: %s: %s", type(e).__name__, e, exc_info=not isinstance(e, DatasetError))
                    raise
                finally:
                    mlflow.log_artifact(str(logfile), "logs")
        except (DatasetError, BackboneError, ValueError, FileNotFoundError) as e:
            hint = ""
            if isinstance(e, DatasetError):
                hint = ("\nWith the MLflow project: -P data_root=/path/to/data (or export PRADOT_DATA_ROOT), or try "
                        "the embedded dataset with -P dataset=synthetic.")
            print(f"\nerror: {e}{hint}\n(the MLflow run is marked FAILED and nothing was registered; its log is "
                  f"under the run's logs/ artifacts)", file=sys.stderr)
            return 2
    m = out["metrics"]
    print("\n== PRADOT run finished ==")
    print(f"tracking store : {uri}")
    print(f"run            : {run.info.run_id} (experiment {run.info.experiment_id})")
    print(f"model          : {out['model_uri']}" + (f"  registered as {out['registered'][0]} v{out['registered'][1]}"
                                                    if out["registered"][0] else ""))
    shown = {k: v for k, v in m.items() if k in ("image_auroc", "au_spro_0.05", "pixel_auroc", "au_pro_0.3")}
    print("metrics        : " + ", ".join(f"{k}={v:.4f}" for k, v in shown.items()))
    print(f"look at it     : mlflow ui --backend-store-uri {uri}   (then open http://127.0.0.1:5000)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
