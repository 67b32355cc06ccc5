"""Tables per (model, dataset): accuracy by method x sparsity, and a long form with the achieved
nonzero parameters and MACs. Each is written as Markdown, CSV and LaTeX.

The formatting is hand-written (no tabulate / jinja2) so the report needs nothing beyond pandas.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Sequence
from numbers import Number
from pathlib import Path

import numpy as np
import pandas as pd

from bench.report.aggregate import pct
from bench.report.eligibility import describe_missed
from bench.report.published import Published, fmt_number

MISSING_MD = "—"
MISSING_TEX = "--"


def _num(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}f}"


def accuracy_cell(row: pd.Series, reasons: bool = True) -> str:
    """'71.20', '71.20 ± 0.35 (n=3)', '71.20 (n=1, 1 failed)' or 'failed (n=2)', followed by
    why a cell is not ranked (``bench.report.eligibility``): ', missed target (achieved
    0.6205)' (plus '; calibration did not converge' where STR's did not) or ', at chance'.
    `reasons` False leaves those out (the HTML page shows them as badges instead)."""
    n, failed = int(row["n"]), int(row["n_failed"])
    if n == 0:
        return f"failed (n={failed})"
    text = _num(row["top1_mean"])
    if n > 1:
        text += f" ± {_num(row['top1_std'])}"
    if failed:
        text += f" (n={n}, {failed} failed)"
    elif n > 1:
        text += f" (n={n})"
    return text + ("".join(f", {flag}" for flag in unranked_reasons(row)) if reasons else "")


def error_line(error: object, limit: int = 160) -> str:
    """A failed run's reason in one line for a table (Markdown and HTML): the first line of
    `error`, cut to `limit` characters with an ellipsis; '(no reason)' when it has none."""
    if error is None or (isinstance(error, float) and math.isnan(error)) or not str(error).strip():
        return "(no reason)"
    text = str(error).strip().splitlines()[0]
    return text if len(text) <= limit else text[: limit - 1] + "…"


def unranked_reasons(row: pd.Series) -> list[str]:
    """Why a cell with finished seeds is not ranked (empty when it is)."""
    return [text for _, text in unranked_flags(row)]


def unranked_flags(row: pd.Series) -> list[tuple[str, str]]:
    """(flag column, reason text) for each reason a cell is not ranked: ``missed_target``
    ('missed target (achieved 0.6205)', '; calibration did not converge' added where STR's
    did not) and ``at_chance`` ('at chance (10.00% guessing)')."""
    reasons = []
    if _flag(row.get("missed_target", False)):
        text = describe_missed(row.get("achieved_sparsity", math.nan))
        if int(row.get("calibration_unconverged", 0) or 0):
            text += "; calibration did not converge"
        reasons.append(("missed_target", text))
    if _flag(row.get("at_chance", False)):
        reasons.append(("at_chance",
                        f"at chance ({_num(row.get('chance_top1', math.nan))}% guessing)"))
    return reasons


def _flag(value: object) -> bool:
    return not _missing(value) and bool(value)


def accuracy_table(agg: pd.DataFrame, published: Sequence[Published] = ()) -> pd.DataFrame:
    """Rows = method label (dense first), columns = target sparsity; None where no run exists.
    Published numbers follow our rows, one row per method and source labelled
    '<method> (published: <citation>)', in the column of the sparsity the source reports
    (a column of its own when none of our targets equals it)."""
    targets, ours = accuracy_grid(agg, published)
    labels = [label for label, _ in ours] + list(dict.fromkeys(p.label for p in published))
    table = pd.DataFrame(None, index=labels, columns=[pct(t) for t in targets], dtype=object)
    for label, by_target in ours:
        for target, row in by_target.items():
            table.loc[label, pct(target)] = accuracy_cell(row)
    for p in published:
        table.loc[p.label, pct(p.sparsity)] = fmt_number(p.top1)
    table.index.name = "method"
    return table


def accuracy_grid(agg: pd.DataFrame, published: Sequence[Published] = ()
                  ) -> tuple[list[float], list[tuple[str, dict[float, pd.Series]]]]:
    """The accuracy table's layout, the one source of its Markdown/CSV/LaTeX form
    (``accuracy_table``) and its HTML form (``bench.report.html.accuracy_html``): the target
    sparsity columns (ours and the published ones, increasing) and our rows, each method label
    in `agg`'s order with its aggregated cell (a row of `agg`) per target it has."""
    targets = sorted(set(agg["target_sparsity"]) | {p.sparsity for p in published})
    ours: dict[str, dict[float, pd.Series]] = {}
    for _, row in agg.iterrows():
        ours.setdefault(row["method_label"], {}).setdefault(row["target_sparsity"], row)
    return targets, list(ours.items())


# Long form: (source column, display header, formatter for Markdown/LaTeX).
def _int(value: float) -> str:
    return f"{round(value):,}"


def _ratio(value: float) -> str:
    return f"{value:.4f}"


SUMMARY_COLUMNS = [
    ("method_label", "method", str),
    ("target_sparsity", "target sparsity", pct),
    ("achieved_sparsity", "achieved sparsity", _ratio),
    ("params_nonzero", "nonzero params", _int),
    ("params_total", "total params", _int),
    ("macs", "MACs", _int),
    ("macs_dense", "dense MACs", _int),
    ("top1_mean", "top-1 (%)", _num),
    ("top1_std", "top-1 std", _num),
    ("top5_mean", "top-5 (%)", _num),
    ("test_loss_mean", "test loss", lambda v: f"{v:.4f}"),
    ("n", "n", str),
    ("n_failed", "failed", str),
    ("seeds", "seeds", str),
]


