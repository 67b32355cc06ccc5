"""One run: idempotent, bit-identical resume (also after kill -9), failures as data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from bench import checkpoint, store
from bench.config import run_id
from bench.run import run_folder, run_one
from bench.train import Interrupted
from tests.helpers import assert_identical, final_weights, tiny_config


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted GMP run (its masks change during training: a strong resume check)."""
    root = tmp_path_factory.mktemp("ref")
    data_root = tmp_path_factory.getbasetemp() / "data"
    config = tiny_config("gmp", 0.8, epochs=4, optimizer="sgd", lr=0.05, weight_decay=5e-4)
    result = run_one(config, root, data_root)
    return config, root, data_root, result


def test_result_records_counts_and_status(reference):
    config, root, _, result = reference
    assert result["status"] == "ok"
    assert result["method_label"] == "gmp"
    counts = result["counts"]
    # GMP ends exactly at the target on every layer: 5210 params, 5125 prunable weights.
    per_layer = {layer["name"]: layer for layer in result["layers"]}
    for name, layer in per_layer.items():
        assert layer["nonzero"] == layer["params"] - int(0.8 * layer["params"] + 1e-9), name
    assert counts["params_total"] == 5210
    assert counts["params_prunable"] == 5125
    assert counts["params_nonzero"] == 5210 - sum(
        layer["params"] - layer["nonzero"] for layer in result["layers"])
    assert counts["params_dense"] == 5210 and counts["macs_dense"] == 31750
    assert counts["sparsity"] == (5210 - counts["params_nonzero"]) / 5125
    assert len(result["history"]) == 4
    lines = (run_folder(root, config) / store.METRICS).read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4]
    assert not (run_folder(root, config) / store.CHECKPOINT).exists()


def test_a_finished_run_is_skipped(reference):
    config, root, data_root, result = reference
    folder = run_folder(root, config)
    before = (folder / store.RESULT).stat().st_mtime_ns
    again = run_one(config, root, data_root)
    assert again == result
    assert (folder / store.RESULT).stat().st_mtime_ns == before


def test_resume_after_epoch_boundary_is_bit_identical(reference, tmp_path):
    config, ref_root, data_root, result = reference
    with pytest.raises(Interrupted):
        run_one(config, tmp_path, data_root, stop_after_epoch=2)
    assert (run_folder(tmp_path, config) / store.CHECKPOINT).exists()
    assert not (run_folder(tmp_path, config) / store.RESULT).exists()
    resumed = run_one(config, tmp_path, data_root)
    assert_identical(final_weights(tmp_path, config), final_weights(ref_root, config))
    assert resumed["top1"] == result["top1"]
    assert resumed["train_flops"] == result["train_flops"]


def test_resume_mid_epoch_is_bit_identical(reference, tmp_path):
    config, ref_root, data_root, _ = reference
    calls = {"n": 0}

    def stop_at_step_17():
        calls["n"] += 1
        return calls["n"] == 17

    with pytest.raises(Interrupted, match=r"stopped at step 1[4-7]$"):  # mid epoch 2
        run_one(config, tmp_path, data_root, should_stop=stop_at_step_17)
    run_one(config, tmp_path, data_root)
    assert_identical(final_weights(tmp_path, config), final_weights(ref_root, config))


def test_resume_after_kill_9_finishes_identically(reference, tmp_path):
    config, ref_root, data_root, _ = reference
    slow = replace(config, train=replace(config.train, epochs=8))
    reference_root = tmp_path / "straight"
    run_one(slow, reference_root, data_root)
    root = tmp_path / "killed"
    script = (
        "import sys, torch; torch.set_num_threads(1)\n"
        "from pathlib import Path\n"
        "from bench.config import from_dict\n"
        "from bench.run import run_one\n"
        "from methods.gmp import GMPHparams\n"
        "import json\n"
        f"cfg = from_dict(json.loads({json.dumps(json.dumps(_to_dict(slow)))}), GMPHparams)\n"
        f"run_one(cfg, Path({str(root)!r}), Path({str(data_root)!r}))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).parents[1])
    ckpt = run_folder(root, slow) / store.CHECKPOINT
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert ckpt.exists(), "the child never wrote a checkpoint"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run_folder(root, slow) / store.RESULT).exists()
    state = checkpoint.load(ckpt)
    assert 1 <= state["epoch"] < 8
    run_one(slow, root, data_root)
    assert_identical(final_weights(root, slow), final_weights(reference_root, slow))


def _to_dict(config):
    from bench.config import to_dict

    return to_dict(config)


def test_divergence_is_recorded_as_a_failure(tmp_path, data_root):
    config = tiny_config("dense", epochs=2, optimizer="sgd", lr=1e30)
    result = run_one(config, tmp_path, data_root)
    assert result["status"] == "failed"
    assert "NaN" in result["error"]
    on_disk = store.read_result(run_folder(tmp_path, config))
    assert on_disk["status"] == "failed"
    # A failed run is not retried unless asked.
    assert run_one(config, tmp_path, data_root) == result


def test_an_exception_is_recorded_and_retry_failed_reruns(tmp_path, data_root, monkeypatch):
    from methods.static import Static

    config = tiny_config("static", 0.5, epochs=1)

    def boom(self, ctx):
        raise RuntimeError("mask init exploded")

    monkeypatch.setattr(Static, "setup", boom)
    failed = run_one(config, tmp_path, data_root)
    assert failed["status"] == "failed"
    assert failed["error"] == "RuntimeError: mask init exploded"
    assert "mask init exploded" in (run_folder(tmp_path, config) / store.LOG).read_text()
    monkeypatch.undo()
    ok = run_one(config, tmp_path, data_root, retry_failed=True)
    assert ok["status"] == "ok"


def test_same_config_twice_gives_identical_weights(tmp_path, data_root):
    config = tiny_config("static", 0.9, epochs=1)
    run_one(config, tmp_path / "a", data_root)
    run_one(config, tmp_path / "b", data_root)
    assert_identical(final_weights(tmp_path / "a", config), final_weights(tmp_path / "b", config))
    other_seed = replace(config, seed=1)
    run_one(other_seed, tmp_path / "c", data_root)
    a = final_weights(tmp_path / "a", config)
    c = final_weights(tmp_path / "c", other_seed)
    assert not torch.equal(a["conv1.weight_mask"], c["conv1.weight_mask"])


def test_cpu_results_do_not_depend_on_the_callers_thread_count(tmp_path, data_root):
    """The config, not the executor, sets the intra-op threads of a CPU run (the debug
    executor trains with whatever the process has, the local one with cores / jobs)."""
    config = tiny_config("gmp", 0.9, epochs=2)
    before = torch.get_num_threads()
    results = {}
    try:
        for ambient in (2, 1):
            torch.set_num_threads(ambient)
            results[ambient] = run_one(config, tmp_path / str(ambient), data_root)
            assert torch.get_num_threads() == ambient  # restored after the run
    finally:
        torch.set_num_threads(before)
    assert results[1]["torch_threads"] == results[2]["torch_threads"] == 1
    assert_identical(final_weights(tmp_path / "1", config), final_weights(tmp_path / "2", config))
    # A different count is a different run, recorded as such.
    two = replace(config, train=replace(config.train, cpu_threads=2))
    assert run_id(two) != run_id(config)
    assert run_one(two, tmp_path / "t", data_root)["torch_threads"] == 2
    assert torch.get_num_threads() == before
