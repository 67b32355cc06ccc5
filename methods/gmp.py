"""Gradual magnitude pruning (Zhu & Gupta 2017, "To prune, or not to prune").

Schedule as in TensorFlow's ``contrib/model_pruning/python/pruning.py``
(``Pruning._setup_sparsity``), the implementation RigL uses for its pruning baseline::

    p   = clip((t - t_begin) / (t_end - t_begin), 0, 1)
    s_t = s_f + (s_i - s_f) * (1 - p) ** 3

Masks are updated every ``frequency`` steps inside [t_begin, t_end], at TF's update steps and no
others (``schedules.PruningSchedule``; t_end is t_begin plus a whole number of frequencies, as
in the reference configuration, so the last update reaches s_f); at each update every layer
keeps its largest-magnitude weights so that its sparsity is s_t (per-layer, so the final
distribution is the run's: uniform by default, ERK on request). Pruned weights get zero gradient
and stay zero, so the mask only shrinks. Defaults are RigL's CIFAR setting
(``rigl/cifar_resnet/resnet_train_eval.py``: begin 20000, end 75000, frequency 1000 of 97656
steps, ``threshold_decay=0``) expressed as fractions of the run's total steps, so that the same
schedule shape applies to a 20-epoch MNIST-1D run and a 250-epoch CIFAR run.

Deviation, on purpose: the TF library finds the threshold from a 256-bin histogram of |W|; we
take an exact per-layer top-k, so every update hits its nonzero count exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from bench.config import check
from methods.base import MaskedMethod, SetupContext
from methods.masking import kept_count, layer_densities
from methods.schedules import PruningSchedule, cubic_sparsity
from methods.selection import top_k

RIGL_CIFAR_STEPS = 97656


@dataclass(frozen=True)
class GMPHparams:
    begin_fraction: float = field(default=20000 / RIGL_CIFAR_STEPS, metadata=check(ge=0, le=1))
    end_fraction: float = field(default=75000 / RIGL_CIFAR_STEPS,
                                metadata=check(ge=0, le=1, above="begin_fraction"))
    frequency_fraction: float = field(default=1000 / RIGL_CIFAR_STEPS,
                                      metadata=check(gt=0, le=1))
    initial_sparsity: float = field(default=0.0, metadata=check(ge=0, lt=1))
    exponent: int = field(default=3, metadata=check(ge=1))


class GMP(MaskedMethod):
    name = "gmp"
    Hparams = GMPHparams

    def setup(self, ctx: SetupContext) -> None:
        super().setup(ctx)
        hp = self.hparams
        total = ctx.steps_per_epoch * ctx.config.train.epochs
        self.schedule = PruningSchedule.scaled(hp.begin_fraction, hp.end_fraction,
                                               hp.frequency_fraction, total)
        shapes = ctx.masking.shapes()
        self.final_densities = layer_densities(shapes, self.density, self.distribution)

    @torch.no_grad()
    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
        # `step` counts optimizer steps already taken (1-based), like TF's global_step after it.
        super().after_step(model, optimizer, step)
        if not self.schedule.is_update_step(step):
            return
        hp = self.hparams
        masking = self.masking
        assert masking is not None
        for name, weight in masking.weights().items():
            s_final = 1.0 - self.final_densities[name]
            s_t = cubic_sparsity(step, self.schedule.begin, self.schedule.end,
                                 hp.initial_sparsity, s_final, hp.exponent)
            n_keep = kept_count(weight.numel(), 1.0 - s_t)
            current = masking.masks[name]
            if n_keep >= int(current.sum()):
                continue
            masking.set_mask(name, top_k(weight.abs(), n_keep, current))
        masking.apply()

