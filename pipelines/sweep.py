"""MLflow entry point `sweep` as a plain script: ``python pipelines/sweep.py key=value ...`` (the MLproject
and the README call it). The sweep itself is the package ``pipelines/sweep/`` (``pipelines.sweep.run``).
"""

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:  # `python pipelines/sweep.py`: import this checkout's package
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from pipelines.sweep.run import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
