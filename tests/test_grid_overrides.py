"""Grid overrides per model, per dataset and per (method, sparsity), their one precedence rule,
``sparsebench show``, and run ids of existing grids unchanged."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from bench.cli import main
from bench.errors import UserError
from bench.grid import load_grid

GRID = textwrap.dedent("""\
    name = "layers"
    [axes]
    models = ["mnist1d_cnn", "mnist1d_mlp"]
    datasets = ["mnist1d", "synthetic"]
    methods = ["dense", "str", "gmp"]
    sparsities = [0.5, 0.9]
    seeds = [0]

    [train]
    epochs = 10
    lr = 0.1
    batch_size = 100

    [by_model.mnist1d_mlp.train]
    lr = 0.2
    batch_size = 64

    [by_dataset.synthetic.train]
    lr = 0.3

    [method.str]
    s_init = -100.0
    weight_decay = 1e-4
    train = { epochs = 20 }

    [method.str.by_model.mnist1d_mlp]
    s_init = -200.0

    [method.str.by_dataset.synthetic]
    train = { lr = 0.4 }

    [method.str.by_sparsity."0.9"]
    weight_decay = 3e-5
    s_init = -3200.0
    train = { warmup_epochs = 2 }
    """)


def find(grid, model, dataset, entry, target):
    (run,) = [r for r in grid.runs if r.config.model.name == model and r.config.data.name
              == dataset and r.entry == entry and r.config.sparsity.target == target]
    return run.config


def test_each_level_overrides_the_one_before_it(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text(GRID)
    grid = load_grid(str(path))
    assert len(grid.runs) == 4 + 2 * 4 * 2
    c = find(grid, "mnist1d_cnn", "mnist1d", "dense", 0.0)
    assert (c.train.lr, c.train.batch_size, c.train.epochs) == (0.1, 100, 10)
    c = find(grid, "mnist1d_mlp", "mnist1d", "dense", 0.0)      # by_model
    assert (c.train.lr, c.train.batch_size) == (0.2, 64)
    c = find(grid, "mnist1d_mlp", "synthetic", "gmp", 0.5)      # by_dataset beats by_model
    assert (c.train.lr, c.train.batch_size, c.train.epochs) == (0.3, 64, 10)
    c = find(grid, "mnist1d_cnn", "mnist1d", "str", 0.5)        # method table
    assert (c.train.epochs, c.method.hparams.s_init, c.method.hparams.weight_decay) == \
        (20, -100.0, 1e-4)
    c = find(grid, "mnist1d_mlp", "mnist1d", "str", 0.5)        # method.by_model
    assert (c.method.hparams.s_init, c.train.lr, c.train.batch_size) == (-200.0, 0.2, 64)
    c = find(grid, "mnist1d_mlp", "synthetic", "str", 0.5)      # method.by_dataset
    assert (c.train.lr, c.method.hparams.s_init) == (0.4, -200.0)
    c = find(grid, "mnist1d_mlp", "synthetic", "str", 0.9)      # method.by_sparsity: last word
    assert (c.method.hparams.s_init, c.method.hparams.weight_decay, c.train.warmup_epochs,
            c.train.lr, c.train.epochs) == (-3200.0, 3e-5, 2, 0.4, 20)
    c = find(grid, "mnist1d_cnn", "mnist1d", "str", 0.9)
    assert (c.method.hparams.s_init, c.train.lr) == (-3200.0, 0.1)


@pytest.mark.parametrize(("extra", "line", "message"), [
    ('[by_model.resnet50.train]\nlr = 1.0\n', 36,
     "'resnet50' is not on the grid's axis; valid: mnist1d_cnn, mnist1d_mlp"),
    ('[by_dataset.mnist1d]\ns_init = 1.0\n', 36,
     "unknown key 's_init' in [by_dataset.mnist1d]; valid: train, data, sparsity, model"),
    ('[method.gmp.by_sparsity."0.8"]\nend_fraction = 0.5\n', 36,
     "not a sparsity of the grid; valid: 0.5, 0.9"),
    ('[method.dense.by_sparsity."0.9"]\ntrain = { lr = 1.0 }\n', 36,
     "method 'dense' ignores the sparsity target"),
    # Hyperparameters are checked where they are set: the key's own line.
    ('[method.gmp.by_model.mnist1d_cnn]\nbogus = 1\n', 37, "unknown key(s) bogus"),
    ('[method.gmp.by_model.mnist1d_cnn]\nend_fraction = 7.5\n', 37,
     "method.gmp.by_model.mnist1d_cnn.end_fraction = 7.5: expected a number in [0, 1]"),
])
def test_bad_overrides_are_one_line_errors_at_their_line(tmp_path, extra, line, message):
    path = tmp_path / "g.toml"
    path.write_text(GRID + extra)
    with pytest.raises(UserError) as info:
        load_grid(str(path))
    text = str(info.value)
    assert text.startswith(f"{path}:{line}: ") and message in text, text
    assert "\n" not in text


def test_existing_run_ids_stay_valid():
    # baselines/pinned/smoke.json was pinned before overrides existed; its cells record each
    # run's id without the seed, which for the smoke grid's seed 0 is the run id itself.
    pinned = json.loads((Path(__file__).parents[1] / "baselines/pinned/smoke.json").read_text())
    runs = load_grid("smoke").runs
    recipes = {c["recipe"] for c in pinned["cells"]}
    # Every smoke run's id is a pinned recipe and vice versa (RigL's cells were pinned with it).
    assert recipes == {r.run_id for r in runs}


def test_show_prints_each_runs_resolved_config(tmp_path, capsys):
    path = tmp_path / "g.toml"
    path.write_text(GRID)
    assert main(["show", str(path), "--only", "model=mnist1d_mlp,dataset=synthetic,"
                 "method=str,sparsity=0.9"]) == 0
    out = capsys.readouterr().out.splitlines()
    run = find(load_grid(str(path)), "mnist1d_mlp", "synthetic", "str", 0.9)
    from bench.config import run_id

    assert out[0] == f"run {run_id(run)}  mnist1d_mlp-synthetic-str-s90-seed0  (entry str)"
    for line in ("  method.hparams.s_init = -3200", "  method.hparams.weight_decay = 3e-05",
                 "  method.hparams.calibration_max_runs = 10", "  train.lr = 0.4",
                 "  train.batch_size = 64", "  train.epochs = 20", "  train.warmup_epochs = 2",
                 "  sparsity.target = 0.9", "  train.no_bn_decay = false"):
        assert line in out, line
    assert out[-1] == "1 runs in grid layers"
    assert main(["show", "smoke", "--only", "method=eigendamage,sparsity=0.5"]) == 0
    out = capsys.readouterr().out.splitlines()
    dense = next(r for r in load_grid("smoke").runs if r.entry == "dense")
    assert f'  after = "{dense.run_id}"  # mnist1d_cnn-mnist1d-dense-s0-seed0' in out
