"""CLI conventions (issue 15): --version, `list` without torch, `show method NAME`, --quiet, and
no traceback when the reader of stdout goes away."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

import bench
from bench import catalog
from bench.cli import main
from bench.data import DATASETS
from bench.grid import builtin_grids, load_grid
from bench.models import MODELS
from methods import REGISTRY
from tests.test_report import RUNS, _result, _write

REPO = Path(__file__).resolve().parents[1]


def _cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], capture_output=True,
                          text=True, timeout=120, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, **kw)


def test_version():
    proc = _cli("--version")
    assert (proc.returncode, proc.stdout) == (0, f"sparsebench {bench.__version__}\n")


@pytest.mark.parametrize("what", ["methods", "models", "datasets", "grids"])
def test_list_does_not_import_torch(what):
    code = (f"import sys; from bench.cli import main; rc = main(['list', {what!r}]); "
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', rc)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.splitlines()[-1] == "NO-TORCH 0", proc.stderr


def test_static_listings_match_the_imported_registries():
    assert list(catalog.methods()) == sorted(REGISTRY)
    for name, cls in REGISTRY.items():
        doc = (cls.__doc__ or sys.modules[cls.__module__].__doc__ or "").strip()
        assert catalog.methods()[name] == doc.splitlines()[0]
    assert catalog.models() == {n: s.description for n, s in sorted(MODELS.items())}
    assert catalog.datasets() == {n: s.description for n, s in sorted(DATASETS.items())}
    grids = catalog.grids()
    assert list(grids) == sorted(builtin_grids())
    for name, (description, axes) in grids.items():
        grid = load_grid(name)
        assert description == grid.description
        runs = grid.runs
        assert axes["models"] == len({r.config.model.name for r in runs})
        assert axes["methods"] == len({r.entry for r in runs})
        assert axes["seeds"] == len({r.config.seed for r in runs})


def test_list_prints_every_method_with_its_first_doc_line(capsys):
    assert main(["list", "methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == sorted(REGISTRY)
    assert lines[sorted(REGISTRY).index("gmp")].startswith(
        "gmp            Gradual magnitude pruning (Zhu & Gupta 2017")


def test_show_method_lists_hyperparameters_defaults_and_source(capsys):
    assert main(["show", "method", "gmp"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "method gmp (methods.gmp.GMP, methods/gmp.py)"
    fields = dataclasses.fields(REGISTRY["gmp"].Hparams)
    assert fields
    for f in fields:
        assert any(line.split()[:3] == [f.name, "=", repr(f.default)] for line in lines), f.name
    assert "Zhu & Gupta 2017" in out  # the docstring, which cites the source


def test_show_method_errors_are_one_line(capsys):
    assert main(["show", "method", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown method 'nope'; valid:" in err[0]
    assert main(["show", "method"]) == 2


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("root")
    for run in RUNS[:6]:
        _write(root, _result(*run))
    return root


def test_quiet_report_prints_one_line(root, capsys):
    out = root / "out"
    assert main(["--quiet", "report", "--root", str(root), "--out", str(out)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"report: {out} ({len(list(p for p in out.rglob('*') if p.is_file()))} files; "
        f"open {out / 'index.html'})"]
    assert main(["report", "--root", str(root), "--out", str(out), "-q"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1
    assert main(["report", "--root", str(root), "--out", str(out)]) == 0
    assert len(capsys.readouterr().out.splitlines()) > 10  # the tables


@pytest.mark.parametrize("args", [["list", "methods"], ["report", "--out", "OUT"]])
def test_closed_pipe_is_no_traceback(root, args):
    args = [str(root / "out2") if a == "OUT" else a for a in args]
    if args[0] == "report":
        args += ["--root", str(root)]
    proc = subprocess.Popen([sys.executable, "-m", "bench.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    proc.stdout.close()  # nobody reads: every write to stdout fails with EPIPE
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141
    assert err == ""


def test_report_into_head_in_a_shell(root):
    proc = subprocess.run(f"{sys.executable} -m bench.cli report --root {root} "
                          f"--out {root / 'out3'} | head -1", shell=True, capture_output=True,
                          text=True, timeout=300, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.startswith(f"report: {root / 'out3'} (")
    assert proc.stderr == ""
