"""Why PRADOT's local banks trail PaDiM on structural anomalies of near-rigid scenes (issue 25), one candidate
cause at a time, on the same backbone features of each embedded category:

    python -m benchmarks.structural_gap --output benchmarks/results/structural-gap-cpu.json  # ~70 s/category

Rows (every PRADOT row is the recipe's member ``s2 a0.3 k3 sigma4`` unless it says otherwise; one fit per
(stage option, n), shared by the scoring variants):

* ``pradot``: Eq. 6 as the library scores it (cosine feature term, Eq. 3's per-image normalisation);
* ``pradot n16``: 16 prototypes per cell instead of 4 (more prototypes per cell);
* ``pradot concat23``: one bank on stages 2+3 concatenated (PaDiM's features);
* ``pradot fixed-tau``: the cosine term with a fixed normaliser (the training images' mean of Eq. 3's
  per-image maximum) instead of each image's own maximum;
* ``mahalanobis``: the per-cell covariance of the residuals in the feature term
  (:mod:`pradot.local_covariance`), Eq. 3's per-image normaliser; ``mahalanobis fixed-tau``: with the fixed
  normaliser; ``mahalanobis own cell``: no spatial slack at all (each query compared only with its own
  cell's prototypes: PaDiM with n prototypes);
* ``padim``: ``pradot.padim`` (stages 2+3, sample covariance + 0.01 I);
* ``pradot + padim``: the two maps standardised per member on the training maps and averaged.

Each row: image AUROC, pixel AUROC, AU-PRO or AU-sPRO@0.05 per anomaly type, fit and score seconds per image.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.harness import REPO, log, machine_info, write_json  # noqa: E402

SHOWN = ("image_auroc", "pixel_auroc", "au_pro", "au_spro_0.05")


def parse_args(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.structural_gap", description=__doc__.split("\n\n")[0])
    p.add_argument("--categories", default="fixture_plate,fastener_kit,screw_bag,woven_fabric")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--n-train", type=int, default=60)
    p.add_argument("--n-test", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", default="/tmp/pradot-structural-data")
    p.add_argument("--output", default=None)
    return p.parse_args(argv)


def _metrics(splits, maps, size: int) -> dict:
    from pradot.metrics.dataset import dataset_metrics, flat_metrics

    flat = flat_metrics(dataset_metrics(splits.dataset, splits.test, list(np.asarray(maps)), gt_size=size)[0])
    return {k: round(float(v), 4) for k, v in flat.items() if k.startswith(SHOWN)}


def _pradot(args, feats, n: int, concat: bool):
    from pradot import PRADOT, PRADOTConfig
    from pradot.backbone import load_backbone

    stages = (2, 3) if concat else (2,)
    cfg = PRADOTConfig(
        backbone="efficientnet_lite0",
        stages=stages,
        image_size=args.image_size,
        alpha=0.3,
        n=n,
        batch_size=min(4 * n, max(n, args.n_train // 2)),  # n16: 30 of 60 images per batch
        epochs=args.epochs,
        eta=0.8,
        seed=args.seed,
        aggregation=3,
        smoothing_sigma=4.0,
        concat_stages=concat,
    )
    m = PRADOT(cfg, backbone=load_backbone("efficientnet_lite0", stages))
    t0 = time.perf_counter()
    m.fit_features({s: feats["train"][s] for s in stages}, progress=False)
    return m.eval(), time.perf_counter() - t0


def _cosine_fixed(model, feats_train, feats_test):
    """Eq. 6 with the cosine term, tau fixed at the training images' mean per-image maximum."""
    from pradot.cost import spatial_cost

    def _unit(x: torch.Tensor) -> torch.Tensor:  # rows to unit L2 norm, as Eq. 1's cosine (pradot.cost)
        return torch.nn.functional.normalize(x, dim=-1, eps=1e-8)

    bank = model.prototypes.banks["2"]
    a = float(bank.config.alpha)
    pn = _unit(bank.features)
    ms = spatial_cost(bank.grid_coords, bank.coords)
    ms = ms * (a / ms.max())

    def cos_cost(f):
        z = f.permute(0, 2, 3, 1).reshape(f.shape[0], -1, f.shape[1])
        return 1 - _unit(z) @ pn.T  # (B, HW, P)

    tau = float(torch.cat([cos_cost(f[None]).amax()[None] for f in feats_train]).mean())
    out = [((1 - a) * cos_cost(f[None]) / tau + ms[None]).amin(2) for f in feats_test]
    return torch.cat(out)


