"""Latency per image of one exported model in three runtimes (issue 24): the served pyfunc (PNG in, torch),
onnxruntime (:class:`pradot.export.OnnxScorer`) and OpenVINO (:class:`pradot.export_openvino.OpenVINOScorer`),
same model, same images, one thread and each runtime's default; with each runtime's parity to the pyfunc.

    python -m benchmarks.openvino_latency                           # EfficientNet-Lite0 PRADOT at 224 px
    python -m benchmarks.openvino_latency --images 20 --size 480x640 --output benchmarks/results/x.json

The model is a PRADOT (n=2, alpha=0.3, stages 2 and 3) fitted for one epoch on generated images (its
weights do not change the cost); the test images are generated scenes of ``--size``. Times are medians
over the images after one warm-up call per runtime; the pyfunc's include decoding the PNG (what a served
request pays), the exported graphs' start from decoded uint8 RGB (what they take). Parity: the largest
``|map - pyfunc map| / range(pyfunc map)`` over the images, maps at the image's size.
"""

from __future__ import annotations

import argparse
import base64
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.harness import machine_info, write_json  # noqa: E402


def _images(n: int, h: int, w: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:h, :w]
    base = np.stack([xx * 255 // (w - 1), yy * 255 // (h - 1), (xx + yy) % 256], -1)
    return [np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8) for _ in range(n)]


def _model(size: int, workdir: Path):
    from pipelines.mlflow_model import PradotPyfunc
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
    wrapper = PradotPyfunc()
    wrapper.load_context(
        SimpleNamespace(
            model_config={"device": "cpu"},
            artifacts={"model": str(model.save(workdir / "m.pt")), "calibration": str(cal.save(workdir / "c.json"))},
        )
    )
    return model, cal, wrapper


def _median_ms(fn, inputs) -> float:
    fn(inputs[0])  # warm-up (and OpenVINO's compile for this shape)
    times = []
    for x in inputs:
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=10)
    ap.add_argument("--size", default="480x640", help="test image height x width")
    ap.add_argument("--image-size", type=int, default=224, help="the model's input size")
    ap.add_argument("--output", default="benchmarks/results/openvino-latency-cpu.json")
    args = ap.parse_args(argv)
    h, w = (int(v) for v in args.size.lower().split("x"))
    import pandas as pd

    from pradot.export import OnnxScorer, export_onnx
    from pradot.export_openvino import OpenVINOScorer, export_openvino
    from pradot.serving import encode_png, resize_map

    images = _images(args.images, h, w)
    pngs = [encode_png(img) for img in images]
    default_threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        model, cal, wrapper = _model(args.image_size, Path(tmp))
        onnx_path = export_onnx(model, Path(tmp) / "m.onnx", calibration=cal)
        xml = export_openvino(onnx_path)

        def pyfunc(value, return_map=False):
            params = {"return_map": return_map, "map_format": "npy"}
            return wrapper.predict(None, pd.DataFrame({"image": [value]}), params=params).iloc[0]

        served = [np.load(io.BytesIO(base64.b64decode(pyfunc(v, True)["anomaly_map"]))) for v in pngs]
        result: dict = {"machine": machine_info(torch.device("cpu")), "config": vars(args), "runtimes": {}}
        for threads in (1, None):
            label = "1_thread" if threads == 1 else "default_threads"
            torch.set_num_threads(1 if threads == 1 else default_threads)
            runners = {
                "onnxruntime": OnnxScorer(onnx_path, threads=threads),
                "openvino": OpenVINOScorer(xml, threads=threads),
            }
            row = {"pyfunc_ms": _median_ms(pyfunc, pngs)}
            for name, runner in runners.items():
                row[f"{name}_ms"] = _median_ms(runner.score, images)
                worst = 0.0
                for img, ref in zip(images, served):
                    maps, _ = runner.score(img)
                    worst = max(worst, float(np.abs(resize_map(maps[0], (h, w)) - ref).max() / np.ptp(ref)))
                row[f"{name}_parity"] = worst
            result["runtimes"][label] = row
            print(label, {k: round(v, 7 if "parity" in k else 1) for k, v in row.items()}, flush=True)
        torch.set_num_threads(default_threads)
    write_json(result, args.output)
    print("wrote", args.output)
    return result


if __name__ == "__main__":
    main()
