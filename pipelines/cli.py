"""argv -> step -> exit code and the closing summary, written once for every entry point.

Each entry point's ``main(argv)`` is ``run_entry(run, argv, ...)`` where ``run(argv)`` composes its
config, does the work and returns a result whose ``summary()`` is printed. Exit codes: 0 done, 1 the work
failed (a ``RuntimeError``: its message; any other error, a bug, propagates with its traceback, also kept
in the run's log), 2 bad input (an :class:`pradot.errors.InputError`
or one of :data:`USER_ERRORS`: the message says what to change; nothing was registered), 3 interrupted
(Ctrl+C or SIGTERM; the run ends KILLED; a sweep is resumable). ``-h`` / ``--help`` prints the usage and
exits 0.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from pipelines.errors import USER_ERRORS, is_user_error
from pipelines.names import terminal_text
from pradot.backbone import BackboneError
from pradot.data import DatasetError
from pradot.errors import InputError

__all__ = [
    "EXIT_OK",
    "EXIT_FAILED",
    "EXIT_BAD_INPUT",
    "EXIT_INTERRUPTED",
    "USER_ERRORS",
    "UsageError",
    "Result",
    "is_user_error",
    "run_entry",
    "usage",
]

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 3


class UsageError(InputError):
    """Bad input to an entry point (options, registry contents, sweep settings); the message says what
    was wrong and how to fix it."""


#: the options that print the usage
HELP_OPTIONS = ("-h", "--help")
#: extra hint printed under a dataset error
#: the command that works without any download: the embedded data with the recipe sized for it (make demo)
SYNTHETIC_COMMAND = 'mlflow run . --env-manager local -P dataset=synthetic -P overrides="experiment=cpu_demo"'
DATA_HINT = (
    f"Your data: -P data_root=/path/to/data (or export PRADOT_DATA_ROOT). Or try the embedded data with the "
    f"recipe sized for it (minutes on a CPU): {SYNTHETIC_COMMAND}"
)


class Result(Protocol):
    """What an entry point returns: the closing summary and its exit code."""

    exit_code: int

    def summary(self) -> str: ...


def usage(run: Callable, prog: str | None = None) -> str:
    """The ``--help`` text of an entry point: its usage line, the first paragraph of its module's docstring,
    how overrides are written and the exit codes."""
    module = sys.modules.get(getattr(run, "__module__", ""), None)
    doc = (getattr(module, "__doc__", None) or "").strip().split("\n\n")[0]
    prog = prog or Path(sys.argv[0]).name or "pradot"
    conf = Path(__file__).resolve().parents[1] / "conf"
    return (
        f"usage: {prog} [key=value ...] [--key value ...] [overrides='key=value key=value']\n\n"
        f"{doc}\n\n"
        f"Settings are Hydra overrides of the entry point's config (files under {conf}), e.g. "
        f"data=synthetic category=screw_bag seed=1; a value is taken as written (quote it in the shell when it "
        f"holds spaces). Misspelt keys are refused with suggestions.\n\n"
        f"exit codes: 0 done, 1 failed (traceback in the run's log), 2 bad input (the message says what to "
        f"change), 3 interrupted (Ctrl+C or SIGTERM)"
    )


def run_entry(run: Callable[[list[str]], Result], argv: Sequence[str] | None = None, failure_note: str = "") -> int:
    """Run ``run(argv)`` (default ``sys.argv[1:]``), print the summary or the error, return the exit code.

    ``failure_note`` is printed under a bad-input error (e.g. what happened to the MLflow run)."""
    from pipelines.tracking import started_runs

    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in HELP_OPTIONS for a in argv):
        print(usage(run))
        return EXIT_OK
    runs_before = len(started_runs())
    try:
        result = run(argv)
    except KeyboardInterrupt:
        print(
            "\ninterrupted (Ctrl+C or SIGTERM): the MLflow run was ended KILLED with its log; nothing was "
            "registered after the interruption",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except Exception as e:
        if not is_user_error(e):
            if isinstance(e, RuntimeError):  # the work failed (its message says why; the run log has the rest)
                print(terminal_text(f"\nerror: {e}"), file=sys.stderr)
                return EXIT_FAILED
            raise  # a bug: Python prints the traceback and exits with 1
        # the embedded dataset's own errors (e.g. a mistyped root) do not need it suggested back
        hint = f"\n{DATA_HINT}" if isinstance(e, DatasetError) and "synthetic dataset" not in str(e) else ""
        if isinstance(e, BackboneError):
            hint = f"\nA recipe that needs no download (the embedded data, EfficientNet-Lite0): {SYNTHETIC_COMMAND}"
        if len(started_runs()) > runs_before:
            note = f"\n({failure_note})" if failure_note else ""
        elif os.environ.get("MLFLOW_RUN_ID"):  # under `mlflow run`: its run exists already
            note = (
                "\n(nothing was registered: refused before any work; `mlflow run` marks the run it started "
                "FAILED and exits with 1)"
            )
        else:
            note = "\n(nothing was registered nor recorded: refused before any MLflow run started)"
        print(terminal_text(f"\nerror: {e}{hint}{note}"), file=sys.stderr)
        return EXIT_BAD_INPUT
    print(terminal_text(result.summary()))
    return result.exit_code
