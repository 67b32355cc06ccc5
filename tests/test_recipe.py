"""Recipe knobs (bench/recipe.py): lr at given steps against hand-computed values, parameter
groups' weight decay, the label-smoothed loss against a hand value, the trainer using them, and
run ids unchanged when the knobs keep their defaults."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.config import RunConfig, TrainConfig, canonical_json, run_id
from bench.errors import UserError
from bench.models import build_model
from bench.recipe import lr_factor, make_optimizer, param_groups, train_loss
from bench.run import run_one
from tests.helpers import tiny_config


def test_cosine_per_epoch_with_warmup_follows_str_cosine_lr():
    # STR utils/schedulers.py: (e + 1) / W during warm-up, then cosine over E - W epochs.
    train = TrainConfig(lr=0.256, lr_schedule="cosine", epochs=9, warmup_epochs=2)
    lrs = [train.lr * lr_factor(train, e) for e in range(9)]
    assert lrs[0] == pytest.approx(0.128)
    assert lrs[1] == pytest.approx(0.256)
    assert lrs[2] == pytest.approx(0.256)                      # cos(0)
    # epoch 4: (4 - 2) / (9 - 2) = 2/7 of the cosine
    assert lrs[4] == pytest.approx(0.256 * 0.5 * (1 + math.cos(math.pi * 2 / 7)))
    # within an epoch the per-epoch schedule does not move
    assert lr_factor(train, 4, batch=17, steps_per_epoch=40) == lr_factor(train, 4)


def test_cosine_without_warmup_is_bit_identical_to_the_previous_rule():
    train = TrainConfig(lr_schedule="cosine", epochs=40)
    for e in range(40):
        assert lr_factor(train, e) == 0.5 * (1.0 + math.cos(math.pi * (e / 40)))


def test_cosine_per_step_with_warmup():
    # 2 epochs of 4 steps, 1 warm-up epoch: steps 0..3 warm up, steps 4..7 are the cosine.
    train = TrainConfig(lr=1.0, lr_schedule="cosine", epochs=3, warmup_epochs=1,
                        schedule_unit="step")
    got = [lr_factor(train, t // 4, t % 4, 4) for t in range(12)]
    # warm-up: (t + 1) / 4; cosine over 8 steps from step 4: 0.5 (1 + cos(pi (t - 4) / 8))
    want = [0.25, 0.5, 0.75, 1.0] + [0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(8)]
    assert got == pytest.approx(want, abs=1e-15)
    assert got[6] == pytest.approx(0.5 * (1 + math.sqrt(0.5)))   # k = 2: cos(pi/4)
    assert got[8] == pytest.approx(0.5)                          # k = 4: cos(pi/2)


def test_step_decay_at_milestones_with_any_gamma():
    # DSR WRN-28-2: 0.1, x0.2 at 60, 120, 160.
    train = TrainConfig(lr=0.1, lr_schedule="step", milestones=(60, 120, 160), gamma=0.2,
                        epochs=200)
    lr = {e: train.lr * lr_factor(train, e) for e in (0, 59, 60, 119, 120, 160, 199)}
    assert lr == pytest.approx({0: 0.1, 59: 0.1, 60: 0.02, 119: 0.02, 120: 0.004, 160: 0.0008,
                                199: 0.0008}, rel=1e-12)
    # RigL ImageNet: 5 warm-up epochs per step, then x0.1 at 30, 70, 90.
    rigl = TrainConfig(lr=0.4, lr_schedule="step", milestones=(30, 70, 90), gamma=0.1,
                       epochs=100, warmup_epochs=5, schedule_unit="step")
    assert 0.4 * lr_factor(rigl, 0, 0, 10) == pytest.approx(0.4 / 50)
    assert 0.4 * lr_factor(rigl, 4, 9, 10) == pytest.approx(0.4)
    assert 0.4 * lr_factor(rigl, 29, 9, 10) == pytest.approx(0.4)
    assert 0.4 * lr_factor(rigl, 30, 0, 10) == pytest.approx(0.04)
    assert 0.4 * lr_factor(rigl, 95, 3, 10) == pytest.approx(0.0004)


class ConvBNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def test_no_bn_decay_puts_norms_and_biases_in_a_group_without_weight_decay():
    net = ConvBNNet()
    train = TrainConfig(optimizer="sgd", lr=0.1, momentum=0.0, weight_decay=0.5)
    (only,) = param_groups(net, train)
    assert only["weight_decay"] == 0.5 and len(only["params"]) == 5
    decayed, exempt = param_groups(net, replace(train, no_bn_decay=True))
    assert [p.shape for p in decayed["params"]] == [(4, 3, 3, 3), (2, 4)]
    assert decayed["weight_decay"] == 0.5
    assert [p is q for p, q in zip(exempt["params"], [net.bn.weight, net.bn.bias, net.fc.bias],
                                   strict=True)] == [True, True, True]
    assert exempt["weight_decay"] == 0.0
    # One step with zero gradients: decayed weights shrink by lr * wd = 5%, exempt ones stay.
    optimizer = make_optimizer(net, replace(train, no_bn_decay=True))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    net.bn.weight.data.fill_(2.0)
    net.fc.bias.data.fill_(3.0)
    optimizer.step()
    assert torch.allclose(net.conv.weight, 0.95 * before["conv.weight"])
    assert torch.allclose(net.fc.weight, 0.95 * before["fc.weight"])
    assert torch.equal(net.bn.weight, torch.full((4,), 2.0))
    assert torch.equal(net.fc.bias, torch.full((2,), 3.0))


def test_no_bn_decay_on_resnet20_exempts_every_bn_parameter_and_nothing_else():
    model = build_model("resnet20", 10, (3, 32, 32))
    decayed, exempt = param_groups(model, TrainConfig(no_bn_decay=True, weight_decay=1e-4))
    n_bn = sum(p.numel() for m in model.modules() if isinstance(m, nn.BatchNorm2d)
               for p in m.parameters())
    n_bias = sum(p.numel() for n, p in model.named_parameters() if n.endswith("bias")
                 and "bn" not in n and not isinstance(model.get_submodule(n[:-5]),
                                                      nn.BatchNorm2d))
    assert sum(p.numel() for p in exempt["params"]) == n_bn + n_bias
    assert sum(p.numel() for p in decayed["params"]) + n_bn + n_bias == \
        sum(p.numel() for p in model.parameters())


def test_label_smoothed_loss_equals_the_hand_value():
    logits = torch.tensor([[2.0, 0.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([0])
    # targets q = 0.9 * onehot + 0.1 / 3; loss = -sum q log softmax = log(e^2 + 2) - 2 q_0
    q0 = 0.9 + 0.1 / 3
    want = math.log(math.exp(2) + 2) - 2 * q0
    got = train_loss(TrainConfig(label_smoothing=0.1))(logits, labels)
    assert float(got) == pytest.approx(want, rel=1e-12)
    assert float(got) == pytest.approx(0.372878, abs=1e-6)
    assert train_loss(TrainConfig()) is F.cross_entropy


def test_new_fields_at_their_defaults_keep_run_ids():
    base = RunConfig()
    same = RunConfig(train=TrainConfig(warmup_epochs=0, schedule_unit="epoch",
                                       label_smoothing=0.0, no_bn_decay=False))
    assert canonical_json(same) == canonical_json(base) == '{"method":{"name":"dense"}}'
    assert run_id(same) == run_id(base)
    for changed in (dict(warmup_epochs=1), dict(schedule_unit="step"),
                    dict(label_smoothing=0.1), dict(no_bn_decay=True)):
        assert run_id(RunConfig(train=TrainConfig(**changed))) != run_id(base), changed


@pytest.mark.parametrize(("field", "value", "message"), [
    ("warmup_epochs", 20, "train.warmup_epochs = 20: expected a value below epochs (20)"),
    ("label_smoothing", 1.0, "train.label_smoothing = 1.0: expected a number in [0, 1)"),
    ("schedule_unit", "batch", 'train.schedule_unit = "batch": expected one of "epoch", "step"'),
])
def test_bad_recipe_values_are_user_errors(field, value, message):
    with pytest.raises(UserError, match=f"^{message}$".replace("[", r"\[").replace("(", r"\(")
                       .replace(")", r"\)")):
        RunConfig(train=TrainConfig(**{field: value})).validate()


def test_trainer_uses_the_per_step_schedule_and_the_smoothed_loss(tmp_path):
    # 600 examples at batch 50: 12 steps per epoch. lr = 1e-300 (lr must be > 0) is 0 in
    # float32, so the weights never move and the recorded train loss is the smoothed loss of
    # the initial model over all 600 examples.
    config = tiny_config("dense", epochs=3, optimizer="sgd", lr=1e-300, label_smoothing=0.2)
    result = run_one(config, tmp_path)
    torch.manual_seed(config.seed)
    model = build_model("mnist1d_cnn", 10, (40,))
    from bench.data import load_dataset

    data = load_dataset(config.data, None)
    x, y = data.train.tensors
    with torch.no_grad():
        want = float(F.cross_entropy(model(x), y, label_smoothing=0.2))
    assert result["history"][0]["train_loss"] == pytest.approx(want, rel=1e-5)
    # Per-step cosine with one warm-up epoch: the last step of epoch 2 (t = 35) sits at
    # (35 - 12) / (36 - 12) of the cosine; the record holds the lr of the epoch's last step.
    config = tiny_config("dense", epochs=3, optimizer="sgd", lr=0.1, lr_schedule="cosine",
                         warmup_epochs=1, schedule_unit="step")
    result = run_one(config, tmp_path)
    lrs = [h["lr"] for h in result["history"]]
    assert lrs == pytest.approx([0.1, 0.1 * 0.5 * (1 + math.cos(math.pi * 11 / 24)),
                                 0.1 * 0.5 * (1 + math.cos(math.pi * 23 / 24))], rel=1e-12)
    assert result["best_top1"] == max(h["top1"] for h in result["history"] + [result])
