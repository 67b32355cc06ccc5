"""The launcher without a cluster: SLURM settings validation, dependency order, the stop-on-
signal plumbing of a job (checkpoint at a step boundary, then submitit's requeue handler), and
the local executor."""

from __future__ import annotations

import os
import re
import signal
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from bench.config import to_dict
from bench.errors import UserError
from bench.grid import GridRun
from bench.launch import (
    RunCell,
    SlurmSettings,
    StopOnSignal,
    Stopped,
    default_jobs,
    default_local_jobs,
    parse_time,
    plan,
    run_local,
    slurm_settings,
)
from bench.run import MODEL_FILE, run_folder, run_one
from bench.store import LOG, read_result
from tests.helpers import terminal_sigint, tiny_config


@pytest.mark.parametrize(("value", "minutes"), [
    (90, 90), ("90", 90), ("4:00:00", 240), ("1-12:00:00", 2160), ("1-12", 2160),
    ("10:30", 11), ("0:00:59", 1),
])
def test_parse_time(value, minutes):
    assert parse_time(value) == minutes


@pytest.mark.parametrize("value", [0, "0", "soon", "1:2:3:4", 2.5, True])
def test_parse_time_rejects(value):
    with pytest.raises(ValueError):
        parse_time(value)


def test_slurm_settings_from_grid_and_flags(tmp_path):
    grid = tmp_path / "g.toml"
    grid.write_text("[slurm]\npartition = \"gpu\"\ntime = \"2:00:00\"\ngpus = 1\n")
    table = {"partition": "gpu", "time": "2:00:00", "gpus": 1, "mem": "16G",
             "setup": ["module load cuda"], "extra": {"mail-type": "FAIL"}}
    settings = slurm_settings(table, {"partition": "long", "cpus": "8", "time": None},
                              source=str(grid))
    assert settings == SlurmSettings(partition="long", time=120, gpus=1, cpus=8, mem="16G",
                                     setup=("module load cuda",),
                                     extra={"mail-type": "FAIL"})


@pytest.mark.parametrize(("table", "flags", "message"), [
    ({"partiton": "gpu"}, {}, "g.toml:2: unknown key 'partiton' in [slurm]; valid: account,"),
    ({"gpus": -1}, {}, "[slurm] gpus: -1 should be an integer >= 0"),
    ({}, {"cpus": "many"}, "--cpus: [slurm] cpus: 'many' should be an integer >= 1"),
    ({}, {"mem": "lots"}, "[slurm] mem: 'lots' should be a size like 16G"),
    ({}, {"time": "soon"}, "--time: [slurm] time: 'soon' is not a time"),
    ({"extra": {"--mail": 1}}, {}, "is not an sbatch long option name"),
    ({"setup": [1]}, {}, "should be a list of shell lines"),
    ({"time": 2}, {}, "signal_delay_s = 120 must be shorter than the time limit (2 min)"),
])
def test_slurm_settings_reject_bad_values_by_name(tmp_path, table, flags, message):
    grid = tmp_path / "g.toml"
    grid.write_text("[slurm]\n" + "".join(f"{k} = 1\n" for k in table))
    with pytest.raises(UserError) as err:
        slurm_settings(table, flags, source=str(grid))
    assert message in str(err.value)


def test_dependencies_are_added_and_ordered_first(tmp_path):
    eig = GridRun(tiny_config("eigendamage", 0.5, epochs=1), "eigendamage")
    static = GridRun(tiny_config("static", 0.5, epochs=1), "static")
    planned = plan([eig, static], tmp_path)
    dense = replace(eig.config, method=replace(eig.config.method, name="dense", hparams=None),
                    sparsity=replace(eig.config.sparsity, target=0.0))
    dense_id = GridRun(dense, "dense").run_id
    # The dependency ranks just before the run that needs it, so it starts first.
    assert [r.config.method.name for r in planned.order] == ["dense", "static", "eigendamage"]
    assert planned.order[0].run_id == dense_id
    assert [r.run_id for r in planned.added] == [dense_id]
    assert [r.run_id for r in planned.missing] == [static.run_id, eig.run_id]
    assert planned.waits_for == {eig.run_id: [dense_id], static.run_id: [], dense_id: []}
    # Selected explicitly, the dense run is not "added"; grid order otherwise.
    again = plan([static, eig, planned.order[0]], tmp_path)
    assert [r.config.method.name for r in again.order] == ["static", "dense", "eigendamage"]
    assert again.added == []


