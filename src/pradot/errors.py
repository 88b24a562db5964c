"""The project's error taxonomy: bad input versus everything else.

* :class:`PradotError`: the base of every error the project raises on purpose.
* :class:`InputError` (also a :class:`ValueError`, so callers that catch ``ValueError`` keep working): the
  user's input, data, configuration or model file is wrong; the message says what was wrong and how to fix
  it. The entry points report it with exit code 2 and no traceback (``pipelines.cli``).
* :class:`NotFittedError` (also a :class:`RuntimeError`): a model was used before ``fit``.

Any other exception, ``ValueError`` included (a bug, or a library's error deep in NumPy, scikit-learn or
torch), is a failure: exit code 1 with its traceback, in the terminal and in the run's log.

Where an error class already existed with a public name (``DeviceError``, ``ConfigError``, ``UsageError``,
...), it stays and becomes a subclass of :class:`InputError` when it means bad input.
"""

from __future__ import annotations

__all__ = ["PradotError", "InputError", "InputTypeError", "NotFittedError", "is_input_error"]


class PradotError(Exception):
    """Base of every error the project raises on purpose."""


class InputError(PradotError, ValueError):
    """Bad user input (arguments, configuration, data, request, model file): the message says what was
    wrong and how to fix it. Reported as exit code 2, without a traceback."""


class NotFittedError(PradotError, RuntimeError):
    """A model was asked to score (or to be saved) before it was fitted."""


def is_input_error(exc: BaseException, also: tuple[type[BaseException], ...] = ()) -> bool:
    """Whether ``exc`` means bad input: an :class:`InputError`, a ``FileNotFoundError`` (a path the user
    gave) or one of the ``also`` classes (errors of modules that predate this taxonomy)."""
    return isinstance(exc, (InputError, FileNotFoundError, *also))


class InputTypeError(InputError, TypeError):
    """Bad input of the wrong type (e.g. images that are not a tensor or an array); also a ``TypeError``."""
