"""MLflow entry point `fewshot` as a plain script: ``python pipelines/fewshot.py key=value ...`` (the MLproject
and the README call it). The protocol itself is the package ``pipelines/fewshot/`` (``pipelines.fewshot.run``).
"""

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:  # `python pipelines/fewshot.py`: import this checkout's package
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from pipelines.fewshot.run import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
