"""Why VPDM scores near chance on the embedded synthetic data (issue 22): small, cached experiments.

    python -m benchmarks.vpdm_diagnose prepare            # features + one trained cpu-recipe model, cached
    python -m benchmarks.vpdm_diagnose condition          # (c) ||x0 - y_hat|| per condition kind
    python -m benchmarks.vpdm_diagnose start              # (a)/(b) reconstruction from x^t0 for a few t0
    python -m benchmarks.vpdm_diagnose score              # (d) pooled max vs top-k mean vs mean

Data: the two embedded synthetic categories at 128 px (``--n-train`` per category, ``--n-test`` per test type),
backbone features cached in ``--cache``; the model is ``VPDMConfig.recipe("cpu")`` with ``--set`` overrides,
trained once per setting and cached. Every table prints image AUROC per category (good vs anomalous) and the
mean of the per-image statistic over normals and anomalies.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pradot.backbone import load_backbone  # noqa: E402
from pradot.data import ImageDataset, load_dataset  # noqa: E402
from pradot.features import extract_features  # noqa: E402
from pradot.vpdm import VPDM, VPDMConfig  # noqa: E402
from pradot.vpdm.diffusion import q_sample, sample  # noqa: E402
from pradot.vpdm.scoring import anomaly_map, image_map, image_score  # noqa: E402

CATEGORIES = ("screw_bag", "fastener_kit")


def features(cache: Path, n_train: int, n_test: int):
    """{"train": {stage: (N, D, H, W)}, cat: ({stage: ...}, labels)} from the cache, generated if absent."""
    path = cache / f"features-{n_train}-{n_test}.pt"
    if path.exists():
        return torch.load(path, weights_only=False)
    config = VPDMConfig.recipe("cpu")
    backbone = load_backbone(config.backbone, config.stages)
    counts = dict(n_train=n_train, n_validation=1, n_test_good=n_test, n_test_logical=n_test)
    counts |= dict(n_test_structural=n_test)
    out: dict = {"train": {s: [] for s in config.stages}}
    with tempfile.TemporaryDirectory() as root:
        for cat in CATEGORIES:
            ds = load_dataset("synthetic", root, cat, generate=True, image_size=128, **counts)
            for s, f in _extract(backbone, ds.samples("train"), config.image_size).items():
                out["train"][s].append(f)
            test = ds.samples("test")
            labels = np.array([t.label for t in test])
            kinds = [str(getattr(t, "defect", getattr(t, "kind", ""))) for t in test]
            out[cat] = (_extract(backbone, test, config.image_size), labels, kinds)
    out["train"] = {s: np.concatenate(v) for s, v in out["train"].items()}
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(out, path)
    return out


def _extract(backbone, samples, size):
    return extract_features(backbone, ImageDataset(samples, size), batch_size=16, progress=False)


def model_for(cache: Path, data, overrides: dict) -> VPDM:
    config = VPDMConfig.recipe("cpu", **overrides)
    key = hashlib.sha1(json.dumps(overrides, sort_keys=True).encode()).hexdigest()[:10]
    path = cache / f"model-{key}.pt"
    if path.exists():
        return VPDM.load(path)
    model = VPDM(config)
    start = time.perf_counter()
    model.fit_features(data["train"], progress=False)
    print(f"trained {overrides} in {time.perf_counter() - start:.0f} s, eps loss {model.history[-1]['eps']:.3f}")
    model.save(path)
    return model


def grids(model: VPDM, data):
    """cat -> (x0 (B, C, g, g), labels)."""
    return {cat: (model.grid(data[cat][0]), data[cat][1]) for cat in CATEGORIES}


def report(name: str, per_cat: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict:
    row = {"what": name}
    for cat, (scores, labels) in per_cat.items():
        row[cat] = round(float(roc_auc_score(labels, scores)), 3)
        row[cat + "_good/anom"] = f"{scores[labels == 0].mean():.3g}/{scores[labels == 1].mean():.3g}"
    row["mean"] = round(float(np.mean([row[c] for c in per_cat])), 3)
    print(json.dumps(row))
    return row


def scores_of(model: VPDM, S: torch.Tensor) -> np.ndarray:
    return image_score(image_map(S, model.config.image_size), model.config.score_pool).numpy()


@torch.no_grad()
def reconstruct_from(model: VPDM, x0: torch.Tensor, y: torch.Tensor, t0: int, steps: int, seed: int = 0):
    """Algorithm 2 started at x^{t0} drawn by Eq. 14 from the image's own x0 (t0 = T: the paper's start, the
    x^0 part then weighs sqrt(alpha^T) ~ 0.006)."""
    sched = model.schedule.respaced(steps)
    keep = sched.timesteps <= t0
    from pradot.vpdm.diffusion import NoiseSchedule

    sub = NoiseSchedule(sched.betas[keep], sched.timesteps[keep])
    g = torch.Generator().manual_seed(seed)
    a = float(sub.alpha[-1])
    xt = q_sample(x0, y, a, torch.randn(x0.shape, generator=g))
    first = [True]

    def noise(shape):
        if first[0]:  # the sampler's x^T = y + noise: give it x^{t0} instead
            first[0] = False
            return xt - y
        return torch.randn(shape, generator=g)

    clip = (model.low[:, None, None], model.high[:, None, None])
    return sample(model.eps, y, sub, noise, model.config.sigma, clip_x0=clip)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["prepare", "condition", "start", "score", "knn"])
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "vpdm-diagnose")
    p.add_argument("--n-train", type=int, default=30)
    p.add_argument("--n-test", type=int, default=10)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    p.add_argument("--t0", type=int, nargs="+", default=[50, 100, 200, 400, 1000])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--sigma", default=None, help="the sampler's sigma at scoring time (default: the model's)")
    p.add_argument("--condition", default=None, help="the condition at scoring time (default: the model's)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    overrides = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    data = features(args.cache, args.n_train, args.n_test)
    if args.what == "knn":  # the signal the features hold: distance to the nearest training grid vector
        model = VPDM(VPDMConfig.recipe("cpu", epochs=0, **overrides))
        model.fit_features(data["train"], progress=False)
        bank = model.grid(data["train"]).permute(0, 2, 3, 1).reshape(-1, model.channels)
        per = {}
        for cat, (x0, labels) in grids(model, data).items():
            q = x0.permute(0, 2, 3, 1).reshape(-1, model.channels)
            d = torch.cdist(q, bank).amin(1).reshape(x0.shape[0], x0.shape[2], x0.shape[3])
            per[cat] = (scores_of(model, d), labels)
        report("nearest training vector (PatchCore-like, no diffusion)", per)
        return
    model = model_for(args.cache, data, overrides)
    if args.sigma:
        model.config.sigma = args.sigma
    if args.condition:
        model.config.condition = args.condition
    g = grids(model, data)
    if args.what == "prepare":
        return
    if args.what == "condition":
        for kind in ("ot", "nearest", "low_pass"):
            model.config.condition = kind
            per = {
                cat: (scores_of(model, anomaly_map(x0, model.condition(x0)[0].detach())), lab)
                for cat, (x0, lab) in g.items()
            }
            report(f"||x0 - y_hat||, condition={kind}", per)
        return
    if args.what == "start":
        for t0 in args.t0:
            per = {}
            for cat, (x0, lab) in g.items():
                y = model.condition(x0)[0]
                per[cat] = (scores_of(model, anomaly_map(x0, reconstruct_from(model, x0, y, t0, args.steps))), lab)
            report(f"start t0={t0}, {args.steps} steps, {model.config.condition}, {model.config.sigma}", per)
        return
    if args.what == "score":
        for cat, (x0, lab) in g.items():
            rec, _ = model.reconstruct(x0)
            S = anomaly_map(x0, rec)
            print(cat, "pooled-max", roc_auc_score(lab, scores_of(model, S)))
            flat = S.flatten(1)
            print(cat, "mean", roc_auc_score(lab, flat.mean(1)))
            print(cat, "top10-mean", roc_auc_score(lab, flat.topk(10, dim=1).values.mean(1)))


if __name__ == "__main__":
    main()
