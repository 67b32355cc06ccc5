"""A failure of the machine is not the method's: it is recorded as an error of its kind and a
plain rerun retries it; a failure of the training stays until --retry-failed; `run` exits 1
when any run of the grid failed and says how many."""

from __future__ import annotations

import os
import signal
import textwrap
import threading
import time
from dataclasses import fields, is_dataclass
from pathlib import Path

import pytest
import torch

import bench.train
from bench import checkpoint, store
from bench.cli import main
from bench.config import DataConfig, ModelConfig, RunConfig, SparsityConfig, TrainConfig
from bench.errors import UserError
from bench.failures import classify
from bench.run import run_folder, run_one
from bench.train import Diverged
from bench.validation import METADATA_KEY
from methods import REGISTRY
from tests.helpers import tiny_config


@pytest.mark.parametrize(("exc", "expected"), [
    (Diverged("loss became NaN/inf in epoch 1"), ("failed", "training")),
    (RuntimeError("mask init exploded"), ("failed", "training")),
    (ValueError("GraSP needs 10 examples of every class"), ("failed", "training")),
    (RuntimeError("CUDA error: device-side assert triggered"), ("failed", "training")),
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
     ("error", "out_of_memory")),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate "
                  "memory: you tried to allocate 1 bytes"), ("error", "out_of_memory")),
    (MemoryError(), ("error", "out_of_memory")),
    (FileNotFoundError(2, "No such file or directory"), ("error", "environment")),
    (OSError(28, "No space left on device"), ("error", "environment")),
    (RuntimeError("CUDA error: invalid device ordinal"), ("error", "environment")),
    (AssertionError("Torch not compiled with CUDA enabled"), ("error", "environment")),
    (UserError("cifar10 not found: looked in /data"), ("error", "input")),
])
def test_classify(exc, expected):
    assert classify(exc) == expected


