"""``sparsebench run GRID --preflight`` on CPU with synthetic data and a tiny step count:
every run built and counted, one timing per recipe, the estimate's arithmetic, errors reported
per run, nothing written."""

from __future__ import annotations

import textwrap

import pytest

from bench.cli import main
from bench.config import run_id
from bench.grid import load_grid
from bench.models import build_model
from bench.preflight import build, format_report, preflight, recipe_key

GRID = textwrap.dedent("""\
    name = "pf"
    [axes]
    models = ["resnet8"]
    datasets = ["cifar10"]
    methods = ["dense", "static", "eigendamage"]
    sparsities = [0.5, 0.9]
    seeds = [0, 1]
    [train]
    epochs = 4
    batch_size = 8
    optimizer = "sgd"
    lr = 0.1
    [method.eigendamage]
    finetune_epochs = 2
    """)


def test_preflight_builds_every_run_and_times_each_recipe_once(tmp_path, capsys):
    path = tmp_path / "pf.toml"
    path.write_text(GRID)
    grid = load_grid(str(path))
    assert len(grid.runs) == 2 + 2 * 2 * 2
    # Three recipes: dense, static (both targets: same network and recipe), eigendamage.
    assert len({recipe_key(build(r)) for r in grid.runs}) == 3
    empty = tmp_path / "no-data"          # CIFAR-10 absent: synthetic data of its shape
    estimates = preflight(grid.runs, steps=1, batch_cap=None, data_root=empty)
    dense_params = sum(p.numel() for p in build_model("resnet8", 10, (3, 32, 32)).parameters())
    by_entry = {}
    for e in estimates:
        assert e.error is None, e.error
        by_entry.setdefault(e.built.run.entry, []).append(e)
        t = e.timing
        assert (t["data"], t["train_size"], t["test_size"], t["batch"]) == \
            ("synthetic", 50_000, 10_000, 8)
        assert e.built.params_total == dense_params
        # the estimate: epochs x examples x step time per example, plus evaluation and setup
        epochs = sum(p["epochs"] for p in t["phases"])
        per = t["step_s"] / 8
        assert e.seconds == pytest.approx(epochs * 50_000 * per + epochs * 10_000 * per / 3
                                          + t["setup_s"])
    assert [p["epochs"] for p in by_entry["dense"][0].timing["phases"]] == [4]
    assert by_entry["eigendamage"][0].timing["phases"] == [{"name": "prune+finetune",
                                                            "epochs": 2}]
    # static at 90%: 90% of the prunable weights are zero
    static90 = next(e for e in by_entry["static"] if e.built.run.config.sparsity.target == 0.9)
    assert static90.built.nominal_nonzero == dense_params - round(0.9 * static90.built
                                                                  .params_prunable)
    # runs of one recipe share one measurement
    assert by_entry["static"][0].timing is by_entry["static"][-1].timing
    lines = format_report(estimates, "pf")
    assert lines[1].startswith(f"{run_id(grid.runs[0].config)}  resnet8")
    total = sum(e.seconds for e in estimates) / 3600
    assert lines[len(estimates) + 1] == (
        f"grid pf: 10 runs, 0 failed preflight; estimated {total:.2f} device-hours on cpu "
        "(step time x examples x epochs + evaluation + setup)")


def test_preflight_reports_a_run_that_cannot_train_and_exits_1(tmp_path, capsys):
    # GraSP needs 10 examples of every class; 30 MNIST-1D examples cannot give them.
    path = tmp_path / "bad.toml"
    path.write_text(textwrap.dedent("""\
        name = "bad"
        [axes]
        models = ["mnist1d_mlp"]
        datasets = ["mnist1d"]
        methods = ["grasp"]
        sparsities = [0.9]
        seeds = [0]
        [data]
        train_subset = 30
        [train]
        batch_size = 10
        """))
    root = tmp_path / "root"
    assert main(["run", str(path), "--preflight", "--preflight-steps", "1",
                 "--root", str(root)]) == 1
    out = capsys.readouterr().out
    assert "FAILED: ValueError: GraSP needs 10 examples of every class" in out
    assert "grid bad: 1 runs, 1 failed preflight" in out
    assert not root.exists()


def test_bad_preflight_flags_are_user_errors(capsys):
    assert main(["run", "smoke", "--preflight", "--preflight-steps", "0"]) == 2
    assert capsys.readouterr().err.strip() == \
        "sparsebench: error: --preflight-steps 0 must be a positive integer"
