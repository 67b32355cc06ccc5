"""RigL: rigging the lottery (Evci, Gale, Menick, Castro & Elsen, ICML 2020).

Follows google-research/rigl ``rigl/sparse_optimizers_base.py`` (``SparseRigLOptimizerBase``,
``generic_mask_update``, ``_get_update_op``, ``get_drop_fraction``) with the settings of
``rigl/cifar_resnet/resnet_train_eval.py`` (see ``reference/methods.md`` §11):

* Initial masks: random with exact per-layer counts, ERK by default (``mask_init_method``;
  ``uniform`` on request), as the static baseline draws them.
* Mask updates on the batches with 0-based index t (batches before this one) where
  begin <= t <= end and t - begin is a multiple of the interval (``is_mask_update_iter``):
  every 100 steps (``update_interval``: the same absolute ΔT in the CIFAR and the ImageNet
  config), begin 0 and end at 75,000 of the CIFAR run's 97,656 steps as fractions of the run
  (``schedules.MaskUpdateSchedule``; the ImageNet config's 25,000 of 32,000 is the same end to
  within 2% of the run). The interval stays absolute on shorter runs: scaling it with the run
  would make a 1,600-step run update on every other batch, and the no-step rule below would
  then skip 40% of its gradient steps.
* Drop fraction f_t = 0.3 decayed by TF's cosine_decay over end - begin on the raw step
  (``drop_fraction_anneal='cosine'``, the paper's setting; ``"constant"`` on request). Per
  layer n_drop = int(float32(n_active) * f_t) (the reference's float32 cast).
* Drop: keep the n_active - n_drop active weights with the largest |w| + N(0, 1e-5) noise.
  Grow: the n_drop positions with the largest |dense gradient| among those not kept (just-
  dropped ones included), the gradient of the loss of the current batch with respect to the
  masked weights, read in ``after_backward`` before the gradients are masked (the contract's
  dense-gradient rule, ``methods.base``). ``selection.drop_and_grow``.
* New connections (old mask 0) start at 0 (``grow_init='zeros'``) with their optimizer state
  zeroed (``reset_momentum`` with ``initial_acc_scale=0``); a regrown just-dropped connection
  keeps its value and state.
* No optimizer step on a mask-update batch (``cond(mask_update, mask_update_op,
  apply_gradient_op)``): every gradient is dropped, so the optimizer skips every parameter.
  Deviation: the reference's global step does not advance on that batch, ours does (the
  schedule counts batches), so a run takes one gradient step fewer per mask update (1% of
  the steps at the CIFAR interval).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from bench.config import RunConfig, check
from methods.base import MaskedMethod, SetupContext
from methods.rewiring import DeviceRNG
from methods.schedules import MaskUpdateSchedule, cosine_drop_fraction, scaled
from methods.selection import drop_and_grow, reset_optimizer_state

RIGL_CIFAR_STEPS = 97656  # the CIFAR config's run length, for end_fraction
ANNEALS = ("cosine", "constant")


@dataclass(frozen=True)
class RigLHparams:
    drop_fraction: float = field(default=0.3, metadata=check(ge=0, le=1))
    drop_fraction_anneal: str = field(default="cosine", metadata=check(choices=ANNEALS))
    begin_fraction: float = field(default=0.0, metadata=check(ge=0, le=1))
    end_fraction: float = field(default=75000 / RIGL_CIFAR_STEPS,
                                metadata=check(ge=0, le=1, above="begin_fraction"))
    update_interval: int = field(default=100, metadata=check(ge=1))  # steps between updates
    noise_std: float = field(default=1.0e-5, metadata=check(ge=0))


class RigL(MaskedMethod):
    name = "rigl"
    Hparams = RigLHparams
    default_distribution = "erk"
    distributions = ("uniform", "erk")

    def __init__(self, config: RunConfig, hparams: Any):
        super().__init__(config, hparams)
        self.updates = 0
        self.regrown_total = 0
        self._new: list[torch.Tensor] | None = None

    def setup(self, ctx: SetupContext) -> None:
        super().setup(ctx)
        hp = self.hparams
        ctx.masking.init_random(self.density, self.distribution, self.generator)
        total = ctx.steps_per_epoch * ctx.config.train.epochs
        self.schedule = MaskUpdateSchedule(scaled(hp.begin_fraction, total),
                                           scaled(hp.end_fraction, total), hp.update_interval)
        self.rng = DeviceRNG(self.generator, ctx.device)

    def drop_fraction(self, t: int) -> float:
        hp = self.hparams
        if hp.drop_fraction_anneal == "constant":
            return hp.drop_fraction
        return cosine_drop_fraction(hp.drop_fraction, t, self.schedule.begin, self.schedule.end)

    @torch.no_grad()
    def after_backward(self, model: nn.Module, step: int) -> None:
        t = step - 1
        if not self.schedule.is_update(t):
            super().after_backward(model, step)
            return
        self._new = self.update_masks(t)
        for p in model.parameters():
            p.grad = None  # no optimizer step on a mask-update batch

    @torch.no_grad()
    def update_masks(self, t: int) -> list[torch.Tensor]:
        """One ``generic_mask_update`` over every layer, from the gradients as backward left
        them; returns each layer's new connections."""
        masking = self.masking
        assert masking is not None
        fraction = torch.tensor(self.drop_fraction(t), dtype=torch.float32)
        new_connections = []
        for name, w in masking.weights().items():
            active = masking.masks[name]
            n_active = int(active.sum())
            n_drop = int(torch.tensor(n_active, dtype=torch.float32) * fraction)
            drop_score = w.detach().abs() * active
            if self.hparams.noise_std > 0:
                drop_score += torch.randn(w.shape, generator=self.rng.generator,
                                          device=w.device) * self.hparams.noise_std
            grad = w.grad if w.grad is not None else torch.zeros_like(w)
            mask, new = drop_and_grow(drop_score, grad.abs(), active, n_drop)
            w.mul_(mask & ~new)  # dropped weights to 0; new ones start at 0 (grow_init zeros)
            masking.set_mask(name, mask)
            new_connections.append(new)
            self.regrown_total += int(new.sum())
        self.updates += 1
        return new_connections

    @torch.no_grad()
    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
        if self._new is not None:
            assert self.masking is not None
            reset_optimizer_state(optimizer, list(self.masking.weights().values()), self._new)
            self._new = None
        super().after_step(model, optimizer, step)

    def summary(self) -> dict[str, Any]:
        return {"mask_updates": self.updates, "regrown_total": self.regrown_total}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), **self.rng.state_dict(), "updates": self.updates,
                "regrown_total": self.regrown_total}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.rng.load_state_dict(state)
        self.updates = int(state["updates"])
        self.regrown_total = int(state["regrown_total"])