def _variants(args, model, feats, fit_s):
    """Scoring variants on one fitted s2 bank: {label: (maps, fit seconds, score seconds)}."""
    from pradot.local_covariance import cell_residual_covariance, mahalanobis_scores, training_normaliser

    bank = model.prototypes.banks["2"]
    tr = model.prototypes.transform({2: feats["train"][2]})[2]
    te = model.prototypes.transform({2: feats["test"][2]})[2]
    B, _, H, W = te.shape
    out = {}
    t0 = time.perf_counter()
    out["pradot"] = (model.maps_from_features({2: feats["test"][2]})[0].numpy(), fit_s, time.perf_counter() - t0)
    t0 = time.perf_counter()
    s = _cosine_fixed(model, tr, te).reshape(B, H, W)
    out["pradot fixed-tau"] = (model.prototypes.fuse({2: s}).numpy(), fit_s, time.perf_counter() - t0)
    t0 = time.perf_counter()
    prec = cell_residual_covariance(bank, tr)
    tau = training_normaliser(bank, prec, tr)
    cov_s = time.perf_counter() - t0
    for label, norm in (("mahalanobis", None), ("mahalanobis fixed-tau", tau)):
        t0 = time.perf_counter()
        s = mahalanobis_scores(bank, prec, te, normaliser=norm).reshape(B, H, W)
        out[label] = (model.prototypes.fuse({2: s}).numpy(), fit_s + cov_s, time.perf_counter() - t0)
    # own cell only: no spatial slack (alpha 0 on the own cell's prototypes only)
    t0 = time.perf_counter()
    from pradot.local_covariance import mahalanobis_feature_cost

    z = te.permute(0, 2, 3, 1).reshape(B, H * W, -1)
    HW = H * W
    n = bank.features.shape[0] // HW
    own = torch.full((HW, bank.features.shape[0]), float("inf"), dtype=torch.float64)
    for k in range(n):
        own[torch.arange(HW), k * HW + torch.arange(HW)] = 0.0
    s = torch.cat([(mahalanobis_feature_cost(z[i : i + 8], bank.features, prec) + own).amin(2) for i in range(0, B, 8)])
    out["mahalanobis own cell"] = (
        model.prototypes.fuse({2: s.float().reshape(B, H, W)}).numpy(),
        fit_s + cov_s,
        time.perf_counter() - t0,
    )
    return out


