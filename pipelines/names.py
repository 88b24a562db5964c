"""Names are data, in the pipelines' outputs: the text forms of :mod:`pradot.names` (CSV, Markdown, figures,
file names; re-exported here) and the two the pipelines add, MLflow tag/param values (:func:`tag_value`)
log records (:class:`LogFormatter`) and words of the commands printed for the user to copy
(:func:`shell_word`). The pipelines run no shell command built from names: the MLproject's parameters are
quoted by MLflow (``shlex.quote``) and reach Hydra through :mod:`pipelines.argv`, which quotes each value
for Hydra and keeps ``${`` as text.
"""

from __future__ import annotations

import logging
import os
import re
import shlex

from pradot.names import FORMULA_STARTS, csv_cell, figure_text, file_name, markdown_cell, printable, utf8_text

__all__ = [
    "FORMULA_STARTS",
    "utf8_text",
    "printable",
    "csv_cell",
    "markdown_cell",
    "figure_text",
    "file_name",
    "TAG_CHARS",
    "tag_value",
    "shell_word",
    "terminal_text",
    "LogFormatter",
]

#: the longest tag value written (MLflow 3 stores 8,000 characters; 5,000 leaves room for older servers)
TAG_CHARS = 5000


def tag_value(text: str | os.PathLike, limit: int = TAG_CHARS) -> str:
    """``text`` as an MLflow tag or param value: :func:`printable` (valid UTF-8, which the SQL stores and
    the REST API require, on one line), cut to ``limit`` characters with `` ...`` at the end when longer."""
    out = printable(text)
    return out if len(out) <= limit else out[: limit - 4] + " ..."


def shell_word(text: str) -> str:
    """``text`` (e.g. a model URI holding a registered name) as one word of a command printed for the user
    to copy into a POSIX shell: :func:`printable`, then :func:`shlex.quote` (plain words stay unquoted)."""
    return shlex.quote(printable(text))


_LOG_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def terminal_text(text: str) -> str:
    """``text`` (several lines) for a terminal or a log file: :func:`utf8_text`, and control characters
    other than newline and tab written as ``\\xNN`` (a name's ``ESC [`` cannot recolour, move the cursor
    or retitle the terminal; a carriage return cannot overwrite the line)."""
    return _LOG_CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", utf8_text(text))


#: what starts every line of a record after its first (a line that starts with it is never a new record)
CONTINUATION = "    "


class LogFormatter(logging.Formatter):
    """Log records as text no name can forge or hijack: valid UTF-8 (:func:`utf8_text`), control characters
    other than newline and tab written as ``\\xNN`` (no terminal escape sequence, no carriage return), and
    every line after the first of a record (a name's newline, a table, a traceback) indented by
    :data:`CONTINUATION`, so that only a record's own first line starts at the margin."""

    def format(self, record: logging.LogRecord) -> str:
        return terminal_text(super().format(record)).replace("\n", "\n" + CONTINUATION)
