"""Numbers for analysis: per-cell statistics as plain numeric columns (mean, std, n, min, max),
so a CSV loads into pandas / R / a spreadsheet without parsing strings like "42.05 ± 3.04 (n=2)".

A cell is one (model, dataset, method label, target sparsity), as in
``bench.report.aggregate.KEYS``; only successful runs enter the statistics, failed ones are
counted in ``n_failed``. std is the sample std (ddof=1), NaN when n < 2.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from bench.report.aggregate import KEYS, cells, normalise, seed_stats
from bench.report.published import Published

STATS = ("mean", "std", "min", "max")
METRICS = ("top1", "top5", "test_loss")

# The cell's flags, as the tables and the page show them (badges, "missed target", ...):
# missed_target, at_chance and recipe_split are booleans (``bench.report.aggregate``),
# calibration_unconverged the number of seeds whose STR calibration did not converge.
FLAGS = ["missed_target", "at_chance", "calibration_unconverged", "recipe_split"]

ACCURACY_COLUMNS = ["method", "target_sparsity", "source", "n", "n_failed",
                    "top1_mean", "top1_std", "top1_min", "top1_max",
                    "achieved_sparsity", *FLAGS]


def cell_stats(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per cell: KEYS, n, n_failed, and ``<metric>_<stat>`` for METRICS x STATS (the
    cells and statistics of ``bench.report.aggregate``)."""
    rows = []
    for row, group, ok in cells(normalise(runs)):
        row["n"], row["n_failed"] = len(ok), len(group) - len(ok)
        for metric in METRICS:
            row |= {f"{metric}_{k}": v for k, v in seed_stats(ok, metric).items()}
        rows.append(row)
    columns = KEYS + ["n", "n_failed"] + [f"{m}_{s}" for m in METRICS for s in STATS]
    return pd.DataFrame(rows, columns=columns)


def with_ranges(agg: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """`agg` (the aggregated frame) plus ``<metric>_min`` / ``<metric>_max`` columns."""
    stats = cell_stats(runs)
    extra = [f"{m}_{s}" for m in METRICS for s in ("min", "max")]
    return agg.merge(stats[KEYS + extra], on=KEYS, how="left")


def accuracy_frame(section: pd.DataFrame, runs: pd.DataFrame,
                   published: Sequence[Published] = ()) -> pd.DataFrame:
    """The numeric accuracy table of one (model, dataset): our cells in the order of `section`
    (source "ours"), then published numbers (source = the citation; n, n_failed, std, min
    and max empty: a source's number is usually a mean over runs it does not list, so n = 1
    and min = max = the number would claim a single run)."""
    stats = cell_stats(runs).set_index(KEYS)
    rows = []
    for _, cell in section.iterrows():
        s = stats.loc[tuple(cell[k] for k in KEYS)]
        rows.append({"method": cell["method_label"], "target_sparsity": cell["target_sparsity"],
                     "source": "ours", "n": int(s["n"]), "n_failed": int(s["n_failed"]),
                     **{f"top1_{k}": s[f"top1_{k}"] for k in STATS},
                     "achieved_sparsity": cell["achieved_sparsity"],
                     **{flag: _flag(cell.get(flag), flag) for flag in FLAGS}})
    for p in published:
        rows.append({"method": p.method, "target_sparsity": p.sparsity,
                     "source": f"published: {p.source.citation}", "n": pd.NA,
                     "n_failed": pd.NA, "top1_mean": p.top1, "top1_std": np.nan,
                     "top1_min": np.nan, "top1_max": np.nan, "achieved_sparsity": p.sparsity,
                     **{flag: _flag(None, flag) for flag in FLAGS}})
    frame = pd.DataFrame(rows, columns=ACCURACY_COLUMNS)
    return frame.astype({"n": "Int64", "n_failed": "Int64"})


def _flag(value, flag: str) -> bool | int:
    """A flag as its column holds it: a count for calibration_unconverged, else a boolean;
    absent (a published row, an older frame) is False / 0."""
    missing = value is None or (isinstance(value, float) and np.isnan(value))
    if flag == "calibration_unconverged":
        return 0 if missing else int(value)
    return False if missing else bool(value)
