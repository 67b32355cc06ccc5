"""What a new user of the report and `check` met (the "polish" pass): CSV numbers as written,
column alignment, the dense reference of a partial report, one finding per cell when a label
gains a recipe, the page's badges said once, paths relative to the root, and the flags in
accuracy.csv. Result roots are hand-made (tests/test_honest_report.py's and
tests/test_check.py's writers), so every expected value is known in advance."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from bench import check
from bench.cli import main
from bench.config import to_dict
from bench.grid import load_grid, select
from bench.report import write_report
from bench.report.tables import to_markdown
from bench.train import resolve_hparams
from tests import test_check as tc
from tests.test_honest_report import DATA, MODEL, _md_rows, _result, _root

SECTION = f"{MODEL}-{DATA}"


def _report(tmp_path: Path, bodies: list[dict]) -> tuple[Path, Path]:
    root = _root(tmp_path / "root", bodies)
    out = root / "report"
    write_report(root, out)
    return root, out


# --- 1. CSV numbers -----------------------------------------------------------------------------

def test_csv_numbers_are_the_shortest_text_that_reads_back_exactly(tmp_path):
    gmp = [85.1, 85.2, 85.4]
    bodies = [_result("dense", 0.0, 0, 94.3)] + [
        _result("gmp", 0.8, s, t) | {"run_id": f"gmp-{s}"} for s, t in enumerate(gmp)]
    _, out = _report(tmp_path, bodies)
    folder = out / SECTION
    accuracy = (folder / "accuracy.csv").read_text().splitlines()
    # 94.3 and 0.8 as written, not %.17g's 94.299999999999997 and 0.80000000000000004.
    assert accuracy[1].startswith("dense,0.0,ours,1,0,94.3,,94.3,94.3,")
    mean = float(np.mean(gmp))  # 85.23333333333333
    assert accuracy[2].startswith(f"gmp,0.8,ours,3,0,{mean!r},")
    # Every decimal in every CSV is the shortest text of its float (Python's repr).
    for path in (folder / "accuracy.csv", folder / "summary.csv", out / "results.csv"):
        for line in path.read_text().splitlines()[1:]:
            for field in line.split(","):
                if "." in field and field.replace(".", "").replace("-", "").isdigit():
                    assert repr(float(field)) == field, (path.name, field)
    # Read back, every number is the float the report computed (what the pin holds).
    summary = pd.read_csv(folder / "summary.csv").set_index("method_label")
    assert summary.loc["gmp", "top1_mean"] == mean
    assert summary.loc["dense", "top1_mean"] == 94.3
    results = pd.read_csv(out / "results.csv").set_index("method_label")
    assert results.loc["gmp", "top1_max"] == 85.4 and results.loc["gmp", "target_sparsity"] == 0.8


# --- 2. alignment ---------------------------------------------------------------------------------

def test_text_columns_are_left_aligned_and_number_columns_right():
    frame = pd.DataFrame({"rank": ["1", "—"], "method": ["gmp", "eigendamage"],
                          "top-1 (%)": ["85.20", "failed (n=1)"],
                          "Δ dense": ["+0.10", "no dense run"], "seed": [0, 1],
                          "error": ["loss became NaN", None]})
    assert to_markdown(frame, index=False).splitlines() == [
        "| rank | method      |    top-1 (%) |      Δ dense | seed | error           |",
        "|-----:|:------------|-------------:|-------------:|-----:|:----------------|",
        "|    1 | gmp         |        85.20 |        +0.10 |    0 | loss became NaN |",
        "|    — | eigendamage | failed (n=1) | no dense run |    1 | —               |",
    ]


def test_the_leaderboards_method_column_is_left_aligned(tmp_path):
    _, out = _report(tmp_path, [_result("dense", 0.0, 0, 94.0), _result("gmp", 0.9, 0, 80.0)])
    board = (out / "leaderboard.md").read_text()
    lines = board[board.index("### 90% target sparsity"):].splitlines()
    header, rule, row = lines[2:5]
    cols = [c.strip() for c in header.strip("|").split("|")]
    align = dict(zip(cols, rule.strip("|").split("|"), strict=True))
    assert align["method"].startswith(":") and not align["method"].endswith(":")
    for col in ("rank", "top-1 (%)", "Δ dense", "nonzero params", "train FLOPs"):
        assert align[col].endswith(":") and not align[col].startswith(":"), col
    assert row.startswith("|    1 | gmp    |")


# --- 3. the dense reference of a partial report --------------------------------------------------

def _grid(tmp_path: Path, name: str, methods: list[str]) -> Path:
    grid = tmp_path / f"{name}.toml"
    grid.write_text(f'name = "{name}"\n[axes]\nmodels = ["{MODEL}"]\ndatasets = ["{DATA}"]\n'
                    f"methods = {json.dumps(methods)}\nsparsities = [0.9]\nseeds = [0]\n"
                    "[train]\nepochs = 2\n")
    return grid


def _train(root: Path, grid: Path, top1: dict[str, float]) -> None:
    for run in select(load_grid(str(grid)), {}):
        config = resolve_hparams(run.config)
        body = _result(config.method.name, config.sparsity.target, 0, top1[config.method.name],
                       train=to_dict(config)["train"])
        _root(root, [body | {"run_id": run.run_id, "config": to_dict(config)}])


def _rows_90(out: Path) -> list[list[str]]:
    return _md_rows((out / "leaderboard.md").read_text(), "### 90% target sparsity")


def test_a_report_without_dense_in_its_selection_still_measures_against_dense(tmp_path):
    full = _grid(tmp_path, "full", ["dense", "static"])
    root = tmp_path / "root"
    _train(root, full, {"dense": 80.0, "static": 81.5})
    # dense: train FLOPs 1e9; static at 90%: 1e9 * (1 - 0.45) = 0.55e9 (the writer's rule).
    expected = [["1", "static", "81.50", "+1.50", "0.9000", "602", "2", "0.55×"]]
    assert main(["report", str(full), "--only", "method=static", "--root", str(root),
                 "--out", str(tmp_path / "a"), "--quiet"]) == 0
    assert _rows_90(tmp_path / "a") == expected
    board = (tmp_path / "a" / "leaderboard.md").read_text()
    assert ("Dense reference: `dense`, top-1 80.00 (not in this selection; found under the "
            "root).") in board
    # A grid without dense at all: the root's dense run of the same recipe.
    sparse = _grid(tmp_path, "sparse", ["static"])
    assert main(["report", str(sparse), "--root", str(root), "--out", str(tmp_path / "b"),
                 "--quiet"]) == 0
    assert _rows_90(tmp_path / "b") == expected


def test_without_a_dense_run_the_columns_say_why(tmp_path):
    sparse = _grid(tmp_path, "sparse", ["static"])
    root = tmp_path / "root"
    _train(root, sparse, {"static": 81.5})
    assert main(["report", str(sparse), "--root", str(root), "--out", str(tmp_path / "a"),
                 "--quiet"]) == 0
    (row,) = _rows_90(tmp_path / "a")
    assert (row[3], row[-1]) == ("no dense run", "no dense run")
    assert "Dense reference: none (no dense run)" in (tmp_path / "a" / "leaderboard.md").read_text()
    # A dense run trained otherwise (5 epochs, not 2) is not this recipe's reference.
    _root(root, [_result("dense", 0.0, 0, 90.0, train={"epochs": 5})])
    assert main(["report", str(sparse), "--root", str(root), "--out", str(tmp_path / "b"),
                 "--quiet"]) == 0
    (row,) = _rows_90(tmp_path / "b")
    assert (row[3], row[-1]) == ("no dense run of this recipe", "no dense run of this recipe")


# --- 4. one more recipe under a pinned label ---------------------------------------------------

def _epochs(bodies, label: str, epochs: int) -> list[dict]:
    return [b | {"config": b["config"] | {"train": {"epochs": epochs}},
                 "run_id": f"{b['run_id']}-e{epochs}"}
            for b in bodies if b["method_label"] == label]


def test_another_recipe_under_a_pinned_label_is_one_recipe_differs_per_cell(tmp_path):
    baseline = tc._pinned(tmp_path)
    # The root keeps the pinned runs and gains gmp with 5 epochs: the report splits gmp into
    # 'gmp [train.epochs=3]' and 'gmp [train.epochs=5]'.
    comp = tc._compare(baseline, tmp_path, list(tc.BASE) + _epochs(tc.BASE, "gmp", 5))
    assert comp.counts["missing"] == comp.counts["new"] == 0
    assert comp.counts["recipe differs"] == 1 and comp.failed
    found = tc._by_label(comp)
    assert found[("gmp", 0.9)].verdict == "ok"  # the pinned recipe, still there, compared
    other = found[("gmp [train.epochs=5]", 0.9)]
    assert other.verdict == "recipe differs"
    assert other.note.startswith("another recipe under the pinned label 'gmp': train.epochs: "
                                 "3 -> 5 (pinned recipe ")
    # A root with only the new recipe: one finding naming the field (from the pin's
    # recipe_config), and the same from a pin that predates recipe_config, as long as the
    # pinned recipe's runs are under the root.
    moved = [b for b in tc.BASE if b["method_label"] != "gmp"] + _epochs(tc.BASE, "gmp", 5)
    comp = tc._compare(baseline, tmp_path, moved, name="moved")
    (cell,) = [c for c in comp.checks if c.verdict != "ok"]
    assert (cell.method_label, cell.verdict) == ("gmp", "recipe differs")
    assert cell.note.startswith("train.epochs: 3 -> 5 (pinned recipe ")
    old = dict(baseline, cells=[{k: v for k, v in c.items() if k != "recipe_config"}
                                for c in baseline["cells"]])
    comp = tc._compare(old, tmp_path, list(tc.BASE) + _epochs(tc.BASE, "gmp", 5), name="old")
    (cell,) = [c for c in comp.checks if c.verdict != "ok"]
    assert "train.epochs: 3 -> 5" in cell.note
    # --only method=gmp still selects the split cells.
    only = {"method": "gmp"}
    runs = check.load_runs(tc._root(tmp_path / "only", list(tc.BASE)
                                    + _epochs(tc.BASE, "gmp", 5)), only)
    comp = check.compare(baseline, check.cells(runs), only=only)
    assert sorted(c.verdict for c in comp.checks) == ["ok", "recipe differs"]


# --- 5. the page says a cell's flag once ---------------------------------------------------------

def test_the_page_shows_a_missed_target_once(tmp_path):
    _, out = _report(tmp_path, [_result("dense", 0.0, 0, 94.0),
                                _result("eigendamage", 0.8, 0, 90.0, sparsity=0.6205),
                                _result("gmp", 0.8, 0, 8.9)])
    page = (out / "index.html").read_text()
    table = page[page.index('<table class="sortable accuracy">'):]
    table = table[:table.index("</table>")]
    eig = table[table.index('<td data-sort="eigendamage">'):]
    eig = eig[:eig.index("</tr>")]
    assert eig.count("missed target") == 1
    assert '90.00<span class="badge missed">missed target (achieved 0.6205)</span>' in eig
    gmp = table[table.index('<td data-sort="gmp">'):]
    assert gmp.count("at chance") == 1
    assert '8.90<span class="badge chance">at chance (10.00% guessing)</span>' in gmp


# --- 6. paths relative to the root ----------------------------------------------------------------

def test_a_report_names_no_absolute_path(tmp_path):
    root, out = _report(tmp_path, [_result("dense", 0.0, 0, 94.0), _result("gmp", 0.9, 0, 80.0),
                                   _result("set", 0.9, 0, None) | {"status": "failed",
                                                                   "error": "loss NaN"}])
    for path in out.rglob("*"):
        if path.suffix in (".md", ".csv", ".html", ".tex"):
            assert str(tmp_path) not in path.read_text(), path.name
    runs = pd.read_csv(out / "runs.csv")
    names = sorted(p.name for p in (root / "runs").iterdir())
    assert sorted(runs["path"]) == [f"runs/{n}" for n in names]
    assert all((root / p / "result.json").is_file() for p in runs["path"])
    assert "Results under `..` (the run root, relative to this folder)" in \
        (out / "README.md").read_text()


# --- 7. flags in accuracy.csv ------------------------------------------------------------------

def test_accuracy_csv_carries_each_cells_flags(tmp_path):
    _, out = _report(tmp_path, [
        _result("dense", 0.0, 0, 94.0),
        _result("eigendamage", 0.8, 0, 90.0, sparsity=0.6205),
        _result("gmp", 0.8, 0, 8.9),
        _result("str", 0.8, 0, 60.0, sparsity=0.7, calibration_converged=False),
        _result("static", 0.8, 0, 70.0),
    ])
    table = pd.read_csv(out / SECTION / "accuracy.csv").set_index("method")
    flags = ["missed_target", "at_chance", "calibration_unconverged", "recipe_split"]
    assert table.loc[:, flags].to_dict("index") == {
        "dense": {"missed_target": False, "at_chance": False, "calibration_unconverged": 0,
                  "recipe_split": False},
        "eigendamage": {"missed_target": True, "at_chance": False,
                        "calibration_unconverged": 0, "recipe_split": False},
        "gmp": {"missed_target": False, "at_chance": True, "calibration_unconverged": 0,
                "recipe_split": False},
        "static": {"missed_target": False, "at_chance": False, "calibration_unconverged": 0,
                   "recipe_split": False},
        "str": {"missed_target": True, "at_chance": False, "calibration_unconverged": 1,
                "recipe_split": False},
    }
    # 0.6205 of 5120 prunable weights: round(0.3795 * 5120) = 1943 kept.
    assert table.loc["eigendamage", "achieved_sparsity"] == 1 - 1943 / 5120
