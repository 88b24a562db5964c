"""Performance benchmark of PRADOT (issue 6): OT solver, training epoch with/without the feature cache,
scoring overhead, peak memory. One run, the same inputs for every comparison, one JSON file.

    python -m benchmarks.run                                   # CPU-sized (the 12,544 x 3,136 OT case)
    python -m benchmarks.run --device cuda --paper-scale       # batch 64, n=16: 50,176 x 12,544
    python -m benchmarks.run --skip-pot --repeats 5 --output benchmarks/results/mine.json

(``python benchmarks/run.py ...`` works as well.) Sections (``--sections ot,epoch,scoring`` for a subset;
each module's docstring says what it measures):

- ``ot`` (benchmarks/ot.py): ``pradot.transport.sinkhorn`` against POT's log-domain Sinkhorn on the cost
  matrix of the first training batch: time, plan agreement per eps, bandwidth floor, per-phase profile.
- ``epoch`` (benchmarks/epoch.py): seconds per training epoch recomputing features (``PRADOT.fit``) vs from
  the memory-mapped cache (``FeatureCache`` + ``PRADOT.fit_features``), same schedule.
- ``scoring`` (benchmarks/scoring.py): ``assignment_scores`` (Eq. 6) per image vs the backbone forward.

The MLproject entry point passes everything as one string (``python -m benchmarks.run {args}``):
arguments containing spaces are split, empty ones ignored.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import shlex
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file (python benchmarks/run.py): import the package from the repo
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]  # benchmarks/ot.py is not POT
    sys.path.insert(0, str(_here.parent))

import torch  # noqa: E402

from benchmarks.epoch import epoch_section, stage_label  # noqa: E402
from benchmarks.harness import REPO, flat_metrics, log, machine_info, memory_section, synthetic_data, write_json  # noqa: E402  # noqa: E402
from benchmarks.ot import first_batch_cost, ot_section  # noqa: E402
from benchmarks.report import table, targets  # noqa: E402
from benchmarks.scoring import scoring_section  # noqa: E402

SECTIONS = ("ot", "epoch", "scoring")


def parse_args(argv) -> argparse.Namespace:
    # MLflow substitutes {args} as one (quoted) string: split items with spaces, drop empty ones
    argv = [tok for item in argv for tok in shlex.split(item)]
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--paper-scale", action="store_true", help="batch 64, n=16, 28x28 grid (50,176 x 12,544 OT): for GPU machines"
    )
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--output", default=None, help="JSON file (default benchmarks/results/<device>-<name>.json)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats of our solver / scoring (median)")
    p.add_argument("--pot-repeats", type=int, default=1, help="timed repeats of POT at eps=0.01")
    p.add_argument("--skip-pot", action="store_true", help="no POT: our sinkhorn_log on a row subsample is the oracle")
    p.add_argument("--skip-pot-float32", action="store_true")
    p.add_argument(
        "--pot-backend",
        default="torch",
        choices=["torch", "numpy"],
        help="inputs given to POT: torch tensors (the authors' code; POT's TorchBackend) or numpy",
    )
    p.add_argument(
        "--pot-numpy-too",
        action="store_true",
        help="also time POT on numpy arrays at eps=0.01 (single-threaded: minutes on CPU)",
    )
    p.add_argument("--skip-resnet", action="store_true", help="skip the ResNet50-shaped scoring measurement")
    p.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset of ot,epoch,scoring")
    p.add_argument("--subsample-rows", type=int, default=4096, help="rows of the --skip-pot oracle problem")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument(
        "--stages",
        default="2,3;2;3",
        help="models timed in the epoch section, ';'-separated stage sets (default: a stages-2+3 "
        "model, then the paper's single-stage members: a stage-2 bank, a stage-3 bank)",
    )
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--train-images", type=int, default=None, help="default 32 (CPU) / 128 (paper scale)")
    p.add_argument("--score-images", type=int, default=16)
    p.add_argument(
        "--epochs", type=int, default=3, help="epochs timed with and without the cache, alternately (median over them)"
    )
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--data-root", default=str(REPO / "outputs" / "benchmark" / "data"))
    p.add_argument("--work-dir", default=str(REPO / "outputs" / "benchmark"))
    p.add_argument("--mlflow", action="store_true", help="also log params, metrics and the JSON to MLflow")
    args = p.parse_args(argv)
    args.argv = argv
    args.section_list = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(args.section_list) - set(SECTIONS))
    if unknown:
        p.error(f"unknown sections {unknown}: choose among {','.join(SECTIONS)}")
    args.stage_sets = [
        [int(s) for s in part.split(",") if s] for part in str(args.stages).replace(" ", "").split(";") if part
    ]
    if args.train_images is None:
        args.train_images = 128 if args.paper_scale else 32
    return args


def default_output(args, info: dict) -> str:
    """benchmarks/results/cpu-<cores>core.json or cuda-<device name>.json (-paper at paper scale)."""
    if info["device"] == "cpu":
        name = f"cpu-{os.cpu_count()}core"
    else:
        name = "cuda-" + "".join(ch if ch.isalnum() else "-" for ch in info["device_name"].lower()).strip("-")
    return str(REPO / "benchmarks" / "results" / f"{name}{'-paper' if args.paper_scale else ''}.json")


def run_sections(args, device: torch.device, scale: dict, result: dict) -> None:
    """The selected sections, in order, each followed by the peak memory so far."""
    ds = synthetic_data(args.data_root, args.image_size, max(args.train_images, scale["batch"]))
    if "ot" in args.section_list:
        M, result["cost_matrix"] = first_batch_cost(ds, args, device, scale["batch"], scale["n"])
        result["ot"] = ot_section(M, args, device)
        del M
        result["memory"]["after_ot"] = memory_section(device)
    if "epoch" in args.section_list:
        result["epoch"] = {stage_label(st): epoch_section(ds, args, device, scale, st) for st in args.stage_sets}
        result["memory"]["after_epoch"] = memory_section(device)
    if "scoring" in args.section_list:
        result["scoring"] = scoring_section(ds, args, device, scale["n_score"])
        result["memory"]["after_scoring"] = memory_section(device)


def log_to_mlflow(result: dict, path: Path) -> None:
    """Params (setting, machine, command), every finite number of the sections as a metric, the JSON."""
    import mlflow

    info = result["machine"]
    with mlflow.start_run(run_name=f"benchmark-{result['setting']}"):
        mlflow.log_params(
            {
                "setting": result["setting"],
                "device": info["device_name"],
                "cpu_count": info["cpu_count"],
                "torch": info["torch"],
                "threads": info["torch_threads"],
                "command": result["command"][:500],
            }
        )
        mlflow.log_metrics(flat_metrics({k: result[k] for k in ("ot", "epoch", "scoring", "memory") if k in result}))
        mlflow.log_artifact(str(path))


def benchmark(args) -> dict:
    """Run the benchmark described by parsed ``args``; returns the result (what the JSON file holds)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    scale = {"batch": 64, "n": 16, "n_score": 16} if args.paper_scale else {"batch": 16, "n": 4, "n_score": 16}
    info = machine_info(device)
    if args.output is None:
        args.output = default_output(args, info)
    result = {
        "command": " ".join(shlex.quote(a) for a in [sys.executable, "-m", "benchmarks.run", *args.argv]),
        "argv": list(args.argv),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "setting": "paper-scale" if args.paper_scale else "cpu",
        "scale": scale,
        "machine": info,
        "memory": {},
    }
    log(
        f"PRADOT benchmark ({result['setting']}) on {info['device_name']} ({info['cpu_count']} CPUs, "
        f"{info['torch_threads']} torch threads, torch {info['torch']}), load {info['load_average_start']}"
    )
    t_all = time.perf_counter()
    run_sections(args, device, scale, result)
    result["total_s"] = time.perf_counter() - t_all
    result["machine"]["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    result["targets"] = targets(result)
    return result


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device is available", file=sys.stderr)
        return 2
    result = benchmark(args)
    out = write_json(result, args.output)
    print(table(result))
    log(f"\nwritten {out}")
    if args.mlflow:
        log_to_mlflow(result, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
