"""Backbone feature extraction over a dataset, and an on-disk, memory-mapped feature cache.

The backbone is frozen and the paper uses no augmentation, so the features of a training image never
change: they are computed once per (dataset, category, backbone, stages, image size, file list) and
reused across epochs, runs and sweep trials. The cache key covers all of these (and the files' sizes and
modification times), so any change gives a new entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .backbone import Backbone

__all__ = ["extract_features", "files_fingerprint", "FeatureCache"]


def files_fingerprint(paths) -> str:
    """Digest of a list of files (path, size, mtime): changes when any file is added, removed or edited."""
    h = hashlib.sha1()
    for p in paths:
        p = Path(p)
        st = p.stat()
        h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


@torch.no_grad()
def extract_features(backbone: Backbone, dataset: Dataset, batch_size: int = 32, num_workers: int = 0,
                     device: str | torch.device = "cpu", progress: bool = True,
                     out: dict | None = None) -> dict[int, np.ndarray]:
    """Features of every image of a dataset (items are dicts with an ``image`` (3, S, S) tensor).

    Returns:
        {stage: (N, D, H, W) float32 array}; written into ``out`` arrays (e.g. memmaps) when given.
    """
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    backbone = backbone.to(device)
    result = out
    pos = 0
    for batch in tqdm(loader, desc=f"features ({backbone.name})", disable=not progress, leave=False):
        feats = backbone(batch["image"].to(device))
        if result is None:
            n = len(dataset)
            result = {s: np.empty((n, *f.shape[1:]), dtype=np.float32) for s, f in feats.items()}
        b = next(iter(feats.values())).shape[0]
        for s, f in feats.items():
            result[s][pos:pos + b] = f.cpu().numpy()
        pos += b
    if result is None:
        raise ValueError("cannot extract features of an empty dataset")
    return result


class FeatureCache:
    """Memory-mapped feature arrays on disk, one folder per key: ``<root>/<key>/stage<l>.npy`` + meta.json.

    ``hits`` / ``misses`` count lookups in this process; ``meta.json`` records when and how long the
    extraction took, so the sweep can show that features were extracted once.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(identity: dict) -> str:
        blob = json.dumps(identity, sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:20]

    def path(self, identity: dict) -> Path:
        return self.root / self.key(identity)

    def load(self, identity: dict) -> dict[int, np.ndarray] | None:
        d = self.path(identity)
        meta = d / "meta.json"
        if not meta.is_file():
            return None
        info = json.loads(meta.read_text())
        return {int(s): np.load(d / f"stage{s}.npy", mmap_mode="r") for s in info["stages"]}

    def get_or_compute(self, identity: dict, backbone: Backbone, dataset: Dataset, batch_size: int = 32,
                       num_workers: int = 0, device="cpu", progress: bool = True) -> dict[int, np.ndarray]:
        """Cached features for ``identity`` (computed and stored atomically on a miss)."""
        found = self.load(identity)
        if found is not None:
            self.hits += 1
            return found
        self.misses += 1
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root))
        try:
            t0 = time.perf_counter()
            feats = extract_features(backbone, dataset, batch_size, num_workers, device, progress)
            for s, arr in feats.items():
                np.save(tmp / f"stage{s}.npy", arr)
            meta = {"identity": identity, "stages": sorted(feats), "n_images": len(dataset),
                    "shapes": {str(s): list(a.shape) for s, a in feats.items()},
                    "seconds": time.perf_counter() - t0, "created": time.time()}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
            final = self.path(identity)
            try:
                tmp.rename(final)
            except OSError:  # another process stored it first: keep theirs
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return self.load(identity)
