"""How the label-free choice reacts to its candidate pool and to the pseudo-anomalies' size (issue 11's open gap).

For one embedded category, in one run on the same data and features (``benchmarks.quality``'s settings and
helpers): the candidates are the paper's four (stage, alpha) banks with smoothing (sigma 4) at k=1 and k=3
aggregation, plus the memory bank; for each pseudo-anomaly patch fraction, promote's choice
(``pradot.fusion.choose_fusion`` on validation normals + pseudo-anomalies) and its test metrics, with every
candidate's validation metrics, next to the paper ensemble and the memory-bank baseline.

    python -m benchmarks.selection_variants --category screw_bag --patch-fractions 0.15:0.3,0.05:0.12
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import quality as Q

__all__ = ["variants", "main"]

KEYS = ("val_auroc_logical", "val_auroc_structural", "val_aupro_logical", "val_aupro_structural", "val_objective")


def _pseudo(normals, size: int, seed: int, fraction: tuple[float, float]):
    from pradot.data.pseudo_anomalies import KIND_STYLE, make_pseudo_anomalies

    made = make_pseudo_anomalies(normals, kinds=Q.PSEUDO_KINDS, per_image=1, seed=seed, patch_fraction=fraction)
    groups = ["good"] * len(normals) + made.kinds
    styles = ["good"] * len(normals) + [KIND_STYLE[k] for k in made.kinds]
    masks = np.concatenate([np.zeros((len(normals), size, size), bool), made.masks])
    return np.concatenate([np.stack(normals), made.images]), groups, styles, masks


def variants(args, category: str, fractions) -> dict:
    """The choice and its test metrics per patch fraction, with the paper ensemble and the baseline."""
    from pradot.backbone import load_backbone
    from pradot.data import read_image
    from pradot.fusion import choose_fusion
    from pradot.memory_bank import MemoryBankConfig, MemoryBankModel
    from pradot.metrics.pseudo import pseudo_metrics

    S, t0 = args.image_size, time.perf_counter()
    splits = Q.open_category(args, category, Path(args.data_root or Path("/tmp") / "pradot-quality-data"))
    bb = load_backbone(args.backbone, (2, 3))
    feats = {"train": Q._features(bb, splits.train, S), "test": Q._features(bb, splits.test, S)}
    cands = Q._banks(args, feats, 1, args.sigma) + Q._banks(args, feats, args.aggregation, args.sigma)
    mb = MemoryBankModel(
        MemoryBankConfig(backbone=args.backbone, stages=(2, 3), image_size=S, seed=args.seed), backbone=bb
    ).fit_features(feats["train"])
    cands.append(("memory bank", mb))
    paper = Q._banks(args, feats, 1, 0.0)
    test = {label: Q._maps(m, feats["test"]) for label, m in cands + paper}
    out = {
        "category": category,
        "paper_ensemble": Q._metrics(splits, Q._fuse([m for _, m in paper], [test[lab] for lab, _ in paper]), S),
        "baseline": Q._metrics(splits, test["memory bank"], S),
        "choices": {},
    }
    normals = [read_image(s.image_path, S) for s in splits.validation]
    for fraction in fractions:
        images, groups, styles, masks = _pseudo(normals, S, args.seed, fraction)
        pseudo_feats = Q._features(bb, images, S)
        cmaps = [Q._maps(m, pseudo_feats) for _, m in cands]
        choice = choose_fusion(cmaps, groups, styles, masks, normalisation="per_member", step=args.weight_step)
        chosen = choice.members
        fused = Q._fuse(
            [cands[i][1] for i in chosen],
            [test[cands[i][0]] for i in chosen],
            weights=[choice.weights[i] for i in chosen],
            stats=[choice.stats[i] for i in chosen],
            normalisation="per_member",
        )
        validation = {}
        for (label, _), m in zip(cands, cmaps):
            v = pseudo_metrics(groups, styles, m.reshape(len(m), -1).max(1), maps=m, masks=masks)
            validation[label] = {k: round(float(v[k]), 4) for k in KEYS if k in v}
        out["choices"][f"{fraction[0]:g}-{fraction[1]:g}"] = {
            "members": [cands[i][0] for i in chosen],
            "weights": [choice.weights[i] for i in chosen],
            "test": Q._metrics(splits, fused, S),
            "validation": validation,
        }
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.selection_variants", description=__doc__.split("\n")[0])
    p.add_argument("--category", default="screw_bag")
    p.add_argument("--patch-fractions", default="0.15:0.3,0.05:0.12", help="pseudo-anomaly sizes, lo:hi,...")
    p.add_argument("--output", default=None, help="JSON file (default: printed only)")
    own, rest = p.parse_known_args(argv)
    args = Q.parse_args(rest)  # the quality benchmark's settings (backbone, size, n, epochs, ...)
    fractions = [tuple(float(x) for x in f.split(":")) for f in own.patch_fractions.split(",")]
    result = variants(args, own.category, fractions)
    text = json.dumps(result, indent=1)
    if own.output:
        Path(own.output).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
