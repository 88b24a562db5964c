"""Names are data where the library writes them: figure text (matplotlib mathtext), Markdown tables and file
names. Each test feeds hostile names and checks what a reader gets back, with the reader's own parser."""

import os
from html.parser import HTMLParser

import numpy as np
import pytest

from pradot.names import figure_text, file_name, markdown_cell, printable

#: markup of every kind: mathtext ($, _, \), Markdown and HTML (| * ` [ ] < > &), a path (/ ..), a line break
HOSTILE = "a$b_c\n<x>/../.."
NAMES = [
    HOSTILE,
    r"$\alpha$_x\y^2",
    "=1+2|*em*|`code`|[l](u)|~~s~~|<b>&amp;",
    "esc\x1b[31mred",
    os.fsdecode(b"caf\xe9"),
    "screw_bag",
]


def _drawn(text_artist) -> tuple[str, bool]:
    """(the string matplotlib draws, whether it is parsed as mathtext): Text's own preprocessing."""
    return text_artist._preprocess_math(text_artist.get_text())


def test_names_in_figures_are_drawn_as_their_text():
    from pradot import viz

    n = len(NAMES)
    fig = viz.overlay_figure(np.zeros((n, 8, 8, 3)), np.zeros((n, 4, 4)), titles=NAMES)
    titles = [ax.title for ax in fig.axes if ax.get_title()]
    # line breaks of a title are the caller's; within a line, bytes and control characters are escaped
    assert [_drawn(t) for t in titles] == [("\n".join(printable(x) for x in s.split("\n")), False) for s in NAMES]
    cmp = viz.comparison_figure(np.zeros((1, 8, 8, 3)), [np.zeros((1, 4, 4))] * 2, NAMES[1:3], [[0.5]] * 2)
    assert [_drawn(ax.title)[0].split("\n")[0] for ax in cmp.axes[1:3]] == [printable(x) for x in NAMES[1:3]]
    assert not any(_drawn(ax.title)[1] for ax in cmp.axes)
    bars = viz.metrics_bar_figure([{"model": m, "auroc": 0.5} for m in NAMES[1:3]], ["auroc"], title=HOSTILE)
    assert [_drawn(t) for t in bars.axes[0].get_legend().get_texts()] == [(m, False) for m in NAMES[1:3]]
    assert _drawn(bars.axes[0].title) == (HOSTILE, False)
    bars.canvas.draw()  # Agg lays the text out: no mathtext parse error
    # without the helper the same names would be mathtext: the check above can fail
    assert _drawn(type(titles[0])(text="a$b_c$"))[1] is True and figure_text("a$b_c$") == r"a\$b_c\$"


class _Cells(HTMLParser):
    """The text of every table cell of rendered HTML, and the tags found inside cells (none expected)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.rows: list[list[str]] = []
        self.inner_tags: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif self._cell is not None:
            self.inner_tags.append(tag)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _render_table(markdown: str) -> _Cells:
    from markdown_it import MarkdownIt

    parser = _Cells()
    parser.feed(MarkdownIt("commonmark").enable(["table", "strikethrough"]).render(markdown))
    return parser


def test_names_in_markdown_tables_render_as_their_text():
    from pradot.fewshot.protocol import markdown_table
    from pradot.multiclass import format_table

    expected = [printable(x) for x in NAMES]
    rows = [{"category": x, "method": x, "image_auroc": 0.5} for x in NAMES]
    cells = _render_table(format_table(rows, columns=("image_auroc",)))
    assert cells.rows[1:] == [[x, x, "50.0"] for x in expected] and not cells.inner_tags
    summary = [{"variant": x, "shots": 1, "splits": 1, "image_auroc_mean": 0.5, "image_auroc_std": 0.0} for x in NAMES]
    cells = _render_table(markdown_table(summary))
    assert [r[0] for r in cells.rows[1:]] == expected and not cells.inner_tags
    assert (
        markdown_cell("screw_bag") == "screw_bag" and markdown_cell("memory_bank (unified)") == "memory_bank (unified)"
    )


def test_names_become_one_file_name_in_their_folder(tmp_path):
    names = [*NAMES, "..", ".", ".hidden", "a/b", "a%2Fb", "nul\x00byte", "x" * 300, "ü" * 200, "C:\\dos*?|"]
    out = [file_name(x, ".png") for x in names]
    assert len(set(out)) == len(names)  # distinct names, distinct files
    folder = tmp_path / "figures"
    folder.mkdir()
    for x, f in zip(names, out):
        assert f.endswith(".png") and len(f.encode("utf-8")) <= 255, x
        assert not f.startswith(".") and not set(f) & set('/\\\x00:*?"<>|\n%#;'), x
        (folder / f).write_bytes(b"")
        assert (folder / f).resolve().parent == folder.resolve()
    assert sorted(os.listdir(folder)) == sorted(out)
    assert file_name("training_curves", ".png") == "training_curves.png"  # plain names unchanged
    assert file_name("a/b").startswith("a_b-") and file_name("..").startswith("_.-")
    with pytest.raises(ValueError, match="empty"):
        file_name("")
