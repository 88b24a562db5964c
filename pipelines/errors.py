"""Which errors mean "bad input" at the entry points: exit code 2 with the message and no traceback
(:func:`pipelines.cli.run_entry`), logged without a traceback in the run log (:func:`pipelines.tracking.entry_run`).

:class:`pradot.errors.InputError` covers the whole taxonomy (``UsageError``, ``ConfigError``, ``DeviceError``,
``DatasetError``, ``BackboneError``, ``TextFileError``, the server's ``InvalidRequest``, ...);
``FileNotFoundError`` is a path the user gave. Every other error is a failure that keeps its traceback.
"""

from __future__ import annotations

from pradot.errors import InputError, is_input_error

__all__ = ["USER_ERRORS", "is_user_error"]

#: errors that mean "the input was wrong"
USER_ERRORS: tuple[type[BaseException], ...] = (InputError, FileNotFoundError)


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` means bad input (see :data:`USER_ERRORS`)."""
    return is_input_error(exc, USER_ERRORS)
