"""Trial trainings (``bench/trial.py``): trained once and read back by run id, trained again
when their record does not read back, and a wait for another process's trial honours the stop
request."""

from __future__ import annotations

import filelock
import pytest
import torch

import bench.trial as trial
from bench import store
from bench.config import run_id
from bench.run import RunHarness, run_one
from bench.train import Interrupted
from tests.helpers import tiny_config


def test_a_trial_is_trained_once_and_matches_the_same_run(tmp_path, data_root, monkeypatch):
    config = tiny_config("static", 0.8, epochs=1)
    harness = RunHarness(tmp_path / "root", data_root)
    state = torch.get_rng_state()
    first = harness.trial_train(config)
    # The caller's RNG is as it was; the trial's sparsity is what the same run reports.
    assert torch.equal(torch.get_rng_state(), state)
    result = run_one(config, tmp_path / "as_a_run", data_root)
    assert first == trial.TrialResult(run_id(config), False, result["counts"]["sparsity"])
    folder = trial.trial_folder(tmp_path / "root", config)
    assert folder.parent == tmp_path / "root" / trial.TRIALS
    assert sorted(p.name for p in folder.iterdir()) == [store.CONFIG, store.RESULT, trial.LOCK]
    assert not (tmp_path / "root" / "runs").exists()  # trials are not runs of the grid

    def no_training(*_args):
        raise AssertionError("trained again")

    monkeypatch.setattr(trial, "_train", no_training)
    assert harness.trial_train(config) == first
    # A record that does not read back (truncated, another run's) is trained again.
    monkeypatch.undo()
    for damage in ('{"run_id": ', '{"run_id": "0123456789ab", "diverged": false, '
                                  '"sparsity": 0.5}'):
        (folder / store.RESULT).write_text(damage)
        assert trial.read_trial(folder, first.run_id) is None
        assert harness.trial_train(config) == first


def test_waiting_for_another_processs_trial_honours_the_stop_request(tmp_path, monkeypatch):
    config = tiny_config("static", 0.8, epochs=1)
    folder = trial.trial_folder(tmp_path, config)
    folder.mkdir(parents=True)
    monkeypatch.setattr(trial, "LOCK_POLL_S", 0.05)
    asked = []

    def stop():
        asked.append(1)
        return len(asked) == 3

    with filelock.FileLock(folder / trial.LOCK):  # another process is training it
        with pytest.raises(Interrupted, match=f"waiting for trial {run_id(config)}"):
            trial.train_trial(config, tmp_path, should_stop=stop)
    assert len(asked) == 3
    assert not (folder / store.RESULT).exists()
