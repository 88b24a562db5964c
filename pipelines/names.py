"""Names are data: file, category and model names as they reach text outputs (CSV cells, logs, tags).

A Linux file name is bytes; Python reads one that is not valid UTF-8 with surrogate escapes
(``b"caf\\xe9.png"`` -> ``"caf\\udce9.png"``), which a strict UTF-8 writer refuses. :func:`printable` turns such
a name into text every writer accepts, with the odd bytes written as ``\\xNN`` escapes; :func:`csv_cell` also
keeps a spreadsheet from reading a cell as a formula (OWASP "CSV injection": a cell starting with ``=``,
``+``, ``-``, ``@``, a tab or a carriage return gets a leading ``'``).
"""

from __future__ import annotations

import os

__all__ = ["utf8_text", "printable", "csv_cell", "FORMULA_STARTS"]

#: the first characters that make a spreadsheet (Excel, LibreOffice, Google Sheets) evaluate a cell
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def utf8_text(text: str) -> str:
    """``text`` as valid UTF-8: surrogate escapes of non-UTF-8 bytes (and lone surrogates) become ``\\xNN``
    escapes; everything else, newlines included, is unchanged (for log records)."""
    try:
        raw = text.encode("utf-8", errors="surrogateescape")
    except UnicodeEncodeError:
        raw = text.encode("utf-8", errors="surrogatepass")
    return raw.decode("utf-8", errors="backslashreplace")


def printable(name: str | os.PathLike) -> str:
    """``name`` as valid UTF-8 text: bytes that are not UTF-8 (surrogate escapes of :func:`os.fsdecode`) and
    lone surrogates become ``\\xNN`` escapes; control characters other than tab become ``\\xNN`` too (a
    newline in a file name must not start a new log line or CSV row). Valid names are returned unchanged."""
    try:
        raw = os.fsencode(name)
    except UnicodeEncodeError:  # a surrogate that is not an escaped byte
        raw = os.fspath(name).encode("utf-8", errors="surrogatepass")  # type: ignore[union-attr]
    text = raw.decode("utf-8", errors="backslashreplace")
    if any(ord(c) < 32 and c != "\t" or ord(c) == 127 for c in text):
        text = "".join(f"\\x{ord(c):02x}" if (ord(c) < 32 and c != "\t") or ord(c) == 127 else c for c in text)
    return text


def csv_cell(text: str | os.PathLike) -> str:
    """A text cell for a CSV file: :func:`printable`, with a leading ``'`` when it would start a spreadsheet
    formula (:data:`FORMULA_STARTS`). Apply to names and messages, not to numbers."""
    out = printable(text)
    return "'" + out if out.startswith(FORMULA_STARTS) else out
