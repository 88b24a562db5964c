"""Text files written by other tools: one reader for every list, split file and config the project reads.

Spreadsheet programs and other operating systems save text in several encodings and line-ending styles;
``read_text`` turns all of them into the same ``str``:

* encoding, decided in this order (first match wins):

  1. a byte-order mark: UTF-8 (``EF BB BF``), UTF-32 LE/BE, UTF-16 LE/BE (Excel's "Unicode Text",
     Windows Notepad's "Unicode") — the mark is removed;
  2. UTF-16 without a mark, recognised by its NUL bytes (every other byte NUL in a mostly-ASCII text);
  3. UTF-8 (strict);
  4. Windows-1252 (cp1252, what Excel writes as "CSV" on western Windows; a superset of the printable
     ISO-8859-1 range); the five bytes cp1252 leaves undefined fall back to Latin-1.

  The rule is deterministic (no statistical guessing): any valid UTF-8 is read as UTF-8, and text that is
  not is read as cp1252, which never fails.
* line endings: ``\\r\\n`` (Windows) and lone ``\\r`` (classic Mac OS) become ``\\n``.

``read_csv_rows`` adds what spreadsheets do to tables: stray whitespace around headers and values, blank
lines, and ``;`` or tab as the delimiter (Excel in locales with a decimal comma; "Unicode Text" exports).
``read_json`` parses a JSON document read this way.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import InputError

__all__ = ["TextFileError", "decode_text", "read_text", "read_json", "read_csv_rows"]

_BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),  # before UTF-16 LE: its mark starts with FF FE as well
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
#: delimiters a spreadsheet may use for a "CSV" file, in order of preference
CSV_DELIMITERS = (",", ";", "\t")
_LATIN1_FALLBACK = "pradot-latin1"


def _latin1(error: UnicodeError) -> tuple[str, int]:
    """Error handler: the bytes cp1252 leaves undefined (0x81, 0x8D, 0x8F, 0x90, 0x9D) read as Latin-1."""
    if not isinstance(error, UnicodeDecodeError):  # registered for decoding only
        raise error
    return error.object[error.start : error.end].decode("latin-1"), error.end


codecs.register_error(_LATIN1_FALLBACK, _latin1)


class TextFileError(InputError):
    """A text file that cannot be read or parsed; the message names the file and what was wrong."""


def _utf16_without_bom(data: bytes) -> str | None:
    """``"utf-16-le"`` / ``"utf-16-be"`` when NUL bytes sit at every odd / even position (mostly-ASCII UTF-16)."""
    if len(data) < 2 or len(data) % 2:
        return None
    even, odd = data[0::2], data[1::2]
    n = len(odd)
    if odd.count(0) >= 0.9 * n and even.count(0) <= 0.1 * n:
        return "utf-16-le"
    if even.count(0) >= 0.9 * n and odd.count(0) <= 0.1 * n:
        return "utf-16-be"
    return None


def decode_text(data: bytes) -> tuple[str, str]:
    """Bytes of a text file -> ``(text with "\\n" line endings, encoding used)`` (rules in the module docstring)."""
    text: str | None = None
    encoding = ""
    for bom, name in _BOMS:
        if data.startswith(bom):
            encoding = name
            text = data[len(bom) :].decode(name, errors="strict")
            break
    if text is None and (guess := _utf16_without_bom(data)):
        try:
            text, encoding = data.decode(guess), guess
        except UnicodeDecodeError:
            text = None
    if text is None:
        try:
            text, encoding = data.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            text, encoding = data.decode("cp1252", errors=_LATIN1_FALLBACK), "cp1252"
    return text.replace("\r\n", "\n").replace("\r", "\n"), encoding


def read_text(path: str | Path) -> str:
    """The text of ``path`` in any of the encodings and line-ending styles above, with ``\\n`` line endings.

    Raises:
        FileNotFoundError: ``path`` does not exist (the message names it).
        TextFileError: a byte-order mark announces an encoding the bytes do not follow.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"file not found: {path.absolute()}") from None
    except IsADirectoryError:
        raise TextFileError(f"{path.absolute()} is a folder, expected a text file") from None
    try:
        return decode_text(data)[0]
    except UnicodeDecodeError as exc:
        raise TextFileError(f"{path.absolute()}: cannot decode the text ({exc}); save it as UTF-8") from None


def read_json(path: str | Path) -> Any:
    """The JSON document in ``path`` (any encoding / line endings ``read_text`` reads).

    Raises:
        FileNotFoundError: no such file. TextFileError: not valid JSON (the message names the file, line, column).
    """
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise TextFileError(f"{Path(path).absolute()} is not valid JSON: {exc}") from None


def _delimiter(header: str) -> str:
    counts = {d: header.count(d) for d in CSV_DELIMITERS}
    best = max(CSV_DELIMITERS, key=lambda d: (counts[d], -CSV_DELIMITERS.index(d)))
    return best if counts[best] else ","


def read_csv_rows(path: str | Path, required: Sequence[str] = ()) -> list[dict[str, str]]:
    """Rows of a CSV file with a header line, as ``{column: value}`` with whitespace stripped from both.

    The delimiter is the one of ``, ; <tab>`` that occurs most often in the header line (``,`` on ties);
    blank lines are skipped; a quoted field may hold the delimiter or a line break.

    Raises:
        FileNotFoundError: no such file.
        TextFileError: the file is empty or lacks a column of ``required`` (the message lists the columns found).
    """
    text = read_text(path)
    lines = text.split("\n")
    header = next((line for line in lines if line.strip()), None)
    if header is None:
        raise TextFileError(f"{Path(path).absolute()} is empty; expected a header line with columns {list(required)}")
    reader = csv.reader(io.StringIO(text), delimiter=_delimiter(header))
    rows = [r for r in reader if any(cell.strip() for cell in r)]
    columns = [c.strip() for c in rows[0]]
    missing = [c for c in required if c not in columns]
    if missing:
        raise TextFileError(f"{Path(path).absolute()} lacks columns {missing}; found {columns}")
    return [{c: (r[i].strip() if i < len(r) else "") for i, c in enumerate(columns) if c} for r in rows[1:]]
