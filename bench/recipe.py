"""The training recipe's moving parts: learning-rate schedule (with linear warm-up), optimizer
parameter groups (weight decay off for norms and biases) and the training loss (label
smoothing). ``bench.train`` calls these; every default is the harness's original behaviour, so a
config that sets none of the new fields trains bit-identically to before.

Sources of the rules (shared/reference/methods.md):

- Warm-up: STR ``utils/schedulers.py`` ``_warmup_lr``: lr · (e + 1) / W in epoch e < W, then the
  cosine runs over the remaining E − W epochs (``cosine_lr``), evaluated once per epoch. Per
  step (``schedule_unit = "step"``, RigL's ImageNet recipe) the same rule is applied to the step
  count: lr · (t + 1) / (W · S) for step t < W · S, S = steps per epoch.
- Step decay: lr · gamma^(number of milestones ≤ epoch) (DSR: ×0.2 at 60/120/160, GraSP and
  EigenDamage: ×0.1 at 50% and 75% of the epochs). Milestones are epochs in both units.
- ``no_bn_decay``: STR's ``--no-bn-decay`` (``main.py`` ``get_optimizer``) puts normalisation
  parameters in a group without weight decay; biases join them here (STR's convs have none).
- Label smoothing: ``torch.nn.functional.cross_entropy(label_smoothing=ε)`` (STR and RigL use
  ε = 0.1). The test loss stays the plain cross-entropy.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from bench.accel import optimizer_kernel
from bench.config import TrainConfig
from methods.schedules import cosine_decay

# Module types whose parameters ``no_bn_decay`` exempts from weight decay.
NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def lr_factor(train: TrainConfig, epoch: int, batch: int = 0, steps_per_epoch: int = 1) -> float:
    """The lr multiplier for the step at `batch` (0-based) of `epoch` (0-based, counted in the
    phase). With ``schedule_unit = "epoch"`` the factor is constant within an epoch."""
    per_step = train.schedule_unit == "step"
    total = train.epochs * (steps_per_epoch if per_step else 1)
    # Position t on the schedule's clock, and the warm-up length W in the same unit.
    t = epoch * steps_per_epoch + batch if per_step else epoch
    warm = train.warmup_epochs * (steps_per_epoch if per_step else 1)
    if t < warm:
        return (t + 1) / warm
    if train.lr_schedule == "step":
        return train.gamma ** sum(1 for m in train.milestones if epoch >= m)
    if train.lr_schedule == "cosine":
        return cosine_decay(t - warm, total - warm)
    return 1.0


def set_lr(optimizer: torch.optim.Optimizer, train: TrainConfig, epoch: int, batch: int,
           steps_per_epoch: int) -> float:
    """Write the scheduled lr into every parameter group; returns it."""
    lr = train.lr * lr_factor(train, epoch, batch, steps_per_epoch)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def param_groups(model: nn.Module, train: TrainConfig) -> list[dict]:
    """Optimizer groups: one group of every trainable parameter with the recipe's weight decay,
    or, with ``no_bn_decay``, that group minus normalisation parameters and biases, which form
    a second group with weight decay 0. Parameters keep the model's order inside a group."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not train.no_bn_decay:
        return [{"params": params, "weight_decay": train.weight_decay}]
    exempt: set[int] = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if isinstance(module, NORM_TYPES) or name == "bias":
                exempt.add(id(p))
    groups = [{"params": [p for p in params if id(p) not in exempt],
               "weight_decay": train.weight_decay},
              {"params": [p for p in params if id(p) in exempt], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def make_optimizer(model: nn.Module, train: TrainConfig,
                   device: torch.device | None = None) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov when momentum > 0) or Adam over ``param_groups``: one call per
    step over all parameters, fused CUDA kernels on a GPU, foreach elsewhere
    (``bench.accel.optimizer_kernel``; `device` defaults to the model's)."""
    groups = param_groups(model, train)
    if device is None:
        device = next(model.parameters()).device
    kernel = optimizer_kernel(device)
    if train.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=train.lr, momentum=train.momentum,
                               nesterov=train.nesterov and train.momentum > 0,
                               weight_decay=train.weight_decay, **kernel)
    return torch.optim.Adam(groups, lr=train.lr, weight_decay=train.weight_decay, **kernel)


def train_loss(train: TrainConfig) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """(logits [N, C], labels [N]) -> mean loss: cross-entropy, label-smoothed when asked."""
    if train.label_smoothing == 0.0:
        return F.cross_entropy
    eps = train.label_smoothing

    def smoothed(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, labels, label_smoothing=eps)

    return smoothed