def category_section(args, category: str) -> dict:
    from pradot.backbone import load_backbone
    from pradot.data import ImageDataset
    from pradot.engine import DataSpec, open_splits
    from pradot.features import extract_features
    from pradot.padim import PaDiMConfig, PaDiMModel

    S, t0 = args.image_size, time.perf_counter()
    gen = {
        "image_size": S,
        "n_train": args.n_train,
        "n_validation": 20,
        "n_test_good": args.n_test,
        "n_test_logical": args.n_test,
        "n_test_structural": args.n_test,
    }
    splits = open_splits(DataSpec("synthetic", args.data_root, category, S, generator=gen))
    bb = load_backbone("efficientnet_lite0", (2, 3))
    feats = {
        k: extract_features(bb, ImageDataset(list(v), S), progress=False)
        for k, v in (("train", splits.train), ("test", splits.test))
    }
    feats = {k: {s: torch.from_numpy(np.asarray(a)) for s, a in v.items()} for k, v in feats.items()}
    log(f"{category}: features at {time.perf_counter() - t0:.0f}s")
    rows = {}
    m4, fit4 = _pradot(args, feats, 4, False)
    rows.update(_variants(args, m4, feats, fit4))
    for label, n, concat in (("pradot n16", 16, False), ("pradot concat23", 4, True)):
        m, fit = _pradot(args, feats, n, concat)
        t1 = time.perf_counter()
        rows[label] = (m.maps_from_features(feats["test"])[0].numpy(), fit, time.perf_counter() - t1)
    t1 = time.perf_counter()
    pd = PaDiMModel(PaDiMConfig(backbone="efficientnet_lite0", stages=(2, 3), image_size=S), backbone=bb)
    pd.fit_features(feats["train"], progress=False)
    t2 = time.perf_counter()
    rows["padim"] = (pd.maps_from_features(feats["test"])[0].numpy(), t2 - t1, time.perf_counter() - t2)
    # pradot + padim: per-member standardisation on the training maps, mean
    tr_p = m4.maps_from_features({2: feats["train"][2]})[0].numpy()
    tr_d = pd.maps_from_features(feats["train"])[0].numpy()
    z = [(rows[k][0] - t.mean()) / t.std() for k, t in (("pradot", tr_p), ("padim", tr_d))]
    rows["pradot + padim"] = ((z[0] + z[1]) / 2, rows["pradot"][1] + rows["padim"][1], 0.0)
    n_tr, n_te = len(splits.train), len(splits.test)
    out = {
        lab: {
            **_metrics(splits, maps, S),
            "fit_seconds_per_train_image": round(fit / n_tr, 5),
            "score_seconds_per_test_image": round(sc / n_te, 5),
        }
        for lab, (maps, fit, sc) in rows.items()
    }
    log(f"{category}: done at {time.perf_counter() - t0:.0f}s")
    return out


def table(result: dict) -> str:
    """Markdown, per category: image AUROC and AU-sPRO@0.05 (LOCO) or AU-PRO@0.3 (AD) per anomaly type (overall
    when the layout has no types), pixel AUROC, seconds per image."""
    lines = []
    for cat, rows in result["categories"].items():
        keys = rows["padim"]
        suffixes = sorted("_" + k.split("_", 2)[-1] for k in keys if k.startswith("image_auroc_")) or [""]
        loc = next(k for k in keys if k.startswith("au_")).split("_anomalies")[0]
        loc = "au_spro_0.05" if loc.startswith("au_spro") else ("au_pro_0.3" if loc.startswith("au_pro") else loc)
        cols = [(f"image_auroc{t}", f"{t[1:] or 'all'}: image AUROC") for t in suffixes]
        cols += [(f"{loc}{t}", f"{t[1:] or 'all'}: {loc}") for t in suffixes] + [("pixel_auroc", "pixel AUROC")]
        lines += [
            f"\n{cat}",
            "| row | " + " | ".join(c[1] for c in cols) + " | fit s/img | score s/img |",
            "|---" * (len(cols) + 3) + "|",
        ]
        for lab, m in rows.items():
            vals = " | ".join(f"{m.get(k, float('nan')):.3f}" for k, _ in cols)
            lines.append(
                f"| {lab} | {vals} | {m['fit_seconds_per_train_image']:.3f} | {m['score_seconds_per_test_image']:.3f} |"
            )
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    result = {
        "command": "python -m benchmarks.structural_gap " + " ".join(argv),
        "machine": machine_info(torch.device("cpu")),
        "settings": vars(args),
        "categories": {c: category_section(args, c) for c in args.categories.split(",") if c},
    }
    result["seconds"] = round(time.perf_counter() - t0, 1)
    out = Path(args.output) if args.output else REPO / "benchmarks" / "results" / "structural-gap-cpu.json"
    write_json(result, out)
    print(table(result))
    print(f"\nwritten: {out} ({result['seconds']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
