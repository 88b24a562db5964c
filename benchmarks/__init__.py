"""PRADOT's performance benchmark (issue 6), outside the library and the pipelines.

``python -m benchmarks.run`` (or ``python benchmarks/run.py``) times, on the same inputs, in one JSON file:

- :mod:`benchmarks.ot`: our Sinkhorn against POT's log-domain Sinkhorn on the Eq. 3 cost matrix of a
  training batch (time, plan agreement for several eps, memory-bandwidth floor, per-phase profile);
- :mod:`benchmarks.epoch`: a training epoch recomputing backbone features against one from the feature cache;
- :mod:`benchmarks.scoring`: Eq. 6 scoring per image against the backbone forward per image.

:mod:`benchmarks.harness` holds what they share (timing, medians, memory, machine description, the
synthetic data, the JSON writer); :mod:`benchmarks.report` the table and the targets. Only public
``pradot`` functions are used, so a change of the library's API breaks ``tests/benchmarks``.
"""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

try:  # the project installed, or its src/ folder
    import pradot  # noqa: F401
except ImportError:  # pragma: no cover - a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO / "src"))
