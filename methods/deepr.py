"""Deep rewiring, DeepR (Bellec, Kappel, Maass & Legenstein, ICLR 2018).

``variant = "paper"`` (default): the authors' code, guillaumeBellec/deep_rewiring
``script_mnist_deep_rewiring.py`` (per-layer constraint) and
``script_mnist_deep_rewiring_with_global_constraint.py`` (global constraint). Each potential
connection has a sign fixed at initialisation and a parameter theta; w = sign * theta while
theta > 0, otherwise the connection is dormant and w = 0. Every step:

* theta follows the optimizer's step on the loss plus l1 * sum|w| (``extra_loss``; with plain
  SGD this is exactly the code's ``theta -= lr * l1`` on connected entries), plus Gaussian noise
  of std lr * gdnoise on connected entries (the code's ``theta += lr * N(0, gdnoise^2)``, i.e.
  temperature T = lr * gdnoise^2 / 2, so the noise follows the run's lr schedule as in the code);
* a connection whose theta is <= 0 (its weight crossed or hit zero) goes dormant;
* dormant connections, the just-dormant included, are reactivated uniformly at random until the
  active count is back at its target, with theta = 1e-12 and their stored sign; their optimizer
  state is zeroed (the reference uses plain SGD, so a reactivated connection has no history).

Signs are the signs of the model's initial weights at every position (the code draws an
independent random sign and theta = |w0|; both give w ~ init at active positions). The count is
kept per layer for distribution "uniform"/"erk" (the initial densities); distribution "learned"
is the global-constraint script: the total is kept and the reactivations are split over layers
by one categorical draw with probabilities proportional to the layers' initial counts (a layer
with too few dormant slots passes its excess to another draw, so the total stays exact where
the reference would silently reconnect fewer). Rewiring runs for the whole training, as in the
code. The paper's MNIST MLP used hand-picked densities 1%/3%/30% (about ER's proportions);
the default "uniform" is the DSR comparison's and the harness's common ground.

``variant = "dsr"``: DeepR as the DSR paper ran it (IntelAI/dynamic-reparameterization
``main.py --DeepR``, ``parameterized_tensors.py`` ``prune_sign_change`` + ``grow_random``):

* Gaussian noise of std sqrt(2 eta T) on the active entries of the *gradient* before the
  optimizer step (so it goes through momentum and the lr), eta = 0.01 (``--DeepR_eta`` in the
  experiments), T from the schedule 1e-5, 1e-8, 1e-12, 1e-15 from epochs 0, 25, 80, 140 of 200;
* after the step, an active weight whose sign differs from its sign after the previous step is
  pruned (the sign is read from the optimizer's output, before masks are re-applied, like the
  code's ``torch.sign(s_tensor)``), and as many weights are regrown in that layer, uniformly among
  inactive positions other than the just-pruned ones, at 0; optimizer state is not reset;
* l1 = 1e-5 on the loss (``--L1-loss-coeff``); the experiments use weight decay 0 (a run setting);
* layers without an inactive position are left alone; everything stops at epoch 190 of 200.

Schedules scale with the run: temperature phase starts and the stop point are fractions of the
run's total steps (25/200, 80/200, 140/200; 190/200).

The paper variant is the default because this is the DeepR entry of the benchmark; the DSR
variant reproduces the "DeepR" line of the DSR paper's comparison (label ``deepr-dsr``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bench.config import RunConfig
from bench.errors import UserError
from methods.base import MaskedMethod, SetupContext
from methods.rewiring import (
    DSR_PHASE_FRACTIONS,
    DSR_STOP_FRACTION,
    DSR_TEMPERATURES,
    DeviceRNG,
    piecewise_index,
    random_subset,
    random_subset_by_rank,
    scaled,
)

VARIANTS = ("paper", "dsr")


@dataclass(frozen=True)
class DeepRHparams:
    variant: str = "paper"
    l1: float = 1.0e-5
    # Variant "paper": noise std on theta is lr * gdnoise; reactivated theta.
    gdnoise: float = 1.0e-5
    reconnect_value: float = 1.0e-12
    # Variant "dsr": gradient noise std sqrt(2 * dsr_eta * T(step)); stop point.
    dsr_eta: float = 0.01
    dsr_temperatures: tuple[float, ...] = DSR_TEMPERATURES
    dsr_temperature_fractions: tuple[float, ...] = DSR_PHASE_FRACTIONS
    dsr_stop_fraction: float = DSR_STOP_FRACTION


class DeepR(MaskedMethod):
    name = "deepr"
    Hparams = DeepRHparams
    default_distribution = "uniform"
    distributions = ("uniform", "erk", "learned")

    def __init__(self, config: RunConfig, hparams: Any):
        super().__init__(config, hparams if hparams is not None else DeepRHparams())
        hp = self.hparams
        if hp.variant not in VARIANTS:
            raise UserError(f"unknown DeepR variant {hp.variant!r}; valid: {', '.join(VARIANTS)}")
        if hp.variant == "dsr" and self.distribution == "learned":
            raise UserError("DeepR variant 'dsr' keeps per-layer counts; distribution 'learned' "
                            "(the global constraint) needs variant 'paper'")
        if len(hp.dsr_temperatures) != len(hp.dsr_temperature_fractions):
            raise UserError("dsr_temperatures and dsr_temperature_fractions differ in length")
        self.reconnected = 0
        # On an accelerator the per-step path never reads a count back (see rewiring.py).
        self.sync_free = False

    @classmethod
    def label(cls, config: RunConfig) -> str:
        hp = config.method.hparams if config.method.hparams is not None else DeepRHparams()
        name = cls.name if hp.variant == "paper" else f"{cls.name}-{hp.variant}"
        d = config.sparsity.distribution
        return name if d in ("default", cls.default_distribution) else f"{name}-{d}"

    def setup(self, ctx: SetupContext) -> None:
        super().setup(ctx)
        hp = self.hparams
        masking = ctx.masking
        weights = masking.weights()
        # Fixed signs (paper): the sign of every position's initial weight, drawn before masking.
        self.negative = {n: (w.detach() < 0) for n, w in weights.items()}
        init = "uniform" if self.distribution == "learned" else self.distribution
        self.targets = masking.init_random(self.density, init, self.generator)
        self.global_target = sum(self.targets.values())
        self.global_constraint = self.distribution == "learned"
        self.shares = torch.tensor([float(self.targets[n]) for n in weights], dtype=torch.float64)
        # Previous-step signs (dsr): torch.sign of the masked initial weights.
        self.prev_sign = {n: torch.sign(w.detach()).to(torch.int8) for n, w in weights.items()}
        self.rewired_layers = [n for n, w in weights.items() if self.targets[n] < w.numel()]
        total_steps = ctx.steps_per_epoch * ctx.config.train.epochs
        self.temperature_starts = tuple(scaled(f, total_steps)
                                        for f in hp.dsr_temperature_fractions)
        self.stop = scaled(hp.dsr_stop_fraction, total_steps)
        self.rng = DeviceRNG(self.generator, ctx.device)
        self.sync_free = ctx.device.type != "cpu"
        self._reconnected = torch.zeros((), dtype=torch.int64, device=ctx.device)

    # --- schedule ---------------------------------------------------------------------------
    def temperature(self, step: int) -> float:
        hp = self.hparams
        return hp.dsr_temperatures[piecewise_index(self.temperature_starts, step - 1)]

    def rewiring_active(self, step: int) -> bool:
        return self.hparams.variant == "paper" or step - 1 < self.stop

    # --- hooks ------------------------------------------------------------------------------
    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        if self.hparams.l1 == 0.0:
            return None
        assert self.masking is not None
        weights = list(self.masking.weights().values())
        return self.hparams.l1 * torch.stack([w.abs().sum() for w in weights]).sum()

    @torch.no_grad()
    def after_backward(self, model: nn.Module, step: int) -> None:
        super().after_backward(model, step)
        if self.hparams.variant != "dsr" or not self.rewiring_active(step):
            return
        std = math.sqrt(2.0 * self.hparams.dsr_eta * self.temperature(step))
        if std == 0.0:
            return
        assert self.masking is not None
        masks, weights = self.masking.masks, self.masking.weights()
        for name in self.rewired_layers:
            grad = weights[name].grad
            if grad is None:
                continue
            noise = torch.randn(grad.shape, generator=self.rng.generator, device=grad.device,
                                dtype=grad.dtype)
            grad.add_(noise.mul_(masks[name]), alpha=std)

    @torch.no_grad()
    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
        if not self.rewiring_active(step):
            super().after_step(model, optimizer, step)
            return
        if self.hparams.variant == "paper":
            self._step_paper(optimizer)
        else:
            self._step_dsr()

    # --- the two rules ----------------------------------------------------------------------
    def _step_paper(self, optimizer: torch.optim.Optimizer) -> None:
        hp = self.hparams
        assert self.masking is not None
        masks, weights = self.masking.masks, self.masking.weights()
        std = float(optimizer.param_groups[0]["lr"]) * hp.gdnoise
        alive: dict[str, torch.Tensor] = {}
        for name, w in weights.items():
            if std > 0.0:
                # Dormant entries get noise too, but are zeroed below: cheaper than masking it.
                noise = torch.randn(w.shape, generator=self.rng.generator, device=w.device,
                                    dtype=w.dtype)
                w.add_(noise, alpha=std)
            theta = torch.where(self.negative[name], -w, w)
            alive[name] = masks[name] & (theta > 0)
        counts = self._reconnect_counts(alive)
        new_all: dict[str, torch.Tensor] = {}
        for i, (name, w) in enumerate(weights.items()):
            a = alive[name]
            n = counts[i]
            if isinstance(n, int):
                new = random_subset(~a, n, self.rng.generator) if n > 0 else None
            else:
                new = random_subset_by_rank(~a, n, self.rng.generator)
            w.mul_(a)
            if new is None:
                masks[name].copy_(a)
                continue
            masks[name].copy_(a | new)
            # theta = epsilon with the stored sign.
            w.masked_fill_(new, hp.reconnect_value)
            w.masked_fill_(new & self.negative[name], -hp.reconnect_value)
            new_all[name] = new
        if new_all:
            self.masking.zero_optimizer_state(optimizer, new_all)

    def _reconnect_counts(self, alive: dict[str, torch.Tensor]) -> list:
        """How many to reactivate per layer: python ints, or 0-d tensors when sync-free."""
        names = list(alive)
        active = torch.stack([alive[n].sum() for n in names])
        if not self.global_constraint:
            targets = torch.tensor([self.targets[n] for n in names], device=active.device)
            missing = targets - active
            self._reconnected += missing.sum()
            if self.sync_free:
                return list(missing.unbind())
            return missing.tolist()
        # The global constraint draws a split, which needs the count on the host.
        total_missing = self.global_target - int(active.sum())
        room = [alive[n].numel() - int(a) for n, a in zip(names, active.tolist(), strict=True)]
        counts = [0] * len(names)
        remaining = total_missing
        while remaining > 0:
            probs = self.shares * torch.tensor([float(r > 0) for r in room], dtype=torch.float64)
            draw = torch.multinomial(probs, remaining, replacement=True,
                                     generator=self.generator)
            split = torch.bincount(draw, minlength=len(names)).tolist()
            for i in range(len(names)):
                take = min(split[i], room[i])
                counts[i] += take
                room[i] -= take
                remaining -= take
        self._reconnected += total_missing
        return counts

    def _step_dsr(self) -> None:
        assert self.masking is not None
        masks, weights = self.masking.masks, self.masking.weights()
        for name in self.rewired_layers:
            w, mask = weights[name], masks[name]
            sign = torch.sign(w).to(torch.int8)
            flipped = mask & (sign * self.prev_sign[name] < 0)
            self.prev_sign[name] = sign
            n = flipped.sum()
            self._reconnected += n
            # Candidates: inactive before pruning, i.e. inactive minus the just-pruned.
            if self.sync_free:
                new = random_subset_by_rank(~mask, n, self.rng.generator)
            else:
                n_int = int(n)
                if n_int == 0:
                    continue
                new = random_subset(~mask, n_int, self.rng.generator)
            mask &= ~flipped
            w.mul_(mask)  # pruned weights (and optimizer drift) to 0 before growth
            mask |= new   # so new weights start at 0
        self.masking.apply()

    # --- state ------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        return {"variant": self.hparams.variant, "reconnected": int(self._reconnected),
                "global_constraint": self.global_constraint}

    def state_dict(self) -> dict[str, Any]:
        state = {**super().state_dict(), **self.rng.state_dict(),
                 "reconnected": self._reconnected.cpu()}
        if self.hparams.variant == "paper":
            state["negative"] = {n: t.cpu() for n, t in self.negative.items()}
        else:
            state["prev_sign"] = {n: t.cpu() for n, t in self.prev_sign.items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.rng.load_state_dict(state)
        device = self._reconnected.device
        self._reconnected = state["reconnected"].to(device)
        if "negative" in state:
            self.negative = {n: t.to(device) for n, t in state["negative"].items()}
        if "prev_sign" in state:
            self.prev_sign = {n: t.to(device) for n, t in state["prev_sign"].items()}
