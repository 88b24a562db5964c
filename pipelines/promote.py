"""`python pipelines/promote.py key=value ...` (the MLproject `promote` entry point): the code lives in the
package ``pipelines/promote/`` (``import pipelines.promote`` is that package; this file only runs it)."""

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:  # import this checkout's `pipelines`, not pipelines/ itself
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from pipelines.promote.run import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