def _signal_after_enter(monkeypatch, signum):
    """Deliver `signum` to this process as soon as the job has installed its handlers, so the
    trainer sees the stop request at its first step boundary."""
    enter = StopOnSignal.__enter__

    def enter_then_signal(self):
        out = enter(self)
        os.kill(os.getpid(), signum)
        return out

    monkeypatch.setattr(StopOnSignal, "__enter__", enter_then_signal)


def test_sigterm_checkpoints_at_a_step_boundary_and_resumes_identically(
        monkeypatch, tmp_path, data_root):
    config = tiny_config("static", 0.8, epochs=2)
    cell = RunCell(str(tmp_path / "a"), str(data_root), threads=1)
    before = signal.getsignal(signal.SIGTERM)
    with monkeypatch.context() as patch:
        _signal_after_enter(patch, signal.SIGTERM)
        with pytest.raises(Stopped, match="checkpointed after SIGTERM"):
            cell(to_dict(config))
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored
    folder = run_folder(tmp_path / "a", config)
    assert "interrupted: stopped at step 1" in (folder / LOG).read_text()
    assert cell(to_dict(config))["status"] == "ok"
    assert "resuming from phase 0 epoch 0 batch 1" in (folder / LOG).read_text()
    run_one(config, tmp_path / "b", data_root)
    a = torch.load(folder / MODEL_FILE, weights_only=True)
    b = torch.load(run_folder(tmp_path / "b", config) / MODEL_FILE, weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_warning_signal_hands_over_to_submitit_after_the_checkpoint(
        monkeypatch, tmp_path, data_root):
    # Inside a job, submitit's handler for USR2 is installed; it must run only once the run
    # has checkpointed, and its requeue-and-exit must end the job.
    calls = []

    class Requeued(BaseException):
        pass

    def submitit_handler(signum, frame):
        calls.append((signum, (run_folder(tmp_path, config) / "checkpoint.pt").exists()))
        raise Requeued

    config = tiny_config("static", 0.8, epochs=2)
    previous = signal.signal(signal.SIGUSR2, submitit_handler)
    try:
        with monkeypatch.context() as patch:
            _signal_after_enter(patch, signal.SIGUSR2)
            with pytest.raises(Requeued):
                RunCell(str(tmp_path), str(data_root), threads=1)(to_dict(config))
        assert signal.getsignal(signal.SIGUSR2) is submitit_handler
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert calls == [(signal.SIGUSR2, True)]
    assert read_result(run_folder(tmp_path, config)) is None


def test_local_executor_runs_every_run_like_debug(tmp_path, data_root):
    # As many jobs as cores: one torch thread each, as in this process (same arithmetic).
    runs = [GridRun(tiny_config("static", s, epochs=1), "static") for s in (0.5, 0.9)]
    seen = []
    results = run_local(runs, tmp_path / "local", data_root, jobs=default_jobs(),
                        on_result=lambda run, result: seen.append(run.run_id))
    assert sorted(seen) == sorted(r.run_id for r in runs)
    assert [r["status"] for r in results] == ["ok", "ok"]
    for run in runs:
        here = run_one(run.config, tmp_path / "debug", data_root)
        there = read_result(run_folder(tmp_path / "local", run.config))
        assert (here["top1"], here["counts"]) == (there["top1"], there["counts"])
    assert Path(tmp_path / "local" / "local").is_dir()


def test_local_jobs_default_leaves_each_cpu_run_its_threads(monkeypatch):
    """By default the local executor runs cores / cpu_threads at once, never oversubscribing."""
    monkeypatch.setattr("bench.launch.local.default_jobs", lambda: 8)
    one = GridRun(tiny_config("static", 0.5), "static")
    four = GridRun(replace(one.config, train=replace(one.config.train, cpu_threads=4)), "static")
    gpu = replace(four.config, train=replace(four.config.train, cpu_threads=8, device="cuda"))
    assert default_local_jobs([one]) == 8
    assert default_local_jobs([one, four]) == 2
    # GPU runs ignore cpu_threads, so they do not shrink the pool.
    assert default_local_jobs([one, GridRun(gpu, "static")]) == 8
    three = replace(one.config, train=replace(one.config.train, cpu_threads=3))
    assert default_local_jobs([GridRun(three, "static")]) == 2  # 8 // 3
    sixteen = replace(one.config, train=replace(one.config.train, cpu_threads=16))
    assert default_local_jobs([GridRun(sixteen, "static")]) == 1


CTRL_C_GRID = """
name = "c"
[axes]
models = ["mnist1d_cnn"]
datasets = ["mnist1d"]
methods = ["static"]
sparsities = [0.8]
seeds = [0]
[train]
epochs = 40
batch_size = 50
[data]
train_subset = 600
"""


def test_ctrl_c_prints_one_line_and_the_run_checkpoints(tmp_path, data_root):
    """Ctrl-C reaches the launcher and its jobs (one process group, as from a terminal): the
    job checkpoints at its next step as on SIGTERM, the command says one line, and the rerun
    resumes to the weights of an uninterrupted run."""
    import subprocess
    import sys
    import time

    from bench.grid import load_grid
    from tests.helpers import assert_identical, final_weights

    run_one(tiny_config(), tmp_path / "warm", data_root)  # the data cache exists
    grid = tmp_path / "c.toml"
    grid.write_text(CTRL_C_GRID)
    (run,) = load_grid(str(grid)).runs
    root = tmp_path / "root"
    repo = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "bench.cli", "run", str(grid), "--root", str(root),
           "--data-root", str(data_root), "--jobs", "1", "--no-report"]
    proc = subprocess.Popen(cmd, cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=terminal_sigint)
    log = run_folder(root, run.config) / LOG
    deadline = time.time() + 120
    while time.time() < deadline and "epoch=2 " not in (log.read_text() if log.exists() else ""):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 130
    assert "Traceback" not in err
    ours = [line for line in err.splitlines() if line.startswith("sparsebench")]
    assert ours == ["sparsebench: interrupted; rerun the same command to resume"]
    # Stopped at the next step boundary (or the epoch's end, when the signal lands there).
    assert re.search(r"interrupted: stopped (at step|after epoch) \d+", log.read_text())
    assert read_result(run_folder(root, run.config)) is None
    assert (run_folder(root, run.config) / "checkpoint.pt").exists()
    rerun = subprocess.run(cmd, cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)},
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming from phase 0" in log.read_text()
    run_one(run.config, tmp_path / "straight", data_root)
    assert_identical(final_weights(root, run.config),
                     final_weights(tmp_path / "straight", run.config))


def test_ctrl_c_under_the_debug_executor_checkpoints_first(monkeypatch, tmp_path, data_root):
    from bench.launch import run_debug

    config = tiny_config("static", 0.8, epochs=2)
    before = signal.getsignal(signal.SIGINT)
    with monkeypatch.context() as patch:
        _signal_after_enter(patch, signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            run_debug([GridRun(config, "static")], tmp_path, data_root)
    assert signal.getsignal(signal.SIGINT) is before
    folder = run_folder(tmp_path, config)
    assert "interrupted: stopped at step 1" in (folder / LOG).read_text()
    assert (folder / "checkpoint.pt").exists() and read_result(folder) is None
