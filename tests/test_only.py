"""One ``--only`` predicate (issue 10): ``bench.grid.only_keeps`` decides for grid runs
(``run``, ``status``, ``show``, ``report GRID``) and for finished runs and baseline cells
(``check``), so a spec keeps the same runs everywhere."""

from __future__ import annotations

import pandas as pd
import pytest

from bench.check.baseline import only_filter
from bench.grid import load_grid, parse_only, select

SPECS = ["method=static", "method=static-erk", "sparsity=0.9", "method=dense",
         "model=mnist1d_cnn,sparsity=0.5", "seed=0", "method=gmp,sparsity=0.95", ""]


@pytest.mark.parametrize("spec", SPECS)
def test_runs_and_results_are_filtered_alike(spec):
    grid = load_grid("smoke")
    # The grid's runs as finished results read (check's columns), and as baseline cells.
    rows = pd.DataFrame([{"model": r.config.model.name, "dataset": r.config.data.name,
                          "method": r.config.method.name, "method_label": r.entry,
                          "target_sparsity": r.config.sparsity.target, "seed": r.config.seed,
                          "seeds": [r.config.seed], "run_id": r.run_id} for r in grid.runs])
    only = parse_only(spec)
    selected = [r.run_id for r in select(grid, only)]
    assert list(only_filter(rows, only, None)["run_id"]) == selected
    assert list(only_filter(rows, only, "seeds")["run_id"]) == selected
    # static selects its variant too; the variant's name only the variant.
    expected = {"method=static": 8, "method=static-erk": 4, "method=dense": 1, "": len(rows)}
    if spec in expected:
        assert len(selected) == expected[spec]


def test_a_seed_outside_every_cell_keeps_nothing():
    cells = pd.DataFrame([{"model": "m", "dataset": "d", "method": "gmp", "method_label": "gmp",
                           "target_sparsity": 0.9, "seeds": [0, 2]}])
    assert len(only_filter(cells, parse_only("seed=2"), "seeds")) == 1
    assert only_filter(cells, parse_only("seed=1"), "seeds").empty
