"""The paper's ablation study (``vpdm-paper.md`` Sec. 4.2.1, Table 3, MVTec AD, image / pixel AUROC): each row is
VPDM with some of its parts switched off, selected by :meth:`pradot.vpdm.VPDMConfig.ablated`.

=============  ======  =========  ===  =======  =============  ===========
row            vague   prototype  OT   OT loss  endpoint       paper
=============  ======  =========  ===  =======  =============  ===========
vague_only     yes     -          -    -        N(y_hat, I)    68.4 / 68.8
no_ot          yes     yes        -    -        N(y_hat, I)    93.5 / 94.1
no_ot_loss     yes     yes        yes  -        N(y_hat, I)    97.1 / 96.9
ddpm           yes     yes        yes  yes      N(0, I)        76.7 / 80.1
no_low_pass    -       yes        yes  yes      N(y_hat, I)    96.5 / 96.8
full           yes     yes        yes  yes      N(y_hat, I)    98.4 / 97.8
=============  ======  =========  ===  =======  =============  ===========

The settings behind each row (:data:`ABLATIONS`): ``vague_only`` conditions on the low-passed features themselves
(``condition="low_pass"``, no prototypes, no transport); ``no_ot`` puts each downsampled location on its nearest
prototype (``condition="nearest"``) and drops the OT loss (``ot_weight=0``): the prototypes learn from the
denoising loss alone, as the paper's row 2 has neither OT nor its loss; ``no_ot_loss`` keeps the entropic plan
but not its loss; ``ddpm`` runs the process towards ``N(0, I)`` (``endpoint="standard"``; ``y_hat`` still enters
the network, as a DDPM conditioned on it); ``no_low_pass`` transports the full-grid features (``low_pass=False``,
no ``T_down`` / ``T_up``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .config import ABLATIONS, VPDMConfig

__all__ = ["ABLATIONS", "PAPER_TABLE3", "ABLATION_COLUMNS", "components", "ablation_rows", "format_ablation_table"]

#: Table 3's results (MVTec AD multi-class, mean image / pixel AUROC in percent), for comparison
PAPER_TABLE3: dict[str, tuple[float, float]] = {
    "vague_only": (68.4, 68.8),
    "no_ot": (93.5, 94.1),
    "no_ot_loss": (97.1, 96.9),
    "ddpm": (76.7, 80.1),
    "no_low_pass": (96.5, 96.8),
    "full": (98.4, 97.8),
}

#: the component columns of Table 3, in its order
ABLATION_COLUMNS: tuple[str, ...] = ("vague", "prototype", "ot", "ot_loss", "endpoint")


def components(config: VPDMConfig) -> dict[str, object]:
    """Table 3's columns for ``config``: which parts are on (``vague``, ``prototype``, ``ot``, ``ot_loss``:
    bools) and the process ``endpoint`` (``"N(y_hat, I)"`` or ``"N(0, I)"``), read from the settings."""
    prototypes = config.condition != "low_pass"
    return {
        "vague": bool(config.low_pass),
        "prototype": prototypes,
        "ot": config.condition == "ot",
        "ot_loss": prototypes and float(config.ot_weight) > 0,
        "endpoint": "N(y_hat, I)" if config.endpoint == "vague" else "N(0, I)",
    }


def ablation_rows(
    results: Sequence[tuple[str, VPDMConfig, Mapping[str, float]]],
    metrics: Sequence[str] = ("image_auroc", "pixel_auroc"),
) -> list[dict]:
    """The ablation table as rows: for each ``(row name, config, mean metrics)`` the components
    (:func:`components`), the measured ``metrics`` (None where missing) and the paper's Table 3 values
    (``paper_image_auroc``, ``paper_pixel_auroc``, in [0, 1]; None for a row the paper does not have)."""
    rows = []
    for name, config, means in results:
        paper = PAPER_TABLE3.get(name)
        row: dict = {"row": name, **components(config), **{k: means.get(k) for k in metrics}}
        row["paper_image_auroc"] = paper[0] / 100 if paper else None
        row["paper_pixel_auroc"] = paper[1] / 100 if paper else None
        rows.append(row)
    return rows


def format_ablation_table(rows: Sequence[dict], metrics: Sequence[str] = ("image_auroc", "pixel_auroc")) -> str:
    """``rows`` (:func:`ablation_rows`) as a Markdown table in Table 3's layout: a check mark per component,
    the endpoint, then ours and the paper's values in percent with one decimal ("-" where there is none)."""

    def cell(v) -> str:
        if isinstance(v, bool):
            return "✓" if v else "-"
        if v is None:
            return "-"
        return f"{100 * float(v):.1f}" if isinstance(v, float) else str(v)

    values = [*metrics, "paper_image_auroc", "paper_pixel_auroc"]
    head = ["row", *ABLATION_COLUMNS, *values]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        lines.append("| " + " | ".join(cell(row.get(k)) for k in head) + " |")
    return "\n".join(lines)
