"""`sparsebench check`: pinning a baseline and the regression rules.

Result roots are built from synthetic result.json files written with the store's own atomic
writer (as tests/test_report.py does); every tolerance below is worked out by hand from the
inputs, not by calling the code under test.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from bench import check, store
from bench.cli import main
from bench.config import run_id, to_dict
from bench.errors import UserError
from bench.grid import parse_only
from bench.train import resolve_hparams
from tests.helpers import tiny_config

MODEL, DATA = "mnist1d_cnn", "mnist1d"
PRUNABLE, OTHER = 10_000, 300


def _result(label: str, target: float, seed: int, top1: float | None, kept: int | None = None,
            method: str | None = None, status: str = "ok") -> dict:
    method = method or label.split("-")[0]
    config = {
        "data": {"name": DATA}, "model": {"name": MODEL, "width": 1.0},
        "method": {"name": method, "hparams": {}}, "train": {"epochs": 3},
        "sparsity": {"target": target, "layer_policy": "all", "distribution": "default"},
        "seed": seed,
    }
    body = {"schema": 1, "run_id": f"{label}-{target}-{seed}", "status": status,
            "config": config, "method_label": label, "device": "cpu",
            "versions": {"git": "abc1234", "torch": "2.9.0", "python": "3.11.2"}}
    if status == "failed":
        return body | {"error": "loss became NaN"}
    kept = PRUNABLE - round(target * PRUNABLE) if kept is None else kept
    return body | {
        "error": None, "top1": top1, "top5": None, "test_loss": 0.5,
        "counts": {"params_total": PRUNABLE + OTHER, "params_prunable": PRUNABLE,
                   "params_nonzero": kept + OTHER, "sparsity": 1 - kept / PRUNABLE,
                   "macs": 5 * kept, "flops": 10 * kept, "macs_dense": 5 * PRUNABLE},
        "layers": [], "train_flops": 1e9, "wall_time_s": 1.0,
    }


def _root(path: Path, runs: list[dict]) -> Path:
    for body in runs:
        folder = store.run_dir(path, body["run_id"].replace(".", "p"), "x")
        store.atomic_write_json(folder / store.RESULT, body)
    return path


# The baseline grid. gmp at 0.9: top-1 80/81/82 (mean 81, std 1), 1000 weights kept every seed.
# static at 0.9: 70/72 (mean 71, std sqrt(2)). dense: 90/90.5/91 (std 0.5). set at 0.5: one seed.
# str at 0.9: counts vary over seeds (kept 1000, 1010, 1020 -> sparsity 0.9, 0.899, 0.898).
BASE = (
    [_result("dense", 0.0, s, t) for s, t in enumerate((90.0, 90.5, 91.0))]
    + [_result("gmp", 0.9, s, t) for s, t in enumerate((80.0, 81.0, 82.0))]
    + [_result("static", 0.9, s, t) for s, t in enumerate((70.0, 72.0))]
    + [_result("set", 0.5, 0, 85.0)]
    + [_result("str", 0.9, s, 75.0 + s, kept=1000 + 10 * s) for s in range(3)]
)
# Median of the four multi-seed stds: dense 0.5, gmp 1, static sqrt(2), str 1 -> 1.0.
DEFAULT_STD = 1.0


def _pinned(tmp_path: Path, runs=BASE, **kw) -> dict:
    baseline, _ = check.pin(_root(tmp_path / "base", list(runs)), **kw)
    return baseline


def _compare(baseline: dict, tmp_path: Path, runs, name="cur", **kw) -> check.Comparison:
    current = check.cells(check.load_runs(_root(tmp_path / name, list(runs))))
    return check.compare(baseline, current, **kw)


def _by_label(comp: check.Comparison) -> dict[tuple[str, float], check.CellCheck]:
    return {(c.method_label, c.target_sparsity): c for c in comp.checks}


def _shift(runs, label: str, delta: float) -> list[dict]:
    out = []
    for body in runs:
        if body["method_label"] == label and body["status"] == "ok":
            body = body | {"top1": body["top1"] + delta}
        out.append(body)
    return out


# --- tolerance math ---------------------------------------------------------------------------
def test_tolerance_formula_by_hand():
    # n >= 2 on both sides: 3 * sqrt(1/3 + 4/3) = 3 * sqrt(5/3)
    assert check.tolerance(1.0, 3, 2.0, 3, default_std=9.0) == pytest.approx(3.872983346207417)
    # n = 1 on the current side only: that side takes default_std 0.8
    assert check.tolerance(1.0, 3, None, 1, default_std=0.8) == pytest.approx(
        3 * math.sqrt(1 / 3 + 0.64), rel=1e-15)
    # n = 1 on both sides: 3 * 0.8 * sqrt(2)
    assert check.tolerance(None, 1, None, 1, default_std=0.8) == pytest.approx(3.394112549695428)
    # the floor wins when the seeds agree closely
    assert check.tolerance(0.1, 3, 0.1, 3, default_std=1.0) == 0.5
    # k and floor are parameters
    assert check.tolerance(1.0, 4, 1.0, 4, default_std=1.0, sigmas=2, floor=0) == pytest.approx(
        2 * math.sqrt(0.5))
    assert check.tolerance(1.0, 4, 1.0, 4, default_std=1.0, sigmas=2, floor=5) == 5


# --- pinning ----------------------------------------------------------------------------------
def test_pin_records_cells_and_default_std(tmp_path):
    baseline = _pinned(tmp_path)
    assert baseline["schema"] == check.SCHEMA and baseline["kind"] == check.KIND
    assert baseline["default_std"] == DEFAULT_STD
    assert baseline["default_std_source"] == "median top-1 std of 4 multi-seed cells"
    # str's is the only cell whose counts varied: its sparsity std is std(0.9, 0.899, 0.898)
    assert baseline["default_sparsity_std"] == pytest.approx(0.001, rel=1e-9)
    src = baseline["pinned_from"]
    assert (src["runs"], src["git"], src["torch"], src["device"]) == (
        12, ["abc1234"], ["2.9.0"], ["cpu"])
    cells = {(c["method_label"], c["target_sparsity"]): c for c in baseline["cells"]}
    assert list(cells) == [("dense", 0.0), ("gmp", 0.9), ("set", 0.5), ("static", 0.9),
                           ("str", 0.9)]
    gmp = cells[("gmp", 0.9)]
    assert (gmp["top1_mean"], gmp["top1_std"], gmp["n"], gmp["seeds"]) == (81.0, 1.0, 3,
                                                                          [0, 1, 2])
    assert (gmp["params_nonzero"], gmp["counts_rule"], gmp["counts_constant"]) == (
        1300, "exact", True)
    assert gmp["achieved_sparsity"] == pytest.approx(0.9, abs=1e-15)
    assert gmp["macs"] == 5000 and gmp["achieved_sparsity_std"] is None
    assert cells[("static", 0.9)]["top1_std"] == pytest.approx(math.sqrt(2))
    assert cells[("set", 0.5)]["top1_std"] is None and cells[("set", 0.5)]["n"] == 1
    strc = cells[("str", 0.9)]
    assert (strc["counts_rule"], strc["counts_constant"], strc["params_nonzero"]) == (
        "sigma", False, 1310)
    assert strc["achieved_sparsity"] == pytest.approx(0.899)


def test_pin_single_seed_needs_default_std_and_learned_methods_use_sigma(tmp_path):
    runs = [_result("gmp", 0.9, 0, 80.0), _result("str", 0.9, 0, 75.0, kept=1003),
            _result("gmp", 0.8, 0, 1.0, status="failed")]
    root = _root(tmp_path / "r", runs)
    with pytest.raises(UserError, match="pass --default-std"):
        check.pin(root)
    baseline, notes = check.pin(root, default_std=0.7)
    assert baseline["default_std"] == 0.7 and baseline["default_std_source"] == "--default-std"
    assert baseline["default_sparsity_std"] == check.FALLBACK_SPARSITY_STD
    assert any("1 cells whose every seed failed" in n for n in notes)
    rules = {c["method_label"]: c["counts_rule"] for c in baseline["cells"]}
    # one seed cannot show STR's counts varying; its method can
    assert rules == {"gmp": "exact", "str": "sigma"}


def test_pin_is_byte_stable_with_sorted_keys(tmp_path):
    root = _root(tmp_path / "r", list(BASE))
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    check.write_baseline(a, check.pin(root)[0])
    check.write_baseline(b, check.pin(root)[0])
    assert a.read_bytes() == b.read_bytes()
    text = a.read_text()
    data = json.loads(text)
    # fixed key order, metadata before cells; number lists on one line
    assert list(data) == ["schema", "kind", "pinned_from", "pinned_with", "fingerprint",
                          "default_std",
                          "default_std_source", "default_sparsity_std",
                          "default_sparsity_std_source", "cells"]
    assert list(data["cells"][0])[:5] == ["model", "dataset", "method", "method_label",
                                          "target_sparsity"]
    assert '"seeds": [0, 1, 2],' in text and '"git": ["abc1234"],' in text
    tricky = {"a": ["x]y", "z"], "b": [1.5, -2], "c": [], "d": [[1], {"e": [2, 3]}]}
    assert json.loads(check.dumps(tricky)) == tricky
    assert '"b": [1.5, -2]' in check.dumps(tricky)
    assert json.loads(check.dumps(data)) == data
    assert check.load_baseline(a) == data


# --- accuracy rule ----------------------------------------------------------------------------
def test_drop_just_beyond_tol_fails_and_just_within_passes(tmp_path):
    baseline = _pinned(tmp_path)
    tol = 3 * math.sqrt(1 / 3 + 1 / 3)  # gmp: s = 1, n = 3 on both sides (shift keeps the std)
    beyond = _by_label(_compare(baseline, tmp_path, _shift(BASE, "gmp", -(tol + 0.01)), "a"))
    within = _by_label(_compare(baseline, tmp_path, _shift(BASE, "gmp", -(tol - 0.01)), "b"))
    assert beyond["gmp", 0.9].tol == pytest.approx(tol)
    assert beyond["gmp", 0.9].delta == pytest.approx(-(tol + 0.01))
    assert beyond["gmp", 0.9].verdict == "regressed"
    assert within["gmp", 0.9].verdict == "ok"
    assert all(c.verdict == "ok" for k, c in within.items())


def test_single_seed_cell_uses_default_std_and_improvements_pass(tmp_path):
    baseline = _pinned(tmp_path)
    tol = 3 * math.sqrt(2) * DEFAULT_STD  # set at 0.5: n = 1 on both sides
    runs = _shift(_shift(BASE, "set", -(tol + 0.01)), "static", +5.0)
    comp = _compare(baseline, tmp_path, runs)
    cells = _by_label(comp)
    assert cells["set", 0.5].tol == pytest.approx(tol)
    assert cells["set", 0.5].verdict == "regressed"
    # static: 3 * sqrt(2/2 + 2/2) = 4.243 < 5
    assert cells["static", 0.9].tol == pytest.approx(3 * math.sqrt(2))
    assert cells["static", 0.9].verdict == "improved"
    assert comp.counts == {"recipe differs": 0, "n changed": 0, "not identical": 0,
                           "regressed": 1, "counts changed": 0, "failed": 0, "improved": 1,
                           "ok": 3, "missing": 0, "new": 0}
    assert comp.failed
    only_improved = _compare(baseline, tmp_path, _shift(BASE, "static", +5.0), "c")
    assert not only_improved.failed
    assert check.summary_line(only_improved) == (
        "0 regressed, 0 counts changed, 0 failed, 1 improved, 4 within tolerance, "
        "0 missing, 0 new")


# --- count rules ------------------------------------------------------------------------------
def test_changed_nonzero_count_fails_even_with_same_accuracy(tmp_path):
    baseline = _pinned(tmp_path)
    runs = [b if not (b["method_label"] == "gmp" and b["config"]["seed"] == 1)
            else _result("gmp", 0.9, 1, 81.0, kept=1001) for b in BASE]
    comp = _compare(baseline, tmp_path, runs)
    gmp = _by_label(comp)["gmp", 0.9]
    assert (gmp.accuracy, gmp.counts, gmp.verdict) == ("ok", "changed", "counts changed")
    assert (gmp.cur_nonzero_min, gmp.cur_nonzero_max, gmp.base_nonzero) == (1300, 1301, 1300)
    assert comp.failed
    rows = check.table_rows(comp)
    assert rows == [["mnist1d_cnn", "mnist1d", "gmp", "0.9", "params_nonzero", "1300",
                     "1300..1301", "+1", "0", "counts changed", "exact rule"]]


def test_learned_counts_compare_sparsity_with_sigma_rule(tmp_path):
    baseline = _pinned(tmp_path)
    # str: sparsity std 0.001 at n = 3 on both sides -> tol = 3 * 0.001 * sqrt(2/3) = 0.00245
    tol = 3 * 0.001 * math.sqrt(2 / 3)

    def moved(kept_shift):
        return [b if b["method_label"] != "str"
                else _result("str", 0.9, b["config"]["seed"], b["top1"],
                             kept=b["counts"]["params_nonzero"] - OTHER + kept_shift)
                for b in BASE]

    within = _by_label(_compare(baseline, tmp_path, moved(24), "a"))["str", 0.9]
    beyond = _by_label(_compare(baseline, tmp_path, moved(-25), "b"))["str", 0.9]
    assert within.sparsity_tol == pytest.approx(tol)
    assert within.sparsity_delta == pytest.approx(-0.0024)
    assert (within.counts, within.verdict) == ("ok", "ok")
    assert beyond.sparsity_delta == pytest.approx(0.0025)
    assert (beyond.counts, beyond.verdict) == ("changed", "counts changed")


# --- status -----------------------------------------------------------------------------------
def test_missing_new_and_failed_cells(tmp_path):
    baseline = _pinned(tmp_path)
    runs = ([b for b in BASE if b["method_label"] not in ("set", "static")]
            + [_result("static", 0.9, s, 0.0, status="failed") for s in (0, 1)]
            + [_result("snip", 0.9, 0, 60.0)]
            + [_result("dense", 0.0, 3, 1.0, status="failed")])
    comp = _compare(baseline, tmp_path, runs)
    verdicts = {k: c.verdict for k, c in _by_label(comp).items()}
    assert verdicts == {("dense", 0.0): "ok", ("gmp", 0.9): "ok", ("set", 0.5): "missing",
                        ("static", 0.9): "failed", ("snip", 0.9): "new", ("str", 0.9): "ok"}
    assert _by_label(comp)["dense", 0.0].note == "1 of 4 seeds failed"
    assert _by_label(comp)["static", 0.9].note == "2 of 2 seeds failed"
    assert comp.failed
    # missing allowed, failed still fails; new never does
    assert check.compare(baseline, check.cells(check.load_runs(tmp_path / "cur")),
                         allow_missing=True).failed
    only_new_and_missing = ([b for b in BASE if b["method_label"] != "set"]
                            + [_result("snip", 0.9, 0, 60.0)])
    loose = _compare(baseline, tmp_path, only_new_and_missing, "b", allow_missing=True)
    assert (loose.counts["missing"], loose.counts["new"], loose.failed) == (1, 1, False)
    assert _compare(baseline, tmp_path, only_new_and_missing, "c").failed


def test_a_different_recipe_fails_whatever_the_accuracy(tmp_path):
    """Cells are keyed by method label and sparsity; the pin also records each cell's recipe
    (its config's run id without the seed), so a rerun with other settings is not compared as
    if it were the same experiment."""
    baseline = _pinned(tmp_path)
    gmp = next(c for c in baseline["cells"] if c["method_label"] == "gmp")
    assert gmp["recipe"] == check.recipe_id(BASE[3]["config"])
    assert len(gmp["recipe"]) == 12
    longer = [b | {"config": b["config"] | {"train": {"epochs": 5}}}
              if b["method_label"] == "gmp" else b for b in BASE]
    comp = _compare(baseline, tmp_path, longer)
    cell = _by_label(comp)[("gmp", 0.9)]
    assert cell.verdict == "recipe differs" and comp.failed
    assert cell.delta == 0.0  # same accuracy: the recipe alone fails it
    assert gmp["recipe"] in cell.note
    assert comp.counts["recipe differs"] == 1 and comp.counts["ok"] == 4
    assert check.summary_line(comp).startswith("1 recipe differs, 0 regressed")
    # The seed is not part of the recipe: other seeds of the same config compare normally.
    reseeded = [b | {"config": b["config"] | {"seed": b["config"]["seed"] + 10}} for b in BASE]
    assert not _compare(baseline, tmp_path, reseeded, name="reseeded").failed
    # A config that no longer parses (a method since removed) has no recipe to compare.
    assert check.recipe_id({"method": {"name": "no_such_method"}}) is None


@pytest.mark.parametrize("method", ["gmp", "str", "thin_dense", "eigendamage"])
def test_recipe_of_a_seed_zero_run_is_its_run_id(method):
    """What result.json stores (every field spelled out) parses back to the same identity."""
    config = resolve_hparams(tiny_config(method, 0.8))
    assert check.recipe_id(to_dict(config)) == run_id(config)
    assert check.recipe_id(to_dict(replace(config, seed=3))) == run_id(config)


def test_only_filters_baseline_and_results_alike(tmp_path):
    baseline = _pinned(tmp_path)
    partial = [b for b in BASE if b["method_label"] == "gmp"]
    root = _root(tmp_path / "cur", partial)
    only = {"method": "gmp", "sparsity": "0.9"}
    comp = check.compare(baseline, check.cells(check.load_runs(root, only)), only=only)
    assert [(c.method_label, c.verdict) for c in comp.checks] == [("gmp", "ok")]
    # by seed: the 3-seed baseline cell is cut down to that seed (82.0), default_std both sides
    only = {"method": "gmp", "seed": "2"}
    comp = check.compare(baseline, check.cells(check.load_runs(root, only)), only=only)
    (gmp,) = comp.checks
    assert (gmp.base_n, gmp.cur_n, gmp.cur_top1, gmp.delta) == (1, 1, 82.0, 0.0)
    assert gmp.tol == pytest.approx(3 * math.sqrt(2) * DEFAULT_STD)
    with pytest.raises(UserError, match="--only seed=x"):
        check.load_runs(root, parse_only("seed=x"))


# --- files and CLI ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "is not valid JSON (line 1"),
        ('{"kind": "other"}', "is not a sparsebench baseline"),
        ('{"kind": "sparsebench-baseline", "schema": 7}', "has schema 7"),
        ('{"kind": "sparsebench-baseline", "schema": 1, "default_std": 1, '
         '"default_sparsity_std": 0, "cells": [{"model": "m"}]}', "cell 0 has no valid 'dataset'"),
    ],
)
def test_malformed_baseline_is_one_user_error(tmp_path, text, message):
    path = tmp_path / "b.json"
    path.write_text(text)
    with pytest.raises(UserError) as err:
        check.load_baseline(path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_cli_in_process_errors_and_csv(tmp_path, capsys):
    base = _root(tmp_path / "base", list(BASE))
    file = tmp_path / "pinned" / "b.json"
    assert main(["check", "--baseline", str(file), "--root", str(base), "--pin"]) == 0
    assert main(["check", "--baseline", str(file), "--root", str(tmp_path / "none")]) == 2
    assert "no results under" in capsys.readouterr().err
    assert main(["check", "--baseline", str(file), "--root", str(base), "--sigmas", "0"]) == 2
    assert main(["check", "--baseline", str(file), "--root", str(base),
                 "--default-std", "1"]) == 2
    assert main(["check", "--baseline", str(tmp_path / "nope.json"), "--root", str(base)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and err[2].startswith(f"sparsebench: error: baseline {tmp_path}")
    cur = _root(tmp_path / "cur", _shift(BASE, "dense", -3.0))
    out = tmp_path / "cmp.csv"
    assert main(["check", "--baseline", str(file), "--root", str(cur), "--out", str(out)]) == 1
    with out.open() as fh:
        rows = {(r["method_label"], r["target_sparsity"]): r for r in csv.DictReader(fh)}
    assert len(rows) == 5
    dense = rows["dense", "0.0"]
    assert dense["verdict"] == "regressed" and float(dense["delta"]) == pytest.approx(-3.0)
    assert (dense["base_n"], dense["cur_n"], dense["base_nonzero"]) == ("3", "3", "10300")
    assert float(dense["tol"]) == pytest.approx(3 * math.sqrt(0.25 / 3 * 2))
    assert rows["gmp", "0.9"]["verdict"] == "ok" and rows["gmp", "0.9"]["counts_rule"] == "exact"


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(Path(__file__).parents[1]), "PATH": "/usr/bin"})


def test_cli_exit_codes_and_table(tmp_path):
    base = _root(tmp_path / "base", list(BASE))
    pin = run_cli("check", "--baseline", "b.json", "--root", str(base), "--pin", cwd=tmp_path)
    assert pin.returncode == 0, pin.stderr
    assert f"pinned 5 cells from 12 runs under {base} to b.json" in pin.stdout

    same = run_cli("check", "--baseline", "b.json", "--root", str(base), cwd=tmp_path)
    assert same.returncode == 0, same.stderr
    lines = same.stdout.splitlines()
    assert lines[1].startswith("rule: sigma fallback (the pin records no fingerprint): regression "
                               "if top-1 mean < baseline - tol, tol = max(0.5, "
                               "3 * sqrt(s_b^2/n_b + s_c^2/n_c))")
    assert lines[-2:] == ["0 regressed, 0 counts changed, 0 failed, 0 improved, "
                          "5 within tolerance, 0 missing, 0 new", "check passed"]

    cur = _root(tmp_path / "cur", [b for b in _shift(BASE, "gmp", -3.0)
                                   if b["method_label"] != "set"])
    bad = run_cli("check", "--baseline", "b.json", "--root", str(cur), cwd=tmp_path)
    assert bad.returncode == 1, bad.stderr
    table = [line for line in bad.stdout.splitlines() if line.startswith("|")]
    assert [c.strip() for c in table[2].split("|")[1:-1]] == [
        "mnist1d_cnn", "mnist1d", "gmp", "0.9", "top1", "81.00 (n=3)", "78.00 (n=3)", "-3.00",
        "2.45", "regressed", ""]
    assert [c.strip() for c in table[3].split("|")[3:-1]] == [
        "set", "0.5", "top1", "85.00 (n=1)", "-", "", "", "missing", ""]
    assert len({len(line) for line in table}) == 1  # aligned
    assert "1 regressed, 0 counts changed, 0 failed, 0 improved, 3 within tolerance, " \
           "1 missing, 0 new" in bad.stdout

    allowed = run_cli("check", "--baseline", "b.json", "--root", str(cur), "--allow-missing",
                      "--only", "method=set", cwd=tmp_path)
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    assert "1 missing (allowed)" in allowed.stdout

    (tmp_path / "broken.json").write_text('{"kind": "sparsebench-baseline", "schema": 1,')
    broken = run_cli("check", "--baseline", "broken.json", "--root", str(base), cwd=tmp_path)
    assert broken.returncode == 2 and broken.stdout == ""
    assert broken.stderr.strip().splitlines() == [
        "sparsebench: error: baseline broken.json is not valid JSON (line 1: Expecting property "
        "name enclosed in double quotes)"]
