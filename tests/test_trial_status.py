"""``sparsebench status`` shows the trial trainings of the grid's STR runs (issue 10: the
calibration's trainings were invisible to status): per run the trials its method owns
(``Method.owns_trial``), and once in the summary, each shared trial counted once."""

from __future__ import annotations

import filelock

from bench import store
from bench.cli import main
from bench.config import to_dict
from bench.grid import load_grid
from bench.launch import status
from bench.run import RunHarness
from bench.train import make_method
from bench.trial import LOCK, trial_folder
from tests.helpers import tiny_config

GRID = """
name = "trials"
[axes]
models = ["mnist1d_cnn"]
datasets = ["mnist1d"]
methods = ["str", "static"]
sparsities = [0.5, 0.8]
seeds = [0]
[data]
train_subset = 600
[train]
epochs = 1
batch_size = 50
optimizer = "sgd"
lr = 0.1
"""


def test_status_shows_each_str_runs_calibration_trials(tmp_path, data_root, capsys):
    path = tmp_path / "trials.toml"
    path.write_text(GRID)
    grid = load_grid(str(path))
    root = tmp_path / "root"
    str_runs = [r for r in grid.runs if r.config.method.name == "str"]
    assert [r.config.sparsity.target for r in str_runs] == [0.5, 0.8]
    # Every target of the cell shares the trials: two trained, one in flight.
    method = make_method(str_runs[0].config)
    harness = RunHarness(root, data_root)
    for wd in (1e-2, 3e-2):
        assert not harness.trial_train(method.trial_config(wd)).diverged
    running = method.trial_config(1e-1)
    folder = trial_folder(root, running)
    folder.mkdir(parents=True)
    store.prepare_folder(folder, to_dict(running))
    # A trial no run of the grid asks for (another recipe) is not counted.
    other = tiny_config("static", 0.8, epochs=1)
    trial_folder(root, other).mkdir()
    store.prepare_folder(trial_folder(root, other), to_dict(other))

    done = [trial_folder(root, method.trial_config(wd)) for wd in (1e-2, 3e-2)]
    owned = sorted([(f, "done") for f in done] + [(folder, "running")])
    lock = filelock.FileLock(folder / LOCK, is_singleton=False, thread_local=False)
    with lock.acquire(timeout=0):
        states, _ = status(grid.runs, root)
        assert {(s.run.entry, s.run.config.sparsity.target):
                sorted((t.folder, t.state) for t in s.trials) for s in states} == {
            ("str", 0.5): owned, ("str", 0.8): owned, ("static", 0.5): [], ("static", 0.8): []}
        assert main(["status", str(path), "--root", str(root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.endswith("  trials: 2 done, 1 running") for line in lines[:4]] == \
        [r.config.method.name == "str" for r in grid.runs]
    assert lines[4:] == ["0 done, 0 failed, 0 partial, 4 missing",
                         "calibration trials: 2 done, 1 running"]
    # Released: nobody trains it, so it is partial (the next ask resumes or restarts it).
    assert main(["status", str(path), "--root", str(root), "-q"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "0 done, 0 failed, 0 partial, 4 missing", "calibration trials: 2 done, 1 partial"]

