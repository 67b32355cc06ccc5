"""Grid files and the command line: expansion, filters, dry runs, one-line user errors."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bench.cli import main
from bench.errors import UserError
from bench.grid import load_grid, parse_only, select
from bench.store import iter_results
from methods import REGISTRY

GRID = textwrap.dedent("""\
    name = "t"
    [axes]
    models = ["mnist1d_cnn", "mnist1d_mlp"]
    datasets = ["mnist1d"]
    methods = ["dense", "static", "static-erk", "gmp"]
    sparsities = [0.5, 0.9]
    seeds = [0, 1]

    [train]
    epochs = 1
    batch_size = 50

    [data]
    train_subset = 300

    [method.gmp]
    end_fraction = 0.5

    [method.static-erk]
    method = "static"
    sparsity = { distribution = "erk" }
    """)


def write(tmp_path: Path, text: str, name: str = "grid.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_expansion_counts_and_overrides(tmp_path):
    grid = load_grid(str(write(tmp_path, GRID)))
    # dense: 2 models x 2 seeds; three sparse entries x 2 models x 2 seeds x 2 sparsities.
    assert len(grid.runs) == 4 + 3 * 8
    assert len({r.run_id for r in grid.runs}) == len(grid.runs)
    dense = [r for r in grid.runs if r.entry == "dense"]
    assert {r.config.sparsity.target for r in dense} == {0.0}
    gmp = next(r for r in grid.runs if r.entry == "gmp")
    assert gmp.config.method.hparams.end_fraction == 0.5
    erk = [r for r in grid.runs if r.entry == "static-erk"]
    assert {r.config.method.name for r in erk} == {"static"}
    assert {r.config.sparsity.distribution for r in erk} == {"erk"}
    assert all(r.config.train.epochs == 1 and r.config.data.train_subset == 300
               for r in grid.runs)


def test_only_filters(tmp_path):
    grid = load_grid(str(write(tmp_path, GRID)))
    runs = select(grid, parse_only("model=mnist1d_mlp,method=static-erk,sparsity=0.9"))
    assert len(runs) == 2 and {r.config.seed for r in runs} == {0, 1}
    assert len(select(grid, parse_only("method=static"))) == 16  # the name matches variants too
    with pytest.raises(UserError, match="--only takes key=value"):
        parse_only("colour=red")


def test_smoke_grid_covers_every_registered_method():
    grid = load_grid("smoke")
    assert {r.config.method.name for r in grid.runs} == set(REGISTRY)
    assert {r.config.model.name for r in grid.runs} == {"mnist1d_cnn"}
    targets = {r.config.sparsity.target for r in grid.runs if r.config.method.name != "dense"}
    assert targets == {0.5, 0.8, 0.9, 0.95}


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        (('"gmp"]', '"gmpp"]'), r"grid.toml:5: unknown method 'gmpp'; valid: .*dense"),
        (("[0.5, 0.9]", "[0.5, 1.0]"), r"grid.toml:6: sparsity 1.0 is outside \[0, 1\)"),
        (("epochs = 1", "epochs = 1\nepocs = 2"),
         r"grid.toml:11: unknown key 'epocs' in \[train\]"),
        (("[data]", "[data"), r"grid.toml:13: malformed grid"),
        (('"mnist1d_mlp"]', '"mnist1d_mlpx"]'), r"grid.toml:3: unknown model 'mnist1d_mlpx'"),
        (("end_fraction = 0.5", "end_fractoin = 0.5"), r"grid.toml:\d+: unknown key"),
        (("epochs = 1", "epochs = 1\ncpu_threads = 0"),
         r"grid.toml:11: train.cpu_threads = 0: expected an integer >= 1"),
        (("epochs = 1", "epochs = 0"), r"grid.toml:10: train.epochs = 0: expected an integer >= 1"),
    ],
)
def test_bad_grids_name_file_and_line(tmp_path, patch, message):
    path = write(tmp_path, GRID.replace(*patch))
    with pytest.raises(UserError, match=message):
        load_grid(str(path))


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(Path(__file__).parents[1]), "PATH": "/usr/bin"})


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "nosuchgrid"], "unknown grid 'nosuchgrid'"),
        (["run", "BAD", "--dry-run"], "unknown method 'nope'; valid:"),
        (["run", "SPARSE", "--dry-run"], "sparsity -0.5 is outside [0, 1)"),
        (["run", "GRID", "--root", "/proc/forbidden"],
         "output root /proc/forbidden is not writable"),
        (["run", "GRID", "--only", "seed=x", "--dry-run"], "--only seed=x"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(tmp_path, args, message):
    files = {
        "BAD": write(tmp_path, GRID.replace('"gmp"]', '"nope"]'), "bad.toml"),
        "SPARSE": write(tmp_path, GRID.replace("[0.5, 0.9]", "[-0.5]"), "sparse.toml"),
        "GRID": write(tmp_path, GRID),
    }
    args = [str(files.get(a, a)) for a in args]
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_dry_run_lists_runs_and_trains_nothing(tmp_path, capsys):
    path = write(tmp_path, GRID)
    assert main(["run", str(path), "--root", str(tmp_path / "root"), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "28 runs in grid t: 0 already done, 28 to train"
    assert not (tmp_path / "root").exists()


def test_run_then_rerun_trains_nothing_and_reports(tmp_path, capsys, data_root):
    grid = GRID.replace('models = ["mnist1d_cnn", "mnist1d_mlp"]', 'models = ["mnist1d_mlp"]')
    grid = grid.replace("seeds = [0, 1]", "seeds = [0]")
    path = write(tmp_path, grid)
    root = tmp_path / "root"
    args = ["run", str(path), "--root", str(root), "--data-root", str(data_root),
            "--executor", "debug"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "7 to run" in first
    report = root / "report" / "mnist1d_mlp-mnist1d"
    for name in ("accuracy.md", "accuracy.csv", "params.png", "params.svg", "macs.png",
                 "macs.svg"):
        assert (report / name).stat().st_size > 0, name
    labels = sorted(r["method_label"] for _, r in iter_results(root))
    assert labels == ["dense", "gmp", "gmp", "static", "static", "static-erk", "static-erk"]
    assert main(args) == 0
    assert "0 to run" in capsys.readouterr().out
    assert main(["status", str(path), "--root", str(root)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "7 done, 0 failed, 0 partial, 0 missing"


def test_list_commands(capsys):
    assert main(["list", "methods"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names == sorted(REGISTRY)
    assert main(["list", "grids"]) == 0
    assert "smoke" in capsys.readouterr().out
