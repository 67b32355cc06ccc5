"""The method contract, checked for every registered method (issue 10): a few steps on the
MNIST-1D CNN through the trainer's hook order (tests/hook_driver.py), asserting that

* masked weights are exactly zero after every step;
* a fixed-budget method ends at the nonzero count its target implies;
* a run resumed from a checkpoint taken mid-way is bit-identical to a straight run;
* ``state_dict`` survives ``torch.save``/``torch.load(weights_only=True)`` unchanged.

A method added to the registry is tested here without new test code. ``TINY`` only shrinks
hyperparameters that assume a real data set (batch sizes, examples per class) or a harness
service (STR's calibration: a fixed weight decay instead). Methods that declare dependencies
(a finished run to start from) need the harness and are covered by their own run tests.
"""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F

from bench.config import MethodConfig, ModelConfig, RunConfig, SparsityConfig, TrainConfig
from bench.models import ModelMaker
from methods import REGISTRY
from methods.base import Method, SetupContext
from methods.grasp import GraSPHparams
from methods.masking import Masking, iter_masked, kept_count, layer_densities
from methods.snip import SNIPHparams
from methods.str_method import STRHparams
from tests.hook_driver import BATCH, SPE, train

TARGET = 0.8
EPOCHS = 3
TINY = {"snip": SNIPHparams(batch_size=BATCH), "grasp": GraSPHparams(samples_per_class=2),
        "str": STRHparams(weight_decay=1e-4)}

g = torch.Generator().manual_seed(11)
DATA = (torch.randn(SPE * BATCH, 1, 40, generator=g), torch.arange(SPE * BATCH) % 10)


def config(name):
    hparams = TINY.get(name) or REGISTRY[name].Hparams()
    return RunConfig(model=ModelConfig("mnist1d_cnn"),
                     method=MethodConfig(name, hparams),
                     train=TrainConfig(epochs=EPOCHS, batch_size=BATCH, optimizer="sgd", lr=0.05,
                                       momentum=0.9, weight_decay=5e-4),
                     sparsity=SparsityConfig(target=TARGET), seed=2)


def standalone(name):
    cls = REGISTRY[name]
    cfg = config(name)
    return not cls(cfg, cfg.method.hparams).dependencies()


NAMES = [n for n in sorted(REGISTRY) if standalone(n)]


def build(name, resuming=False):
    cfg = config(name)
    torch.manual_seed(cfg.seed)
    method = REGISTRY[name](cfg, cfg.method.hparams)
    model = method.build_model(ModelMaker("mnist1d_cnn", 10, (1, 40)), TARGET)
    masking = Masking.attach(model, cfg.sparsity.layer_policy)

    def batches():
        for i in range(SPE):
            yield DATA[0][i * BATCH:(i + 1) * BATCH], DATA[1][i * BATCH:(i + 1) * BATCH]

    ctx = SetupContext(model=model, masking=masking, config=cfg, loss_fn=F.cross_entropy,
                       batches=batches, steps_per_epoch=SPE, device=torch.device("cpu"),
                       generator=method.generator, resuming=resuming)
    method.setup(ctx)
    model = method.start_phase(0, model, ctx)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.train.lr, momentum=0.9,
                          weight_decay=cfg.train.weight_decay)
    return model, masking, method, opt


def assert_masked_zero(model):
    for name, module, mask in iter_masked(model):
        assert torch.count_nonzero(module.weight.detach()[~mask]) == 0, name


def roundtrip(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def assert_same(a, b, where=""):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif torch.is_tensor(a):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


@pytest.mark.parametrize("name", NAMES)
def test_masked_weights_zero_and_budget(name):
    model, masking, method, opt = build(name)
    train(model, method, opt, 0, EPOCHS * SPE, check=lambda step: assert_masked_zero(model),
          data=DATA)
    model = method.finalize(model)
    cls = REGISTRY[name]
    if not (cls.fixed_budget and cls.uses_sparsity) or cls.build_model is not Method.build_model:
        return  # a method that sizes the architecture (thin dense) keeps its budget there
    count = sum(int(m.sum()) for _, _, m in iter_masked(model))
    shapes = masking.shapes()
    total = sum(torch.Size(s).numel() for s in shapes.values())
    if method.distribution == "learned":
        # Global budgets round as their references do (SNIP: round(N d); GraSP keeps the
        # scores <= its k-th largest, one above N - floor(s N)): within two weights.
        assert abs(count - kept_count(total, 1 - TARGET)) <= 2, (count, total)
    else:
        d = layer_densities(shapes, 1 - TARGET, method.distribution)
        assert count == sum(kept_count(torch.Size(s).numel(), d[n]) for n, s in shapes.items())


@pytest.mark.parametrize("name", NAMES)
def test_resume_is_bit_identical_and_state_round_trips(name):
    n, k = EPOCHS * SPE, SPE + 2
    model_a, _, method_a, opt_a = build(name)
    train(model_a, method_a, opt_a, 0, n, data=DATA)

    model_b, _, method_b, opt_b = build(name)
    train(model_b, method_b, opt_b, 0, k, data=DATA)
    state = roundtrip({"model": model_b.state_dict(), "opt": opt_b.state_dict(),
                       "method": method_b.state_dict()})
    assert_same(state["method"], method_b.state_dict(), "method")

    model_c, _, method_c, opt_c = build(name, resuming=True)
    method_c.load_state_dict(state["method"])
    model_c.load_state_dict(state["model"])
    opt_c.load_state_dict(state["opt"])
    assert_same(method_c.state_dict(), method_b.state_dict(), "reloaded")
    train(model_c, method_c, opt_c, k, n, data=DATA)
    assert_same(model_a.state_dict(), model_c.state_dict(), "model")
    assert_same(method_a.state_dict(), method_c.state_dict(), "method")
