"""Does the validation objective separate the candidates, and is its choice better on the test split (issue 25)?
And does refitting the chosen members on every normal help where the layout has no validation folder?

    python -m benchmarks.objective_separation --category screw_bag --output /tmp/sep-screw_bag.json
    python -m benchmarks.objective_separation --merge /tmp/sep-*.json \
        --output benchmarks/results/objective-separation-cpu.json

For one embedded category (``benchmarks.quality``'s data, backbone, sizes and helpers; the same features for
every model), the candidates are the paper's four (stage, alpha) banks on raw features, the same four with the
recipe's 3x3 aggregation and sigma-4 smoothing (``experiment=best``), the memory bank and the PaDiM-style model.

* **objectives**: for each pseudo-anomaly setting (``before``: large full-strength edits, the generator's
  settings before issue 25; ``graded``: the current defaults, sizes log-uniform in 0.02-0.3 of the side and
  contrasts in 0.15-1; ``graded x3``: three per normal), the evaluation set is made from the validation normals
  by ``pipelines.objective.build_pseudo_set`` and scored by ``pipelines.objective.evaluate`` (the one code
  path of sweep and promote). Reported: every candidate's validation metrics, how far they spread (distinct
  values, how many are 1.0), their Spearman rank correlation with the test metrics across candidates, and the
  choice promote would make (``fusion=search``: the best per group, then ``pradot.fusion.choose_fusion``,
  per-member standardisation, step 0.25) with its test metrics;
* **refit**: an AD-style layout simulated from the training images alone: 10% of them held back
  (``pradot.data.split_validation``, as ``data.validation_fraction=0.1``), the candidates fitted on the other
  90%, the graded objective made from the held-back normals, the choice made; then its test metrics as chosen
  (fit on 90%) and with the chosen members refitted on 100% (every normal), their standardisation and the
  image threshold (quantile 0.99) still from the held-back normals' scores of the 90% models (cross-fitted).

The test split is read only after every choice, to report it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import quality as Q
from benchmarks.harness import REPO, log, machine_info, write_json

__all__ = ["VARIANTS", "category_section", "main"]

TEST_KEYS = (
    "image_auroc",
    "image_auroc_structural_anomalies",
    "image_auroc_logical_anomalies",
    "au_spro_0.05",
    "au_spro_0.05_structural_anomalies",
    "au_spro_0.05_logical_anomalies",
)
VAL_KEYS = ("val_auroc", "val_auroc_structural", "val_auroc_logical", "val_objective")


def _variants():
    from pipelines.objective import PseudoOptions

    return {
        "before": PseudoOptions(patch_fraction=(0.15, 0.3), contrast=(1.0, 1.0)),
        "graded": PseudoOptions(),
        "graded x3": PseudoOptions(per_image=3),
    }


VARIANTS = ("before", "graded", "graded x3")


def _group(label: str) -> tuple:
    """promote's groups: banks by (stage, alpha = 0 | > 0); the memory bank; the PaDiM-style model on its own."""
    if label in ("memory bank", "padim"):
        return (label,)
    stage, alpha = label.split()[:2]
    return ("bank", stage, alpha != "a0")


def _fit_candidates(args, bb, train: dict) -> list:
    from pradot.memory_bank import MemoryBankConfig, MemoryBankModel
    from pradot.padim import PaDiMConfig, PaDiMModel

    S = args.image_size
    out = Q._banks(args, {"train": train}, 1, 0.0) + Q._banks(args, {"train": train}, args.aggregation, args.sigma)
    mb = MemoryBankConfig(backbone=args.backbone, stages=(2, 3), image_size=S, seed=args.seed)
    out.append(("memory bank", MemoryBankModel(mb, backbone=bb).fit_features(train)))
    pd = PaDiMConfig(backbone=args.backbone, stages=(2, 3), image_size=S, seed=args.seed)
    out.append(("padim", PaDiMModel(pd, backbone=bb).fit_features(train)))
    return out


def _val(maps: np.ndarray, pset) -> dict:
    from pipelines import objective

    scores = maps.reshape(len(maps), -1).max(axis=1)
    return objective.evaluate(pset.groups, pset.styles, scores, maps=maps, masks=pset.masks)


