"""Seed aggregation: one row per (model, dataset, method label, target sparsity).

Failed runs are counted (``n_failed``) but never enter a mean, so a cell whose every seed failed
has ``n == 0`` and NaN metrics, and the tables show it as failed instead of dropping it.

A cell is one recipe: runs of one label with different recipes get distinct labels first
(``bench.report.recipes.split_labels``). Each cell also says whether it may be ranked
(``bench.report.eligibility``): ``missed_target`` (a seed outside the target tolerance),
``at_chance`` (mean top-1 within noise of guessing) and ``ranked`` (finished seeds and neither).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd

from bench.report.eligibility import at_chance, chance_top1, missed_target
from bench.report.recipes import split_labels

KEYS = ["model", "dataset", "method_label", "target_sparsity"]

# Metrics averaged over the successful seeds of a group (mean column keeps the source name).
MEAN_ONLY = [
    "achieved_sparsity", "params_total", "params_nonzero", "macs", "flops", "macs_dense",
    "train_flops", "wall_time_s",
]
MEAN_STD = ["top1", "top5", "test_loss"]

AGG_COLUMNS = (
    KEYS
    + ["is_dense", "n", "n_failed", "seeds"]
    + [f"{m}_{s}" for m in MEAN_STD for s in ("mean", "std")]
    + MEAN_ONLY
    + ["epochs", "missed_target", "at_chance", "chance_top1", "calibration_unconverged",
       "recipe_split", "ranked"]
)

# Settings that should be constant inside a group; a mix means seeds of different recipes
# were averaged together, which the report must say out loud.
_SETTINGS = ["epochs", "layer_policy", "distribution", "method"]

DENSE = "dense"
# Read from result.json by bench.report.recipes.load; absent (NaN) for older results.
_OPTIONAL = ["num_classes", "test_examples"]


def is_dense_row(method: object, label: object, target: float) -> bool:
    """Dense training ignores the sparsity target, and any method at target 0 is dense."""
    return method == DENSE or label == DENSE or target == 0.0


def normalise(runs: pd.DataFrame) -> pd.DataFrame:
    """Numeric columns as floats; dense runs filed under target 0 whatever the grid said."""
    df = runs.copy()
    for col in ["target_sparsity", "seed", *MEAN_STD, *MEAN_ONLY, "epochs", *_OPTIONAL]:
        df[col] = pd.to_numeric(df[col], errors="coerce") if col in df else np.nan
    df["target_sparsity"] = df["target_sparsity"].fillna(0.0)
    df.loc[df["method"] == DENSE, "target_sparsity"] = 0.0
    df["method_label"] = df["method_label"].fillna(df["method"]).fillna("?")
    for col in ("model", "dataset"):
        df[col] = df[col].fillna("?")
    df = split_labels(df)
    dense = [is_dense_row(m, lab, t) for m, lab, t in
             zip(df["method"], df["method_label"], df["target_sparsity"], strict=True)]
    df["missed_target"] = [not d and missed_target(t, a) for d, t, a in
                           zip(dense, df["target_sparsity"], df["achieved_sparsity"],
                               strict=True)]
    return df


def cells(df: pd.DataFrame) -> Iterator[tuple[dict[str, Any], pd.DataFrame, pd.DataFrame]]:
    """The cells of normalised runs `df` (``normalise``), in KEYS order: (the cell's KEYS as a
    row dict, all its runs, its successful runs). The one grouping behind ``aggregate`` and
    ``bench.report.numeric.cell_stats``."""
    for key, group in df.groupby(KEYS, sort=True, dropna=False):
        yield dict(zip(KEYS, key, strict=True)), group, group[group["status"] == "ok"]


def seed_stats(ok: pd.DataFrame, metric: str) -> dict[str, float]:
    """``mean``, ``std`` (sample, ddof=1; NaN below two values), ``min`` and ``max`` of
    `metric` over the successful runs `ok` that recorded it; NaN when none did."""
    values = ok[metric].dropna().to_numpy(dtype=float)
    n = len(values)
    return {"mean": values.mean() if n else np.nan,
            "std": values.std(ddof=1) if n > 1 else np.nan,
            "min": values.min() if n else np.nan,
            "max": values.max() if n else np.nan}


def aggregate(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean, sample std (ddof=1; NaN when n == 1) and n over seeds; columns ``AGG_COLUMNS``."""
    rows = []
    for row, group, ok in cells(normalise(runs)):
        row["is_dense"] = is_dense_row(
            group["method"].iloc[0], row["method_label"], row["target_sparsity"]
        )
        row["n"] = len(ok)
        row["n_failed"] = len(group) - len(ok)
        row["seeds"] = " ".join(str(int(s)) for s in sorted(ok["seed"].dropna()))
        for metric in MEAN_STD:
            stats = seed_stats(ok, metric)
            row[f"{metric}_mean"], row[f"{metric}_std"] = stats["mean"], stats["std"]
        for metric in MEAN_ONLY:
            row[metric] = seed_stats(ok, metric)["mean"]
        epochs = ok["epochs"].dropna()
        row["epochs"] = float(epochs.iloc[0]) if epochs.nunique() == 1 else np.nan
        row["missed_target"] = bool(ok["missed_target"].any())
        classes, examples = ok["num_classes"].max(), ok["test_examples"].min()
        row["chance_top1"] = chance_top1(classes) if classes > 0 else np.nan
        row["at_chance"] = bool(len(ok)) and at_chance(row["top1_mean"], classes, examples)
        converged = ok["calibration_converged"] if "calibration_converged" in ok else []
        row["calibration_unconverged"] = sum(1 for c in converged
                                             if isinstance(c, (bool, np.bool_)) and not c)
        row["recipe_split"] = bool(group["recipe_split"].any()) if "recipe_split" in group \
            else False
        row["ranked"] = row["n"] > 0 and not row["missed_target"] and not row["at_chance"]
        rows.append(row)
    out = pd.DataFrame(rows, columns=AGG_COLUMNS)
    return order(out)


def order(agg: pd.DataFrame) -> pd.DataFrame:
    """Dense first, then method labels alphabetically, then increasing sparsity."""
    return (
        agg.assign(_dense=~agg["is_dense"].astype(bool))
        .sort_values(["model", "dataset", "_dense", "method_label", "target_sparsity"])
        .drop(columns="_dense")
        .reset_index(drop=True)
    )


def mixed_settings(runs: pd.DataFrame) -> list[str]:
    """One line per group whose successful seeds differ in a setting other than the seed."""
    notes = []
    for cell, _, ok in cells(normalise(runs)):
        for col in _SETTINGS:
            values = sorted({str(v) for v in ok[col].dropna()})
            if len(values) > 1:
                model, dataset, label, target = (cell[k] for k in KEYS)
                notes.append(
                    f"{model}/{dataset} {label} at {pct(target)}: runs mix {col} = "
                    f"{', '.join(values)}"
                )
    return notes


def pct(target: float) -> str:
    return f"{float(target) * 100:g}%"


def slug(text: str) -> str:
    """File-system-safe, deterministic name part."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "_"


def section_dir(model: str, dataset: str) -> str:
    return f"{slug(model)}-{slug(dataset)}"
