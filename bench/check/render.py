"""What ``sparsebench check`` prints: the rule it applied, a Markdown table of the cells that
moved (the report's writer, ``bench.report.tables.markdown``), a summary line, and the CSV of
every cell's comparison."""

from __future__ import annotations

from dataclasses import asdict

import pandas as pd

from bench.check.rules import CellCheck, Comparison
from bench.report.tables import markdown

HEADER = ["model", "dataset", "method", "sparsity", "metric", "baseline", "current", "delta",
          "tol", "verdict", "note"]
_RIGHT = {3, 5, 6, 7, 8}


def rule_line(comp: Comparison) -> str:
    if comp.rule == "exact":
        return (f"rule: exact ({comp.rule_reason}): every cell must have the pinned seeds with "
                "identical top-1 and nonzero counts")
    k = f"{comp.sigmas:g}"
    return (f"rule: sigma fallback ({comp.rule_reason}): regression if top-1 mean < baseline - "
            f"tol, tol = max({comp.floor:g}, {k} * sqrt(s_b^2/n_b + s_c^2/n_c)), s = seed std "
            f"if n >= 2 else {comp.default_std:.3g} ({comp.default_std_source}); counts exact "
            f"where constant over the baseline seeds, else sparsity within the same {k}-sigma "
            "rule")


def _acc(value: float | None, n: int | None) -> str:
    return "-" if value is None else f"{value:.2f} (n={n})"


def _signed(x: float | None, fmt: str) -> str:
    return "" if x is None else format(x, "+" + fmt)


def _span(lo, hi, fmt: str) -> str:
    return format(lo, fmt) if lo == hi else f"{format(lo, fmt)}..{format(hi, fmt)}"


def table_rows(comp: Comparison) -> list[list[str]]:
    """One row per (cell, metric) that moved beyond tolerance or changed status."""
    rows = []
    for c in comp.checks:
        head = [c.model, c.dataset, c.method_label, f"{c.target_sparsity:g}"]
        verdict = c.verdict + (" (allowed)" if c.verdict == "missing" and comp.allow_missing
                               else "")
        if c.verdict in ("missing", "new", "failed", "recipe differs", "n changed"):
            current = (_acc(c.cur_top1, c.cur_n)
                       if c.verdict in ("new", "recipe differs", "n changed")
                       else "failed" if c.verdict == "failed" else "-")
            rows.append(head + ["top1", _acc(c.base_top1, c.base_n), current, "", "", verdict,
                                c.note])
            continue
        if c.verdict == "not identical":
            metric = ", ".join(m for m, moved in (("top1", c.accuracy == "differs"),
                                                   ("params_nonzero", c.counts == "changed"))
                               if moved)
            rows.append(head + [metric, _acc(c.base_top1, c.base_n),
                                _acc(c.cur_top1, c.cur_n), _signed(c.delta, ".2f"), "0",
                                verdict, c.note])
            continue
        if c.accuracy not in ("ok", "identical") or c.note:
            rows.append(head + ["top1", _acc(c.base_top1, c.base_n), _acc(c.cur_top1, c.cur_n),
                                _signed(c.delta, ".2f"), f"{c.tol:.2f}",
                                c.accuracy, c.note])
        if c.counts == "changed":
            if c.counts_rule == "exact" and (c.cur_nonzero_min != c.base_nonzero
                                             or c.cur_nonzero_max != c.base_nonzero):
                lo, hi = c.cur_nonzero_min, c.cur_nonzero_max
                worst = lo if abs(lo - c.base_nonzero) >= abs(hi - c.base_nonzero) else hi
                rows.append(head + ["params_nonzero", f"{c.base_nonzero:.0f}",
                                    _span(lo, hi, ".0f"), _signed(worst - c.base_nonzero, ".0f"),
                                    "0", "counts changed", "exact rule"])
            else:
                rows.append(head + ["achieved_sparsity", f"{c.base_sparsity:.6g}",
                                    _span(c.cur_sparsity_min, c.cur_sparsity_max, ".6g"),
                                    _signed(c.sparsity_delta, ".3g"), f"{c.sparsity_tol:.3g}",
                                    "counts changed", f"{c.counts_rule} rule"])
    return rows


def format_table(rows: list[list[str]]) -> str:
    """The findings as an aligned Markdown table (numbers right-aligned)."""
    return markdown(HEADER, rows, _RIGHT).rstrip("\n")


def summary_line(comp: Comparison) -> str:
    n = comp.counts
    missing = f"{n['missing']} missing" + (" (allowed)" if comp.allow_missing and n["missing"]
                                          else "")
    rare = "".join(f"{n[v]} {v}, " for v in ("recipe differs", "n changed", "not identical")
                   if n[v])
    within = "identical" if comp.rule == "exact" else "within tolerance"
    return (f"{rare}{n['regressed']} regressed, {n['counts changed']} counts changed, "
            f"{n['failed']} failed, {n['improved']} improved, {n['ok']} {within}, "
            f"{missing}, {n['new']} new")


def to_csv(comp: Comparison) -> str:
    table = pd.DataFrame([asdict(c) for c in comp.checks],
                         columns=list(CellCheck.__dataclass_fields__))
    ints = ["base_n", "cur_n", "cur_failed", "base_nonzero", "cur_nonzero_min", "cur_nonzero_max"]
    for col in ints:
        values = pd.to_numeric(table[col]).astype(float)
        if values.dropna().map(float.is_integer).all():  # a varying-count mean stays a float
            table[col] = values.astype("Int64")
    return table.to_csv(index=False)
