"""VPDM's sampling-steps trade-off (issue 22): one unified model trained on every embedded synthetic category at
once (no category label), then the test splits scored with Algorithm 2 on respaced schedules of a few step counts;
time per image and image AUROC per category and on average.

    python -m benchmarks.vpdm_steps --output benchmarks/results/vpdm-steps-cpu.json     # minutes on 2 cores
    python -m benchmarks.vpdm_steps --epochs 5 --steps 5 20                             # quicker
    python -m benchmarks.vpdm_steps --set grid=8 downsample=2                           # other settings

Data: ``pradot.data.synthetic`` (``screw_bag``, ``fastener_kit``) generated at 128 px into a temporary folder
(``--n-train`` training images per category). Model: ``VPDMConfig.recipe("cpu")`` with ``--epochs``. The test
split's image AUROC is over good vs every anomaly type (logical and structural).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.harness import log, machine_info, write_json  # noqa: E402
from pradot.backbone import load_backbone  # noqa: E402
from pradot.data import ImageDataset, load_dataset  # noqa: E402
from pradot.features import extract_features  # noqa: E402
from pradot.vpdm import VPDM, VPDMConfig  # noqa: E402
from pradot.vpdm.scoring import anomaly_map, image_map, image_score  # noqa: E402

CATEGORIES = ("screw_bag", "fastener_kit")


def _features(backbone, samples, size: int) -> dict[int, np.ndarray]:
    return extract_features(backbone, ImageDataset(samples, size), batch_size=16, progress=False)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20, 50])
    p.add_argument("--n-train", type=int, default=30)
    p.add_argument("--n-test", type=int, default=10, help="test images per type (good, logical, structural)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="other VPDMConfig settings")
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    overrides = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    config = VPDMConfig.recipe("cpu", epochs=args.epochs, **overrides)
    backbone = load_backbone(config.backbone, config.stages)
    counts = dict(n_train=args.n_train, n_validation=1, n_test_good=args.n_test)
    counts |= dict(n_test_logical=args.n_test, n_test_structural=args.n_test)
    train: dict[int, list[np.ndarray]] = {s: [] for s in config.stages}
    tests = {}
    with tempfile.TemporaryDirectory() as root:
        for cat in CATEGORIES:
            ds = load_dataset("synthetic", root, cat, generate=True, image_size=128, **counts)
            for s, f in _features(backbone, ds.samples("train"), config.image_size).items():
                train[s].append(f)
            test = ds.samples("test")
            tests[cat] = (_features(backbone, test, config.image_size), np.array([t.label for t in test]))
    features = {s: np.concatenate(v) for s, v in train.items()}
    model = VPDM(config, backbone=backbone)
    start = time.perf_counter()
    model.fit_features(features, progress=False)
    fit_s = time.perf_counter() - start
    log(f"VPDM fitted on {len(features[0])} images of {len(CATEGORIES)} categories in {fit_s:.0f} s")
    rows = []
    for steps in args.steps:
        row: dict = {"steps": steps, "auroc": {}}
        seconds, images = 0.0, 0
        for cat, (feats, labels) in tests.items():
            start = time.perf_counter()
            _, scores = model.maps_from_features(feats, steps=steps)
            seconds += time.perf_counter() - start
            images += len(labels)
            row["auroc"][cat] = float(roc_auc_score(labels, scores.numpy()))
        row["mean_auroc"] = float(np.mean(list(row["auroc"].values())))
        row["ms_per_image"] = 1000 * seconds / images
        log(f"steps {steps}: {row['ms_per_image']:.1f} ms/image (after the backbone), AUROC {row['auroc']}")
        rows.append(row)
    # the paper's start (x^T ~ N(y_hat, I)) at the recipe's step count, when the recipe starts lower (issue 22)
    if config.start_step and config.start_step < config.timesteps:
        start_step, model.config.start_step = config.start_step, 0
        row = {"steps": config.sampling_steps, "what": "Algorithm 2 from t = T (the paper's start)", "auroc": {}}
        for cat, (feats, labels) in tests.items():
            row["auroc"][cat] = float(roc_auc_score(labels, model.maps_from_features(feats)[1].numpy()))
        row["mean_auroc"] = float(np.mean(list(row["auroc"].values())))
        log(f"from t = T: AUROC {row['auroc']}")
        rows.append(row)
        model.config.start_step = start_step
    # diagnostic, not the paper's score: the same map with the vague condition in place of the reconstruction
    row = {"steps": 0, "what": "||x0 - y_hat||, no diffusion (diagnostic)", "auroc": {}}
    for cat, (feats, labels) in tests.items():
        maps = []
        with torch.no_grad():
            for i in range(0, len(labels), 16):
                x0 = model.grid({s: feats[s][i : i + 16] for s in config.stages})
                maps.append(image_map(anomaly_map(x0, model.condition(x0)[0].detach()), config.image_size))
        row["auroc"][cat] = float(roc_auc_score(labels, image_score(torch.cat(maps), config.score_pool).numpy()))
    row["mean_auroc"] = float(np.mean(list(row["auroc"].values())))
    log(f"condition only: AUROC {row['auroc']}")
    rows.append(row)
    result = {
        "what": "VPDM sampling steps vs time per image and image AUROC, one model for both synthetic categories",
        "command": "python -m benchmarks.vpdm_steps " + " ".join(argv if argv is not None else sys.argv[1:]),
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(config).items()},
        "train_images": int(len(features[0])),
        "fit_seconds": fit_s,
        "history": model.history,
        "rows": rows,
        "machine": machine_info(torch.device("cpu")),
    }
    if args.output:
        write_json(result, args.output)
    return result


if __name__ == "__main__":
    main()
