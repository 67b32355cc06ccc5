"""Deep rewiring, DeepR (Bellec, Kappel, Maass & Legenstein, ICLR 2018).

``variant = "paper"`` (default): the authors' code, guillaumeBellec/deep_rewiring
``script_mnist_deep_rewiring.py`` (per-layer constraint) and
``script_mnist_deep_rewiring_with_global_constraint.py`` (global constraint). Each potential
connection has a sign fixed at initialisation and a parameter theta; w = sign * theta while
theta > 0, otherwise the connection is dormant and w = 0. Every step:

* theta follows the optimizer's step on the loss plus l1 * sum|w| (with plain SGD exactly the
  code's ``theta -= lr * l1`` on connected entries), plus Gaussian noise
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

The L1 term is l1 * sum|w| over the prunable weights (``l1_penalty``). Its gradient,
l1 * sign(w), is added to the gradients in ``after_backward`` rather than through
``extra_loss`` and autograd: the same numbers (|w|'s backward is sign(w), 0 at 0), a tenth of
the cost on small models. The training loss the trainer logs never included it.

Per step the work is a few vector ops over all layers at once (``masking.FlatLayers``). The
replacements come from one segmented random sort (``rewiring.segmented_random_choice``) on
every device; on CPU the dead connections are also listed to keep exact per-layer counts (and
the global constraint's split), on an accelerator no count is read back.

Schedules scale with the run: temperature phase starts and the stop point are fractions of the
run's total steps (25/200, 80/200, 140/200; 190/200).

The paper variant is the default because this is the DeepR entry of the benchmark; the DSR
variant reproduces the "DeepR" line of the DSR paper's comparison (label ``deepr-dsr``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from bench.config import RunConfig, check
from bench.errors import UserError
from methods.base import MaskedMethod, SetupContext, distribution_label, variant_name
from methods.masking import FlatLayers
from methods.rewiring import DeviceRNG, segmented_random_choice
from methods.schedules import (
    DSR_PHASE_FRACTIONS,
    DSR_STOP_FRACTION,
    DSR_TEMPERATURES,
    dsr_temperature,
    scaled,
)
from methods.selection import reset_optimizer_state

VARIANTS = ("paper", "dsr")


@dataclass(frozen=True)
class DeepRHparams:
    variant: str = field(default="paper", metadata=check(choices=VARIANTS))
    l1: float = field(default=1.0e-5, metadata=check(ge=0))
    # Variant "paper": noise std on theta is lr * gdnoise; reactivated theta.
    gdnoise: float = field(default=1.0e-5, metadata=check(ge=0))
    reconnect_value: float = field(default=1.0e-12, metadata=check(ge=0))
    # Variant "dsr": gradient noise std sqrt(2 * dsr_eta * T(step)); stop point.
    dsr_eta: float = field(default=0.01, metadata=check(ge=0))
    dsr_temperatures: tuple[float, ...] = field(default=DSR_TEMPERATURES, metadata=check(ge=0))
    dsr_temperature_fractions: tuple[float, ...] = field(
        default=DSR_PHASE_FRACTIONS, metadata=check(ge=0, le=1, same_length="dsr_temperatures"))
    dsr_stop_fraction: float = field(default=DSR_STOP_FRACTION, metadata=check(ge=0, le=1))


class DeepR(MaskedMethod):
    name = "deepr"
    Hparams = DeepRHparams
    default_distribution = "uniform"
    distributions = ("uniform", "erk", "learned")

    def __init__(self, config: RunConfig, hparams: Any):
        super().__init__(config, hparams)
        if self.hparams.variant == "dsr" and self.distribution == "learned":
            raise UserError("DeepR variant 'dsr' keeps per-layer counts; distribution 'learned' "
                            "(the global constraint) needs variant 'paper'")
        # On an accelerator the per-step path never reads a count back (see rewiring.py).
        self.sync_free = False

    @classmethod
    def label(cls, config: RunConfig) -> str:
        hp = config.method.hparams if config.method.hparams is not None else DeepRHparams()
        return distribution_label(variant_name(cls.name, hp.variant), config,
                                  cls.default_distribution)

    def setup(self, ctx: SetupContext) -> None:
        super().setup(ctx)
        hp = self.hparams
        masking = ctx.masking
        weights = masking.weights()
        # Fixed signs (paper): the sign of every position's initial weight, taken before masking.
        negative = torch.cat([w.detach().reshape(-1) < 0 for w in weights.values()])
        init = "uniform" if self.distribution == "learned" else self.distribution
        self.targets = masking.init_random(self.density, init, self.generator)
        self.global_constraint = self.distribution == "learned"
        if hp.variant == "paper":
            names = list(weights)
        else:
            # The DSR code leaves tensors without an inactive entry alone.
            names = [n for n, w in weights.items() if self.targets[n] < w.numel()]
        self.flat = FlatLayers(masking, names)
        self.all_layers = FlatLayers(masking, list(weights))
        dtype = next(iter(weights.values())).dtype
        self.sign = 1.0 - 2.0 * negative.to(device=ctx.device, dtype=dtype)  # +-1, fixed
        # Previous-step signs (dsr): torch.sign of the masked initial weights.
        self.prev_sign = torch.sign(self.flat.weights())
        self.target_list = [self.targets[n] for n in names]
        self.target_counts = torch.tensor(self.target_list, device=ctx.device)
        self.shares = torch.tensor([float(self.targets[n]) for n in names], dtype=torch.float64)
        self.global_target = sum(self.targets[n] for n in names)
        total_steps = ctx.steps_per_epoch * ctx.config.train.epochs
        self.temperature_starts = tuple(scaled(f, total_steps)
                                        for f in hp.dsr_temperature_fractions)
        self.stop = scaled(hp.dsr_stop_fraction, total_steps)
        self.rng = DeviceRNG(self.generator, ctx.device)
        self.sync_free = ctx.device.type != "cpu"
        self._keep = torch.zeros(self.flat.total, device=ctx.device, dtype=dtype)
        self._noise = torch.zeros(self.flat.total, device=ctx.device, dtype=dtype)
        self._noise_views = self.flat.chunks(self._noise)
        self._reconnected = torch.zeros((), dtype=torch.int64, device=ctx.device)

    def promised_nonzero(self, model: nn.Module, masking) -> int | None:
        """Rewiring keeps the total of the initial draw (uniform when the distribution is
        learned)."""
        init = "uniform" if self.distribution == "learned" else self.distribution
        params = sum(p.numel() for p in model.parameters())
        return params - masking.total() + sum(masking.layer_counts(self.density, init).values())

    # --- schedule ---------------------------------------------------------------------------
    def temperature(self, step: int) -> float:
        hp = self.hparams
        return dsr_temperature(hp.dsr_temperatures, self.temperature_starts, step)

    def rewiring_active(self, step: int) -> bool:
        return self.hparams.variant == "paper" or step - 1 < self.stop

    # --- hooks ------------------------------------------------------------------------------
    def l1_penalty(self, model: nn.Module) -> torch.Tensor:
        """l1 * sum|w| over the prunable weights (the reference's L1 term)."""
        assert self.masking is not None
        weights = list(self.masking.weights().values())
        return self.hparams.l1 * torch.stack([w.abs().sum() for w in weights]).sum()

    @torch.no_grad()
    def after_backward(self, model: nn.Module, step: int) -> None:
        hp = self.hparams
        layers = self.all_layers
        layers.mask_gradients()
        grads = [p.grad for p in layers.params]
        if hp.l1 != 0.0 and all(g is not None for g in grads):
            torch._foreach_add_(grads, torch._foreach_sign([p.detach() for p in layers.params]),
                                alpha=hp.l1)
        if hp.variant != "dsr" or not self.rewiring_active(step) or not len(self.flat):
            return
        std = math.sqrt(2.0 * hp.dsr_eta * self.temperature(step))
        if std == 0.0:
            return
        flat = self.flat
        self._noise.normal_(generator=self.rng.generator).mul_(flat.mask())
        pairs = [(p.grad, c) for p, c in zip(flat.params, self._noise_views, strict=True)
                 if p.grad is not None]
        torch._foreach_add_([g for g, _ in pairs], [c for _, c in pairs], alpha=std)

    @torch.no_grad()
    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
        if not self.rewiring_active(step):
            self.all_layers.apply()
            return
        if self.hparams.variant == "paper":
            self._step_paper(optimizer)
        else:
            self._step_dsr()
            if len(self.flat) < len(self.all_layers):
                self.all_layers.apply()

    # --- the two rules ----------------------------------------------------------------------
    def _step_paper(self, optimizer: torch.optim.Optimizer) -> None:
        hp = self.hparams
        flat = self.flat
        w = flat.weights()
        std = float(optimizer.param_groups[0]["lr"]) * hp.gdnoise
        if std > 0.0:
            # Dormant entries get noise too but are zeroed below: cheaper than masking it.
            w.add_(torch.randn(flat.total, generator=self.rng.generator, device=w.device,
                               dtype=w.dtype), alpha=std)
        mask = flat.mask()
        # theta = sign * w; a connection stays only while active with theta > 0.
        keep = torch.gt(w * self.sign * mask, 0.0, out=self._keep)
        w.mul_(keep)
        if self.sync_free and not self.global_constraint:
            missing = self.target_counts - flat.segment_sums(keep).long()
            self._reconnected += missing.sum()
            new = segmented_random_choice(flat, keep == 0, missing, self.rng.generator)
            keep.masked_fill_(new, 1.0)
            torch.where(new, self.sign * hp.reconnect_value, w, out=w)
            reset_optimizer_state(optimizer, flat.params, flat.chunks(new))
            flat.write_weights(w)
            flat.write_mask(keep)
            return
        counts = flat.counts()
        for d in torch.nonzero(mask > keep).flatten().tolist():  # the connections that died
            counts[flat.layer_of(d)] -= 1
        if self.global_constraint:
            room = [size - c for size, c in zip(flat.sizes, counts, strict=True)]
            grow = self._global_split(room, self.global_target - sum(counts))
        else:
            grow = [t - c for t, c in zip(self.target_list, counts, strict=True)]
        if sum(grow) > 0:
            # Candidates: every dormant connection, the just-dead included.
            chosen = self._choose(keep == 0, grow)
            self._revive(optimizer, w, keep, chosen, hp.reconnect_value)
            counts = [c + g for c, g in zip(counts, grow, strict=True)]
        self._reconnected += sum(grow)
        flat.write_weights(w)
        flat.write_mask(keep, counts)

    def _choose(self, candidates: torch.Tensor, grow: list[int]) -> dict[int, list[int]]:
        """{layer: flat positions} of ``grow[layer]`` uniformly random candidates per layer
        (fewer where a layer has fewer), by the same draw as the sync-free path
        (``rewiring.segmented_random_choice``), so a run draws alike on every device."""
        counts = torch.tensor(grow, device=candidates.device)
        new = segmented_random_choice(self.flat, candidates, counts, self.rng.generator)
        chosen: dict[int, list[int]] = {i: [] for i, g in enumerate(grow) if g > 0}
        for d in torch.nonzero(new).flatten().tolist():
            chosen[self.flat.layer_of(d)].append(d)
        return chosen

    def _revive(self, optimizer: torch.optim.Optimizer | None, w: torch.Tensor,
                keep: torch.Tensor, chosen: dict[int, list[int]], value: float) -> None:
        """Activate the chosen flat positions: mask 1, theta = value with the stored sign (paper;
        value 0 for dsr), optimizer state zeroed (paper: optimizer given)."""
        flat = self.flat
        device = w.device
        idx = torch.tensor([d for got in chosen.values() for d in got], device=device)
        keep[idx] = 1.0
        if value != 0.0:
            w[idx] = self.sign[idx] * value
        if optimizer is not None:
            local = [None] * len(flat)
            for i, got in chosen.items():
                if got:
                    local[i] = torch.tensor(got, device=device) - flat.starts[i]
            reset_optimizer_state(optimizer, flat.params, local)

    def _global_split(self, room: list[int], total_missing: int) -> list[int]:
        """The global-constraint script's categorical split of the reactivations over layers,
        probabilities proportional to the initial counts; a layer's excess (more than its
        dormant slots) is drawn again among the others."""
        counts = [0] * len(room)
        room = list(room)
        remaining = total_missing
        while remaining > 0:
            probs = self.shares * torch.tensor([float(r > 0) for r in room], dtype=torch.float64)
            draw = torch.multinomial(probs, remaining, replacement=True,
                                     generator=self.generator)
            split = torch.bincount(draw, minlength=len(room)).tolist()
            for i in range(len(room)):
                take = min(split[i], room[i])
                counts[i] += take
                room[i] -= take
                remaining -= take
        return counts

    def _step_dsr(self) -> None:
        flat = self.flat
        if not len(flat):
            return
        w = flat.weights()
        mask = flat.mask()
        # The optimizer's output, before masks are re-applied (the code's torch.sign(s_tensor)).
        sign = torch.sign(w)
        flipped = (sign * self.prev_sign * mask) < 0
        self.prev_sign = sign
        keep = torch.mul(mask, ~flipped, out=self._keep)
        w.mul_(keep)  # pruned weights (and optimizer drift) to 0 before growth
        # Candidates: inactive before pruning, i.e. inactive minus the just-pruned.
        if self.sync_free:
            n = flat.segment_sums(flipped.long())
            self._reconnected += n.sum()
            new = segmented_random_choice(flat, mask == 0, n, self.rng.generator)
            keep.masked_fill_(new, 1.0)  # new weights are already 0
            flat.write_weights(w)
            flat.write_mask(keep)
            return
        counts = flat.counts()
        grow = [0] * len(flat)
        for d in torch.nonzero(flipped).flatten().tolist():
            grow[flat.layer_of(d)] += 1
        if sum(grow) > 0:
            chosen = self._choose(mask == 0, grow)
            self._revive(None, w, keep, chosen, 0.0)
            # grow_random grows fewer when a layer has too little room; counts follow.
            counts = [c - g + len(chosen.get(i, ())) for i, (c, g) in
                      enumerate(zip(counts, grow, strict=True))]
            self._reconnected += sum(len(v) for v in chosen.values())
        flat.write_weights(w)
        flat.write_mask(keep, counts)

    # --- state ------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        return {"variant": self.hparams.variant, "reconnected": int(self._reconnected),
                "global_constraint": self.global_constraint}

    def state_dict(self) -> dict[str, Any]:
        state = {**super().state_dict(), **self.rng.state_dict(),
                 "reconnected": self._reconnected.cpu()}
        if self.hparams.variant == "paper":
            state["negative"] = (self.sign < 0).cpu()
        else:
            state["prev_sign"] = self.prev_sign.to(torch.int8).cpu()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.rng.load_state_dict(state)
        device = self._reconnected.device
        self._reconnected = state["reconnected"].to(device)
        dtype = self.sign.dtype
        if "negative" in state:
            self.sign = 1.0 - 2.0 * state["negative"].to(device=device, dtype=dtype)
        if "prev_sign" in state:
            self.prev_sign = state["prev_sign"].to(device=device, dtype=dtype)
