"""Anomaly scores (paper Eq. 6), per-stage maps, upsampling and fusion.

For a test image, each embedding's score is its cost to the nearest prototype,
``S_f = min_P M(f, P)`` with ``M`` the Eq. 3 cost normalised over that image's (H*W, P) matrix
(the authors' code). Per-stage (H, W) maps are upsampled bilinearly (align_corners=True) to the
input size and averaged over stages; the image score is the max of the fused map.
"""

from __future__ import annotations

import threading

import torch

from .cost import _unit, spatial_cost
from .errors import InputError
from .maps import resize_maps
from .prototypes import PrototypeBank

__all__ = [
    "SCORING_PATHS",
    "assignment_scores",
    "assignment_scores_reference",
    "cell_copies",
    "release_workspace",
    "stage_maps",
    "upsample_maps",
    "fuse_maps",
    "image_scores",
]


def assignment_scores_reference(bank: PrototypeBank, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 6, written directly (one full cost matrix per image). Slow; the test oracle.

    Args:
        feats: (B, D, H, W).
    Returns:
        scores (B, H*W) and argmin prototype indices (B, H*W).
    """
    B, _, H, W = feats.shape
    out, idx = [], []
    for b in range(B):
        z, c = bank.embeddings(feats[b : b + 1])
        M = bank.cost(z.to(bank.features.dtype), c)  # (H*W, P), Eq. 3 normalised over this image
        s, j = M.min(dim=1)
        out.append(s)
        idx.append(j)
    return torch.stack(out), torch.stack(idx)


#: target number of cosine entries per row block of the scorer (4 MB of float32: the block is reduced
#: while it is in cache; measured on a 2-core EPYC, n=16 at 28x28: 14 ms/image vs 21 ms with 16 MB blocks)
BLOCK_ELEMENTS = 1 << 20


def cell_copies(bank: PrototypeBank) -> int | None:
    """``n`` when the bank's prototypes are ``n`` copies of the feature grid (prototype ``k * H*W + cell``
    sits exactly on grid cell ``cell``: integer n >= 1 with fixed coordinates), else None."""
    HW = bank.grid_coords.shape[0]
    P = bank.coords.shape[0]
    if P % HW:
        return None
    n = P // HW
    if not torch.equal(bank.coords.reshape(n, HW, 2), bank.grid_coords.expand(n, HW, 2)):
        return None  # learnt (moved) coordinates, or n < 1
    return n


def _feature_weights(min_cos: torch.Tensor, a: float) -> torch.Tensor:
    """(1 - a) / max(1 - cos) per image (the Eq. 3 normalisation of the feature cost); (1 - a) when the
    feature cost is 0 everywhere (then it does not matter)."""
    mf_max = (1.0 - min_cos).clamp_min(0)
    return torch.where(mf_max > 0, (1.0 - a) / mf_max.clamp_min(1e-12), torch.full_like(mf_max, 1.0 - a))


#: the paths of :func:`assignment_scores` (``path=``)
SCORING_PATHS = ("auto", "cells", "general")


@torch.no_grad()
def assignment_scores(
    bank: PrototypeBank, feats: torch.Tensor, chunk: int = 8, path: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 6 for a batch: ``S_i = min_j M_ij`` with M the Eq. 3 cost normalised per image.

    ``M = w (1 - cos) + a Ms / max(Ms)`` with ``w = (1 - a) / max(1 - cos) = (1 - a) / (1 - min cos)``
    per image, so ``min_j M_ij = w + min_j (a Ms_ij / max(Ms) - w cos_ij)``.

    Fast path (exact): when the prototypes are ``n`` copies of the grid (integer n with fixed
    coordinates, :func:`cell_copies`), the ``n`` prototypes of a cell share their spatial cost, so
    ``min_j = min_cells (Ms_cell - w max_k cos_{k, cell})``: the max over the copies is taken first and the
    (H*W, H*W) spatial term is added once, n times less elementwise work than over all prototypes.
    Learnt coordinates or n < 1 use the general path over all prototypes. Both are batched and blocked
    (reused buffers, no Python loop over pixels or prototypes); only the cosine matrix product is done
    at full size.

    Args:
        bank: the prototypes; feats: (B, D, H, W) features of the bank's stage.
        chunk: images per chunk (bounds memory: chunk * H*W * H*W floats on the fast path,
            chunk * H*W * P on the general path).
        path: ``"auto"`` (the fast path when :func:`cell_copies` allows it, else the general path),
            ``"cells"`` (the fast path; ValueError when the bank does not allow it) or ``"general"``
            (all prototypes, whatever the bank: the same scores, e.g. to compare the two paths' speed).
    Returns:
        scores (B, H*W) and argmin prototype indices (B, H*W) (index ``k * H*W + cell`` on the fast
        path: the copy with the largest cosine at the winning cell).
    """
    if path not in SCORING_PATHS:
        raise InputError(f"path must be one of {SCORING_PATHS}, got {path!r}")
    B, D, H, W = feats.shape
    bank.embeddings(feats[:1])  # shape check with a clear message
    a = float(bank.config.alpha)
    chunk = max(1, int(chunk))
    HW = H * W
    pn = _unit(bank.features)  # (P, D)
    dev = pn.device
    n = None if path == "general" else cell_copies(bank)
    if path == "cells" and n is None:
        raise InputError(
            "path='cells' needs prototypes that are n copies of the feature grid "
            "(integer n >= 1, fixed coordinates); this bank has learnt coordinates or n < 1"
        )
    rho = bank.grid_coords if n is not None else bank.coords  # the distinct prototype positions
    ms = spatial_cost(bank.grid_coords, rho)  # (HW, HW) on the fast path, else (HW, P); same for every image
    ms_max = float(ms.max())
    ms_scaled = ms * (a / ms_max) if (a > 0 and ms_max > 0) else None
    zn = _unit(feats.permute(0, 2, 3, 1).reshape(B * HW, D).to(device=dev, dtype=pn.dtype))  # (B*HW, D)

    if a == 1.0:  # the feature cost has weight 0: M = Ms / max(Ms), the same for every image
        m = ms_scaled if ms_scaled is not None else torch.zeros_like(ms)
        val, j = m.min(dim=1)  # first minimum: on the fast path cell c is prototype c (copy 0)
        return val.expand(B, HW).clone(), j.expand(B, HW).clone()

    if n is not None:
        return _scores_cells(zn, pn, ms_scaled, a, n, B, HW, chunk)
    return _scores_general(zn, pn, ms_scaled, a, B, HW, chunk)