def _choose(labels, pseudo_maps: dict, pset, step: float):
    """promote fusion=search: the best candidate per group on val_objective, then choose_fusion."""
    from pradot.fusion import choose_fusion

    val = {lab: _val(pseudo_maps[lab], pset)["val_objective"] for lab in labels}
    best: dict[tuple, str] = {}
    for lab in labels:
        g = _group(lab)
        if g not in best or val[lab] >= val[best[g]]:
            best[g] = lab
    winners = [lab for lab in labels if best.get(_group(lab)) == lab]
    fc = choose_fusion([pseudo_maps[lab] for lab in winners], pset.groups, pset.styles, pset.masks, step=step)
    members = [winners[i] for i in fc.members]
    return {
        "winners": winners,
        "members": members,
        "weights": [fc.weights[i] for i in fc.members],
        "stats": [fc.stats[i] for i in fc.members] if fc.stats else None,
        "validation": {k: round(float(fc.metrics[k]), 4) for k in VAL_KEYS if k in fc.metrics},
    }


def _fused_test(models: dict, test_maps: dict, choice: dict):
    return Q._fuse(
        [models[lab] for lab in choice["members"]],
        [test_maps[lab] for lab in choice["members"]],
        weights=choice["weights"],
        stats=choice["stats"],
        normalisation="per_member",
    )


def _spearman(x, y) -> float | None:
    from scipy.stats import spearmanr

    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return None  # constant: no ranking at all
    return round(float(spearmanr(x, y).statistic), 3)


def _separation(val: dict, test: dict) -> dict:
    """How the candidates' validation metrics spread, and how they rank them against the test metrics."""
    labels = list(val)
    out: dict = {}
    for k in VAL_KEYS:
        v = np.asarray([val[lab][k] for lab in labels])
        out[k] = {"min": round(float(v.min()), 4), "max": round(float(v.max()), 4), "n_at_1": int((v >= 1).sum())}
    pairs = {
        "val_auroc~image_auroc": ("val_auroc", "image_auroc"),
        "val_auroc_structural~image_auroc_structural": ("val_auroc_structural", "image_auroc_structural_anomalies"),
        "val_auroc_logical~image_auroc_logical": ("val_auroc_logical", "image_auroc_logical_anomalies"),
        "val_objective~image_auroc": ("val_objective", "image_auroc"),
        "val_objective~au_spro_0.05": ("val_objective", "au_spro_0.05"),
    }
    out["spearman"] = {
        name: _spearman([val[lab][a] for lab in labels], [test[lab][b] for lab in labels])
        for name, (a, b) in pairs.items()
    }
    return out


