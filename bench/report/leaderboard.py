"""The leaderboard page ``<out>/leaderboard.md``: per (model, dataset), our method labels ranked
by mean top-1 at each target sparsity, with the dense model as the reference and published
numbers in rows of their own that are never ranked.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from bench.report.aggregate import pct
from bench.report.plots import dense_reference
from bench.report.published import Published, fmt_count, fmt_number
from bench.report.reference import NO_DENSE, Reference
from bench.report.tables import accuracy_cell, to_markdown

RANKING = (
    "**Ranking.** Within each (model, dataset) and target sparsity, our method labels are "
    "ranked by mean top-1 test accuracy over the seeds that finished, highest first, compared "
    "at the 2 decimals shown: equal shown means share a rank (1, 1, 3) and are listed "
    "alphabetically. A cell with some failed seeds is ranked on its finished seeds and says "
    "how many failed. Not ranked (—, listed after the ranked rows, with the reason): a cell "
    "that missed its target (a seed's achieved density more than 10% away from the target's, "
    "e.g. learned sparsity that ended elsewhere; it is plotted at its achieved sparsity), a "
    "cell at chance (mean top-1 within 3 binomial standard errors of guessing), and a cell "
    "whose every seed failed (last). A row is one recipe: runs of one method with different "
    "recipes are separate rows named by the fields that differ. "
    "Cells read mean ± sample std (n = finished seeds). Achieved sparsity and nonzero params "
    "are the means over finished seeds (achieved, not nominal). Δ dense = mean top-1 minus "
    "that of the dense reference of the same section (a report of part of a root uses the "
    "dense run of the same recipe under the root, and says why where there is none). "
    "Epochs and train FLOPs (total training FLOPs, RigL's accounting, relative to the dense "
    "reference's) give each row's training budget. Rows ranked `published` are numbers "
    "copied from the cited source, under a different recipe (see each section's sources); "
    "they are shown for comparison and never ranked."
)


def display_key(mean: float) -> float:
    """The value ranks compare: the mean as shown (2 decimals), so equal-looking cells tie."""
    return float(f"{mean:.2f}")


def rank(cells: pd.DataFrame) -> pd.DataFrame:
    """`cells` (aggregated rows of one target) sorted into leaderboard order, with a 'rank'
    column: competition ranks on the shown mean among the rankable cells (``ranked``), ties
    alphabetical; then the cells with results that may not be ranked (missed target, at
    chance) and the all-failed cells, each alphabetical with rank None."""
    rankable = cells["ranked"].astype(bool) if "ranked" in cells else cells["n"] > 0
    ok = cells[rankable].copy()
    ok["_key"] = [display_key(m) for m in ok["top1_mean"]]
    ok = ok.sort_values(["_key", "method_label"], ascending=[False, True], kind="stable")
    keys = ok["_key"].to_numpy()
    ok["rank"] = [int((keys > k).sum()) + 1 for k in keys]
    rest = cells[~rankable].copy()
    rest["_failed"] = rest["n"] == 0
    rest = rest.sort_values(["_failed", "method_label"], kind="stable").drop(columns="_failed")
    rest["rank"] = None
    return pd.concat([ok.drop(columns="_key"), rest], ignore_index=True)


def _params(value: float) -> str:
    return "—" if not np.isfinite(value) else f"{round(value):,}"


def _delta(mean: float, ref: float | None, missing: str = "—") -> str:
    if not np.isfinite(mean):
        return "—"
    if ref is None:
        return missing
    return f"{mean - ref:+.2f}"


def _budget(row: pd.Series, ref_flops: float | None, missing: str = "—") -> dict:
    epochs = row.get("epochs", np.nan)
    flops = row.get("train_flops", np.nan)
    rel = (f"{flops / ref_flops:.2f}×" if ref_flops and np.isfinite(flops) and ref_flops > 0
           else missing if ref_flops is None and np.isfinite(flops) else "—")
    return {"epochs": f"{epochs:g}" if np.isfinite(epochs) else "—", "train FLOPs": rel}


def _our_row(row: pd.Series, rank_text: str, ref: float | None, top5: bool,
             ref_flops: float | None = None, missing: str = "—") -> dict:
    """One leaderboard row; `missing` is what the columns relative to dense say when there is
    no dense reference (``bench.report.reference``: "no dense run", ...)."""
    out = {"rank": rank_text, "method": row["method_label"], "top-1 (%)": accuracy_cell(row)}
    if top5:
        out["top-5 (%)"] = (f"{row['top5_mean']:.2f}" if np.isfinite(row["top5_mean"])
                            else "—")
    out |= {
        "Δ dense": _delta(row["top1_mean"], ref, missing),
        "achieved sparsity": (f"{row['achieved_sparsity']:.4f}"
                              if np.isfinite(row["achieved_sparsity"]) else "—"),
        "nonzero params": _params(row["params_nonzero"]),
    }
    return out | _budget(row, ref_flops, missing)


def _published_row(p: Published, top5: bool) -> dict:
    out = {"rank": "published", "method": p.label, "top-1 (%)": fmt_number(p.top1)}
    if top5:
        out["top-5 (%)"] = fmt_number(p.top5) if p.top5 is not None else "—"
    out |= {
        "Δ dense": "—",
        "achieved sparsity": f"{p.sparsity:g}",
        "nonzero params": fmt_count(p.params) if p.params is not None else "—",
        "epochs": "—", "train FLOPs": "—",
    }
    return out


def section(sub: pd.DataFrame, title: str, published: Sequence[Published],
            reference: Reference | None = None) -> list[str]:
    """Markdown lines for one (model, dataset). `reference`: its dense reference
    (``bench.report.reference.find``); None = the dense cell of `sub`."""
    sub = sub.copy()
    for col in ("top1_mean", "top5_mean", "achieved_sparsity", "params_nonzero", "epochs",
                "train_flops"):
        sub[col] = pd.to_numeric(sub[col], errors="coerce").astype(float)
    dense = sub[sub["is_dense"].astype(bool)]
    sparse = sub[~sub["is_dense"].astype(bool)]
    if reference is None:
        row = dense_reference(sub)
        reference = Reference(row, missing="" if row is not None else NO_DENSE)
    ref_row, missing = reference.row, reference.missing
    ref = None if ref_row is None else float(ref_row["top1_mean"])
    ref_flops = None if ref_row is None else float(ref_row["train_flops"])
    top5 = bool(sub["top5_mean"].notna().any()) or any(p.top5 is not None for p in published)
    lines = [f"## {title}", ""]
    if ref_row is None:
        lines += [f"Dense reference: none ({missing}); Δ dense and train FLOPs say so.", ""]
    else:
        where = " (not in this selection; found under the root)" if reference.outside else ""
        lines += [f"Dense reference: `{ref_row['method_label']}`, top-1 {ref:.2f}{where}.", ""]
    rows = [_our_row(r, "dense", ref, top5, ref_flops, missing) for _, r in dense.iterrows()]
    rows += [_published_row(p, top5) for p in published if p.sparsity == 0.0]
    if rows:
        lines += ["### Dense", "", to_markdown(pd.DataFrame(rows), index=False)]
    targets = sorted(set(sparse["target_sparsity"]))
    for target in targets:
        ranked = rank(sparse[sparse["target_sparsity"] == target])
        rows = [_our_row(r, "—" if r["rank"] is None else str(r["rank"]), ref, top5, ref_flops,
                         missing)
                for _, r in ranked.iterrows()]
        rows += [_published_row(p, top5) for p in published if p.sparsity == target]
        lines += [f"### {pct(target)} target sparsity", "",
                  to_markdown(pd.DataFrame(rows), index=False)]
    # Published sparsities we have no runs at (e.g. STR's learned 90.23%): one table, not
    # a near-empty section each.
    others = sorted((p for p in published if p.sparsity != 0.0 and p.sparsity not in targets),
                    key=lambda p: (p.sparsity, p.method))
    if others:
        lines += ["### Published at sparsities without runs of ours", "",
                  to_markdown(pd.DataFrame([_published_row(p, top5) for p in others]),
                              index=False)]
    if published:
        lines += ["### Published sources", ""]
        for source in dict.fromkeys(p.source for p in published):
            text = f"- **{source.citation}**: {_dot(source.paper)} {_dot(source.table)} "
            text += f"Verified: {_dot(source.verified)}"
            lines.append(text + (f" Recipe: {_dot(source.protocol)}" if source.protocol else ""))
            for p in published:
                if p.source == source and p.protocol:
                    lines.append(f"  - {p.method} at {pct(p.sparsity)}: {p.protocol}")
        lines.append("")
    return lines


def _dot(text: str) -> str:
    return text.strip().rstrip(".") + "."


def leaderboard(sections: list[tuple]) -> str:
    """The whole page from (title, aggregated rows, published entries[, dense reference])
    per section."""
    lines = ["# sparsebench leaderboard", "", RANKING, ""]
    for title, sub, published, *ref in sections:
        lines += section(sub, title, published, *ref)
    return "\n".join(lines)
