"""The error for ``check --only`` that selects no cell: as ``bench.grid.select`` does for a
grid, name the key whose value neither the baseline nor the root has and list the values they
do have (with the percent hint for ``sparsity=90``), or say that each value occurs but no cell
has them all."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from bench.check.baseline import load_runs, only_filter
from bench.errors import UserError
from bench.grid import unmatched_only


def _values(pinned: pd.DataFrame, current: pd.DataFrame, key: str) -> list[str]:
    if key == "method":
        found = {str(v) for df in (pinned, current) for col in ("method", "method_label")
                 if col in df for v in df[col].dropna()}
        return sorted(found)
    if key == "seed":
        seeds = {int(s) for cell in pinned.get("seeds", []) for s in cell}
        seeds |= {int(s) for s in current.get("seed", [])}
        return [str(s) for s in sorted(seeds)]
    column = {"model": "model", "dataset": "dataset", "sparsity": "target_sparsity"}[key]
    found = {v for df in (pinned, current) if column in df for v in df[column].dropna()}
    return [f"{float(v):g}" if key == "sparsity" else str(v) for v in sorted(found)]


def no_cell_error(spec: str, only: dict[str, str], baseline: dict[str, Any],
                  baseline_path: str, root: Path) -> UserError:
    """The UserError for `only` (``parse_only(spec)``) matching no cell of `baseline` (loaded
    from `baseline_path`) or of the results under `root`."""
    pinned = pd.DataFrame(baseline.get("cells") or [])
    current = load_runs(root)
    where = f"{baseline_path} or {root}"
    for key, value in only.items():
        hits = len(only_filter(current, {key: value}, None))
        if not pinned.empty:
            hits += len(only_filter(pinned, {key: value}, "seeds"))
        if not hits:
            return unmatched_only(key, value, f"cell of {where}", "their",
                                  _values(pinned, current, key))
    return UserError(f"--only {spec} matches no cell of {where}: each value occurs, but no "
                     "cell has them all")
