"""Section ``scoring``: the cost of Eq. 6 scoring per image against the backbone forward per image.

On ``--score-images`` test images of the synthetic screw_bag (``--backbone`` stage 2, initial prototypes,
n = 16 copies of the grid, alpha 0.3):

- ``backbone_forward_ms_per_image``: the backbone forward;
- ``assignment_scores_ms_per_image``: ``pradot.scoring.assignment_scores`` (its fast path);
- ``scoring_total_ms_per_image``: the scores plus upsampling to the input size and the image score
  (``stage_maps`` + ``upsample_maps`` + ``fuse_maps`` + ``image_scores``), the part of serving after the
  backbone; ``ratio_scoring_to_backbone`` is its median ratio to the backbone over paired runs (the three
  are interleaved so they see the same load of the machine);
- ``general_path_ms_per_image``: ``assignment_scores(..., path="general")`` (all prototypes, the path
  learnt coordinates take) on the same input, for comparison;
- ``resnet50``: the same on ResNet50-shaped stage-2 features (D = 512, random weights: the same cost),
  unless ``--skip-resnet``.
"""

from __future__ import annotations

import torch

from benchmarks.harness import log, med, timed
from pradot.backbone import load_backbone
from pradot.data import ImageDataset
from pradot.prototypes import BankConfig, PrototypeBank
from pradot.scoring import assignment_scores, cell_copies, fuse_maps, image_scores, stage_maps, upsample_maps

STAGE = 2
ALPHA = 0.3


def _bank(feats: torch.Tensor, n: int, backbone: str, image_size: int, device: torch.device) -> PrototypeBank:
    cfg = BankConfig(
        stage=STAGE,
        alpha=ALPHA,
        n=n,
        grid=tuple(feats.shape[2:]),
        dim=feats.shape[1],
        backbone=backbone,
        image_size=image_size,
    )
    return PrototypeBank(cfg, seed=0, device=device)


def scoring_section(ds, args, device: torch.device, n_score: int) -> dict:
    """The scoring measurements (see the module docstring) with ``n_score`` prototypes per grid cell."""
    test = ds.samples("test")[: args.score_images]
    data = ImageDataset(test, args.image_size)
    images = torch.stack([data[i]["image"] for i in range(len(data))]).to(device)
    B = images.shape[0]
    backbone = load_backbone(args.backbone, (STAGE,), device=device)
    feats = backbone(images)[STAGE]
    bank = _bank(feats, n_score, args.backbone, args.image_size, device)
    out = {
        "images": B,
        "n": n_score,
        "stage": STAGE,
        "grid": list(feats.shape[2:]),
        "dim": int(feats.shape[1]),
        "prototypes": bank.n_prototypes,
        "fast_path": cell_copies(bank) is not None,
        "backbone": args.backbone,
    }

    def full():  # Eq. 6 maps + upsampling to the input size + image scores (one stage)
        return image_scores(fuse_maps([upsample_maps(stage_maps(bank, feats), args.image_size)]))

    assignment_scores(bank, feats)  # warm-up (scratch buffers)
    tb, ts, tf = [], [], []
    for _ in range(max(3, args.repeats)):  # interleaved: the three see the same load of the machine
        tb += timed(lambda: backbone(images), device, 1)[1]
        ts += timed(lambda: assignment_scores(bank, feats), device, 1)[1]
        tf += timed(full, device, 1)[1]
    out["backbone_forward_ms_per_image"] = 1e3 * med(tb) / B
    out["assignment_scores_ms_per_image"] = 1e3 * med(ts) / B
    out["scoring_total_ms_per_image"] = 1e3 * med(tf) / B
    out["ratio_scoring_to_backbone"] = med([f / b for f, b in zip(tf, tb)])
    out["ratio_scoring_to_backbone_best_runs"] = min(tf) / min(tb)
    out["times_ms_per_image"] = {
        "backbone": [1e3 * t / B for t in tb],
        "scores": [1e3 * t / B for t in ts],
        "scores_and_upsampling": [1e3 * t / B for t in tf],
    }
    _, tg = timed(lambda: assignment_scores(bank, feats, path="general"), device, max(1, args.repeats // 2), warmup=1)
    out["general_path_ms_per_image"] = 1e3 * med(tg) / B
    log(
        f"[scoring] {args.backbone} stage {STAGE} n={n_score} ({bank.n_prototypes} prototypes): backbone "
        f"{out['backbone_forward_ms_per_image']:.1f} ms/image, Eq. 6 scores "
        f"{out['assignment_scores_ms_per_image']:.1f} ms/image (general path "
        f"{out['general_path_ms_per_image']:.1f}), with upsampling {out['scoring_total_ms_per_image']:.1f} "
        f"-> {out['ratio_scoring_to_backbone']:.2f}x the backbone (median of paired runs; best runs "
        f"{out['ratio_scoring_to_backbone_best_runs']:.2f}x)"
    )
    if not args.skip_resnet:
        try:
            out["resnet50"] = resnet50_scoring(images, args, device, n_score)
        except Exception as e:  # noqa: BLE001 - recorded in the JSON (e.g. timm missing)
            out["resnet50_error"] = f"{type(e).__name__}: {e}"
    return out


def resnet50_scoring(images: torch.Tensor, args, device: torch.device, n_score: int) -> dict:
    """Eq. 6 scores on ResNet50-shaped stage-2 features (512 x 28 x 28 at 224 px) against a ResNet50
    forward to that stage, both with random weights (the same cost as trained ones)."""
    import timm

    B = images.shape[0]
    net = timm.create_model("resnet50", pretrained=False, features_only=True, out_indices=(STAGE,)).eval()
    net = net.to(device)
    with torch.no_grad():
        f50, tr = timed(lambda: net(images)[0], device, max(1, args.repeats // 2), warmup=1)
    bank50 = _bank(f50, n_score, "resnet50", args.image_size, device)
    _, t50 = timed(lambda: assignment_scores(bank50, f50), device, max(1, args.repeats // 2), warmup=1)
    out = {
        "dim": int(f50.shape[1]),
        "grid": list(f50.shape[2:]),
        "backbone_forward_ms_per_image (random weights, same cost)": 1e3 * med(tr) / B,
        "assignment_scores_ms_per_image": 1e3 * med(t50) / B,
        "ratio_scores_to_backbone": med(t50) / med(tr),
    }
    log(
        f"[scoring] resnet50 shape (D={f50.shape[1]}): backbone {1e3 * med(tr) / B:.1f} ms/image, "
        f"scores {1e3 * med(t50) / B:.1f} ms/image -> {med(t50) / med(tr):.2f}x"
    )
    return out
