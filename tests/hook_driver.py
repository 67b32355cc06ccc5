"""Drive a method's hooks on a tiny Conv1d+Linear network with the trainer's own step
(``bench.train.train_step``, so the hook order is the trainer's), for the dynamic-sparse-training
tests (DeepR, SET, DSR): build, train k steps, check the zero invariant, and compare a straight
run with a saved-and-resumed one bit for bit."""

from __future__ import annotations

import io

import torch
import torch.nn.functional as F
from torch import nn

from bench.config import MethodConfig, RunConfig, SparsityConfig, TrainConfig
from bench.train import train_step
from methods import get_method
from methods.base import SetupContext
from methods.masking import Masking

SPE = 4  # steps per epoch of the tiny runs
BATCH = 8


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 6, 3)
        self.fc1 = nn.Linear(60, 20)
        self.fc2 = nn.Linear(20, 4)

    def forward(self, x):
        h = torch.relu(self.conv(x)).flatten(1)
        return self.fc2(torch.relu(self.fc1(h)))


def _data():
    g = torch.Generator().manual_seed(5)
    return torch.randn(SPE * BATCH, 1, 12, generator=g), torch.randint(4, (SPE * BATCH,),
                                                                          generator=g)


X, Y = _data()


def config(method, hparams=None, sparsity=0.8, epochs=3, lr=0.1, distribution="default"):
    return RunConfig(
        method=MethodConfig(method, hparams),
        train=TrainConfig(epochs=epochs, batch_size=BATCH, optimizer="sgd", lr=lr,
                          momentum=0.9, weight_decay=5e-4),
        sparsity=SparsityConfig(target=sparsity, distribution=distribution),
        seed=3,
    )


def build(cfg):
    torch.manual_seed(cfg.seed)
    model = Tiny()
    masking = Masking.attach(model, cfg.sparsity.layer_policy)
    method = get_method(cfg.method.name)(cfg, cfg.method.hparams)
    ctx = SetupContext(model=model, masking=masking, config=cfg, loss_fn=F.cross_entropy,
                       batches=lambda: iter(()), steps_per_epoch=SPE,
                       device=torch.device("cpu"), generator=method.generator)
    method.setup(ctx)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.train.lr, momentum=cfg.train.momentum,
                          weight_decay=cfg.train.weight_decay)
    return model, masking, method, opt


def train(model, method, opt, start, stop, check=None, data=None):
    """Steps start+1..stop in the trainer's hook order, on ``data`` (x, y) of SPE batches of
    BATCH (default: the Tiny model's X, Y)."""
    xs, ys = (X, Y) if data is None else data
    for step in range(start + 1, stop + 1):
        i = (step - 1) % SPE
        x, y = xs[i * BATCH:(i + 1) * BATCH], ys[i * BATCH:(i + 1) * BATCH]
        train_step(model, method, opt, x, y, step)
        if step % SPE == 0:
            method.end_epoch(model, opt, step // SPE - 1)
        if check is not None:
            check(step)


def assert_masked_zero(masking):
    for name, w in masking.weights().items():
        m = masking.masks[name]
        assert torch.count_nonzero(w.detach()[~m]) == 0, name


def resume_matches(cfg, k):
    n = cfg.train.epochs * SPE
    model_a, _, method_a, opt_a = build(cfg)
    train(model_a, method_a, opt_a, 0, n)

    model_b, _, method_b, opt_b = build(cfg)
    train(model_b, method_b, opt_b, 0, k)
    buf = io.BytesIO()
    torch.save({"model": model_b.state_dict(), "opt": opt_b.state_dict(),
                "method": method_b.state_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    model_c, _, method_c, opt_c = build(cfg)
    method_c.load_state_dict(state["method"])
    model_c.load_state_dict(state["model"])
    opt_c.load_state_dict(state["opt"])
    train(model_c, method_c, opt_c, k, n)
    a, c = model_a.state_dict(), model_c.state_dict()
    assert a.keys() == c.keys()
    for key in a:
        assert torch.equal(a[key], c[key]), key
    return method_a, method_c
