"""What the report may rank (issue 11): the target tolerance, at chance, one recipe per row,
the training budget, and `report GRID --only`."""

from __future__ import annotations

import types
from pathlib import Path

import pandas as pd
import pytest

from bench import store
from bench.cli import _target_warnings, main
from bench.config import to_dict
from bench.grid import load_grid, select
from bench.report import write_report
from bench.report.aggregate import aggregate
from bench.report.eligibility import at_chance, chance_limit, missed_target, warning_line
from bench.report.leaderboard import rank
from bench.report.plots import series
from bench.report.recipes import load
from bench.train import resolve_hparams

MODEL, DATA = "mnist1d_cnn", "mnist1d"
PRUNABLE, OTHER = 5120, 90


def _result(method: str, target: float, seed: int, top1: float, sparsity: float | None = None,
            train: dict | None = None, label: str | None = None, **extra) -> dict:
    sparsity = target if sparsity is None else sparsity
    kept = round((1 - sparsity) * PRUNABLE)
    config = {
        "data": {"name": DATA}, "model": {"name": MODEL, "width": 1.0},
        "method": {"name": method, "hparams": {}}, "train": train or {"epochs": 2},
        "sparsity": {"target": target, "layer_policy": "all", "distribution": "default"},
        "seed": seed,
    }
    body = {
        "schema": 1, "run_id": f"{label or method}-{target}-{seed}-{len(str(train))}",
        "status": "ok", "config": config, "method_label": label or method, "error": None,
        "top1": top1, "top5": None, "test_loss": 1.0,
        "counts": {"params_total": PRUNABLE + OTHER, "params_prunable": PRUNABLE,
                   "params_nonzero": kept + OTHER, "sparsity": 1 - kept / PRUNABLE,
                   "macs": 5 * kept, "flops": 10 * kept, "macs_dense": 5 * PRUNABLE},
        "layers": [], "train_flops": 1e9 * (1 - target / 2), "wall_time_s": 1.0,
        "num_classes": 10, "test_examples": 1000,
    }
    return body | extra


def _root(path: Path, bodies: list[dict]) -> Path:
    for body in bodies:
        folder = store.run_dir(path, body["run_id"].replace(".", "p"), "x")
        store.atomic_write_json(folder / store.RESULT, body)
    return path


def _cells(bodies: list[dict], tmp_path: Path) -> pd.DataFrame:
    return aggregate(load(_root(tmp_path / "root", bodies)))


def _md_rows(text: str, header: str) -> list[list[str]]:
    """The rows of the first Markdown table after `header`."""
    lines = text[text.index(header):].splitlines()[2:]
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split(" | ")])
    return rows


def test_target_tolerance_is_ten_percent_of_the_target_density():
    assert not missed_target(0.5, 0.5 - 0.05)  # density 0.55 vs 0.5: exactly 10%
    assert missed_target(0.5, 0.5 - 0.0501)
    assert not missed_target(0.9, 0.89) and missed_target(0.9, 0.8899)
    assert not missed_target(0.8, 0.8127)  # STR's ResNet-50 81.27% under 80%
    assert missed_target(0.8, 0.6205)  # EigenDamage in the smoke grid
    assert not missed_target(0.99, 0.9898) and missed_target(0.99, 0.9888)


def test_at_chance_is_three_binomial_errors_above_guessing():
    # 10 classes, 1000 examples: 10 + 3 * 100 * sqrt(0.09 / 1000) = 12.846 points
    assert chance_limit(10, 1000) == pytest.approx(12.846049894)
    assert at_chance(8.9, 10, 1000) and at_chance(12.84, 10, 1000)
    assert not at_chance(12.85, 10, 1000)
    assert not at_chance(8.9, None, None)  # an older result without the counts


def test_missed_target_and_at_chance_cells_are_shown_and_not_ranked(tmp_path):
    bodies = [
        _result("dense", 0.0, 0, 94.0),
        _result("static", 0.8, 0, 60.0),
        _result("str", 0.8, 0, 71.0, sparsity=0.8123),  # within: density 0.1877 vs 0.2
        _result("eigendamage", 0.8, 0, 90.0, sparsity=0.6205),  # 1.9x the weights
        _result("gmp", 0.8, 0, 8.9),  # collapsed
        _result("set", 0.8, 0, 12.9),  # just above the chance limit
    ]
    cells = _cells(bodies, tmp_path)
    at = rank(cells[cells["target_sparsity"] == 0.8])
    assert list(zip(at["method_label"], at["rank"], strict=True)) == [
        ("str", 1), ("static", 2), ("set", 3), ("eigendamage", None), ("gmp", None)]
    out = tmp_path / "report"
    write_report(tmp_path / "root", out)
    board = (out / "leaderboard.md").read_text()
    rows = _md_rows(board, "### 80% target sparsity")
    assert [r[:3] for r in rows] == [
        ["1", "str", "71.00"], ["2", "static", "60.00"], ["3", "set", "12.90"],
        ["—", "eigendamage", "90.00, missed target (achieved 0.6205)"],
        ["—", "gmp", "8.90, at chance (10.00% guessing)"]]
    accuracy = (out / f"{MODEL}-{DATA}" / "accuracy.md").read_text()
    assert "90.00, missed target (achieved 0.6205)" in accuracy
    # The plot keeps EigenDamage's point at its achieved count: 1942 + 90 nonzero params.
    (pts,) = [p for label, p in series(cells, "params_nonzero").items()
              if label == "eigendamage"]
    assert pts["x"].tolist() == [round(0.3795 * PRUNABLE) + OTHER]


