"""An MVTec-AD-layout copy of the embedded synthetic scene's structural anomalies, to run the few-shot protocol
on AD-style data (image/pixel AUROC and F1-max, one mask per anomalous image) without a downloaded dataset.

From a generated synthetic LOCO scene (:mod:`pradot.data.synthetic`): ``train/good`` and ``test/good`` are
copied; each structural anomaly goes to ``test/<kind>/`` (``scratch``, ``broken_part``, ``dent``,
``colour_blotch``) with its ground truth as ``ground_truth/<kind>/<id>_mask.png`` (255 on the defect);
logical anomalies are left out (they need the LOCO protocol). The copy is written under a temporary name and
renamed into place, and reused when its stamp matches the source.

    python -m pradot.fewshot.synthetic_ad --source data/synthetic --out data/synthetic_ad
    python -m pradot.fewshot.synthetic_ad --generate 256 --source data/synthetic256 --out data/synthetic_ad
    python pipelines/fewshot.py fewshot=cpu_ad                 # reads data/synthetic_ad (256 px scene)

``--generate S`` first makes the source scene at S px (60 train, 10 validation, 20 good and 30 structural
test images; the structural defects are a few pixels wide at 128 px, too small for stride-8 features, so
the few-shot AD set is generated at 256 px).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pradot.io import atomic_write

__all__ = ["structural_ad_copy", "main"]

STAMP = ".pradot_synthetic_ad.json"


def structural_ad_copy(source: str | Path, out: str | Path, category: str = "screw_bag") -> Path:
    """Write (or reuse) ``<out>/<category>`` in the MVTec AD layout from ``<source>/<category>`` (a synthetic
    LOCO scene with its ``metadata.json``). Returns the category folder.

    Raises:
        FileNotFoundError: the source scene or its metadata is missing.
    """
    from pradot.data import load_dataset

    src = Path(source).expanduser() / category
    meta_path = src / "metadata.json"
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"no synthetic scene at {src} (metadata.json missing); generate it first: "
            f"python -m pradot.data.synthetic --root {source} --category {category}"
        )
    target = Path(out).expanduser() / category
    stamp = {"source": str(src.resolve()), "metadata": meta_path.read_text()}
    if (target / STAMP).is_file() and json.loads((target / STAMP).read_text()) == stamp:
        return target
    ds = load_dataset("synthetic", Path(source), category)
    meta = json.loads(meta_path.read_text())
    with atomic_write(target, replace_folder=True) as tmp:
        tmp.mkdir()
        for s in ds.samples("train"):
            _copy(s.image_path, tmp / "train" / "good" / s.image_path.name)
        for s in ds.samples("test"):
            if s.anomaly_type == "good":
                _copy(s.image_path, tmp / "test" / "good" / s.image_path.name)
            elif s.anomaly_type == "structural_anomalies":
                kind = meta[f"structural_anomalies/{s.image_id}"]["anomaly"]
                name = f"{s.image_id}.png"
                _copy(s.image_path, tmp / "test" / kind / name)
                mask = np.asarray(ds.load_channels(s), dtype=bool).any(axis=0)
                (tmp / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask.astype(np.uint8) * 255).save(
                    tmp / "ground_truth" / kind / f"{s.image_id}_mask.png"
                )
        (tmp / STAMP).write_text(json.dumps(stamp))
    return target


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


#: the source scene ``--generate`` makes (split sizes)
GENERATED: dict[str, Any] = {
    "n_train": 60,
    "n_validation": 10,
    "n_test_good": 20,
    "n_test_logical": 0,
    "n_test_structural": 30,
}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="MVTec-AD-layout copy of the synthetic scene's structural anomalies.")
    p.add_argument("--source", required=True, help="root of a generated synthetic scene (holds <category>/)")
    p.add_argument("--out", required=True, help="root of the AD-layout copy")
    p.add_argument("--category", default="screw_bag")
    p.add_argument(
        "--generate",
        type=int,
        default=None,
        metavar="SIZE",
        help="first generate the source scene at SIZE px (reused when it exists with the same parameters)",
    )
    a = p.parse_args(argv)
    if a.generate is not None:
        from pradot.data.synthetic import ensure_synthetic

        ensure_synthetic(a.source, a.category, image_size=a.generate, **GENERATED)
    print(structural_ad_copy(a.source, a.out, a.category))
    return 0


if __name__ == "__main__":
    sys.exit(main())
