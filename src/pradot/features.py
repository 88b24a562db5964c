"""Backbone feature extraction over a dataset, and an on-disk, memory-mapped feature cache.

The backbone is frozen and the paper uses no augmentation, so the features of a training image never
change: they are computed once per (dataset, category, backbone, stage, image size, file list) and
reused across epochs, runs and sweep trials. The cache key covers all of these (and the files' sizes and
modification times), so any change gives a new entry. Each stage is stored on its own, so a stage-2 run,
a stage-3 run and a stages-2+3 run of the same data share their features.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .backbone import Backbone

__all__ = ["extract_features", "files_fingerprint", "FeatureCache"]

log = logging.getLogger(__name__)


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
    """Memory-mapped feature arrays on disk.

    An identity is a dict of what the features depend on, with the requested ``stages``; the folder
    ``<root>/<key>/`` is keyed by everything but the stages and holds one ``stage<l>.npy`` per stage with
    its ``stage<l>.json`` (written last: a stage without it is incomplete and computed again). Files are
    written under temporary names and renamed, so concurrent runs never see half a file.

    ``hits`` / ``misses`` count lookups in this process; the json files record when and how long the
    extraction took, so the sweep can show that features were extracted once.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def _split(identity: dict) -> tuple[dict, list[int]]:
        if "stages" not in identity:
            raise ValueError(f"a feature-cache identity needs its 'stages', got keys {sorted(identity)}")
        base = {k: v for k, v in identity.items() if k != "stages"}
        return base, sorted(int(s) for s in identity["stages"])

    @classmethod
    def key(cls, identity: dict) -> str:
        """The folder name: a digest of the identity without its stages."""
        blob = json.dumps(cls._split(identity)[0], sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:20]

    def path(self, identity: dict) -> Path:
        return self.root / self.key(identity)

    @staticmethod
    def _stored(folder: Path, stage: int) -> bool:
        """The stage's array and its json (written last) are both there."""
        return (folder / f"stage{stage}.json").is_file() and (folder / f"stage{stage}.npy").is_file()

    def info(self, identity: dict) -> dict[int, dict] | None:
        """{stage: its json record (identity, shape, n_images, seconds, created)}, or None when a stage is missing."""
        d, stages = self.path(identity), self._split(identity)[1]
        if not all(self._stored(d, s) for s in stages):
            return None
        return {s: json.loads((d / f"stage{s}.json").read_text()) for s in stages}

    def load(self, identity: dict) -> dict[int, np.ndarray] | None:
        """{stage: memory-mapped (N, D, H, W) array} for every requested stage, or None if one is missing."""
        d, stages = self.path(identity), self._split(identity)[1]
        if not all(self._stored(d, s) for s in stages):
            return None
        return {s: np.load(d / f"stage{s}.npy", mmap_mode="r") for s in stages}

    def get_or_compute(self, identity: dict, backbone: Backbone, dataset: Dataset, batch_size: int = 32,
                       num_workers: int = 0, device="cpu", progress: bool = True) -> dict[int, np.ndarray]:
        """Cached features for ``identity``; missing stages are extracted with ``backbone`` and stored
        (every stage the backbone gives that is not stored yet)."""
        base, stages = self._split(identity)
        found = self.load(identity)
        if found is not None:
            self.hits += 1
            return found
        d = self.path(identity)
        missing = [s for s in stages if not self._stored(d, s)]
        if not set(missing) <= set(backbone.stages):
            raise ValueError(f"the cache is asked for stages {stages} but the backbone gives {list(backbone.stages)}")
        self.misses += 1
        log.info("extracting %s features of %d images (stages %s) into %s", backbone.name, len(dataset), missing, d)
        d.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        feats = extract_features(backbone, dataset, batch_size, num_workers, device, progress)
        seconds = time.perf_counter() - t0
        for s, arr in sorted(feats.items()):
            if self._stored(d, s):
                continue  # stored already (by us earlier, or by a concurrent run)
            self._write(d, f"stage{s}.npy", lambda f, a=arr: np.save(f, a))
            meta = {"identity": base, "stage": int(s), "n_images": len(dataset), "shape": list(arr.shape),
                    "seconds": seconds, "created": time.time()}
            self._write(d, f"stage{s}.json", lambda f, m=meta: f.write(json.dumps(m, indent=1, default=str).encode()))
        return self.load(identity)

    @staticmethod
    def _write(folder: Path, name: str, write) -> None:
        """Write ``folder/name`` under a temporary name, then rename it into place (atomic on one filesystem)."""
        fd, tmp = tempfile.mkstemp(prefix=f".tmp-{name}-", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
            os.replace(tmp, folder / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
