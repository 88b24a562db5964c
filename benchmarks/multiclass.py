"""The multi-class table (issue 22) and the wall time of the multi-class entry point: runs

    mlflow run <repo> --env-manager local -e multiclass -P dataset=synthetic -P recipe=cpu [-P ...]

as a user would (fresh folder, data generated, new tracking store), times it, samples the load average while it
runs, and writes one JSON file: the command, the wall time, the load averages, the comparison rows (VPDM, unified
PRADOT, unified memory bank and the per-category models; per category and mean; image AUROC, pixel AUROC, AU-PRO
on the AD layout, AU-sPRO on the LOCO layout), each method's fit and evaluation seconds, the registered model and,
with ``-P ablation=true``, the ablation table (Table 3's rows).

    python -m benchmarks.multiclass --output benchmarks/results/multiclass-cpu.json      # ~15 min on 2 cores
    python -m benchmarks.multiclass --param recipe=ci                                   # a minute
    python -m benchmarks.multiclass --param ablation=true --output results/ablation.json

The machine is shared: the load average (1, 5, 15 min, sampled every 30 s) says how many other processes ran.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch  # noqa: E402

from benchmarks import REPO  # noqa: E402
from benchmarks.harness import log, machine_info, write_json  # noqa: E402


def _load_sampler(every: float, samples: list, stop: threading.Event) -> None:
    while not stop.wait(every):
        samples.append([round(time.monotonic(), 1), *os.getloadavg()])


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _artifact(client, run_id: str, path: str):
    try:
        return json.loads(Path(client.download_artifacts(run_id, path)).read_text())
    except Exception:  # noqa: BLE001 (an artifact a recipe does not log)
        return None


def _run_record(uri: str) -> dict:
    """What the finished run logged: comparison rows, ablation rows, timings, the registered version."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], "tags.`pradot.kind` = 'multiclass'"
    )
    if not runs:
        return {}
    run = runs[0]
    m = run.data.metrics
    seconds = {k: v for k, v in sorted(m.items()) if k.endswith("_seconds")}
    versions = [
        {"name": v.name, "version": v.version, "method": run.data.tags.get("pradot.multiclass.registered_method")}
        for v in client.search_model_versions(f"run_id='{run.info.run_id}'")
    ]
    return {
        "run_id": run.info.run_id,
        "rows": (_artifact(client, run.info.run_id, "comparison/comparison.json") or {}).get("rows"),
        "ablation": _artifact(client, run.info.run_id, "ablation/ablation.json"),
        "seconds": seconds,
        "registered": versions,
        "figures": sorted(Path(a.path).name for a in client.list_artifacts(run.info.run_id, "figures")),
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--param", nargs="*", default=[], metavar="KEY=VALUE", help="more -P parameters of the entry")
    p.add_argument("--workdir", type=Path, default=None, help="where the run generates its data (default: temp)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds before the run is stopped")
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args(argv)
    params = {"dataset": "synthetic", "recipe": "cpu"}
    params.update(dict(item.split("=", 1) for item in args.param))
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    cmd = [str(mlflow_bin), "run", str(REPO), "--env-manager", "local", "-e", "multiclass"]
    for k, v in params.items():
        cmd += ["-P", f"{k}={v}"]
    shown = "mlflow run . --env-manager local -e multiclass " + " ".join(f"-P {k}={v}" for k, v in params.items())
    with tempfile.TemporaryDirectory(prefix="pradot-multiclass-bench-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{work / 'mlflow.db'}"
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
        for k in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "PRADOT_SYNTHETIC_ROOT"):
            env.pop(k, None)
        machine = machine_info(torch.device("cpu"))
        samples: list = []
        stop = threading.Event()
        sampler = threading.Thread(target=_load_sampler, args=(30.0, samples, stop), daemon=True)
        sampler.start()
        log(f"running: {shown}")
        start, cpu0 = time.perf_counter(), _children_cpu()
        proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=args.timeout)
        wall, cpu = time.perf_counter() - start, _children_cpu() - cpu0
        stop.set()
        log(f"exit {proc.returncode} after {wall / 60:.1f} min")
        record = _run_record(uri) if proc.returncode == 0 else {}
    loads = [s[1:] for s in samples]
    result = {
        "what": "the multiclass entry point end to end (data generated, features, every method fitted and "
        "evaluated, figures, registration): wall time and the comparison table",
        "command": "python -m benchmarks.multiclass " + " ".join(argv if argv is not None else sys.argv[1:]),
        "entry_command": shown,
        "exit_code": proc.returncode,
        "wall_seconds": wall,
        "wall_minutes": wall / 60,
        # user + system CPU seconds of the run's processes; / 2 = the wall time on 2 otherwise idle cores at best
        "cpu_seconds": cpu,
        "idle_2core_minutes_estimate": cpu / 2 / 60,
        "load_average_end": list(os.getloadavg()),
        "load_average_1min_during": {
            "mean": sum(x[0] for x in loads) / len(loads) if loads else None,
            "max": max((x[0] for x in loads), default=None),
            "samples_every_30s": [round(x[0], 2) for x in loads],
        },
        **record,
        "output_tail": proc.stdout[-6000:] if proc.returncode == 0 else (proc.stdout[-3000:] + proc.stderr[-6000:]),
        "machine": machine,
    }
    if args.output:
        write_json(result, args.output)
    return result


if __name__ == "__main__":
    main()
