"""What a user sees of a multi-process run (``train.world_size`` 2, gloo on CPU): the lines its
ranks print at start-up, and what Ctrl-C to the launcher leaves behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from filelock import FileLock

from bench import locks
from bench.config import run_id
from bench.data.mnist1d import cache_path
from bench.run import run_folder, run_one
from bench.store import LOG, read_result
from bench.train import Interrupted
from tests.helpers import terminal_sigint, tiny_config

WAITING = ("sparsebench: waiting for another process using the data cache {} (checking or "
           "writing it)")


def test_only_rank_0_reports_a_wait_on_another_process_s_data_cache_lock(tmp_path, capfd):
    """Another process holds the MNIST-1D cache's lock while both ranks start, then lets go
    without writing it: rank 0 says so once, builds the cache, and rank 1 (which waits for
    rank 0, not the lock) says nothing. Before, each rank printed the line (rank 1 waiting
    for its own rank 0 said 'another process' too)."""
    config = tiny_config("dense", epochs=1, world_size=2)
    data = tmp_path / "data"
    cache = cache_path(config.data, data)
    cache.parent.mkdir(parents=True)
    lock = FileLock(cache.with_name(cache.name + ".lock"), is_singleton=False,
                    thread_local=False)  # released by the thread below
    lock.acquire()
    log = run_folder(tmp_path / "root", config) / LOG

    def release() -> None:
        # Rank 0 logs the run's start just before it loads the data; rank 1 is there too.
        deadline = time.monotonic() + 120
        while not log.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.5)
        lock.release()

    releaser = threading.Thread(target=release)
    releaser.start()
    try:
        result = run_one(config, tmp_path / "root", data)
    finally:
        releaser.join()
    assert result["status"] == "ok"
    out = capfd.readouterr().out.splitlines()
    assert [line for line in out if line.startswith("sparsebench")] == [WAITING.format(cache)]


GRID = """
name = "c"
[axes]
models = ["mnist1d_cnn"]
datasets = ["mnist1d"]
methods = ["set"]
sparsities = [0.9]
seeds = [0]
[train]
epochs = 400  # minutes: only a run that goes on after Ctrl-C trains them
batch_size = 50
world_size = 2
[data]
train_subset = 600
"""


@pytest.mark.parametrize("executor", ["local", "debug"])
def test_ctrl_c_to_the_launcher_says_one_line_once_the_ranks_have_checkpointed(
        tmp_path, data_root, executor):
    """SIGINT to the launcher only (`kill -INT`, or a terminal that signals only it): the
    launcher stops the run (SIGTERM to both ranks; under the local executor through submitit's
    controller and the job), waits for it, and only then says its one line. Before, under the
    local executor its SIGTERM ended a shell in front of the controller: the launcher printed
    that line at once while the job trained on (`status` said "running", a rerun waited for
    it); under the debug executor each rank printed "got SIGTERM; checkpointing at the next
    step" to the terminal, about a signal the user never sent."""
    run_one(tiny_config(), tmp_path / "warm", data_root)  # the data cache exists
    grid = tmp_path / "c.toml"
    grid.write_text(GRID)
    root = tmp_path / "root"
    repo = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "bench.cli", "run", str(grid), "--root", str(root),
           "--data-root", str(data_root), "--no-report", "--executor", executor]
    proc = subprocess.Popen(cmd, cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=terminal_sigint)
    folder = None
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        logs = list((root / "runs").glob("*/log.txt")) if (root / "runs").exists() else []
        if logs and "epoch=1 " in logs[0].read_text():
            folder = logs[0].parent
            break
        time.sleep(0.05)
    assert folder is not None
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=180)
    # Checked the moment the launcher is gone: the run is no longer training.
    training = locks.run_is_training(folder)
    assert proc.returncode == 130
    assert not training
    assert [line for line in (out + err).splitlines() if "sparsebench:" in line] == \
        ["sparsebench: interrupted; rerun the same command to resume"]
    assert re.search(r"interrupted: stopped (at step|after epoch) \d+$",
                     (folder / LOG).read_text().strip())
    assert (folder / "checkpoint.pt").exists() and read_result(folder) is None


def test_a_stop_while_the_ranks_start_is_an_interruption_not_a_failure(tmp_path, data_root):
    """A stop (Ctrl-C) asked before the spawned ranks have their signal handlers (they take
    seconds to import torch) kills them with the SIGTERM passed on: the run is interrupted (the
    command's one line), not a RuntimeError "its 2 processes ended with exit codes [-15, -15]
    and no result" (a traceback under the debug executor)."""
    config = tiny_config("dense", epochs=1, world_size=2)
    with pytest.raises(Interrupted) as stopped:
        run_one(config, tmp_path, data_root, should_stop=lambda: True)
    assert str(stopped.value) == f"run {run_id(config)} stopped in its 2 processes"


def test_ctrl_c_from_a_terminal_while_the_ranks_start_says_one_line(tmp_path, data_root):
    """Ctrl-C from a terminal (SIGINT to the whole process group) while the debug executor's
    ranks import torch: the command's one line and no traceback. Before, SIGINT reached each
    rank before it had a handler: a KeyboardInterrupt traceback per rank in the terminal."""
    from tests.test_ddp import _rank_pid

    run_one(tiny_config(), tmp_path / "warm", data_root)  # the data cache exists
    grid = tmp_path / "c.toml"
    grid.write_text(GRID)
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.cli", "run", str(grid), "--root", str(tmp_path / "root"),
         "--data-root", str(data_root), "--no-report", "--executor", "debug"],
        cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
        preexec_fn=terminal_sigint)
    deadline = time.monotonic() + 120
    while _rank_pid(proc.pid, 1) is None:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(1.0)  # the ranks are importing (torch alone takes seconds), no handler yet
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "Traceback" not in out + err
    assert [line for line in (out + err).splitlines() if "sparsebench:" in line] == \
        ["sparsebench: interrupted; rerun the same command to resume"]
