"""One grouping and one set of seed statistics behind the report's tables
(``bench.report.aggregate.aggregate``) and its numeric CSVs (``bench.report.numeric``)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from bench.report.aggregate import aggregate, seed_stats
from bench.report.numeric import cell_stats


def runs() -> pd.DataFrame:
    rows = [("gmp", 0.9, 0, "ok", 1.0), ("gmp", 0.9, 1, "ok", 2.0), ("gmp", 0.9, 2, "ok", 4.0),
            ("gmp", 0.9, 3, "failed", np.nan), ("static", 0.9, 0, "ok", 5.0),
            ("static", 0.8, 0, "failed", np.nan)]
    return pd.DataFrame([{"model": "m", "dataset": "d", "method": m, "method_label": m,
                          "target_sparsity": t, "seed": s, "status": st, "top1": v,
                          "top5": np.nan, "test_loss": v / 10, "achieved_sparsity": t,
                          "epochs": 3} for m, t, s, st, v in rows])


def test_seed_stats_by_hand():
    stats = seed_stats(pd.DataFrame({"top1": [1.0, 2.0, np.nan, 4.0]}), "top1")
    assert stats["mean"] == 7 / 3 and stats["min"] == 1.0 and stats["max"] == 4.0
    assert math.isclose(stats["std"], math.sqrt(7 / 3), rel_tol=1e-15)
    one = seed_stats(pd.DataFrame({"top1": [3.0]}), "top1")
    assert one["mean"] == 3.0 and math.isnan(one["std"])
    assert all(math.isnan(v) for v in seed_stats(pd.DataFrame({"top1": []}), "top1").values())


def test_tables_and_csv_agree_cell_by_cell():
    agg = aggregate(runs()).set_index(["method_label", "target_sparsity"])
    stats = cell_stats(runs()).set_index(["method_label", "target_sparsity"])
    assert sorted(agg.index) == sorted(stats.index) == [("gmp", 0.9), ("static", 0.8),
                                                       ("static", 0.9)]
    assert stats.loc[("gmp", 0.9), "n"] == 3 and stats.loc[("gmp", 0.9), "n_failed"] == 1
    assert stats.loc[("static", 0.8), "n"] == 0
    for col in ("n", "n_failed", "top1_mean", "top1_std", "test_loss_mean", "test_loss_std"):
        pd.testing.assert_series_equal(agg[col].astype(float), stats.loc[agg.index, col]
                                       .astype(float), check_names=False)


def test_the_report_reads_the_run_folders_once(tmp_path, monkeypatch):
    from bench import store
    from bench.report import recipes

    for i in range(2):  # failed runs: a result without counts and metrics
        folder = tmp_path / "runs" / f"m-d-gmp-s90-seed{i}-00000000000{i}"
        folder.mkdir(parents=True)
        store.atomic_write_json(folder / store.RESULT, {
            "schema": 1, "run_id": f"00000000000{i}", "status": "failed", "error": "boom",
            "config": {"model": {"name": "m"}, "data": {"name": "d"}, "seed": i,
                       "method": {"name": "gmp"}, "sparsity": {"target": 0.9}}})
    scans = []
    real = store.iter_results
    monkeypatch.setattr(store, "iter_results", lambda root: scans.append(root) or real(root))
    runs = recipes.load(tmp_path)
    assert scans == [tmp_path]
    assert list(runs["run_id"]) == ["000000000000", "000000000001"]
    assert runs["recipe"].notna().all()


def test_one_error_line_for_markdown_and_html():
    from bench.report.tables import error_line

    assert error_line(None) == error_line(float("nan")) == error_line("  ") == "(no reason)"
    assert error_line("RuntimeError: boom\n  at line 3") == "RuntimeError: boom"
    assert error_line("x" * 160) == "x" * 160
    assert error_line("x" * 161) == "x" * 159 + "…"
    assert error_line("x" * 201, 200) == "x" * 199 + "…"


def test_mixed_settings_names_the_cells_whose_finished_seeds_differ():
    from bench.report.aggregate import mixed_settings

    df = runs()
    df.loc[1, "epochs"] = 5  # gmp seed 1 ran another recipe
    df.loc[3, "epochs"] = 7  # a failed seed does not count
    df["layer_policy"], df["distribution"] = "all", "default"
    assert mixed_settings(df) == ["m/d gmp at 90%: runs mix epochs = 3, 5"]
    assert mixed_settings(runs().assign(layer_policy="all", distribution="default")) == []
