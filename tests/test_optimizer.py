"""The harness builds its optimizers with ``foreach=True`` (one call per step over all
parameters; torch picks it by default only on GPUs). It must train to exactly the weights the
per-tensor implementation gives, so CPU and GPU runs follow the same arithmetic and results
from before the switch stay valid."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bench.config import TrainConfig
from bench.models import build_model
from bench.train import make_optimizer

RECIPES = {
    "sgd-momentum-wd": TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4),
    "sgd-nesterov": TrainConfig(optimizer="sgd", lr=0.05, momentum=0.9, nesterov=True,
                                weight_decay=1e-4),
    "sgd-plain": TrainConfig(optimizer="sgd", lr=0.1, momentum=0.0),
    "adam-wd": TrainConfig(optimizer="adam", lr=0.01, weight_decay=5e-4),
}


def reference_optimizer(params, train: TrainConfig) -> torch.optim.Optimizer:
    if train.optimizer == "sgd":
        return torch.optim.SGD(params, lr=train.lr, momentum=train.momentum,
                               nesterov=train.nesterov and train.momentum > 0,
                               weight_decay=train.weight_decay, foreach=False)
    return torch.optim.Adam(params, lr=train.lr, weight_decay=train.weight_decay, foreach=False)


def train_weights(model_name, shape, train, build_optimizer, steps=15):
    torch.manual_seed(0)
    model = build_model(model_name, 10, shape)
    optimizer = build_optimizer(model, train)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(16, *shape, generator=g), torch.randint(10, (16,), generator=g)
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model.state_dict(), optimizer


@pytest.mark.parametrize("recipe", sorted(RECIPES))
@pytest.mark.parametrize(("model_name", "shape"), [("mnist1d_cnn", (40,)),
                                                   ("resnet8", (3, 8, 8))])
def test_foreach_optimizer_trains_bit_identically_to_the_per_tensor_one(recipe, model_name,
                                                                        shape):
    train = RECIPES[recipe]
    ours, optimizer = train_weights(model_name, shape, train, make_optimizer)
    assert optimizer.defaults["foreach"] is True
    theirs, _ = train_weights(model_name, shape, train,
                              lambda m, t: reference_optimizer(
                                  [p for p in m.parameters() if p.requires_grad], t))
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
