"""Quality comparison (issue 11): the paper's ensemble, the recommended recipe's selected model and the
memory-bank baseline, side by side on every embedded synthetic category, same data, same backbone features.

    python -m benchmarks.quality --output benchmarks/results/quality-cpu.json          # minutes on 2 cores
    python -m benchmarks.quality --categories fastener_kit --epochs 4                   # quicker

For each category (``pradot.data.synthetic``: ``screw_bag``, ``fastener_kit``):

* backbone features (``efficientnet_lite0``, offline weights) of the train, validation and test splits and of the
  pseudo-anomaly set, extracted once;
* **paper ensemble**: the four banks (stage, alpha) = (2, 0), (2, 0.3), (3, 0), (3, 0.3) on the raw features,
  maps averaged (``experiment=paper``, ``fusion=mean``, ``normalisation=none``);
* **baseline**: the PatchCore-style memory bank (``pradot.memory_bank``: stages 2+3 concatenated, 3x3 aggregation,
  full bank, sigma 4; ``conf/memory_bank/patchcore.yaml``);
* **selected** (``experiment=best``): the same four banks on 3x3-aggregated features with smoothed maps, and the
  baseline, as candidates; members and weights chosen by ``pradot.fusion.choose_fusion`` on the validation
  objective (validation normals + pseudo-anomalies of both styles, ``pradot.metrics.pseudo``; per-member
  standardisation, weight step 0.25): what ``promote fusion=search`` does. The test split is scored after the
  choice; no test label is read before.

Every model is scored on the test split with the official LOCO definitions (image AUROC and AU-sPRO@0.05 per
anomaly type). The JSON keeps each model's numbers, the choice (members, weights, validation objective of every
candidate), the settings, the machine and the command.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import the package from the repo
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.harness import REPO, log, machine_info, write_json  # noqa: E402
from benchmarks.quality_models import FIT_SECONDS, direct_recipe, mahalanobis_twins  # noqa: E402
from benchmarks.quality_models import baselines as fit_baselines  # noqa: E402

PAPER_MEMBERS = ((2, 0.0), (2, 0.3), (3, 0.0), (3, 0.3))
SHOWN = (
    "image_auroc_logical_anomalies",
    "au_spro_0.05_logical_anomalies",
    "image_auroc_structural_anomalies",
    "au_spro_0.05_structural_anomalies",
    "image_auroc",
    "au_spro_0.05",
)
METRIC_PREFIXES = ("image_auroc", "pixel_auroc", "au_pro", "au_spro_0.05")
#: the baseline rows of the table
ROWS = ("memory bank", "memory bank (before)", "direct recipe", "padim", "padim ledoit-wolf")
PSEUDO_KINDS = ("cutpaste", "noise", "blotch", "shuffle", "moved_patch")


def parse_args(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__.split("\n\n")[0])
    p.add_argument("--categories", default="fixture_plate,screw_bag,fastener_kit,woven_fabric")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--n", type=int, default=4, help="prototypes per cell")
    p.add_argument("--batch-ratio", type=int, default=4)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--eta", type=float, default=0.8)
    p.add_argument("--aggregation", type=int, default=3, help="the recipe's k (experiment=best)")
    p.add_argument("--sigma", type=float, default=4.0, help="the recipe's smoothing sigma, px (experiment=best)")
    p.add_argument("--weight-step", type=float, default=0.25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=60, help="synthetic images per split (the generator's defaults)")
    p.add_argument("--n-validation", type=int, default=20)
    p.add_argument("--n-test", type=int, default=20, help="test images per type (good, logical, structural)")
    p.add_argument("--data-root", default=None, help="default: a folder under the system's temp dir")
    p.add_argument("--output", default=None, help="JSON file (default benchmarks/results/quality-cpu.json)")
    p.add_argument(
        "--selection-size",
        type=int,
        default=None,
        help="px at which the selection scores localisation (default: maps')",
    )
    p.add_argument("--skip-paper", action="store_true", help="no paper-ensemble row (saves its four fits)")
    p.add_argument("--no-mahalanobis", action="store_true", help="no per-cell covariance twins of the recipe's banks")
    p.add_argument("--mahalanobis-tau", choices=("fixed", "image"), default="fixed", help="the twins' normaliser")
    return p.parse_args(argv)


def _features(backbone, samples_or_images, size: int) -> dict:
    from pradot.data import ImageDataset
    from pradot.data.pseudo_anomalies import ArrayImageDataset
    from pradot.features import extract_features

    ds = (
        ArrayImageDataset(samples_or_images)
        if isinstance(samples_or_images, np.ndarray)
        else ImageDataset(list(samples_or_images), size)
    )
    return extract_features(backbone, ds, progress=False)


def _pseudo_set(splits, size: int, seed: int):
    """Validation normals + pseudo-anomalies (as pipelines.objective builds promote's evaluation set)."""
    from pradot.data import read_image
    from pradot.data.pseudo_anomalies import KIND_STYLE, make_pseudo_anomalies

    normals = [read_image(s.image_path, size) for s in splits.validation]
    pa = make_pseudo_anomalies(normals, kinds=PSEUDO_KINDS, per_image=1, seed=seed)
    groups = ["good"] * len(normals) + pa.kinds
    styles = ["good"] * len(normals) + [KIND_STYLE[k] for k in pa.kinds]
    masks = np.concatenate([np.zeros((len(normals), size, size), bool), pa.masks])
    return np.concatenate([np.stack(normals), pa.images]), groups, styles, masks


def _metrics(splits, maps, size: int) -> dict:
    from pradot.metrics.dataset import dataset_metrics, flat_metrics

    flat = flat_metrics(dataset_metrics(splits.dataset, splits.test, list(np.asarray(maps)), gt_size=size)[0])
    keep = [k for k in flat if k.startswith(METRIC_PREFIXES)]
    return {k: round(float(flat[k]), 4) for k in dict.fromkeys([*SHOWN, *keep]) if k in flat}


def _banks(args, feats, aggregation: int, sigma: float) -> list:
    from pradot import PRADOT, PRADOTConfig
    from pradot.backbone import load_backbone

    out = []
    for stage, alpha in PAPER_MEMBERS:
        cfg = PRADOTConfig(
            backbone=args.backbone,
            stages=(stage,),
            image_size=args.image_size,
            alpha=alpha,
            n=args.n,
            batch_size=args.batch_ratio * args.n,
            epochs=args.epochs,
            eta=args.eta,
            seed=args.seed,
            aggregation=aggregation,
            smoothing_sigma=sigma,
        )
        m = PRADOT(cfg, backbone=load_backbone(args.backbone, (stage,)))
        t0 = time.perf_counter()
        m.fit_features({stage: feats["train"][stage]}, progress=False)
        label = f"s{stage} a{alpha:g}" + (f" k{aggregation} sigma{sigma:g}" if aggregation > 1 or sigma else "")
        FIT_SECONDS[label] = time.perf_counter() - t0
        out.append((label, m.eval()))
    return out


def _maps(model, feats: dict) -> np.ndarray:
    stages = model.config.stages
    return model.maps_from_features({s: feats[s] for s in stages})[0].numpy()


def _objective(maps: np.ndarray, groups, styles, masks) -> float:
    from pradot.metrics.pseudo import OBJECTIVE, pseudo_metrics

    return pseudo_metrics(groups, styles, maps.reshape(len(maps), -1).max(1), maps=maps, masks=masks)[OBJECTIVE]


def _fuse(models, maps, weights=None, stats=None, normalisation="none") -> np.ndarray:
    """The test maps of an Ensemble of ``models`` (its fusion rule) from the members' maps."""
    from pradot.ensemble import Ensemble

    ens = Ensemble(models, normalisation=normalisation, stats=stats, weights=weights)
    return ens.fuse([torch.from_numpy(m) for m in maps])[0].numpy()


def _select(cands, test, pseudo_maps, evalset, step: float, size=None) -> tuple[dict, np.ndarray, list[int]]:
    """promote fusion=search on the candidates' pseudo-set maps; the test maps of the chosen fusion."""
    from pradot.fusion import choose_fusion

    groups, styles, masks = evalset
    choice = choose_fusion(pseudo_maps, groups, styles, masks, normalisation="per_member", step=step, size=size)
    chosen = choice.members
    fused = _fuse(
        [cands[i][1] for i in chosen],
        [test[cands[i][0]] for i in chosen],
        weights=[choice.weights[i] for i in chosen],
        stats=[choice.stats[i] for i in chosen],
        normalisation="per_member",
    )
    info = {
        "members": [cands[i][0] for i in chosen],
        "weights": [choice.weights[i] for i in chosen],
        "validation": {k: round(v, 4) for k, v in choice.metrics.items()},
    }
    return info, fused, list(chosen)


def open_category(args, category: str, root: Path):
    """The embedded category's splits under ``root``, generated (once) at the benchmark's sizes
    (``--image-size``, ``--n-train``, ``--n-validation``, ``--n-test`` per anomaly type)."""
    from pradot.engine import DataSpec, open_splits

    S = args.image_size
    gen = {
        "image_size": S,
        "n_train": args.n_train,
        "n_validation": args.n_validation,
        "n_test_good": args.n_test,
        "n_test_logical": args.n_test,
        "n_test_structural": args.n_test,
    }
    return open_splits(DataSpec("synthetic", str(root), category, S, generator=gen))


def _category_data(args, category: str, root: Path, t0: float):
    """The category's splits (generated at the benchmark's sizes), the backbone, the pseudo-anomaly set and the
    features of train, test and pseudo images; with the backbone's seconds per test image."""
    from pradot.backbone import load_backbone

    S = args.image_size
    splits = open_category(args, category, root)
    bb = load_backbone(args.backbone, (2, 3))
    images, groups, styles, masks = _pseudo_set(splits, S, args.seed)
    feats = {"train": _features(bb, splits.train, S)}
    t_bb = time.perf_counter()
    feats["test"] = _features(bb, splits.test, S)
    backbone_per_image = (time.perf_counter() - t_bb) / len(splits.test)
    feats["pseudo"] = _features(bb, images, S)
    log(f"{category}: features in {time.perf_counter() - t0:.0f}s")
    return splits, bb, (images, groups, styles, masks), feats, backbone_per_image


def category_section(args, category: str, root: Path) -> dict:
    S, t0 = args.image_size, time.perf_counter()
    splits, bb, (images, groups, styles, masks), feats, backbone_per_image = _category_data(args, category, root, t0)
    FIT_SECONDS.clear()
    paper = [] if args.skip_paper else _banks(args, feats, 1, 0.0)
    recipe = _banks(args, feats, args.aggregation, args.sigma)
    baselines = fit_baselines(args, bb, feats)
    twins = [] if args.no_mahalanobis else mahalanobis_twins(args, recipe, feats)
    log(f"{category}: models fitted at {time.perf_counter() - t0:.0f}s")
    test, score_seconds = {}, {}
    scorers = [(lab, lambda f, m=m: _maps(m, f)) for lab, m in [*paper, *recipe, *baselines]]
    for lab, maps_of in [*scorers, *[(lab, fn) for lab, _, fn in twins]]:
        t1 = time.perf_counter()
        test[lab] = maps_of(feats["test"])
        score_seconds[lab] = time.perf_counter() - t1
    test["direct recipe"], FIT_SECONDS["direct recipe"], score_seconds["direct recipe"] = direct_recipe(
        feats["train"], feats["test"], S
    )
    models = dict([*recipe, *baselines])
    cands = [*recipe, ("memory bank", models["memory bank"])]
    pseudo = {lab: _maps(m, feats["pseudo"]) for lab, m in [*cands, ("padim", models["padim"])]}
    pseudo.update({lab: fn(feats["pseudo"]) for lab, _, fn in twins})
    evalset = (groups, styles, masks)

    def select(cs):
        return _select(cs, test, [pseudo[lab] for lab, _ in cs], evalset, args.weight_step, args.selection_size)

    sel, sel_maps, chosen = select(cands)
    cands_p = [*cands, ("padim", models["padim"])]
    sel_p, sel_p_maps, chosen_p = select(cands_p)
    cands_m = [*cands_p, *[(lab, m) for lab, m, _ in twins]]
    sel_m, sel_m_maps, chosen_m = select(cands_m) if twins else (sel_p, sel_p_maps, chosen_p)
    n_train, n_test = len(splits.train), len(splits.test)

    def timing(fit_labels, score_labels) -> dict:
        return {
            "fit_seconds_per_train_image": round(sum(FIT_SECONDS[x] for x in fit_labels) / n_train, 5),
            "score_seconds_per_test_image": round(sum(score_seconds[x] for x in score_labels) / n_test, 5),
        }

    paper_labels = [lab for lab, _ in paper]
    paper_maps = _fuse([m for _, m in paper], [test[lab] for lab, _ in paper]) if paper else None
    out = {
        **({"paper_ensemble": _metrics(splits, paper_maps, S)} if paper else {}),
        "selected": {**sel, "metrics": _metrics(splits, sel_maps, S)},
        "selected_with_padim": {**sel_p, "metrics": _metrics(splits, sel_p_maps, S)},
        "selected_with_mahalanobis": {**sel_m, "metrics": _metrics(splits, sel_m_maps, S)},
        "baseline": _metrics(splits, test["memory bank"], S),
        "models": {lab: _metrics(splits, m, S) for lab, m in test.items()},
        "timing": {
            "backbone_seconds_per_image": round(backbone_per_image, 5),
            "note": "fit: on cached backbone features (every candidate for the selections); score: from features "
            "(the chosen members for the selections); add backbone_seconds_per_image for images",
            **({"paper_ensemble": timing(paper_labels, paper_labels)} if paper else {}),
            "selected": timing([lab for lab, _ in cands], [cands[i][0] for i in chosen]),
            "selected_with_padim": timing([lab for lab, _ in cands_p], [cands_p[i][0] for i in chosen_p]),
            "selected_with_mahalanobis": timing([lab for lab, _ in cands_m], [cands_m[i][0] for i in chosen_m]),
            **{lab: timing([lab], [lab]) for lab in test},
        },
        "candidates_validation": {
            lab: round(float(_objective(pseudo[lab], groups, styles, masks)), 4) for lab in pseudo
        },
        "n_images": {
            "train": n_train,
            "validation": len(splits.validation),
            "test": n_test,
            "pseudo_anomalies": len(images) - len(splits.validation),
        },
        "seconds": round(time.perf_counter() - t0, 1),
    }
    log(f"{category}: done in {out['seconds']:.0f}s; selected {sel['members']} w={sel['weights']}")
    log(f"{category}: with PaDiM a candidate: {sel_p['members']} w={sel_p['weights']}")
    log(f"{category}: with the covariance twins too: {sel_m['members']} w={sel_m['weights']}")
    return out


def _columns(sec: dict) -> list[tuple[str, str]]:
    """(metric key, header) per anomaly type: image AUROC and AU-sPRO@0.05 (LOCO layout: its official metrics,
    no pixel AUROC) or image AUROC, pixel AUROC and AU-PRO@0.3 (AD layout: over every defect)."""
    keys = sec["selected"]["metrics"]
    if "image_auroc_structural_anomalies" in keys:
        return [
            (f"{m}_{t}_anomalies", f"{t}: {h}")
            for t in ("logical", "structural")
            for m, h in (("image_auroc", "image AUROC"), ("au_spro_0.05", "AU-sPRO@0.05"))
        ]
    return [("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC"), ("au_pro_0.3", "AU-PRO@0.3")]


def table(result: dict) -> str:
    """Markdown: per category, each model's metrics per anomaly type (:func:`_columns`) and its seconds per image
    (fit per training image, score per test image, on cached backbone features)."""
    lines = []
    for cat, sec in result["categories"].items():
        cols = _columns(sec)
        lines += [
            f"\n{cat}",
            "| model | " + " | ".join(h for _, h in cols) + " | fit s/img | score s/img |",
            "|---" * (len(cols) + 3) + "|",
        ]
        rows = [
            *([("paper ensemble", sec["paper_ensemble"], "paper_ensemble")] if "paper_ensemble" in sec else []),
            ("selected (experiment=best)", sec["selected"]["metrics"], "selected"),
            ("selected, PaDiM a candidate", sec["selected_with_padim"]["metrics"], "selected_with_padim"),
            ("selected, + covariance twins", sec["selected_with_mahalanobis"]["metrics"], "selected_with_mahalanobis"),
            *[(lab, m, lab) for lab, m in sec["models"].items()],
        ]
        for name, m, tkey in rows:
            t = sec["timing"][tkey]
            lines.append(
                f"| {name} | "
                + " | ".join(f"{m[k]:.3f}" if k in m else "-" for k, _ in cols)
                + f" | {t['fit_seconds_per_train_image']:.4f} | {t['score_seconds_per_test_image']:.4f} |"
            )
        for key in ("selected", "selected_with_padim", "selected_with_mahalanobis"):
            lines.append(f"{key}: {sec[key]['members']} weights {sec[key]['weights']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    import tempfile

    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    root = Path(args.data_root) if args.data_root else Path(tempfile.gettempdir()) / "pradot-quality-data"
    t0 = time.perf_counter()
    result = {
        "command": "python -m benchmarks.quality " + " ".join(argv),
        "date": _dt.datetime.now().isoformat(),
        "machine": machine_info(torch.device("cpu")),
        "settings": vars(args) | {"data_root": str(root)},
        "categories": {},
    }
    out = Path(args.output) if args.output else REPO / "benchmarks" / "results" / "quality-cpu.json"
    for c in [c for c in args.categories.split(",") if c]:
        result["categories"][c] = category_section(args, c, root)
        result["seconds"] = round(time.perf_counter() - t0, 1)
        write_json(result, out)  # after every category: a long run keeps what it measured
    print(table(result))
    print(f"\nwritten: {out} ({result['seconds']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
