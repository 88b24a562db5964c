"""A scoring model as one ONNX graph: decoded image in, anomaly map and image score out.

```python
from pradot.export import export_onnx, OnnxScorer
from pradot.persistence import load_scoring_model
export_onnx(load_scoring_model("model.pt"), "model.onnx", calibration=cal)    # PRADOT, memory bank or ensemble
onnx_model = OnnxScorer("model.onnx")                 # onnxruntime, thresholds from the file's metadata
maps, scores = onnx_model.score(rgb)                  # rgb: (H, W, 3) uint8; maps (1, S, S), scores (1,)
rgb[None] -> session.run(None, {"image": rgb[None]})  # the same with onnxruntime alone
```

The graph (:class:`ExportScorer`) is what the served model computes, in an export-friendly form:

* input ``image``: uint8 RGB, shape (batch, height, width, 3), any size (as decoded, EXIF orientation
  applied; grayscale / RGBA images converted to RGB first, as ``pradot.data.read_image`` does);
* resize to the model's ``image_size`` exactly as PIL's ``Image.resize(size, BILINEAR)`` does for 8-bit
  images, the served model's resize (:class:`PILBilinearResize`), then ImageNet normalisation;
* the backbone(s), the banks or memory banks with the model's feature options, each member's own
  post-processing (upsampling, mean over banks, Gaussian smoothing), and for an ensemble its fusion
  (resize to the ensemble's size, per-member standardisation, weights);
* outputs ``anomaly_map`` (batch, S, S) float32 at the model's input size and ``score`` (batch,) float32
  (the map's maximum, the served ``raw_score``). To overlay a map on the image, resize it to the image's
  size (bilinear, ``align_corners=False``, as the served maps are: :func:`pradot.serving.resize_map`).

Export-friendly formulations (checked against the library's paths by the tests):

* PRADOT (Eq. 6): the cosine matrix of a batch against all prototypes, the per-image feature weight, and the
  minimum over prototypes (:func:`assignment_map`), without the fast path's reused buffers and blocks; when
  the prototypes are n copies of the grid the maximum over the copies is taken first, as the fast path does.
* Memory bank: nearest neighbours as a matrix product over chunks of the bank (``|q|^2 - 2 q.m + |m|^2``, its
  minimum per chunk), then the exact distance ``|q - m|`` to the winner (:func:`nearest_distance`); the library
  keeps scikit-learn's search, which is the test oracle.

The image threshold, the pixel threshold and the normals' quantile table travel in the file's metadata
(``metadata_props``: ``image_threshold``, ``pixel_threshold``, ``quantile``, ``calibration`` as JSON, ...).
Supported: PRADOT models, memory banks, ensembles of them and tiled models of them (:mod:`pradot.tiled`: the tiles cut
and the maps stitched in the graph, static slices and pads); other model kinds raise TypeError. The
exporter is ``torch.onnx.export(..., dynamo=True)`` (torch.export + onnxscript), opset 18.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .calibration import Calibration
from .cost import FEATURE_NORM_EPS, spatial_cost
from .errors import InputError, InputTypeError
from .io import atomic_write
from .maps import Convention, gaussian_smooth, resize_maps
from .pil_resize import PILBilinearResize
from .postprocess import standardise
from .scoring import cell_copies, fuse_maps
from .tiling import cut_tiles, stitch_maps

__all__ = [
    "OPSET",
    "INPUT_NAME",
    "OUTPUT_NAMES",
    "SUPPORTED",
    "PILBilinearResize",
    "assignment_map",
    "bank_constants",
    "nearest_distance",
    "ExportScorer",
    "exportable",
    "export_onnx",
    "onnx_metadata",
    "read_metadata",
    "OnnxScorer",
]

OPSET = 18
INPUT_NAME = "image"
OUTPUT_NAMES = ("anomaly_map", "score")
SUPPORTED = (
    "PRADOT models, memory banks (MemoryBankModel), ensembles of them (Ensemble) and tiled models of them (TiledModel)"
)
#: the model kinds (``KIND``, :mod:`pradot.base`) that have an export head; ensembles of them export too
HEAD_KINDS = ("pradot", "memory_bank")
#: bank rows per matrix product of the memory-bank search (bounds the graph's memory: rows x H*W floats)
BANK_CHUNK = 16384


# ------------------------------------------------------------------------------------- scoring heads
def assignment_map(
    feats: torch.Tensor, prototypes_t: torch.Tensor, spatial: torch.Tensor | None, alpha: float, copies: int | None
) -> torch.Tensor:
    """Eq. 6, export-friendly: (B, D, H, W) features -> (B, H, W) scores ``min_j M_ij``, M the Eq. 3 cost
    normalised per image (:func:`pradot.scoring.assignment_scores`, whose fast path is the reference).

    Args:
        prototypes_t: (D, P) unit prototype features, transposed.
        spatial: ``a Ms / max(Ms)`` as (H*W, Q) (Q = H*W cells when ``copies``, else P), or None (a = 0).
        copies: n when the prototypes are n copies of the grid (the maximum cosine over the copies of a
            cell is taken first), else None.
    """
    _, D, H, W = feats.shape
    HW = H * W
    z = feats.flatten(2).transpose(1, 2)  # (B, HW, D)
    z = z / z.norm(dim=-1, keepdim=True).clamp_min(FEATURE_NORM_EPS)
    cos = torch.matmul(z, prototypes_t)  # (B, HW, P)
    if alpha == 1.0:  # M = Ms / max(Ms): the same for every image
        base = spatial.amin(dim=1) if spatial is not None else torch.zeros(HW, dtype=cos.dtype, device=cos.device)
        return (cos[:, :, 0] * 0 + base[None]).reshape(-1, H, W)
    mf_max = (1.0 - cos.amin(dim=(1, 2))).clamp_min(0)  # 1 - min cos, per image
    w = torch.where(mf_max > 0, (1.0 - alpha) / mf_max.clamp_min(1e-12), torch.full_like(mf_max, 1.0 - alpha))
    if copies is not None:
        cos = cos.reshape(-1, HW, copies, HW).amax(dim=2)  # (B, HW, HW): the best copy of each cell
    m = cos * (-w[:, None, None])
    if spatial is not None:
        m = m + spatial[None]
    return (m.amin(dim=2) + w[:, None]).reshape(-1, H, W)


def bank_constants(bank) -> tuple[torch.Tensor, torch.Tensor | None, float, int | None]:
    """What :func:`assignment_map` needs of a :class:`pradot.prototypes.PrototypeBank`: ``(prototypes_t,
    spatial, alpha, copies)`` as :func:`pradot.scoring.assignment_scores` computes them (unit prototypes, the
    scaled spatial cost to the distinct prototype positions, :func:`pradot.scoring.cell_copies`)."""
    pn = bank.features.detach().float()
    pn = pn / pn.norm(dim=-1, keepdim=True).clamp_min(FEATURE_NORM_EPS)
    a = float(bank.config.alpha)
    n = cell_copies(bank)
    ms = spatial_cost(bank.grid_coords, bank.grid_coords if n is not None else bank.coords)
    ms_max = float(ms.max())
    spatial = (ms * (a / ms_max)).float().contiguous() if (a > 0 and ms_max > 0) else None
    return pn.transpose(0, 1).contiguous(), spatial, a, n


def nearest_distance(
    queries: torch.Tensor, bank: torch.Tensor, bank_sq: torch.Tensor, chunk: int = BANK_CHUNK
) -> torch.Tensor:
    """Euclidean distance of each (N, D) query to its nearest row of the (M, D) ``bank``: (N,). The nearest row
    is found by matrix products over ``chunk`` rows at a time (``|q|^2 - 2 q.m + |m|^2``), then the distance is
    computed directly, ``|q - m|`` (no cancellation error near 0). ``bank_sq``: (M,) squared row norms."""
    q_sq = (queries * queries).sum(dim=1, keepdim=True)  # (N, 1)
    values, indices = [], []
    for start in range(0, bank.shape[0], chunk):
        part = bank[start : start + chunk]
        d2 = q_sq - 2.0 * torch.matmul(queries, part.transpose(0, 1)) + bank_sq[start : start + chunk][None]
        v, i = d2.min(dim=1)
        values.append(v)
        indices.append(i + start)
    best = torch.stack(values).argmin(dim=0, keepdim=True)  # (1, N): the chunk holding the nearest row
    index = torch.gather(torch.stack(indices), 0, best)[0]
    return torch.linalg.vector_norm(queries - bank[index], dim=1)


class _Backbone(nn.Module):
    """A :class:`pradot.backbone.Backbone`'s network with its ImageNet normalisation (without the input checks,
    which are data-dependent control flow)."""

    mean: torch.Tensor  # buffers: ImageNet normalisation
    std: torch.Tensor

    def __init__(self, backbone):
        super().__init__()
        self.net, self.stages = backbone.net, tuple(backbone.stages)
        self.register_buffer("mean", backbone.mean.detach().clone())
        self.register_buffer("std", backbone.std.detach().clone())

    def forward(self, images: torch.Tensor) -> dict[int, torch.Tensor]:
        feats = self.net((images - self.mean) / self.std)
        return {s: f.float() for s, f in zip(self.stages, feats)}


class _MemberHead(nn.Module):
    """One member's map from its backbone's features: feature options, per-bank scores, upsampling to its
    image size (bilinear, ``align_corners`` of the member's config, else True), mean over banks, Gaussian smoothing."""

    def __init__(self, model):
        super().__init__()
        self.kind = model.KIND
        banks = model if self.kind == "memory_bank" else model.prototypes
        self.options, self.bank_stages = banks.options, tuple(banks.bank_stages)
        self.stages = tuple(model.config.stages)
        self.size, self.sigma = int(model.config.image_size), float(model.config.smoothing_sigma)
        self.align_corners = bool(getattr(model.config, "align_corners", True))  # memory banks may set False
        self.meta: dict[int, tuple] = {}
        for s in self.bank_stages:
            if self.kind == "memory_bank":
                mem = model.memory[s].detach().float().contiguous()
                self.register_buffer(f"bank{s}", mem)
                self.register_buffer(f"bank_sq{s}", (mem * mem).sum(dim=1))
            else:
                self._pradot_bank(s, model.banks[str(s)])

    def _pradot_bank(self, s: int, bank) -> None:
        prototypes_t, spatial, a, n = bank_constants(bank)
        self.register_buffer(f"proto{s}", prototypes_t)
        if spatial is not None:
            self.register_buffer(f"spatial{s}", spatial)
        self.meta[s] = (a, n, spatial is not None)

    def stage_map(self, s: int, f: torch.Tensor) -> torch.Tensor:
        if self.kind == "memory_bank":
            _, D, H, W = f.shape
            q = f.permute(0, 2, 3, 1).reshape(-1, D)
            d = nearest_distance(q, getattr(self, f"bank{s}"), getattr(self, f"bank_sq{s}"))
            return d.reshape(-1, H, W)
        a, n, has_spatial = self.meta[s]
        return assignment_map(
            f, getattr(self, f"proto{s}"), getattr(self, f"spatial{s}") if has_spatial else None, a, n
        )

    def forward(self, feats: Mapping[int, torch.Tensor]) -> torch.Tensor:
        bank_feats = self.options.apply({s: feats[s] for s in self.stages}, self.stages)
        S = self.size
        convention: Convention = "align_corners" if self.align_corners else "half_pixel"
        maps = [resize_maps(self.stage_map(s, bank_feats[s]), S, convention) for s in self.bank_stages]
        return gaussian_smooth(fuse_maps(maps), self.sigma)


def _mahalanobis(members) -> list[str]:
    """The PRADOT members scored with the per-cell Mahalanobis feature term (not exported)."""
    return [type(m).__name__ for m in members if getattr(m.config, "feature_metric", "cosine") != "cosine"]


def exportable(model) -> bool:
    """Whether :func:`export_onnx` supports ``model`` (see :data:`SUPPORTED`): a PRADOT model (with the cosine
    feature term), a memory bank, or an ensemble whose members are all one of those."""
    kind = getattr(model, "KIND", None)
    members = model.members if kind == "ensemble" else model.models if kind == "tiled" else [model]
    return all(getattr(m, "KIND", None) in HEAD_KINDS for m in members) and not _mahalanobis(members)


def _members(model) -> tuple[list, Any]:
    """``(members, ensemble or None)``, by the models' ``KIND`` (:mod:`pradot.base`).

    Raises:
        InputTypeError: a kind that has no ONNX head, or a PRADOT member with ``feature_metric="mahalanobis"``.
    """
    members, ens = _head_members(model)
    bad = _mahalanobis(members)
    if bad:
        raise InputTypeError(
            f"ONNX export supports PRADOT with feature_metric='cosine' only; {bad} score with "
            f"feature_metric='mahalanobis' (per-cell precisions): serve the model file (pradot score / the "
            f"MLflow model) instead, or train with model.feature_metric=cosine"
        )
    return members, ens


def _head_members(model) -> tuple[list, Any]:
    if getattr(model, "KIND", None) == "ensemble":
        members = list(model.members)
        bad = [type(m).__name__ for m in members if getattr(m, "KIND", None) not in HEAD_KINDS]
        if bad:
            raise InputTypeError(f"ONNX export supports {SUPPORTED}; this ensemble has members of kind {bad}")
        return members, model
    if getattr(model, "KIND", None) == "tiled":  # tile models: heads on one backbone, the maps stitched
        bad = [type(m).__name__ for m in model.models if getattr(m, "KIND", None) not in HEAD_KINDS]
        if bad:
            raise InputTypeError(f"ONNX export supports {SUPPORTED}; this tiled model has tile models of kind {bad}")
        return list(model.models), None
    if getattr(model, "KIND", None) in HEAD_KINDS:
        return [model], None
    raise InputTypeError(f"ONNX export supports {SUPPORTED}; got {type(model).__name__}")


class ExportScorer(nn.Module):
    """The export-friendly scorer of a model (module docstring): uint8 (B, H, W, 3) -> anomaly maps (B, S, S)
    and scores (B,), S = ``model.config.image_size``.

    Raises:
        InputTypeError: a model (or ensemble member) of another kind than :data:`SUPPORTED`.
    """

    def __init__(self, model):
        super().__init__()
        members, ens = _members(model)
        self.size = int(model.config.image_size)
        self.resize = PILBilinearResize(self.size)
        self.heads = nn.ModuleList(_MemberHead(m) for m in members)
        groups = ens._groups if ens is not None else [(0, [0])]
        self.backbones = nn.ModuleList(_Backbone(members[runner].backbone) for runner, _ in groups)
        self.groups = [(int(members[runner].config.image_size), list(idx)) for runner, idx in groups]
        stats = ens.stats if ens is not None and ens.normalisation == "per_member" else None
        if ens is not None and ens.normalisation == "per_member" and stats is None:
            raise InputError("the ensemble normalises per member but has no statistics: fit_normalisation first")
        self.stats = [(float(s["mean"]), float(s["std"])) for s in stats] if stats else None
        self.weights = list(ens.weights) if ens is not None and ens.weights is not None else None
        self.ensemble = ens is not None
        self.grid = model.grid if getattr(model, "KIND", None) == "tiled" else None

    def tiled_maps(self, images: torch.Tensor) -> torch.Tensor:
        """A tiled model's stitched maps (B, S, S) (:mod:`pradot.tiling`): one backbone pass over the B x K tiles,
        then the shared head on all of them or head k on tile k."""
        grid = self.grid
        assert grid is not None
        K, T = grid.n_tiles, grid.tile
        feats = self.backbones[0](cut_tiles(images, grid).reshape(-1, 3, T, T))
        if len(self.heads) == 1:
            return stitch_maps(self.heads[0](feats).reshape(-1, K, T, T), grid)
        per = {s: f.reshape(-1, K, *f.shape[1:]) for s, f in feats.items()}
        return stitch_maps(
            torch.stack([h({s: f[:, k] for s, f in per.items()}) for k, h in enumerate(self.heads)], 1), grid
        )

    def member_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Each member's map at the model's size, before normalisation (``images``: (B, 3, S, S) in [0, 1])."""
        out: list[torch.Tensor | None] = [None] * len(self.heads)
        for backbone, (size, idx) in zip(self.backbones, self.groups):
            x = (
                images
                if size == self.size
                else F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            )
            feats = backbone(x)
            for i in idx:
                head = self.heads[i](feats)
                out[i] = resize_maps(head, self.size, "half_pixel_shrink") if self.ensemble else head
        return out  # type: ignore[return-value]

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.grid is not None:
            stitched = self.tiled_maps(self.resize(image))
            return stitched, stitched.flatten(1).amax(1)
        maps = self.member_maps(self.resize(image))
        if self.ensemble:
            if self.stats is not None:
                maps = [standardise(m, mean, std) for m, (mean, std) in zip(maps, self.stats)]
            if self.weights is None:
                fused = fuse_maps(maps)
            else:
                total = sum(self.weights)
                fused = sum(m * (w / total) for m, w in zip(maps, self.weights) if w != 0)
        else:
            fused = maps[0]
        return fused, fused.flatten(1).amax(1)


# ------------------------------------------------------------------------------------- export
def onnx_metadata(
    model, calibration: Calibration | None = None, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The ``metadata_props`` of an exported model: image size, input layout, the thresholds and the quantile
    table (``calibration`` as JSON), the pradot version, plus ``extra`` (e.g. the source model URI)."""
    from . import __version__

    meta = {
        "producer": "pradot",
        "pradot_version": str(__version__),
        "image_size": str(int(model.config.image_size)),
        "model_kind": type(model).__name__,
        "input": f"{INPUT_NAME}: uint8 RGB (batch, height, width, 3), any size, EXIF orientation applied",
        "outputs": "anomaly_map: float32 (batch, S, S); score: float32 (batch,) "
        "= max of the map (raw_score); is_anomaly = score > image_threshold; mask = map > pixel_threshold",
    }
    if calibration is not None:
        meta.update(
            {
                "image_threshold": repr(calibration.threshold),
                "pixel_threshold": repr(calibration.mask_threshold),
                "quantile": repr(calibration.quantile),
                "calibration": json.dumps(calibration.to_dict()),
            }
        )
    meta.update({str(k): str(v) for k, v in (extra or {}).items()})
    return meta


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file."""
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def export_onnx(
    model,
    path: str | Path,
    calibration: Calibration | None = None,
    metadata: Mapping[str, str] | None = None,
    opset: int = OPSET,
) -> Path:
    """Export ``model`` (see :data:`SUPPORTED`) to ``path`` as one ONNX file (:class:`ExportScorer`; batch,
    height and width dynamic), with :func:`onnx_metadata`. Written to a temporary name first, then renamed:
    a failed export leaves no file.

    Raises:
        InputTypeError: an unsupported model kind (also a TypeError).
        RuntimeError: the exporter failed (its message is kept).
    """
    import warnings

    import onnx

    scorer = ExportScorer(model).eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    S = scorer.size
    # batch 2, not square, not the model size: torch.export specialises a dimension whose example size is 1
    example = torch.zeros(2, S + 7, S + 13, 3, dtype=torch.uint8)
    dims = {
        0: torch.export.Dim("batch", min=1, max=4096),
        1: torch.export.Dim("height", min=2, max=65536),
        2: torch.export.Dim("width", min=2, max=65536),
    }
    chatty = [logging.getLogger(name) for name in ("onnx_ir", "onnxscript", "torch.onnx")]
    levels = [lg.level for lg in chatty]
    try:
        for lg in chatty:  # their INFO lines (one per deduplicated initializer, ...) would flood a run's log
            lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
        with atomic_write(path) as tmp, warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                scorer,
                (example,),
                dynamo=True,
                opset_version=opset,
                verbose=False,
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                dynamic_shapes=(dims,),
                optimize=True,
            )
            assert program is not None  # the dynamo exporter returns the program
            program.save(str(tmp), external_data=False)
            proto = onnx.load(str(tmp))
            onnx.helper.set_model_props(proto, onnx_metadata(model, calibration, metadata))
            onnx.save(proto, str(tmp))
    finally:
        for lg, level in zip(chatty, levels):
            lg.setLevel(level)
    return path


class OnnxScorer:
    """An exported model run with onnxruntime: ``score(images)`` and the thresholds of its metadata.

    Args:
        path: the ``.onnx`` file; providers: onnxruntime execution providers (default: CPU).
        threads: intra-op threads (None: onnxruntime's default, one per core).
    """

    def __init__(self, path: str | Path, providers: Sequence[str] | None = None, threads: int | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        self.session = ort.InferenceSession(
            str(self.path), options, providers=list(providers or ["CPUExecutionProvider"])
        )
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        cal = self.metadata.get("calibration")
        self.calibration = Calibration.from_dict(json.loads(cal)) if cal else None
        self.image_size = int(self.metadata.get("image_size", 0)) or None

    def score(self, images) -> tuple[np.ndarray, np.ndarray]:
        """uint8 RGB (H, W, 3) or (B, H, W, 3) -> maps (B, S, S) float32 and scores (B,) float32."""
        x = np.ascontiguousarray(images, dtype=np.uint8)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[-1] != 3:
            raise InputError(f"expected uint8 RGB images (H, W, 3) or (B, H, W, 3), got {x.shape}")
        maps, scores = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: x})
        return maps, scores

    def is_anomaly(self, scores) -> np.ndarray:
        """``score > image_threshold`` (the calibrated threshold in the metadata)."""
        if self.calibration is None:
            raise InputError(f"{self.path} was exported without a calibration: no threshold in its metadata")
        return np.asarray(scores) > self.calibration.threshold
