"""Executing a list of runs. ``debug`` runs them one after another in this process."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.grid import GridRun
from bench.run import run_folder, run_one
from bench.store import is_done
from methods import get_method
from methods.base import Method

EXECUTORS = ("debug",)


def order_runs(runs: list[GridRun]) -> list[GridRun]:
    """Runs that reuse another run (EigenDamage on its dense run) go after the others."""
    def has_deps(run: GridRun) -> bool:
        return get_method(run.config.method.name).dependencies is not Method.dependencies

    return sorted(runs, key=has_deps)


def pending(runs: list[GridRun], root: Path) -> list[GridRun]:
    return [r for r in runs if not is_done(run_folder(root, r.config))]


def run_debug(
    runs: list[GridRun],
    root: Path,
    data_root: Path | None,
    retry_failed: bool = False,
    on_result: Callable[[GridRun, dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    results = []
    for run in order_runs(runs):
        result = run_one(run.config, root, data_root, retry_failed=retry_failed)
        results.append(result)
        if on_result is not None:
            on_result(run, result)
    return results