def test_an_environment_error_is_retried_by_a_plain_rerun_and_resumes(tmp_path, data_root,
                                                                      monkeypatch):
    config = tiny_config("static", 0.5, epochs=2)
    real = bench.train.evaluate
    calls = []

    def full_disk_in_epoch_two(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(bench.train, "evaluate", full_disk_in_epoch_two)
    result = run_one(config, tmp_path, data_root)
    assert (result["status"], result["error_kind"]) == ("error", "environment")
    assert result["error"] == "OSError: [Errno 28] No space left on device"
    folder = run_folder(tmp_path, config)
    # Epoch 1's checkpoint survives: the rerun resumes from it.
    assert checkpoint.load(folder / store.CHECKPOINT)["epoch"] == 1
    monkeypatch.undo()
    again = run_one(config, tmp_path, data_root)  # no retry_failed
    assert again["status"] == "ok"
    assert [h["epoch"] for h in again["history"]] == [1, 2]
    assert "resuming from phase 0 epoch 1" in (folder / store.LOG).read_text()
    uninterrupted = run_one(config, tmp_path / "other", data_root)
    assert again["top1"] == uninterrupted["top1"]
    assert again["counts"] == uninterrupted["counts"]


def test_a_training_failure_stays_until_retry_failed(tmp_path, data_root):
    config = tiny_config("dense", epochs=1, optimizer="sgd", lr=1e30)
    failed = run_one(config, tmp_path, data_root)
    assert (failed["status"], failed["error_kind"]) == ("failed", "training")
    assert run_one(config, tmp_path, data_root) == failed


GRID = textwrap.dedent("""\
    name = "t"
    [axes]
    models = ["mnist1d_mlp"]
    datasets = ["mnist1d"]
    methods = ["dense", "static"]
    sparsities = [0.5]
    seeds = [0]
    [train]
    epochs = 1
    batch_size = 50
    [data]
    train_subset = 300
    [method.static.train]
    optimizer = "sgd"
    lr = 1e30
    """)


def test_run_exits_1_and_says_how_many_failed(tmp_path, data_root, capsys, monkeypatch):
    grid = tmp_path / "grid.toml"
    grid.write_text(GRID)
    root = tmp_path / "root"
    args = ["run", str(grid), "--root", str(root), "--data-root", str(data_root),
            "--executor", "debug", "--no-report"]
    # The dense run's data cannot be read this time: an error of the environment.
    real = bench.train.load_dataset

    def unreadable(cfg, data_root=None):
        if cfg.name == "mnist1d" and not calls:
            calls.append(1)
            raise PermissionError(13, "Permission denied")
        return real(cfg, data_root)

    calls: list[int] = []
    monkeypatch.setattr(bench.train, "load_dataset", unreadable)
    assert main(args) == 1
    out, err = capsys.readouterr()
    assert "ERROR (environment): PermissionError: [Errno 13] Permission denied" in out
    assert "FAILED: Diverged: loss became NaN/inf in epoch 1" in out
    # The last line on stderr (above it: the progress bar).
    assert err.splitlines()[-1:] == ["sparsebench: 2 of 2 runs of grid t failed: 1 in training "
                                "(rerun with --retry-failed to retry); 1 by an error of the "
                                "environment (a plain rerun retries)"]
    # A plain rerun retrains the run that hit the environment, not the diverged one.
    assert main(args) == 1
    out, err = capsys.readouterr()
    assert "grid t: 2 runs, 1 already done, 1 to run under" in out
    assert err.splitlines()[-1:] == ["sparsebench: 1 of 2 runs of grid t failed: 1 in training "
                                "(rerun with --retry-failed to retry)"]
    assert main([*args, "--only", "method=dense"]) == 0


def test_a_run_whose_process_is_killed_makes_run_exit_1(tmp_path, data_root, capsys):
    """A local job killed before it writes a result (kill -9, the OOM killer) is an error of
    the environment: `run` counts it and exits 1. It exited 0 before, since nothing on disk
    said the run failed."""
    grid = tmp_path / "grid.toml"
    grid.write_text(textwrap.dedent("""\
        name = "k"
        [axes]
        models = ["mnist1d_mlp"]
        datasets = ["mnist1d"]
        methods = ["dense"]
        sparsities = [0.0]
        seeds = [0]
        [train]
        epochs = 1000000
        [data]
        train_subset = 100
        """))
    root = tmp_path / "root"
    marker = str(root / "local").encode()
    killed: list[int] = []

    def kill_the_job() -> None:  # the job process is submitit's, started by run_local
        deadline = time.monotonic() + 300
        while not killed and time.monotonic() < deadline:
            for proc in Path("/proc").iterdir():
                try:
                    cmdline = (proc / "cmdline").read_bytes()
                except OSError:
                    continue
                if b"submitit.core._submit" in cmdline and marker in cmdline:
                    os.kill(int(proc.name), signal.SIGKILL)
                    killed.append(int(proc.name))
            time.sleep(0.2)

    killer = threading.Thread(target=kill_the_job)
    killer.start()
    code = main(["run", str(grid), "--root", str(root), "--data-root", str(data_root),
                 "--no-report", "-q"])
    killer.join()
    out, err = capsys.readouterr()
    assert len(killed) == 1
    assert code == 1
    assert "dense          s=0     seed=0  ERROR (environment): the job ended without a " \
           "result" in out
    assert err.splitlines() == ["sparsebench: 1 of 1 runs of grid k failed: 1 by an error of "
                                "the environment (a plain rerun retries)"]


def test_every_config_and_hparams_field_declares_its_check():
    """The mechanism is declarative: a new field gets checked by giving it `check` metadata.
    Booleans and names need none; the rest must say their range or choices (or be listed here
    with the reason they take any value)."""
    free = {
        ("DataConfig", "name"), ("ModelConfig", "name"),  # checked against the registries
        ("STRHparams", "s_init"),  # any real: the initial threshold parameter, sigmoid(s_init)
    }
    classes = [DataConfig, ModelConfig, TrainConfig, SparsityConfig, RunConfig]
    classes += [cls.Hparams for cls in REGISTRY.values()]
    missing = []
    for cls in classes:
        for f in fields(cls):
            default = f.default
            if isinstance(default, bool) or is_dataclass(f.default_factory() if callable(
                    f.default_factory) else default) or (cls.__name__, f.name) in free:
                continue
            if METADATA_KEY not in f.metadata:
                missing.append(f"{cls.__name__}.{f.name}")
    assert missing == [], f"fields without check(...) metadata: {missing}"
