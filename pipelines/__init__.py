"""The orchestration of PRADOT: MLflow entry points, Ray Tune sweeps, promotion, serving wrapper.

One module per step (see docs/architecture.md): ``config`` (argv -> typed objects), ``tracking`` (MLflow
runs, registry tags, registration), ``cli`` (exit codes and summaries), ``train``, ``promote/``, ``sweep/``,
``reproduce``, ``figures``, ``mlflow_model`` (the served pyfunc). The library ``pradot`` knows nothing of
them. Each entry point also runs as a plain script: ``python pipelines/train.py key=value ...``.
"""

import sys
from pathlib import Path

try:  # installed (make setup), or, in a bare environment made from conda.yaml, this checkout's src/
    import pradot  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
