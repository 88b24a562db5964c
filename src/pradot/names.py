"""Names are data: file, category, model and run names as they reach each kind of output.

A name comes from a user or a file system and may hold anything a file name can: bytes that are not UTF-8
(Python reads them with surrogate escapes, ``b"caf\\xe9.png"`` -> ``"caf\\udce9.png"``, which a strict
UTF-8 writer refuses), control characters (a newline starts a new log line or CSV row, ``ESC [`` starts a
terminal escape sequence), markup (``$`` starts matplotlib mathtext, ``|`` ends a Markdown table cell,
``<`` starts an HTML tag), path syntax (``/``, ``..``) and formulas (a spreadsheet evaluates a cell that
starts with ``=``). Each output gets names through one function of this module:

=====================  =======================  ======================================================
output                 function                 what it guarantees
=====================  =======================  ======================================================
any text, log record   :func:`utf8_text`        valid UTF-8 (odd bytes as ``\\xNN``), all else kept
one line of text       :func:`printable`        valid UTF-8, no control character (``\\xNN`` instead)
CSV cell               :func:`csv_cell`         :func:`printable`, never read as a formula
Markdown / HTML cell   :func:`markdown_cell`    renders as the literal name (CommonMark + GFM tables)
matplotlib text        :func:`figure_text`      drawn literally (no mathtext), line breaks kept
one file name          :func:`file_name`        one path component, URI-safe, not hidden, <= 255 bytes
=====================  =======================  ======================================================

Valid, plain names come out unchanged by :func:`utf8_text`, :func:`printable` and :func:`figure_text`.
"""

from __future__ import annotations

import hashlib
import os
import re

__all__ = ["FORMULA_STARTS", "utf8_text", "printable", "csv_cell", "markdown_cell", "figure_text", "file_name"]

#: the first characters that make a spreadsheet (Excel, LibreOffice, Google Sheets) evaluate a cell
#: (OWASP "CSV injection")
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

#: the longest file name (bytes) of the common file systems (ext4, XFS, APFS, NTFS in UTF-16 units)
NAME_MAX = 255

_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def utf8_text(text: str) -> str:
    """``text`` as valid UTF-8: surrogate escapes of non-UTF-8 bytes (and lone surrogates) become ``\\xNN``
    escapes; everything else, newlines included, is unchanged (for whole log records)."""
    try:
        raw = text.encode("utf-8", errors="surrogateescape")
    except UnicodeEncodeError:
        raw = text.encode("utf-8", errors="surrogatepass")
    return raw.decode("utf-8", errors="backslashreplace")


def printable(name: str | os.PathLike) -> str:
    """``name`` as one line of valid UTF-8 text: bytes that are not UTF-8 (surrogate escapes of
    :func:`os.fsdecode`) and lone surrogates become ``\\xNN`` escapes; control characters other than tab
    (newline, carriage return, ``ESC``, NUL, DEL) become ``\\xNN`` too, so a name cannot start a new log
    line or CSV row nor drive a terminal. Valid names are returned unchanged."""
    try:
        raw = os.fsencode(name)
    except UnicodeEncodeError:  # a surrogate that is not an escaped byte
        raw = os.fspath(name).encode("utf-8", errors="surrogatepass")
    text = raw.decode("utf-8", errors="backslashreplace")
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def csv_cell(text: str | os.PathLike) -> str:
    """A text cell for a CSV file: :func:`printable`, with a leading ``'`` when it would start a spreadsheet
    formula (:data:`FORMULA_STARTS`). Apply to names and messages, not to numbers."""
    out = printable(text)
    return "'" + out if out.startswith(FORMULA_STARTS) else out


#: characters that start inline markup in a GFM table cell: code span, emphasis, strike-through, link or image
#: brackets, the cell end ``|``, math (``$``, GitHub) and the escape itself; an ``_`` between two letters or
#: digits cannot open or close emphasis (CommonMark 6.2: ``snake_case`` stays as it is)
_MD_MARKUP = re.compile(r"([\\`*~\[\]|$])|(?<![^\W_])_|_(?![^\W_])")
_HTML = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def markdown_cell(text: str | os.PathLike) -> str:
    """``text`` as one cell of a Markdown table (GitHub-flavoured) that renders as the literal text, also
    when the table is shown as HTML: :func:`printable` (one line), each character that could start inline
    markup or end the cell backslash-escaped (CommonMark 2.4: any ASCII punctuation may be), and ``&``,
    ``<``, ``>`` written as HTML character references (no tag, no entity). Plain names such as
    ``screw_bag`` or ``memory_bank (unified)`` are unchanged."""
    out = _MD_MARKUP.sub(lambda m: "\\" + m.group(), printable(text))
    return "".join(_HTML.get(c, c) for c in out)


def figure_text(text: object) -> str:
    """``text`` (``str()`` of it) for a matplotlib title, label or legend entry, drawn literally: each
    line :func:`printable`, ``$`` escaped as ``\\$`` (matplotlib reads text with an even number of unescaped
    ``$`` as mathtext, where ``_``, ``^`` and ``\\`` are markup; with every ``$`` escaped the text is plain
    and ``\\$`` is drawn as ``$``). Line breaks of ``text`` are kept (escape a name with :func:`printable`
    before joining it into a multi-line title). Assumes ``text.usetex`` is off (matplotlib's default)."""
    text = os.fsdecode(text) if isinstance(text, os.PathLike) else str(text)
    return "\n".join(printable(line).replace("$", r"\$") for line in text.split("\n"))


#: characters that a file name may not hold on Linux, macOS or Windows, and those a URI would read as syntax
#: (``%`` escapes, ``#`` fragment, ``;`` parameters: MLflow's ``runs:/`` URIs go through ``urllib.parse``)
_NOT_IN_NAMES = re.compile(r'[%/\\:*?"<>|#;]')


def file_name(name: str | os.PathLike, suffix: str = "") -> str:
    """``name`` (+ ``suffix``, e.g. ``".png"``) as one file name that stays in its folder and in a URI path:
    :func:`printable` (no control character, NUL included), each of ``%/\\:*?"<>|#;`` replaced by ``_``,
    a leading ``.`` too (never ``.``, ``..`` or a hidden file), cut to fit 255 bytes (NAME_MAX) at a character
    boundary. A name that had to change ends with ``-`` and the first 12 hex digits of its SHA-256, so that
    distinct names give distinct files; a plain name is kept as it is. ``suffix`` is the caller's constant.

    Raises:
        ValueError: ``name`` is empty.
    """
    text = printable(name)
    if not text:
        raise ValueError("an empty name cannot be a file name")
    out = _NOT_IN_NAMES.sub("_", text)
    out = "_" + out[1:] if out.startswith(".") else out
    room = NAME_MAX - len(suffix.encode("utf-8"))
    if out == os.fspath(name) and len(out.encode("utf-8")) <= room:
        return out + suffix
    raw = os.fspath(name)
    raw = raw if isinstance(raw, bytes) else raw.encode("utf-8", errors="surrogatepass")
    tag = "-" + hashlib.sha256(raw).hexdigest()[:12]
    out = out.encode("utf-8")[: room - len(tag)].decode("utf-8", errors="ignore")
    return out + tag + suffix
