"""``sparsebench list`` shows the methods, models and datasets other installed packages register
through entry points (bench.plugins), marked with the distribution they come from, read from
the metadata and the source without importing the plugin or torch (issue 12)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bench import catalog
from tests.test_damaged import install_plugin

NETS = '''
import torch  # never imported by `list`: the description is read from the source

from bench.models import ModelSpec

MYNET_SPEC = ModelSpec("mynet", lambda n, shape, ch: torch.nn.Linear(1, n), "a user's own net")
'''
DATA = '''
from bench.data import DatasetSpec

MYDATA = DatasetSpec(name="mydata", load=None, description="a user's own data set")
'''
ENTRY_POINTS = """[sparsebench.methods]
myprune = myplugin:MyPrune
static = myplugin:MyPrune
[sparsebench.models]
mynet = myplugin.nets:MYNET_SPEC
[sparsebench.datasets]
mydata = myplugin.data:MYDATA
"""
# What `list` prints, and then whether it imported torch or the plugin.
SCRIPT = """
import sys
from bench.cli import main
main(["list", sys.argv[1]])
print("imported:", sorted(m for m in ("torch", "myplugin") if m in sys.modules))
"""


def list_with_plugin(tmp_path: Path, what: str) -> list[str]:
    site = tmp_path / "site"
    install_plugin(site)
    (site / "myplugin" / "nets.py").write_text(NETS)
    (site / "myplugin" / "data.py").write_text(DATA)
    (site / "myplugin-0.1.dist-info" / "entry_points.txt").write_text(ENTRY_POINTS)
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": f"{repo}{os.pathsep}{site}"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, what], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120, check=True)
    assert proc.stderr == ""
    return proc.stdout.splitlines()


def test_list_methods_shows_entry_point_methods_with_their_package(tmp_path):
    lines = list_with_plugin(tmp_path, "methods")
    builtin = [f"{name:14s} {text}" for name, text in catalog.methods().items()]
    assert lines == [
        *builtin,
        f"{'myprune':14s} Static magnitude pruning under another name (a user's own method). "
        "[from myplugin 0.1]",
        f"{'static':14s} [from myplugin 0.1: ignored, the built-in static is used]",
        "imported: []",
    ]


def test_list_models_and_datasets_show_entry_points(tmp_path):
    models = list_with_plugin(tmp_path / "m", "models")
    assert models[-3:] == [f"{'mynet':20s} a user's own net [from myplugin 0.1]",
                           models[-2], "imported: []"]
    assert models[-2].startswith("tv:NAME")
    assert models[:-3] == [f"{name:20s} {text}" for name, text in catalog.models().items()]
    datasets = list_with_plugin(tmp_path / "d", "datasets")
    assert datasets[-2:] == [f"{'mydata':14s} a user's own data set [from myplugin 0.1]",
                             "imported: []"]
    assert len(datasets) == len(catalog.datasets()) + 2