def summary_table(agg: pd.DataFrame) -> pd.DataFrame:
    """Numeric long-form table (the CSV); columns without any value (e.g. top-5) are left out."""
    cols = [src for src, _, _ in SUMMARY_COLUMNS]
    table = agg[cols].reset_index(drop=True)
    keep = [c for c in cols if c in ("method_label", "n", "n_failed") or table[c].notna().any()]
    return table[keep]


def summary_display(table: pd.DataFrame, missing: str) -> pd.DataFrame:
    fmt = {src: (header, f) for src, header, f in SUMMARY_COLUMNS}
    out = pd.DataFrame(index=table.index)
    for col in table.columns:
        header, f = fmt[col]
        out[header] = [_fmt(v, f, missing) for v in table[col]]
    return out


def _fmt(value: object, f, missing: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return f(value)


# --- writers -----------------------------------------------------------------------------------
def markdown(header: list[str], rows: list[list[object]], right: Collection[int]) -> str:
    """The project's one Markdown table writer (report tables and ``sparsebench check``):
    columns padded to a common width so the text reads as a table in a terminal too, columns
    in `right` right-aligned, ``|`` escaped, None/NaN shown as ``MISSING_MD``."""
    head = [_md_escape(str(h)) for h in header]
    body = [[_md_cell(v) for v in row] for row in rows]
    widths = [max(3, *(len(r[i]) for r in [head, *body])) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if i in right else c.ljust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths, strict=True))) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if i in right else (":" + "-" * (w + 1))
                          for i, w in enumerate(widths)) + "|"
    return "\n".join([line(head), rule, *map(line, body)]) + "\n"


def to_markdown(frame: pd.DataFrame, index: bool) -> str:
    """A DataFrame as a ``markdown`` table: number columns right-aligned, text left
    (``numeric_column``)."""
    frame = frame.reset_index() if index else frame
    rows = [list(r) for r in frame.itertuples(index=False)]
    right = [i for i in range(len(frame.columns)) if numeric_column([r[i] for r in rows])]
    return markdown([str(c) for c in frame.columns], rows, right)


_NUMBER = re.compile(r"[+\-−]?\.?\d")


def numeric_column(values: Sequence[object]) -> bool:
    """Whether a column holds numbers (right-aligned): some cell is a number or text that
    starts with one ("94.30 ± 0.35 (n=3)", "+1.20", "5,210", "1.00×", "90%"). Such a column
    may also hold words where a number is missing ("failed (n=2)", "—", "published"); a text
    column (method labels, errors, file names) has no cell starting with a digit."""
    return any((isinstance(v, Number) and not isinstance(v, (bool, np.bool_)))
               or (isinstance(v, str) and _NUMBER.match(v) is not None)
               for v in values if not _missing(v))


def _md_cell(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING_MD
    return _md_escape(str(value))


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


_TEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "±": r"$\pm$", "—": MISSING_TEX,
}


def tex_escape(text: str) -> str:
    return "".join(_TEX_SPECIAL.get(ch, ch) for ch in text)


def to_latex(frame: pd.DataFrame, index: bool, caption: str) -> str:
    """A booktabs table; needs \\usepackage{booktabs} in the including document."""
    frame = frame.reset_index() if index else frame
    spec = "l" + "r" * (len(frame.columns) - 1)
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{tex_escape(caption)}}}",
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(tex_escape(str(c)) for c in frame.columns) + r" \\",
        r"\midrule",
    ]
    for row in frame.itertuples(index=False):
        cells = [MISSING_TEX if _missing(v) else tex_escape(str(v)) for v in row]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def write_accuracy(agg: pd.DataFrame, folder: Path, title: str,
                   published: Sequence[Published] = ()) -> list[Path]:
    table = accuracy_table(agg, published)
    caption = f"Top-1 test accuracy (%) of {title}: mean ± std over seeds, by target sparsity."
    if published:
        caption += (" Rows marked (published: ...) are numbers copied from the cited source at "
                    "the sparsity it reports, not our runs; sources and recipe differences "
                    "are listed in leaderboard.md.")
    paths = [folder / "accuracy.md", folder / "accuracy.csv", folder / "accuracy.tex"]
    paths[0].write_text(f"{caption}\n\n{to_markdown(table, index=True)}")
    table.to_csv(paths[1])
    paths[2].write_text(to_latex(table, index=True, caption=caption))
    return paths


def write_summary(agg: pd.DataFrame, folder: Path, title: str) -> list[Path]:
    table = summary_table(agg)
    caption = (
        f"{title}: achieved sparsity, nonzero parameters and inference MACs per example "
        "(means over successful seeds), with top-1 accuracy."
    )
    paths = [folder / "summary.md", folder / "summary.csv", folder / "summary.tex"]
    paths[0].write_text(
        f"{caption}\n\n{to_markdown(summary_display(table, MISSING_MD), index=False)}"
    )
    table.to_csv(paths[1], index=False)
    paths[2].write_text(
        to_latex(summary_display(table, MISSING_TEX), index=False, caption=caption)
    )
    return paths
