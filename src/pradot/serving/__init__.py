"""Framework-free request handling for a served PRADOT model: decode, validate, score, encode maps.

The MLflow wrapper (``pipelines/mlflow_model.py``) is a thin shell around :class:`Scorer`; this module
imports neither MLflow nor pandas, so the same contract can be put behind any server.

```python
from pradot.serving import Calibration, Scorer, load_scoring_model
model = load_scoring_model("model.pt")                       # a PRADOT or ensemble file (pradot.persistence)
_, val_scores = model.score(validation_images)                # normal images held out from training
scorer = Scorer(model, Calibration.calibrate(val_scores, quantile=0.99))
scorer.predict([b64_png, b64_jpeg], return_map=True)
# -> [{"score": 0.31, "raw_score": 0.82, "is_anomaly": False, "threshold": 1.04,
#      "anomaly_map": "<base64 PNG, the input's size>"}, ...]
```

Contract of one request row (``Scorer.predict``):

* input: a base64 string (standard or URL-safe alphabet, padding optional, an optional
  ``data:image/...;base64,`` prefix) or the raw bytes of a PNG / JPEG / BMP / TIFF / WebP image.
  Grayscale, 16-bit, palette and RGBA images are converted to RGB as :func:`pradot.data.read_image`
  does (alpha composited on black), then resized to the model's ``image_size`` with PIL's bilinear
  filter (as training's ``ImageDataset`` does).
* output: ``score`` (the raw score normalised by the :class:`Calibration`: 0.5 at the threshold,
  clipped to [0, 1]), ``raw_score`` (the model's image score, max of its anomaly map),
  ``is_anomaly`` (``raw_score > threshold``) and ``threshold`` (the raw-score threshold); with
  ``return_map``: ``anomaly_map``, a base64 PNG heat map over the input at the input's size (colour
  scale: the calibrated score range, so the map's middle colour is the threshold), or with
  ``map_format="npy"`` a base64 ``.npy`` of the raw float32 map at the input's size. A map is at most
  ``max_map_side`` pixels on its longer side (default 1024): a larger input gets its map scaled down,
  aspect ratio kept. With ``return_mask``: ``mask``, a base64 PNG (8-bit grayscale, 255 = defect) of
  ``map > mask_threshold`` at the returned map's size (the same float32 map ``map_format="npy"`` returns),
  and ``mask_threshold``, the pixel threshold that made it.
* operating point (:meth:`pradot.calibration.Calibration.operating_point`): by default the calibrated
  thresholds (image: ``threshold``; masks: the calibration's pixel threshold); ``quantile`` q picks the
  q-quantile of the normals' image scores and of their pixel scores from the stored table (q in
  [0.5, 1]); ``threshold`` t (a raw score) is used for images and masks alike. ``threshold`` in the answer
  is the one used, and ``score`` is 0.5 at it.
* ``online_update`` (few-shot FOCT models only; off by default): after scoring, each image of the request
  whose raw score is at most the calibrated threshold (not the request's operating point) calibrates the
  model's online episodic memory with its most normal-looking features (FOCT Eq. 6/7); images above it change
  nothing. The memory is state of this process's model (see README "Few-shot inspection"); other models
  refuse the parameter.
* errors: :class:`InvalidRequest` (a ``ValueError``) naming each bad row and saying how to fix it.

Budgets (each a :class:`Scorer` argument, the served model's ``model_config``): one image at most
``max_pixels`` pixels and ``max_bytes`` bytes; a request at most ``max_rows`` rows, ``max_request_pixels``
decoded pixels over all its rows and ``max_response_bytes`` bytes of returned maps (counted from the
images' headers before their pixels are decoded: the ``.npy`` size, or 3 bytes a pixel for a PNG map).
Over a request budget: :class:`RequestTooLarge` (HTTP 413 when served). At most ``max_in_flight``
requests are decoded and scored at once per process; a request waits up to ``wait_s`` seconds for its
turn, then :class:`ServerBusy` (HTTP 503). Only one image of a request is decoded at full size at a time
(each row keeps its model-size tensor and, for a PNG map, its image at the map's size), so a request's
memory is bounded by one decoded image plus its returned maps.

Layout: :mod:`.decode` (request values -> RGB, checked before pixels are decoded), :mod:`.encode` (maps and
masks -> base64 PNG / ``.npy``), :mod:`.budget` (the budgets' defaults and how a request is charged),
:mod:`.scorer` (:class:`Scorer`), :mod:`.errors` (what a client is told). The allocator setting a server
makes at start (freed large blocks back to the OS) is the server's: ``pipelines/mlflow_model.py``.
"""

from ..calibration import Calibration
from ..persistence import ScoringModel, load_scoring_model, model_file_info, servable_formats
from .budget import (
    BUDGET_NAMES,
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MAX_MAP_SIDE,
    DEFAULT_MAX_REQUEST_PIXELS,
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_WAIT_S,
    batch_budgets,
    map_bytes,
    mask_bytes,
)
from .decode import ALLOWED_FORMATS, DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, decode_image
from .encode import MAP_FORMATS, encode_mask, encode_png, map_size, resize_map
from .errors import EXPECTED_PAYLOAD, InvalidRequest, RequestTooLarge, ServerBusy
from .scorer import Scorer

__all__ = [
    "ALLOWED_FORMATS",
    "BUDGET_NAMES",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_IN_FLIGHT",
    "DEFAULT_MAX_MAP_SIDE",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MAX_REQUEST_PIXELS",
    "DEFAULT_MAX_RESPONSE_BYTES",
    "DEFAULT_WAIT_S",
    "EXPECTED_PAYLOAD",
    "MAP_FORMATS",
    "Calibration",
    "InvalidRequest",
    "RequestTooLarge",
    "Scorer",
    "ServerBusy",
    "ScoringModel",
    "batch_budgets",
    "decode_image",
    "encode_mask",
    "encode_png",
    "load_scoring_model",
    "map_bytes",
    "map_size",
    "mask_bytes",
    "resize_map",
    "model_file_info",
    "servable_formats",
]
