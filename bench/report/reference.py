"""The dense reference of a section: what "Δ dense" and the training FLOPs relative to dense
(leaderboard, FLOPs plot) are measured against.

A report of part of a root (``sparsebench report GRID --only method=gmp``) need not select the
dense runs, yet its sparse rows still have a dense counterpart under the root. The reference of
one (model, dataset) is, in order:

1. the dense cell of the selection (``bench.report.plots.dense_reference``: the label
   ``dense`` first), as for a report of everything;
2. else the dense runs of the reported grid that the filter left out (the reference the
   grid's whole report uses);
3. else the dense runs under the root trained with the selection's recipe: equal in every
   config field except the method's and the sparsity's (``bench.report.recipes``), the recipe
   of most of the selected runs first.

When none of them has a successful run, ``Reference.missing`` says why, in the words the
columns show: "no dense run" (none of this model and dataset under the root), "no dense run of
this recipe" (only dense runs trained otherwise) or "dense failed" (every seed failed).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass

import pandas as pd

from bench.report.aggregate import aggregate, is_dense_row, normalise
from bench.report.plots import dense_reference

NO_DENSE = "no dense run"
NO_RECIPE = "no dense run of this recipe"
DENSE_FAILED = "dense failed"


@dataclass(frozen=True)
class Reference:
    """`row`: the dense reference's aggregated cell (None when there is none); `outside`: True
    when it is not part of the reported selection; `missing`: why there is none ('' when
    there is one)."""

    row: pd.Series | None
    outside: bool = False
    missing: str = ""


def training_recipe(fields: object) -> str | None:
    """A run's recipe without its method and sparsity (``recipe_fields`` minus ``method.*``
    and ``sparsity.*``), as JSON text: what a sparse run shares with its dense counterpart.
    None where the config no longer parses."""
    if not isinstance(fields, str):
        return None
    flat = json.loads(fields)
    return json.dumps({k: v for k, v in flat.items()
                       if not k.startswith(("method.", "sparsity."))}, sort_keys=True)


def _dense_runs(runs: pd.DataFrame, model: str, dataset: str) -> pd.DataFrame:
    df = normalise(runs)
    df = df[(df["model"] == model) & (df["dataset"] == dataset)]
    dense = [is_dense_row(m, lab, t) for m, lab, t in
             zip(df["method"], df["method_label"], df["target_sparsity"], strict=True)]
    return df[dense]


def _best(dense: pd.DataFrame) -> pd.Series | None:
    ok = dense[dense["status"] == "ok"]
    return None if ok.empty else dense_reference(aggregate(ok))


def find(section: pd.DataFrame, selected: pd.DataFrame, every: pd.DataFrame,
         grid_ids: Collection[str] | None = None) -> Reference:
    """The reference of one section. `section`: its aggregated cells; `selected`: its runs
    (with ``recipe_fields``); `every`: every run under the root; `grid_ids`: the run ids of
    the reported grid without its ``--only`` filter (None when the whole root is reported)."""
    row = dense_reference(section)
    if row is not None:
        return Reference(row)
    model, dataset = str(section["model"].iloc[0]), str(section["dataset"].iloc[0])
    dense = _dense_runs(every, model, dataset)
    if dense.empty:
        return Reference(None, missing=NO_DENSE)
    if grid_ids is not None:
        row = _best(dense[dense["run_id"].isin(set(grid_ids))])
        if row is not None:
            return Reference(row, outside=True)
    wanted = Counter(training_recipe(f) for f in selected.get("recipe_fields", []))
    wanted.pop(None, None)
    recipes = [training_recipe(f) for f in dense["recipe_fields"]] \
        if "recipe_fields" in dense else [None] * len(dense)
    matching = pd.Series([r in wanted for r in recipes], index=dense.index)
    for recipe, _ in sorted(wanted.items(), key=lambda kv: (-kv[1], kv[0])):
        row = _best(dense[[r == recipe for r in recipes]])
        if row is not None:
            return Reference(row, outside=True)
    return Reference(None, missing=DENSE_FAILED if matching.any() else NO_RECIPE)
