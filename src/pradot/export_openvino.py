"""An exported model for OpenVINO: the ONNX graph of :mod:`pradot.export` as OpenVINO IR, and its runner.

```python
from pradot.export import export_onnx
from pradot.export_openvino import export_openvino, OpenVINOScorer
export_onnx(model, "model.onnx", calibration=cal)
xml = export_openvino("model.onnx")                     # model.xml + model.bin beside it
maps, scores = OpenVINOScorer(xml).score(rgb)           # rgb: (H, W, 3) uint8; maps (1, S, S), scores (1,)
```

The IR is the ONNX file read by OpenVINO's ONNX frontend (``openvino.convert_model``) and saved with float32
weights (``openvino.save_model(..., compress_to_fp16=False)``): the same graph, inputs and outputs
(:data:`pradot.export.INPUT_NAME`, :data:`pradot.export.OUTPUT_NAMES`), batch, height and width dynamic.
The ONNX file's metadata (thresholds, quantile table, calibration) travel in the IR's runtime info under
``pradot``. The graph has no float64 (OpenVINO's CPU plugin runs float64 as float32): the resize is PIL's
integer arithmetic in int32 and exact float32 products (:class:`pradot.export.PILBilinearResize`).
:class:`OpenVINOScorer` compiles for float32 inference (``INFERENCE_PRECISION_HINT=f32``; CPUs with bf16
or fp16 units would otherwise run the backbone in lower precision).
"""

from __future__ import annotations

import json
import os
import shutil
from collections import OrderedDict
from pathlib import Path

import numpy as np

from .calibration import Calibration
from .errors import InputError
from .export import INPUT_NAME, OUTPUT_NAMES, read_metadata
from .io import temporary_sibling

__all__ = ["RT_INFO_KEY", "SHAPES_KEPT", "export_openvino", "openvino_metadata", "OpenVINOScorer"]

#: input shapes an :class:`OpenVINOScorer` keeps compiled models for (one per shape, least recently used dropped)
SHAPES_KEPT = 8
#: the runtime-info section of the IR that holds the ONNX file's metadata
RT_INFO_KEY = "pradot"


def _openvino():
    try:
        import openvino
    except ImportError as e:  # pragma: no cover - the extra is installed in the dev environment
        raise ImportError("OpenVINO export needs the openvino package: pip install 'pradot[openvino]'") from e
    return openvino


def export_openvino(onnx_path: str | Path, xml_path: str | Path | None = None) -> Path:
    """Convert an ONNX file written by :func:`pradot.export.export_onnx` to OpenVINO IR: ``xml_path``
    (default: the ONNX file's name with ``.xml``) and its ``.bin`` beside it, float32 weights, the ONNX
    metadata in the runtime info (:data:`RT_INFO_KEY`). Both are written in a temporary folder
    first, then moved.

    Raises:
        InputError: ``onnx_path`` does not exist, or ``xml_path`` does not end in ``.xml``.
        ImportError: openvino is not installed.
    """
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise InputError(f"{onnx_path} does not exist: export the model with pradot.export.export_onnx first")
    xml = Path(xml_path) if xml_path is not None else onnx_path.with_suffix(".xml")
    if xml.suffix != ".xml":
        raise InputError(f"the IR file must end in .xml (its weights go beside it as .bin), got {xml}")
    ov = _openvino()
    model = ov.convert_model(str(onnx_path))
    for key, value in read_metadata(onnx_path).items():
        model.set_rt_info(value, [RT_INFO_KEY, key])
    xml.parent.mkdir(parents=True, exist_ok=True)
    folder = temporary_sibling(xml)  # both files are written there, then moved: the .bin first
    try:
        folder.mkdir()
        ov.save_model(model, str(folder / xml.name), compress_to_fp16=False)
        os.replace(folder / xml.with_suffix(".bin").name, xml.with_suffix(".bin"))
        os.replace(folder / xml.name, xml)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return xml


def openvino_metadata(model) -> dict[str, str]:
    """The ``pradot`` runtime info of an OpenVINO model (``openvino.Model``) as a dict of strings."""
    if not model.has_rt_info([RT_INFO_KEY]):
        return {}
    section = model.get_rt_info([RT_INFO_KEY])
    return {str(k): v.astype(str) for k, v in section.astype(dict).items()}


class OpenVINOScorer:
    """An exported model run with OpenVINO: ``score(images)`` and the thresholds of its metadata, as
    :class:`pradot.export.OnnxScorer`.

    Args:
        path: the IR's ``.xml`` (its ``.bin`` beside it) or the ``.onnx`` file itself.
        device: OpenVINO device (default ``CPU``).
        threads: inference threads (``INFERENCE_NUM_THREADS``; None: OpenVINO's default, all cores).

    Raises:
        InputError: the file does not exist.
    """

    def __init__(self, path: str | Path, device: str = "CPU", threads: int | None = None):
        ov = _openvino()
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"{self.path} does not exist: export it with `export format=openvino` first")
        config: dict[str, object] = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.core, self.device, self.config = ov.Core(), device, config
        self.model = self.core.read_model(str(self.path))
        self.metadata = openvino_metadata(self.model) or (
            read_metadata(self.path) if self.path.suffix == ".onnx" else {}
        )
        self.compiled: OrderedDict[tuple[int, ...], object] = OrderedDict()  # input shape -> compiled model
        cal = self.metadata.get("calibration")
        self.calibration = Calibration.from_dict(json.loads(cal)) if cal else None
        self.image_size = int(self.metadata.get("image_size", 0)) or None

    def _compiled(self, shape: tuple[int, ...]):
        """The model compiled for one input shape (static), the last :data:`SHAPES_KEPT` kept. With dynamic
        shapes, OpenVINO 2026.4's CPU plugin answered the first inference of a compiled model wrongly (the
        graph's ``If``, Pillow's pass order, was taken as the wrong branch; checked in the tests); static shapes
        resolve it at compile time and run faster."""
        if shape not in self.compiled:
            model = self.model.clone()
            model.reshape({INPUT_NAME: list(shape)})
            self.compiled[shape] = self.core.compile_model(model, self.device, self.config)
            while len(self.compiled) > SHAPES_KEPT:
                self.compiled.popitem(last=False)
        self.compiled.move_to_end(shape)
        return self.compiled[shape]

    def score(self, images) -> tuple[np.ndarray, np.ndarray]:
        """uint8 RGB (H, W, 3) or (B, H, W, 3) -> maps (B, S, S) float32 and scores (B,) float32."""
        x = np.ascontiguousarray(images, dtype=np.uint8)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[-1] != 3:
            raise InputError(f"expected uint8 RGB images (H, W, 3) or (B, H, W, 3), got {x.shape}")
        compiled = self._compiled(tuple(int(v) for v in x.shape))
        result = compiled.create_infer_request().infer({INPUT_NAME: x})
        maps, scores = (np.array(result[compiled.output(name)]) for name in OUTPUT_NAMES)
        return maps, scores

    def is_anomaly(self, scores) -> np.ndarray:
        """``score > image_threshold`` (the calibrated threshold in the metadata)."""
        if self.calibration is None:
            raise InputError(f"{self.path} was exported without a calibration: no threshold in its metadata")
        return np.asarray(scores) > self.calibration.threshold
