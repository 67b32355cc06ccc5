"""GMP from a trained dense run (``from_dense``; DSR's "compressed sparse" baseline): the dense
run is planned first, the run starts from exactly its model.pt, prunes on the exact GMP
schedule of its own pruning phase (lr, length and milestones from ``finetune_*``), resumes bit
for bit, and the default keeps every existing GMP run id."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest

from bench import store
from bench.config import MethodConfig, run_id
from bench.errors import UserError
from bench.grid import GridRun, load_grid
from bench.launch import plan
from bench.run import RunHarness, run_folder, run_one
from bench.train import Interrupted, Trainer, resolve_hparams
from methods import get_method
from methods.dense_start import dense_config
from methods.gmp import GMPHparams
from methods.masking import MASK_BUFFER
from tests.helpers import assert_identical, final_weights, tiny_config

# tiny_config: 600 MNIST-1D training examples at batch 50 = 12 steps per epoch.
SPE = 12
TARGET = 0.8


def from_dense_config(**hparams):
    """Dense recipe: 2 epochs of Adam at lr 0.01. Pruning phase: 4 epochs, lr 0.004 then x0.5
    from epoch 2; one GMP update per epoch (frequency 12 of 48 steps) from step 12 to 36."""
    hp = GMPHparams(begin_fraction=0.0, end_fraction=0.75, frequency_fraction=0.25,
                    from_dense=True, finetune_epochs=4, finetune_lr=0.004,
                    finetune_milestones=(2,))
    config = tiny_config("gmp", TARGET, epochs=2, gamma=0.5)
    return replace(config, method=MethodConfig("gmp", replace(hp, **hparams)))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp() / "data"


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_root):
    """The dense run, then an uninterrupted from-dense GMP run, as the launcher orders them."""
    root = tmp_path_factory.mktemp("gmp_dense_ref")
    config = from_dense_config()
    assert run_one(dense_config(config), root, data_root)["status"] == "ok"
    return config, root, run_one(config, root, data_root)


def test_the_default_is_a_no_op_that_keeps_run_ids():
    assert GMPHparams().decay == "polynomial" and GMPHparams().from_dense is False
    # Pinned before from_dense existed (the same ids on main at 992694d).
    assert run_id(resolve_hparams(tiny_config("gmp", 0.8))) == "08f6e1716ab2"
    smoke = [r.run_id for r in load_grid("smoke").runs if r.config.method.name == "gmp"]
    assert smoke[:3] == ["76eabcd1c29d", "34d73c2a4fd1", "2ebfbb5564ca"]
    config = resolve_hparams(tiny_config("gmp", 0.8))
    method = get_method("gmp")(config, config.method.hparams)
    assert method.dependencies() == []
    assert [(p.name, p.train) for p in method.phases()] == [("train", config.train)]
    assert method.summary() == {}


def test_the_dense_run_is_planned_first(tmp_path):
    gmp = GridRun(from_dense_config(), "gmp")
    dense_id = run_id(dense_config(gmp.config))
    planned = plan([gmp], tmp_path)
    assert [r.config.method.name for r in planned.order] == ["dense", "gmp"]
    assert [r.run_id for r in planned.added] == [dense_id]
    assert planned.waits_for == {gmp.run_id: [dense_id], dense_id: []}
    # The dense run is the grid's own: same data, model, recipe and seed, target 0.
    dense = dense_config(gmp.config)
    assert (dense.train, dense.data, dense.model, dense.seed) == \
        (gmp.config.train, gmp.config.data, gmp.config.model, gmp.config.seed)
    assert (dense.method, dense.sparsity.target) == (MethodConfig("dense"), 0.0)


def test_a_missing_dense_run_fails_naming_it_and_is_not_trained(tmp_path, data_root):
    config = from_dense_config()
    result = run_one(config, tmp_path, data_root)
    assert (result["status"], result["error_kind"]) == ("error", "environment")
    dense = dense_config(config)
    assert result["error"].startswith(
        f"DependencyNotDone: run {run_id(dense)} ({run_folder(tmp_path, dense)}), which this "
        "run starts from, has no result")
    assert not run_folder(tmp_path, dense).exists()


def test_starts_from_the_dense_runs_model(reference, data_root):
    config, root, _ = reference
    method = get_method("gmp")(config, config.method.hparams)
    trainer = Trainer(method, root / "probe", harness=RunHarness(root, data_root),
                      data_root=data_root)
    trainer._build(None)  # data, model from the seed, masks, the method's setup
    dense = final_weights(root, dense_config(config))
    start = trainer.model.state_dict()
    weights = {k: v for k, v in dense.items() if not k.endswith(MASK_BUFFER)}
    assert weights and all(k in start for k in weights)
    assert_identical({k: start[k] for k in weights}, weights)
    # Nothing pruned yet: every mask is all ones.
    assert trainer.masking.density() == 1.0


def test_prunes_on_the_exact_schedule_of_its_phase(reference):
    config, root, result = reference
    assert result["status"] == "ok", result.get("error")
    history = result["history"]
    assert [h["phase"] for h in history] == ["prune+finetune"] * 4
    assert [h["step"] for h in history] == [12, 24, 36, 48]
    # finetune_lr 0.004, x0.5 (the run's gamma) from epoch 2.
    assert [h["lr"] for h in history] == pytest.approx([0.004, 0.004, 0.002, 0.002])
    # Updates at steps 12, 24, 36 (after epochs 1-3): s_k = 0.8 (1 - (1 - k/3)^3), each layer
    # keeping numel - floor(s_k numel) of its weights; no change after the last.
    sizes = [m.numel() for m in _masks(final_weights(root, config)).values()]
    expected = []
    for k in (1, 2, 3, 3):
        s_k = TARGET * (1 - (1 - k / 3) ** 3)
        kept = sum(n - math.floor(s_k * n + 1e-9) for n in sizes)
        expected.append(kept / sum(sizes))
    assert [h["density"] for h in history] == pytest.approx(expected, abs=1e-12)
    assert expected[0] < 1.0 and expected[-1] == pytest.approx(1 - TARGET, abs=1e-3)
    # The final count is the fixed budget GMP promises (a run that missed it is not ok).
    counts = result["counts"]
    kept = sum(n - math.floor(TARGET * n + 1e-9) for n in sizes)
    assert counts["params_nonzero"] == counts["params_total"] - sum(sizes) + kept
    dense_result = store.read_result(run_folder(root, dense_config(config)))
    assert result["method_summary"] == {"dense_run_id": run_id(dense_config(config)),
                                        "dense_train_flops": dense_result["train_flops"]}
    assert dense_result["train_flops"] > 0


def test_geometric_decay_removes_the_same_fraction_at_every_update(reference, data_root):
    config, root, _ = reference
    hp = replace(config.method.hparams, decay="geometric")
    geometric = replace(config, method=MethodConfig("gmp", hp))
    assert run_id(geometric) != run_id(config)
    result = run_one(geometric, root, data_root)  # the reference's dense run is reused
    assert result["status"] == "ok", result.get("error")
    sizes = [m.numel() for m in _masks(final_weights(root, geometric)).values()]
    # DSR's ResNet-50 prunes: density (1 - 0.8)^(k/3) after update k of 3.
    expected = []
    for k in (1, 2, 3, 3):
        s_k = 1 - (1 - TARGET) ** (k / 3)
        expected.append(sum(n - math.floor(s_k * n + 1e-9) for n in sizes) / sum(sizes))
    assert [h["density"] for h in result["history"]] == pytest.approx(expected, abs=1e-12)
    assert expected[0] == pytest.approx(0.2 ** (1 / 3), abs=1e-3)  # 0.585 kept, cubic: 0.437


def test_resumes_bit_identically(reference, tmp_path, data_root):
    config, ref_root, ref_result = reference
    dense = dense_config(config)
    assert run_one(dense, tmp_path, data_root)["status"] == "ok"
    with pytest.raises(Interrupted):
        run_one(config, tmp_path, data_root, stop_after_epoch=1)
    calls = iter(range(1000))
    with pytest.raises(Interrupted):
        run_one(config, tmp_path, data_root, should_stop=lambda: next(calls) == 7)
    result = run_one(config, tmp_path, data_root)
    assert result["status"] == "ok"
    assert_identical(final_weights(tmp_path, config), final_weights(ref_root, config))
    assert result["method_summary"] == ref_result["method_summary"]
    assert [h["density"] for h in result["history"]] == \
        [h["density"] for h in ref_result["history"]]


@pytest.mark.parametrize(("hparams", "message"), [
    ({"finetune_epochs": 4}, "gmp finetune_epochs applies only with from_dense = true"),
    ({"finetune_lr": 0.1}, "gmp finetune_lr applies only with from_dense = true"),
    ({"from_dense": True, "finetune_milestones": (2,)},
     "gmp finetune_milestones needs finetune_epochs"),
    ({"from_dense": True, "finetune_epochs": 4, "finetune_milestones": (2, 4)},
     "gmp finetune_milestones [2, 4]: each must be below finetune_epochs (4)"),
])
def test_bad_finetune_settings_say_what_is_wrong(hparams, message):
    with pytest.raises(UserError) as err:
        GMPHparams(**hparams)
    assert str(err.value).startswith(message)


def _masks(state):
    return {k: v for k, v in state.items() if k.endswith(MASK_BUFFER)}