def test_an_unconverged_calibration_is_said(tmp_path):
    bodies = [_result("str", 0.9, 0, 60.0, sparsity=0.85, calibration_converged=False)]
    out = tmp_path / "report"
    write_report(_root(tmp_path / "root", bodies), out)
    (row,) = _md_rows((out / "leaderboard.md").read_text(), "### 90% target sparsity")
    assert row[2] == "60.00, missed target (achieved 0.85); calibration did not converge"
    index = (out / "README.md").read_text()
    assert ("mnist1d_cnn/mnist1d str at 90%: the calibration of 1 seed(s) did not converge "
            "(achieved sparsity 0.8500)") in index


def test_different_recipes_under_one_label_are_separate_rows(tmp_path):
    adam = {"epochs": 2, "optimizer": "adam", "lr": 0.01}
    sgd = {"epochs": 2, "optimizer": "sgd", "lr": 0.001}
    bodies = [_result("gmp", 0.9, 0, 20.0, train=adam), _result("gmp", 0.9, 1, 22.0, train=adam),
              _result("gmp", 0.9, 2, 6.0, train=sgd)]
    cells = _cells(bodies, tmp_path).set_index("method_label")
    assert cells.loc["gmp [train.lr=0.01, train.optimizer=adam]", ["n", "top1_mean"]].tolist() \
        == [2, 21.0]
    assert cells.loc["gmp [train.lr=0.001, train.optimizer=sgd]", ["n", "top1_mean"]].tolist() \
        == [1, 6.0]
    assert "gmp" not in cells.index
    assert cells["recipe_split"].tolist() == [True, True]


def test_leaderboard_shows_each_rows_training_budget(tmp_path):
    bodies = [_result("dense", 0.0, 0, 94.0),
              _result("static", 0.9, 0, 60.0),
              _result("gmp", 0.9, 0, 70.0, train={"epochs": 6}, train_flops=1.65e9)]
    out = tmp_path / "report"
    write_report(_root(tmp_path / "root", bodies), out)
    board = (out / "leaderboard.md").read_text()
    header = [line for line in board.splitlines() if line.startswith("| rank")][0]
    assert [c.strip() for c in header.strip("|").split(" | ")][-2:] == ["epochs",
                                                                        "train FLOPs"]
    rows = _md_rows(board, "### 90% target sparsity")
    # static: 1e9 * (1 - 0.45) = 0.55e9 against dense 1e9; gmp 1.65e9
    assert [(r[1], r[-2], r[-1]) for r in rows] == [("gmp", "6", "1.65×"),
                                                    ("static", "2", "0.55×")]


def test_report_takes_a_grid_and_only(tmp_path, capsys):
    grid = tmp_path / "g.toml"
    grid.write_text('name = "g"\n[axes]\nmodels = ["mnist1d_cnn"]\ndatasets = ["mnist1d"]\n'
                    'methods = ["dense", "static"]\nsparsities = [0.9]\nseeds = [0]\n'
                    '[train]\nepochs = 2\n')
    root = tmp_path / "root"
    for i, run in enumerate(select(load_grid(str(grid)), {})):
        config = resolve_hparams(run.config)
        body = _result(config.method.name, config.sparsity.target, 0, 80.0 + i,
                       train=to_dict(config)["train"])
        _root(root, [body | {"run_id": run.run_id, "config": to_dict(config)}])
    # Another grid's run in the same root: static with 5 epochs.
    _root(root, [_result("static", 0.9, 0, 10.0, train={"epochs": 5})])

    assert main(["report", str(grid), "--root", str(root), "--out", str(tmp_path / "a")]) == 0
    board = (tmp_path / "a" / "leaderboard.md").read_text()
    assert [r[1:3] for r in _md_rows(board, "### 90% target sparsity")] == [["static", "81.00"]]
    assert main(["report", str(grid), "--only", "method=dense", "--root", str(root),
                 "--out", str(tmp_path / "b")]) == 0
    assert "### 90% target sparsity" not in (tmp_path / "b" / "leaderboard.md").read_text()
    capsys.readouterr()
    assert main(["report", "--only", "method=dense", "--root", str(root)]) == 2
    assert capsys.readouterr().err.strip() == (
        "sparsebench: error: --only filters a grid's runs: sparsebench report GRID --only "
        "key=value,...")


def test_run_warns_once_per_run_that_missed_its_target(tmp_path, capsys):
    missed = _result("eigendamage", 0.8, 0, 59.5, sparsity=0.6205)
    met = _result("str", 0.8, 0, 71.0, sparsity=0.8123)
    for rid, body in (("aaa", missed), ("bbb", met)):  # folders <label>-<run id>
        store.atomic_write_json(store.run_dir(tmp_path, "x", rid) / store.RESULT, body)
    runs = [types.SimpleNamespace(run_id="aaa", entry="eigendamage"),
            types.SimpleNamespace(run_id="bbb", entry="str")]
    _target_warnings(runs, tmp_path)
    assert capsys.readouterr().out.splitlines() == [
        "warning: eigendamage s=0.8 seed=0 missed its target: achieved sparsity 0.6205, "
        "outside density 0.2 ± 10%; not ranked in the 80% section"]
    unconverged = _result("str", 0.9, 1, 50.0, sparsity=0.85, calibration_converged=False)
    assert warning_line("str", unconverged) == (
        "warning: str s=0.9 seed=1 missed its target: achieved sparsity 0.8500, outside "
        "density 0.1 ± 10%; its calibration did not converge; not ranked in the 90% section")
