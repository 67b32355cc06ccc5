"""The method contract, checked for every registered method (issue 10): a few epochs of the
MNIST-1D CNN through the real trainer (``bench.train.Trainer``: its phases, its step, its
checkpoints) on a small in-memory data set, asserting that

* masked weights are exactly zero after every optimizer step;
* a fixed-budget method ends at the nonzero count it promises (``Method.promised_nonzero``,
  the count ``bench.budget`` holds a run to), and that promise is the sparse budget of the
  run's target: exactly the masks' per-layer budget for a method that masks the run's
  architecture, within 1% for one that sizes the architecture instead (thin dense: DSR §4, "(1-s)N
  parameters", ``methods/thin_dense.py``);
* a run stopped mid-epoch and resumed from its checkpoint ends bit-identical to a straight run;
* the method's ``state_dict`` survives the checkpoint (``torch.load(weights_only=True)``).

A method added to the registry is tested here without new test code. What a method asks of the
harness (``methods.base.Harness``: a finished run to start from, a trial training) it gets from
``ContractHarness``, which keeps the harness's rules (dependencies are trained first, as the
launcher does, and looked up by run id; trials are kept by run id) on the tests' data. ``TINY``
only shrinks hyperparameters that assume a real data set (batch sizes, examples per class) or a
long search (STR's calibration: three trials).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.utils.data import TensorDataset

from bench import checkpoint
from bench.config import (
    MethodConfig,
    ModelConfig,
    RunConfig,
    SparsityConfig,
    TrainConfig,
    run_id,
    run_label,
)
from bench.data.base import DataBundle
from bench.errors import UserError
from bench.flops import count
from bench.models import ModelMaker
from bench.train import Diverged, Interrupted, Trainer, make_method, resolve_hparams
from methods import REGISTRY
from methods.base import FinishedRun, Method, TrialResult
from methods.grasp import GraSPHparams
from methods.masking import Masking, iter_masked, kept_count, layer_densities
from methods.snip import SNIPHparams
from methods.str_method import STRHparams

TARGET = 0.8
EPOCHS = 3
BATCH = 8
SPE = 4  # steps per epoch
SHAPE, CLASSES = (1, 40), 10
TINY = {"snip": SNIPHparams(batch_size=BATCH), "grasp": GraSPHparams(samples_per_class=2),
        "str": STRHparams(calibration_max_runs=3)}

_g = torch.Generator().manual_seed(11)
DATA = DataBundle(
    train=TensorDataset(torch.randn(SPE * BATCH, *SHAPE, generator=_g),
                        torch.arange(SPE * BATCH) % CLASSES),
    test=TensorDataset(torch.randn(2 * BATCH, *SHAPE, generator=_g),
                       torch.arange(2 * BATCH) % CLASSES),
    input_shape=SHAPE, num_classes=CLASSES)


def config(name: str) -> RunConfig:
    hparams = TINY.get(name) or REGISTRY[name].Hparams()
    return RunConfig(model=ModelConfig("mnist1d_cnn"),
                     method=MethodConfig(name, hparams),
                     train=TrainConfig(epochs=EPOCHS, batch_size=BATCH, optimizer="sgd", lr=0.05,
                                       momentum=0.9, weight_decay=5e-4),
                     sparsity=SparsityConfig(target=TARGET), seed=2)


def folder(root, cfg: RunConfig):
    cfg = resolve_hparams(cfg)
    return root / f"{run_label(cfg)}-{run_id(cfg)}"


class ContractHarness:
    """``methods.base.Harness`` on the tests' data: runs by run id under `root`, trained by the
    trainer. As with ``bench.run.RunHarness``, ``finished_model`` never trains: the run's
    dependencies are trained first (``train_dependencies``, the launcher's job)."""

    def __init__(self, root):
        self.root = root
        self.finished: dict[str, FinishedRun] = {}
        self.trials: dict[str, TrialResult] = {}

    def _train(self, cfg: RunConfig, where):
        return Trainer(make_method(cfg), folder(where, cfg), harness=self, data=DATA).run()

    def train_dependencies(self, method: Method) -> None:
        for dep in method.dependencies():
            rid = run_id(resolve_hparams(dep))
            if rid not in self.finished:
                self.train_dependencies(make_method(dep))
                out = self._train(dep, self.root / "runs")
                weights = {k: v.detach().clone() for k, v in out.model.state_dict().items()}
                self.finished[rid] = FinishedRun(rid, weights, out.train_flops)

    def finished_model(self, config: RunConfig) -> FinishedRun:
        rid = run_id(resolve_hparams(config))
        if rid not in self.finished:
            raise RuntimeError(f"run {rid} has not finished; train it first")
        return self.finished[rid]

    def trial_train(self, config: RunConfig) -> TrialResult:
        rid = run_id(resolve_hparams(config))
        if rid not in self.trials:
            try:
                out = self._train(config, self.root / "trials")
                result = TrialResult(rid, False, count(out.model, SHAPE).sparsity)
            except Diverged:
                result = TrialResult(rid, True, None)
            self.trials[rid] = result
        return self.trials[rid]


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    return ContractHarness(tmp_path_factory.mktemp("contract"))


def trainer(name, harness, root, **kwargs) -> Trainer:
    method = make_method(config(name))
    harness.train_dependencies(method)
    return Trainer(method, folder(root, method.config), harness=harness, data=DATA, **kwargs)


def assert_masked_zero(model):
    for name, module, mask in iter_masked(model):
        assert torch.count_nonzero(module.weight.detach()[~mask]) == 0, name


def assert_same(a, b, where=""):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    elif torch.is_tensor(a):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


def sparse_budget(method: Method) -> int:
    """The nonzero count the run's target means on the run's own architecture (every parameter
    minus the pruned weights of its masked layers), computed here from the masking rules
    (``layer_densities``, ``kept_count``), not asked of the method. A learned distribution keeps
    ``kept_count`` of the pooled weights."""
    cfg = method.config
    model = ModelMaker(cfg.model.name, CLASSES, SHAPE)(cfg.model.width)
    params = sum(p.numel() for p in model.parameters())
    if not method.uses_sparsity:
        return params
    shapes = Masking.attach(model, cfg.sparsity.layer_policy).shapes()
    sizes = {name: torch.Size(s).numel() for name, s in shapes.items()}
    if method.distribution == "learned":
        kept = kept_count(sum(sizes.values()), method.density)
    else:
        d = layer_densities(shapes, method.density, method.distribution)
        kept = sum(kept_count(n, d[name]) for name, n in sizes.items())
    return params - sum(sizes.values()) + kept


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_masked_weights_zero_and_budget(name, harness, tmp_path):
    t = trainer(name, harness, tmp_path,
                progress=lambda step, total: assert_masked_zero(t.model))
    out = t.run()
    assert out.history[-1]["step"] == sum(p.train.epochs for p in out.method.phases()) * SPE
    method = out.method
    achieved = count(out.model, SHAPE).params_nonzero
    promised = method.promised_nonzero(out.model, method.masking)
    if promised is not None:  # what bench.budget fails a run for missing
        assert achieved == promised
    if not method.fixed_budget:
        assert promised is None
        return
    budget = sparse_budget(method)
    base = ModelMaker(method.config.model.name, CLASSES, SHAPE)(method.config.model.width)
    if sum(p.numel() for p in out.model.parameters()) != sum(p.numel() for p in base.parameters()):
        # The method sized the architecture to the budget (DSR's thin dense): within 1%.
        assert abs(achieved - budget) * 100 <= budget, (achieved, budget)
    elif method.distribution == "learned":
        # Global budgets round as their references do (SNIP: round(N d); GraSP keeps the
        # scores <= its k-th largest, one above N - floor(s N)): within two weights.
        assert abs(achieved - budget) <= 2, (achieved, budget)
    else:
        assert achieved == budget


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_resume_is_bit_identical_and_state_round_trips(name, harness, tmp_path):
    straight = trainer(name, harness, tmp_path / "a").run()

    k = SPE + 2  # mid-epoch, in the first phase
    stopped = trainer(name, harness, tmp_path / "b", should_stop=lambda: stopped.step >= k)
    with pytest.raises(Interrupted):
        stopped.run()
    saved = checkpoint.load(stopped.ckpt_path)
    assert saved is not None and saved["step"] == k
    assert_same(saved["method"], stopped.method.state_dict(), "method")

    resumed = trainer(name, harness, tmp_path / "b").run()
    assert_same(straight.model.state_dict(), resumed.model.state_dict(), "model")
    assert_same(straight.method.state_dict(), resumed.method.state_dict(), "method")
    assert_same(straight.method.summary(), resumed.method.summary(), "summary")


BAD = [(name, f.name) for name in sorted(REGISTRY)
       for f in dataclasses.fields(REGISTRY[name].Hparams)
       if getattr(f.metadata.get("check"), "choices", None)]


@pytest.mark.parametrize(("name", "key"), BAD)
def test_hparams_built_in_code_are_checked_by_their_metadata(name, key):
    """A method is built only with hyperparameters its fields' ``check`` metadata accepts
    (``bench.config.validate_hparams`` in ``Method.__init__``): no method restates them."""
    cfg = config(name)
    with pytest.raises(UserError, match=rf"^method\.{name}\.{key} = \"nope\": expected one of"):
        hparams = dataclasses.replace(cfg.method.hparams, **{key: "nope"})
        REGISTRY[name](cfg, hparams)
