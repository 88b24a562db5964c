"""What VPDM's GPU recipe (``recipe=paper``: 224 px, 32 x 32 grid, 50 prototypes, batch 32, 1000 sampling steps)
would take, from a CPU measurement (issue 22): per training step (Algorithm 1 on one batch) and per denoiser call
of Algorithm 2, the seconds on this CPU, the floating-point operations (``torch.utils.flop_counter``), the number
of operator calls (each a kernel launch on a GPU) and the memory the step holds (parameters, gradients, Adam's
moments, and the tensors saved for the backward pass, counted with ``saved_tensors_hooks``); then an estimate for
one GPU: ``max(FLOPs / sustained FLOP/s, operator calls x launch latency)`` per step, times the steps of an
epoch of MVTec AD (3,629 training images) and of the test set (1,725 images x sampling steps).

    python -m benchmarks.vpdm_gpu_estimate --output benchmarks/results/vpdm-gpu-estimate.json
    python -m benchmarks.vpdm_gpu_estimate --batch 8      # a quarter batch, scaled to the recipe's (loaded CPU)
    python -m benchmarks.vpdm_gpu_estimate --recipe cpu   # another recipe

The backbone runs once per image and is cached (``pradot.features.FeatureCache``), so it is timed apart.
The assumptions (sustained 20 TFLOP/s in float32 on an H100, 10 us per operator call) are in the JSON.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.harness import log, machine_info, write_json  # noqa: E402
from pradot.backbone import load_backbone  # noqa: E402
from pradot.vpdm import VPDM, VPDMConfig  # noqa: E402

MVTEC_TRAIN, MVTEC_TEST = 3629, 1725  # MVTec AD images, all fifteen categories


class _Calls(TorchDispatchMode):
    """Counts the aten operator calls (on a GPU: about one kernel launch each)."""

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))


def _measure(fn, repeats: int) -> dict:
    fn()  # warm-up
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    flops = FlopCounterMode(display=False)
    with flops:
        fn()
    calls = _Calls()
    with calls:
        fn()
    return {"cpu_seconds": float(np.median(seconds)), "flops": int(flops.get_total_flops()), "op_calls": calls.n}


def _saved_bytes(fn) -> int:
    """Bytes of the tensors autograd saves for the backward pass during ``fn()`` (the activations)."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def _estimate(config, epochs: int, batch: int, train: dict, sample: dict, tflops: float, launch_us: float) -> dict:
    """One GPU's time and memory for MVTec AD from the CPU counts; a step measured at a smaller ``batch`` than
    the recipe's is scaled linearly (FLOPs, saved tensors; operator calls too, an upper bound: only VPOT's
    per-image transport grows with the batch)."""
    scale = config.batch_size / batch

    def gpu_seconds(m, k=1.0):
        return max(k * m["flops"] / (tflops * 1e12), k * m["op_calls"] * launch_us * 1e-6)

    steps = int(np.ceil(MVTEC_TRAIN / config.batch_size))
    sampling = config.sampling_steps * config.n_draws
    step = gpu_seconds(train, scale)
    return {
        "batch_scale": scale,
        "train_steps_per_epoch": steps,
        "epoch_seconds_cpu_measured_x_steps": train["cpu_seconds"] * scale * steps,
        "epoch_seconds_gpu": step * steps,
        "training_hours_gpu": step * steps * epochs / 3600,
        "test_set_denoiser_calls": MVTEC_TEST * sampling,
        # Algorithm 2 one image at a time; batched over images the launches are shared (bound: FLOPs)
        "test_set_hours_gpu_one_image_at_a_time": MVTEC_TEST * sampling * gpu_seconds(sample) / 3600,
        "test_set_hours_gpu_batched_flop_bound": MVTEC_TEST * sampling * sample["flops"] / (tflops * 1e12) / 3600,
        "training_memory_gb": (scale * train["saved_activation_bytes"] + train["parameter_state_bytes"]) / 2**30,
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="paper")
    p.add_argument("--batch", type=int, default=None, help="training batch (default: the recipe's)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--gpu-tflops", type=float, default=20.0, help="sustained float32 TFLOP/s assumed")
    p.add_argument("--launch-us", type=float, default=10.0, help="seconds per operator call on a GPU, in us")
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args(argv)
    config = VPDMConfig.recipe(args.recipe, epochs=0)
    batch = args.batch or config.batch_size
    backbone = load_backbone(config.backbone, config.stages)
    model = VPDM(config, backbone=backbone)
    model.fitted = True
    C, g = model.channels, config.grid
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(batch, C, g, g, generator=gen)
    opt = torch.optim.Adam([model.prototypes, *model.denoiser.parameters()], lr=config.lr)

    def train_step():
        losses = model.training_loss(x0, gen)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        opt.step()

    log(f"VPDM {args.recipe}: {C} channels on {g} x {g}, batch {batch}")
    train = _measure(train_step, args.repeats)
    log(f"train step at batch {batch}: {train}")
    train["saved_activation_bytes"] = _saved_bytes(lambda: model.training_loss(x0, gen))
    n_params = sum(q.numel() for q in [model.prototypes, *model.denoiser.parameters()])
    train["parameter_state_bytes"] = 4 * 4 * n_params  # weights, gradients, two Adam moments (float32)
    one = x0[:1]
    y_hat = model.condition(one)[0].detach()
    t = torch.tensor([config.timesteps])

    def denoise():
        with torch.no_grad():
            model.eps(one, y_hat, t)

    sample = _measure(denoise, args.repeats)
    log(f"denoiser call: {sample}")
    images = torch.rand(8, 3, config.image_size, config.image_size, generator=gen)
    bb = _measure(lambda: backbone(images), 1)
    bb = {k: v / 8 for k, v in bb.items()} | {"per": "image"}

    epochs = VPDMConfig.recipe(args.recipe).epochs  # the recipe's (the model above is built with none)
    estimate = _estimate(config, epochs, batch, train, sample, args.gpu_tflops, args.launch_us)
    result = {
        "what": f"VPDM recipe {args.recipe}: CPU measurement of one training step and one denoiser call, GPU estimate",
        "command": "python -m benchmarks.vpdm_gpu_estimate " + " ".join(argv if argv is not None else sys.argv[1:]),
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(config).items()},
        "batch": batch,
        "parameters": n_params,
        "train_step": train,
        "denoiser_call_one_image": sample,
        "backbone": bb,
        "assumptions": {"gpu_tflops_sustained_fp32": args.gpu_tflops, "launch_us_per_op": args.launch_us},
        "estimate": estimate,
        "machine": machine_info(torch.device("cpu")),
    }
    log(f"estimate: {estimate}")
    if args.output:
        write_json(result, args.output)
    return result


if __name__ == "__main__":
    main()