class _Workspace(threading.local):
    """Scratch buffers of the scorer, kept between calls (per thread, per device and dtype).

    Scoring a batch touches a few tens of MB of scratch memory; allocated afresh on every call, each of
    its pages is faulted in again (on a virtual machine that cost as much as the arithmetic). Reusing
    them makes repeated scoring (evaluation loops, serving) allocation-free.
    """

    def __init__(self):
        self.buffers: dict = {}

    def get(self, name: str, shape: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        numel = 1
        for d in shape:
            numel *= int(d)
        key = (name, str(device), dtype)
        buf = self.buffers.get(key)
        if buf is None or buf.numel() < numel:
            buf = torch.empty(numel, dtype=dtype, device=device)
            self.buffers[key] = buf
        return buf[:numel].view(shape)


_workspace = _Workspace()


def release_workspace() -> None:
    """Free the scorer's cached scratch buffers of the calling thread."""
    _workspace.buffers.clear()


def _scores_cells(zn, pn, ms_scaled, a, n, B, HW, chunk):
    """Fast path of :func:`assignment_scores`: prototypes are n copies of the HW grid cells."""
    P, D = pn.shape
    dev, dt = pn.device, pn.dtype
    rows_per_block = max(1, BLOCK_ELEMENTS // P)
    scores = torch.empty(B, HW, dtype=dt, device=dev)
    index = torch.empty(B, HW, dtype=torch.long, device=dev)
    nb = min(chunk, B)
    ws = _workspace
    maxcos = ws.get("maxcos", (nb * HW, HW), dt, dev)  # max over the copies, per (pixel, cell)
    rowmin = ws.get("rowmin", (nb * HW,), dt, dev)  # min over all prototypes, per pixel
    buf = ws.get("cos", (min(rows_per_block, nb * HW), P), dt, dev)  # one block of cosines
    cand = ws.get("cand", (nb * HW, n, D), dt, dev)  # the n copies at each pixel's winning cell
    cand_cos = ws.get("cand_cos", (nb * HW, n, 1), dt, dev)
    pnT = pn.T
    pn_cells = pn.view(n, HW, D).transpose(0, 1).contiguous()  # (HW, n, D): the copies of each cell
    for s in range(0, B, nb):
        b = min(nb, B - s)
        z = zn[s * HW : (s + b) * HW]
        for r in range(0, b * HW, rows_per_block):
            e = min(b * HW, r + rows_per_block)
            c = torch.matmul(z[r:e], pnT, out=buf[: e - r])  # (R, P), P = n * HW, index k * HW + cell
            torch.amax(c.view(e - r, n, HW), dim=1, out=maxcos[r:e])  # over the copies of each cell
            torch.amin(c, dim=1, out=rowmin[r:e])
        w = _feature_weights(rowmin[: b * HW].view(b, HW).amin(dim=1), a)  # (b,)
        m = maxcos[: b * HW].view(b, HW, HW)
        m.mul_(-w[:, None, None])
        if ms_scaled is not None:
            m.add_(ms_scaled[None])
        val, cell = m.min(dim=2)  # (b, HW)
        scores[s : s + b] = val + w[:, None]
        # which copy won at the winning cell: the one with the largest cosine there (n dot products)
        cd = torch.index_select(pn_cells, 0, cell.reshape(-1), out=cand[: b * HW])  # (b*HW, n, D)
        k = torch.bmm(cd, z[:, :, None], out=cand_cos[: b * HW]).argmax(dim=1)[:, 0]  # (b*HW,)
        index[s : s + b] = k.view(b, HW) * HW + cell
    return scores, index


def _scores_general(zn, pn, ms_scaled, a, B, HW, chunk):
    """General path of :func:`assignment_scores` (learnt coordinates, n < 1): all prototypes."""
    P = pn.shape[0]
    dev, dt = pn.device, pn.dtype
    nb = max(1, min(chunk, B, BLOCK_ELEMENTS // (HW * P) or 1))
    buf = _workspace.get("cos", (nb * HW, P), dt, dev)  # reused for every chunk of images (and call)
    scores, index = [], []
    for s in range(0, B, nb):
        b = min(nb, B - s)
        cos = torch.matmul(zn[s * HW : (s + b) * HW], pn.T, out=buf[: b * HW]).view(b, HW, P)
        w = _feature_weights(cos.amin(dim=(1, 2)), a)  # (b,)
        # M = w (1 - cos) + ms_scaled = w - w cos + ms_scaled; min_j over the part that depends on j.
        cos.mul_(-w[:, None, None])
        if ms_scaled is not None:
            cos.add_(ms_scaled[None])
        val, j = cos.min(dim=2)
        scores.append(val + w[:, None])
        index.append(j)
    return torch.cat(scores), torch.cat(index)


def stage_maps(bank: PrototypeBank, feats: torch.Tensor) -> torch.Tensor:
    """Per-stage anomaly maps: (B, D, H, W) features -> (B, H, W) scores of Eq. 6."""
    B, _, H, W = feats.shape
    s, _ = assignment_scores(bank, feats)
    return s.reshape(B, H, W)


def upsample_maps(maps: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """(B, h, w) -> (B, S, S): bilinear, align_corners=True (the authors' code; :func:`pradot.maps.resize_maps`
    with ``"align_corners"``)."""
    return resize_maps(maps, size, "align_corners")


def fuse_maps(maps: list[torch.Tensor]) -> torch.Tensor:
    """Average of upsampled maps of several stages (or of ensemble members): list of (B, S, S) -> (B, S, S)."""
    if not maps:
        raise InputError("no maps to fuse")
    return torch.stack(maps).mean(0)


def image_scores(maps: torch.Tensor) -> torch.Tensor:
    """Image-level score = max of the final map: (B, S, S) -> (B,)."""
    return maps.flatten(1).amax(1)
