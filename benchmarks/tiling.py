"""Tiled vs resized on the embedded high-resolution category ``fine_weave`` (issue 24): the same models scoring the
whole image resized to the tile size, or the image at a higher working size cut into overlapping tiles.

    python -m benchmarks.tiling --output benchmarks/results/tiling.json        # ~20 min on 2 busy cores
    python -m benchmarks.tiling --epochs 2 --n-train 16                         # quicker

The data: ``fine_weave`` generated at ``--native`` px (896: pinholes 2-3 px across at 224 px). The models
(``efficientnet_lite0``, offline weights, stage 2; PRADOT at the CPU recipe's n=4, eta=0.8):

* **resized**: the image resized to the tile size ``--tile`` (224) and scored whole, as without tiling;
* **tiled**: the image resized to ``--size`` (448: the downscale first), cut into ``--tile`` tiles ``--stride``
  apart (112: 3 x 3 tiles, half overlapping), maps stitched with the ``linear`` blend (:mod:`pradot.tiling`);
  PRADOT with one bank per tile position (``per_position``) and with one shared bank (``shared``).

Every model's test maps are resized to ``--size`` and compared with the masks at that size: image AUROC, pixel
AUROC and AU-PRO@0.3 (MVTec AD). Time per image is ``score`` on images already decoded and resized to the
model's input (median of the test split's batches, per image), and fit time per training image.
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
import torch.nn.functional as F  # noqa: E402

from benchmarks.harness import REPO, log, machine_info, write_json  # noqa: E402
from pradot.backbone import load_backbone  # noqa: E402
from pradot.data import ImageDataset, load_dataset  # noqa: E402
from pradot.memory_bank import MemoryBankConfig, MemoryBankModel  # noqa: E402
from pradot.metrics.classification import image_auroc, pixel_auroc  # noqa: E402
from pradot.metrics.pro import au_pro  # noqa: E402
from pradot.model import PRADOT, PRADOTConfig  # noqa: E402
from pradot.tiled import TiledModel  # noqa: E402
from pradot.tiling import TileGrid  # noqa: E402


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.tiling", description=__doc__.split("\n\n")[0])
    p.add_argument("--native", type=int, default=896, help="side of the generated images, px")
    p.add_argument("--size", type=int, default=448, help="working side of the tiled models (downscale first)")
    p.add_argument("--tile", type=int, default=224, help="tile side = the resized models' input side")
    p.add_argument("--stride", type=int, default=112)
    p.add_argument("--blend", default="linear")
    p.add_argument("--n-train", type=int, default=32)
    p.add_argument("--n-test-good", type=int, default=16)
    p.add_argument("--n-test-bad", type=int, default=24)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--alpha", type=float, default=0.3)
    p.add_argument("--models", default="pradot,pradot_a0,patchcore", help="families: pradot, pradot_a0, patchcore")
    p.add_argument("--data-root", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=None)
    return p.parse_args(argv)


def _images(samples, size: int) -> torch.Tensor:
    ds = ImageDataset(list(samples), size)
    return torch.stack([ds[i]["image"] for i in range(len(ds))])


def _pradot(args, backbone, size: int, alpha: float) -> PRADOT:
    config = PRADOTConfig(
        backbone="efficientnet_lite0", stages=(2,), image_size=size, alpha=alpha, n=4, eta=0.8,
        batch_size=min(16, args.n_train), epochs=args.epochs, seed=args.seed,
    )  # fmt: skip
    return PRADOT(config, backbone=backbone)


def _patchcore(backbone, size: int) -> MemoryBankModel:
    config = MemoryBankConfig(backbone="efficientnet_lite0", stages=(2,), image_size=size, concat_stages=False)
    return MemoryBankModel(config, backbone=backbone)


def _fit(model, train: torch.Tensor):
    if isinstance(model, TiledModel):
        return model.fit(train, progress=False)
    with torch.no_grad():
        feats = {s: f.numpy() for s, f in model.backbone(train).items()}
    return model.fit_features(feats, progress=False)


def _candidates(args, backbone):
    """(label, family, factory of an unfitted model, its input side)."""
    grid = TileGrid(args.size, args.tile, args.stride, args.blend)
    out = []
    fams = set(args.models.split(","))
    for fam, alpha in (("pradot", args.alpha), ("pradot_a0", 0.0)):
        if fam not in fams:
            continue
        out.append(
            (f"{fam} resized {args.tile}", fam, lambda a=alpha: _pradot(args, backbone, args.tile, a), args.tile)
        )
        for banks in ("per_position", "shared"):
            out.append(
                (
                    f"{fam} tiled {args.size}/{args.tile} s{args.stride} {banks}",
                    fam,
                    lambda a=alpha, b=banks: TiledModel.build(_pradot(args, backbone, args.tile, a), grid, b),
                    args.size,
                )
            )
    if "patchcore" in fams:
        out.append((f"patchcore resized {args.tile}", "patchcore", lambda: _patchcore(backbone, args.tile), args.tile))
        out.append(
            (
                f"patchcore tiled {args.size}/{args.tile} s{args.stride} shared",
                "patchcore",
                lambda: TiledModel.build(_patchcore(backbone, args.tile), grid, "shared"),
                args.size,
            )
        )
    return out


def evaluate(model, test: torch.Tensor, labels, masks: np.ndarray, size: int) -> dict:
    """Metrics at ``size`` and the median scoring time per image (batches of 4)."""
    times, maps = [], []
    for i in range(0, len(test), 4):
        t0 = time.perf_counter()
        m, _ = model.score(test[i : i + 4], batch_size=4)
        times.append((time.perf_counter() - t0) / len(m))
        maps.append(m)
    full = torch.cat(maps)
    if full.shape[-1] != size:
        full = F.interpolate(full[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    arr = full.numpy()
    return {
        "image_auroc": image_auroc(labels, arr.reshape(len(arr), -1).max(1)),
        "pixel_auroc": pixel_auroc(masks, arr),
        "au_pro": au_pro(masks, arr, max_fpr=0.3),
        "seconds_per_image": float(np.median(times)),
    }


def run(args) -> dict:
    import tempfile

    root = Path(args.data_root) if args.data_root else Path(tempfile.gettempdir()) / "pradot-tiling-data"
    counts = dict(
        n_train=args.n_train, n_validation=0, n_test_good=args.n_test_good, n_test_logical=0,
        n_test_structural=args.n_test_bad,
    )  # fmt: skip
    ds = load_dataset("synthetic", root, "fine_weave", generate=True, seed=args.seed, image_size=args.native, **counts)
    train_s, test_s = ds.samples("train"), ds.samples("test")
    labels = [s.label for s in test_s]
    masks = np.stack([ds.load_channels(s, args.size).any(0) for s in test_s]) if test_s else None
    backbone = load_backbone("efficientnet_lite0", (2,))
    data = {n: (_images(train_s, n), _images(test_s, n)) for n in {args.tile, args.size}}
    rows = []
    for label, fam, make, size in _candidates(args, backbone):
        torch.manual_seed(args.seed)
        train, test = data[size]
        t0 = time.perf_counter()
        model = _fit(make(), train).eval()
        fit_s = time.perf_counter() - t0
        row = {"model": label, "family": fam, "input_px": size, **evaluate(model, test, labels, masks, args.size)}
        row["fit_seconds_per_train_image"] = fit_s / len(train)
        log(f"{label}: " + ", ".join(f"{k}={v:.4f}" for k, v in row.items() if isinstance(v, float)))
        rows.append(row)
    return {"rows": rows, "data": {"root": str(root), **counts, "native_px": args.native}}


def table(result: dict) -> str:
    lines = [
        "| model | input px | image AUROC | pixel AUROC | AU-PRO@0.3 | s / image (score) | s / train image (fit) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['model']} | {r['input_px']} | {r['image_auroc']:.3f} | {r['pixel_auroc']:.3f} | {r['au_pro']:.3f} "
            f"| {r['seconds_per_image']:.3f} | {r['fit_seconds_per_train_image']:.3f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    t0 = time.perf_counter()
    result = {
        "command": "python -m benchmarks.tiling " + " ".join(argv),
        "date": _dt.datetime.now().isoformat(),
        "machine": machine_info(torch.device("cpu")),
        "settings": vars(args),
        **run(args),
    }
    result["seconds"] = round(time.perf_counter() - t0, 1)
    out = Path(args.output) if args.output else REPO / "benchmarks" / "results" / "tiling.json"
    write_json(result, out)
    print(table(result))
    print(f"\nwritten: {out} ({result['seconds']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
