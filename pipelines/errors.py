"""Which errors mean "bad input" at the entry points: exit code 2 with the message and no traceback
(:func:`pipelines.cli.run_entry`), logged without a traceback in the run log (:func:`pipelines.tracking.entry_run`).

:class:`pradot.errors.InputError` covers the whole taxonomy (``UsageError``, ``ConfigError``, ``DeviceError``,
``DatasetError``, ``BackboneError``, ``TextFileError``, the server's ``InvalidRequest``, ...);
``FileNotFoundError`` is a path the user gave. Until the data package raises ``InputError`` for its
bad inputs (unknown split, category, augmentation, camera view, pseudo-anomaly kind, ...), a ``ValueError``
raised by a module of :data:`LEGACY_INPUT_MODULES` counts as bad input too, as every ``ValueError`` did
before. Every other error is a failure that keeps its traceback.
"""

from __future__ import annotations

from pradot.errors import InputError, is_input_error

__all__ = ["LEGACY_INPUT_MODULES", "USER_ERRORS", "is_user_error"]

#: errors that mean "the input was wrong"
USER_ERRORS: tuple[type[BaseException], ...] = (InputError, FileNotFoundError)


#: modules whose plain ``ValueError`` still means bad input (they predate :class:`pradot.errors.InputError`)
LEGACY_INPUT_MODULES = ("pradot.data",)


def _raised_in(exc: BaseException) -> str:
    """The module of the frame that raised ``exc`` (the innermost frame of its traceback)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return str(tb.tb_frame.f_globals.get("__name__", "")) if tb is not None else ""


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` means bad input (see :data:`USER_ERRORS` and :data:`LEGACY_INPUT_MODULES`)."""
    if is_input_error(exc, USER_ERRORS):
        return True
    module = _raised_in(exc)
    return type(exc) is ValueError and any(module == m or module.startswith(m + ".") for m in LEGACY_INPUT_MODULES)