def _threshold_rates(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    flagged = scores > threshold
    return {
        "fpr_test_good": round(float(flagged[labels == 0].mean()), 4),
        "recall_test_anomalous": round(float(flagged[labels == 1].mean()), 4),
    }


def _refit(args, bb, splits, feats: dict, full: dict, test_maps_full: dict) -> dict:
    """The AD-layout simulation (see the module docstring)."""
    from pipelines import objective
    from pradot.data import split_validation

    index = {str(s.image_path): i for i, s in enumerate(splits.train)}
    kept, held = split_validation(splits.train, 0.1, seed=args.seed)
    keep_idx = np.asarray([index[str(s.image_path)] for s in kept])
    train90 = {st: np.ascontiguousarray(np.asarray(a)[keep_idx]) for st, a in feats["train"].items()}
    models90 = dict(_fit_candidates(args, bb, train90))
    pset = objective.build_pseudo_set(held, args.image_size, _variants()["graded"], "train (no validation images)")
    pfeats = Q._features(bb, pset.images, args.image_size)
    pmaps = {lab: Q._maps(m, pfeats) for lab, m in models90.items()}
    choice = _choose(list(models90), pmaps, pset, args.weight_step)
    test90 = {lab: Q._maps(models90[lab], feats["test"]) for lab in choice["members"]}
    fused90 = _fused_test(models90, test90, choice)
    fused100 = _fused_test(full, test_maps_full, choice)  # the same members and weights, refitted on 100%
    held_fused = _fused_test(models90, pmaps, choice)[pset.normal]  # held-back normals, 90% models
    threshold = float(np.quantile(held_fused.reshape(len(held_fused), -1).max(1), 0.99))
    labels = np.asarray([s.label for s in splits.test])
    out = {"n_fit": len(kept), "n_held_back": len(held), "choice": {k: v for k, v in choice.items() if k != "stats"}}
    for name, fused in (("fit on 90%", fused90), ("refit on 100%", fused100)):
        scores = fused.reshape(len(fused), -1).max(1)
        out[name] = {
            "test": {k: v for k, v in Q._metrics(splits, fused, args.image_size).items() if k in TEST_KEYS},
            "threshold (held-back normals, 90% models, q0.99)": _threshold_rates(scores, labels, threshold),
        }
    out["per candidate"] = {
        lab: {
            "fit on 90%": _pick(Q._metrics(splits, Q._maps(models90[lab], feats["test"]), args.image_size)),
            "refit on 100%": _pick(Q._metrics(splits, test_maps_full[lab], args.image_size)),
        }
        for lab in ("s2 a0.3 k3 sigma4", "s3 a0.3 k3 sigma4", "memory bank", "padim")
    }
    return out


def _pick(metrics: dict) -> dict:
    return {k: metrics[k] for k in TEST_KEYS if k in metrics}


def category_section(args, category: str) -> dict:
    from pipelines import objective
    from pradot.backbone import load_backbone

    S, t0 = args.image_size, time.perf_counter()
    splits = Q.open_category(args, category, Path(args.data_root or Path("/tmp") / "pradot-quality-data"))
    bb = load_backbone(args.backbone, (2, 3))
    feats = {"train": Q._features(bb, splits.train, S), "test": Q._features(bb, splits.test, S)}
    models = dict(_fit_candidates(args, bb, feats["train"]))
    log(f"{category}: candidates fitted at {time.perf_counter() - t0:.0f}s")
    test_maps = {lab: Q._maps(m, feats["test"]) for lab, m in models.items()}
    test = {lab: _pick(Q._metrics(splits, m, S)) for lab, m in test_maps.items()}
    out: dict = {"candidates_test": test, "objectives": {}}
    for name, opts in _variants().items():
        pset = objective.build_pseudo_set(splits.validation, S, opts)
        pfeats = Q._features(bb, pset.images, S)
        pmaps = {lab: Q._maps(m, pfeats) for lab, m in models.items()}
        val = {
            lab: {k: round(float(v), 4) for k, v in _val(pmaps[lab], pset).items() if k in VAL_KEYS} for lab in pmaps
        }
        choice = _choose(list(models), pmaps, pset, args.weight_step)
        fused = _fused_test(models, test_maps, choice)
        out["objectives"][name] = {
            "settings": pset.identity,
            "n_pseudo_anomalies": int(sum(pset.labels)),
            "candidates_validation": val,
            "separation": _separation(val, test),
            "choice": {k: v for k, v in choice.items() if k != "stats"},
            "test": _pick(Q._metrics(splits, fused, S)),
        }
        log(f"{category} {name}: chose {choice['members']} w={choice['weights']}")
    if not args.no_refit:
        out["refit"] = _refit(args, bb, splits, feats, models, test_maps)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def _parse(argv):
    own = argparse.ArgumentParser(prog="python -m benchmarks.objective_separation", add_help=False, allow_abbrev=False)
    own.add_argument("--category", default="screw_bag")
    own.add_argument("--no-refit", action="store_true")
    own.add_argument("--merge", nargs="*", default=None, help="per-category JSON files to merge into --output")
    own.add_argument("--output", default=None)
    mine, rest = own.parse_known_args(argv)
    args = Q.parse_args(rest)
    for k, v in vars(mine).items():
        setattr(args, k, v)
    return args


def main(argv=None) -> int:
    import torch

    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse(argv)
    if args.merge:
        parts = [json.loads(Path(p).read_text()) for p in args.merge]
        result = {**parts[0], "categories": {k: v for p in parts for k, v in p["categories"].items()}}
        result["command"] = " ; ".join(
            [p["command"] for p in parts] + ["python -m benchmarks.objective_separation " + " ".join(argv)]
        )
        write_json(result, Path(args.output))
        return 0
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    result = {
        "command": "python -m benchmarks.objective_separation " + " ".join(argv),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine_info(torch.device("cpu")),
        "settings": {k: v for k, v in vars(args).items() if k != "merge"},
        "categories": {args.category: category_section(args, args.category)},
    }
    result["seconds"] = round(time.perf_counter() - t0, 1)
    out = Path(args.output or REPO / "benchmarks" / "results" / f"objective-separation-{args.category}.json")
    write_json(result, out)
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
