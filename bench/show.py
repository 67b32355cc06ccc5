"""``sparsebench show GRID``: the fully resolved configuration of every run of a grid, after
the grid's overrides (bench/grid.py) and the method's default hyperparameters are applied, as
``key = value`` lines (values in JSON), so a user sees what will train before it trains."""

from __future__ import annotations

import json
from typing import Any

from bench.config import run_id, run_label, to_dict
from bench.grid import GridRun
from bench.train import resolve_hparams
from methods import get_method


def flatten(body: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """{"train": {"lr": 0.1}} -> [("train.lr", 0.1)], keys in sorted order."""
    out: list[tuple[str, Any]] = []
    for key in sorted(body):
        value = body[key]
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.extend(flatten(value, f"{name}."))
        else:
            out.append((name, value))
    return out


def describe(run: GridRun) -> list[str]:
    """The header line (run id, folder label, grid entry) and one line per config field,
    defaults included; plus the runs it waits for (EigenDamage's dense run)."""
    config = resolve_hparams(run.config)
    lines = [f"run {run.run_id}  {run_label(config)}  (entry {run.entry})"]
    lines += [f"  {key} = {json.dumps(value)}" for key, value in flatten(to_dict(config))]
    method = get_method(config.method.name)(config, config.method.hparams)
    for dep in method.dependencies():
        lines.append(f"  after = {json.dumps(run_id(dep))}  # {run_label(dep)}")
    return lines
