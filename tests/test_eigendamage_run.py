"""EigenDamage end to end: it starts from the finished dense run of the same recipe (by run id,
through the harness; a missing one fails the run, naming it, and is never trained inline),
reaches its parameter budget, and resumes bit-identically through the prune phase (one-pass and
iterative)."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from bench import store
from bench.config import MethodConfig, run_id
from bench.errors import UserError
from bench.run import run_folder, run_one
from bench.train import Interrupted
from methods.eigendamage.method import EigenDamageHparams, dense_config
from tests.helpers import assert_identical, final_weights, tiny_config


def ed_config(target: float = 0.5, **hparams):
    hp = replace(EigenDamageHparams(finetune_epochs=3), **hparams)
    config = tiny_config("eigendamage", target, epochs=2)
    return replace(config, method=MethodConfig("eigendamage", hp))


def dense_folders(root: Path) -> list[Path]:
    return sorted((root / "runs").glob("*-dense-*"))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp() / "data"


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_root):
    """An uninterrupted one-pass run after its dense run, as the launcher orders them."""
    root = tmp_path_factory.mktemp("ed_ref")
    config = ed_config()
    assert run_one(dense_config(config), root, data_root)["status"] == "ok"
    return config, root, run_one(config, root, data_root)


def test_a_missing_dense_run_fails_the_run_naming_it_and_is_not_trained(tmp_path, data_root):
    config = ed_config()
    result = run_one(config, tmp_path, data_root)
    # Not the method's failure: a plain rerun (which trains the dense run first) retries it.
    assert (result["status"], result["error_kind"]) == ("error", "environment")
    dense = dense_config(config)
    assert result["error"] == (
        f"DependencyNotDone: run {run_id(dense)} ({run_folder(tmp_path, dense)}), which this run "
        "starts from, has no result; train it first (sparsebench run trains the runs a run "
        "depends on before it)")
    assert dense_folders(tmp_path) == []
    # Once the dense run is there, a plain rerun trains the EigenDamage run.
    assert run_one(dense, tmp_path, data_root)["status"] == "ok"
    assert run_one(config, tmp_path, data_root)["status"] == "ok"


def test_starts_from_the_dense_run_and_meets_the_budget(reference):
    config, root, result = reference
    assert result["status"] == "ok", result.get("error")
    dense = dense_config(config)
    (folder,) = dense_folders(root)
    assert folder == run_folder(root, dense) and folder.name.endswith(run_id(dense))
    dense_result = store.read_result(folder)
    assert dense_result["status"] == "ok"
    summary = result["method_summary"]
    assert summary["dense_run_id"] == run_id(dense)
    assert summary["dense_train_flops"] == dense_result["train_flops"] > 0
    assert summary["target_reached"]
    # Parameter reduction over the prunable layers (conv1-3: 3,950 params) at least the target,
    # and no more than one bisection step beyond it.
    assert summary["dense_params_prunable"] == 3950 and summary["dense_params_total"] == 5210
    assert 0.5 <= summary["param_reduction_prunable"] < 0.6
    counts = result["counts"]
    assert counts["params_total"] == summary["rounds"][-1]["params_total"]
    assert counts["params_total"] == 5210 - round(
        summary["param_reduction_prunable"] * 3950)
    assert counts["macs"] < dense_result["counts"]["macs"]
    # Bottleneck layers appear in the per-layer table as ordinary modules, rotations included.
    names = {layer["name"] for layer in result["layers"]}
    for slot in summary["bottlenecks"]:
        assert {f"{slot}.rotate_in", f"{slot}.core", f"{slot}.rotate_out"} <= names
    assert "linear" in names  # the last layer is kept as it was
    # Fine-tuning: the reference's SGD recipe, lr x0.1 at 50% and x0.01 at 75% of 3 epochs.
    history = result["history"]
    assert [h["phase"] for h in history] == ["prune+finetune"] * 3
    assert [h["lr"] for h in history] == pytest.approx([1e-3, 1e-4, 1e-5])


def test_reuses_dense_run_and_resumes_bit_identically(reference, tmp_path, data_root):
    config, ref_root, _ = reference
    dense = dense_config(config)
    assert run_one(dense, tmp_path, data_root)["status"] == "ok"
    dense_result = (run_folder(tmp_path, dense) / store.RESULT).read_bytes()
    with pytest.raises(Interrupted):
        run_one(config, tmp_path, data_root, stop_after_epoch=1)
    assert (run_folder(tmp_path, config) / store.CHECKPOINT).exists()
    # Mid-epoch stop inside the fine-tuning of the pruned network.
    calls = iter(range(100))
    with pytest.raises(Interrupted):
        run_one(config, tmp_path, data_root, should_stop=lambda: next(calls) == 4)
    result = run_one(config, tmp_path, data_root)
    assert result["status"] == "ok"
    # The dense run was reused, not retrained, and the outcome is the one the uninterrupted
    # run reached.
    assert dense_folders(tmp_path) == [run_folder(tmp_path, dense)]
    assert (run_folder(tmp_path, dense) / store.RESULT).read_bytes() == dense_result
    assert_identical(final_weights(tmp_path, config), final_weights(ref_root, config))
    assert result["method_summary"] == reference[2]["method_summary"]


def test_iterative_resumes_between_and_inside_rounds(tmp_path_factory, data_root):
    config = ed_config(0.6, mode="iterative", rounds=2, finetune_epochs=2)
    ref_root = tmp_path_factory.mktemp("ed_iter_ref")
    dense = dense_config(config)
    assert run_one(dense, ref_root, data_root)["status"] == "ok"
    ref = run_one(config, ref_root, data_root)
    assert ref["status"] == "ok", ref.get("error")
    rounds = ref["method_summary"]["rounds"]
    assert [r["target_reduction"] for r in rounds] == pytest.approx([1 - 0.4 ** 0.5, 0.6])
    assert rounds[0]["reduction_prunable"] >= 1 - 0.4 ** 0.5
    assert rounds[1]["reduction_prunable"] >= 0.6 > rounds[0]["reduction_prunable"]
    assert [h["phase"] for h in ref["history"]] == ["round1", "round1", "round2", "round2"]

    root = tmp_path_factory.mktemp("ed_iter")
    shutil.copytree(run_folder(ref_root, dense), run_folder(root, dense))
    for stop in (2, 3):  # at the boundary between the rounds, then inside round 2
        with pytest.raises(Interrupted):
            run_one(config, root, data_root, stop_after_epoch=stop)
    assert run_one(config, root, data_root)["status"] == "ok"
    assert_identical(final_weights(root, config), final_weights(ref_root, config))


def test_bad_hparams_are_user_errors():
    with pytest.raises(UserError, match="mode"):
        EigenDamageHparams(mode="twice")
    with pytest.raises(UserError, match="fisher_type"):
        EigenDamageHparams(fisher_type="diag")
