"""Throughput of ``predict`` on one folder (issue 24): the local path (this process) against the Ray path
(``ray=...``: a Ray Data actor pool), same model, same images, same outputs (checked equal after).

    python -m benchmarks.predict_ray                                  # a private local Ray of this machine
    python -m benchmarks.predict_ray --nodes 2 --cpus-per-node 1      # a local cluster of 2 nodes (Ray's utils)
    python -m benchmarks.predict_ray --address 10.0.0.1:6379 --input /nfs/line3   # an existing cluster

The model is a PRADOT (EfficientNet-Lite0, stages 2 and 3, n=2, alpha=0.3, ``--image-size`` px) fitted for one
epoch on random images and logged to a temporary MLflow store; the images are ``--images`` generated scenes of
``--size`` written as PNG (or the folder ``--input``). Each path runs ``pradot-predict`` in this process
without tracking; ``images_per_second`` is predict's own (images scored / seconds of its scoring loop, which
for Ray includes starting the actors and loading the model in each), ``wall_s`` the whole call (for Ray also
joining or starting the cluster). ``outputs``: how the two folders differ (the actors run torch with their
own CPU count as threads, so the sums of a map can round otherwise than in this process: the maps agree to
float tolerance, and a mask or overlay pixel at the threshold may differ).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.harness import machine_info, write_json  # noqa: E402


def _images(folder: Path, n: int, h: int, w: int) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:h, :w]
    base = np.stack([xx * 255 // (w - 1), yy * 255 // (h - 1), (xx + yy) % 256], -1)
    folder.mkdir(parents=True)
    for i in range(n):
        img = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"img_{i:04d}.png")
    return folder


def _logged_model(size: int, workdir: Path) -> Path:
    """A fitted PRADOT logged as the pyfunc, its folder as downloaded from the store."""
    import mlflow

    from pipelines import mlflow_model
    from pradot import PRADOT, PRADOTConfig
    from pradot.calibration import Calibration

    gen = torch.Generator().manual_seed(0)
    train = [{"image": t} for t in torch.rand(8, 3, size, size, generator=gen)]
    cfg = PRADOTConfig(
        backbone="efficientnet_lite0", stages=(2, 3), image_size=size, n=2, alpha=0.3, batch_size=4, epochs=1
    )
    model = PRADOT(cfg).fit(train, progress=False)
    maps, scores = model.score(torch.rand(4, 3, size, size, generator=gen))
    cal = Calibration.calibrate(scores, 0.9, pixel_maps=maps)
    mlflow.set_tracking_uri(f"sqlite:///{workdir}/mlflow.db")
    exp = mlflow.create_experiment("bench", artifact_location=(workdir / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=exp):
        info = mlflow_model.log_pradot_model(model.save(workdir / "m.pt"), cal, model_config={"device": "cpu"})
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=info.model_uri, dst_path=str(workdir / "dl")))


def _run(model: Path, inp: Path, out: Path, batch_size: int, *extra: str) -> dict:
    from pipelines import predict

    argv = [f"model_uri={model}", f"input={inp}", f"output={out}", f"batch_size={batch_size}", "device=cpu"]
    t0 = time.perf_counter()
    result = predict.run([*argv, "tracking.enabled=false", *extra])
    wall = time.perf_counter() - t0
    return {**result.metrics, "wall_s": wall, "notes": result.notes}


def _compare(a: Path, b: Path) -> dict:
    """How the two output folders differ: the same file names; the largest score difference and map difference
    (relative to the map's range); how many files are not the same bytes, by folder."""
    import csv

    import tifffile

    def files(root: Path) -> dict:
        return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    fa, fb = files(a), files(b)
    out: dict = {"same_names": sorted(fa) == sorted(fb), "bytes_differ": {}}
    for rel in fa.keys() & fb.keys():
        if fa[rel] != fb[rel]:
            out["bytes_differ"][rel.parts[0]] = out["bytes_differ"].get(rel.parts[0], 0) + 1
    rows = [{r["path"]: r for r in csv.DictReader(open(d / "scores.csv", encoding="utf-8"))} for d in (a, b)]
    out["max_raw_score_diff"] = max(
        abs(float(rows[0][k]["raw_score"]) - float(rows[1][k]["raw_score"])) for k in rows[0]
    )
    out["same_decisions"] = all(rows[0][k]["is_anomaly"] == rows[1][k]["is_anomaly"] for k in rows[0])
    worst = 0.0
    for rel in fa:
        if rel.parts[0] == "maps":
            ma, mb = tifffile.imread(a / rel), tifffile.imread(b / rel)
            worst = max(worst, float(np.abs(ma - mb).max() / max(np.ptp(ma), 1e-12)))
    out["max_map_diff_of_range"] = worst
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--size", default="256x256", help="generated image height x width")
    ap.add_argument("--image-size", type=int, default=128, help="the model's input size")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--input", default=None, help="a folder of images instead of generated ones")
    ap.add_argument("--address", default=None, help="an existing Ray cluster (else a local one)")
    ap.add_argument("--nodes", type=int, default=1, help="nodes of the local cluster (1: a private local Ray)")
    ap.add_argument("--cpus-per-node", type=int, default=None, help="CPUs of each local node (default: all / nodes)")
    ap.add_argument("--output", default="benchmarks/results/predict-ray-cpu-2core.json")
    args = ap.parse_args(argv)
    h, w = (int(v) for v in args.size.lower().split("x"))
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before ray is imported: a loopback cluster
    os.environ.setdefault("TQDM_DISABLE", "1")
    result: dict = {"machine": machine_info(torch.device("cpu")), "config": vars(args), "paths": {}}
    with tempfile.TemporaryDirectory(prefix="pbr", dir="/tmp") as tmp_name:
        tmp = Path(tmp_name)
        model = _logged_model(args.image_size, tmp)
        inp = Path(args.input) if args.input else _images(tmp / "images", args.images, h, w)
        result["paths"]["local"] = _run(model, inp, tmp / "local", args.batch_size)
        print("local", result["paths"]["local"], flush=True)
        cluster, address = None, args.address or "local"
        if not args.address and args.nodes > 1:
            from ray.cluster_utils import Cluster

            # the nodes are started here without a token: the driver must not send one (~/.ray/auth_token)
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")

            cpus = args.cpus_per_node or max(1, (os.cpu_count() or 1) // args.nodes)
            node = {"num_cpus": cpus, "object_store_memory": 200 * 2**20, "node_ip_address": "127.0.0.1"}
            cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
            for _ in range(args.nodes - 1):
                cluster.add_node(**node)
            address = cluster.address
        try:
            result["paths"]["ray"] = _run(model, inp, tmp / "ray", args.batch_size, f"ray={address}")
        finally:
            if cluster is not None:
                cluster.shutdown()
        print("ray", result["paths"]["ray"], flush=True)
        result["outputs"] = _compare(tmp / "local", tmp / "ray")
    result["machine"]["load_average_end"] = list(os.getloadavg())
    write_json(result, args.output)
    print("wrote", args.output, "outputs:", result["outputs"])
    return result


if __name__ == "__main__":
    main()
