"""Dynamic sparse reparameterization (Mostafa & Wang, ICML 2019).

Follows the authors' code, IntelAI/dynamic-reparameterization (``main.py`` ``train()`` with
``--rewire --threshold-prune --rewire-scaling``; ``parameterized_tensors.py``
``SparseTensor.prune_threshold`` / ``grow_random``), as run in
``experiments/wrnet_experiments.yaml``.

Every P steps, until the stop point:

1. Prune, in every layer, the active weights with |w| < H, one global threshold H. A layer that
   would lose every weight keeps its first active one (``prune_indices[1:]``). K_l are pruned,
   R_l survive.
2. Regrow sum(K) weights, spread over layers in proportion to R_l: G_l = round(R_l / sum(R) *
   to_grow) (numpy's round, half to even); any rounding discrepancy goes to one uniformly random
   layer (clamped at 0); each layer grows min(G_l, room) uniformly random inactive positions,
   excluding the ones it just pruned; repeat on what is still missing until the total grown
   equals the total pruned. Global sparsity is therefore exact; per-layer densities are learned.
   Deviation: the repeats split the remainder over the layers that still have room. The
   reference keeps a full layer's share and never terminates when that share rounds to the
   whole remainder (seen on the MNIST-1D CNN at 95%, whose first conv fills up).
3. Adjust H for the next reallocation: if sum(K) > (1 + delta) N_p halve it, if sum(K) <
   (1 - delta) N_p double it (delta = 0.1 is hard-coded in main.py).

New weights start at 0 (``--big-new-weights`` off) and pruned ones are reset to 0; momentum and
other optimizer state are *not* reset (the reference never touches the optimizer), so a regrown
weight continues with the decayed momentum it had when it was pruned.

Initial masks are uniform (``int((1 - s) n + 0.1)`` per SparseTensor; here the shared
``kept_count`` rule), so ``distribution`` is "learned": the only accepted value.

Scaling to the run's length (the reference is absolute: WRN-28-2 on CIFAR-10, 200 epochs of 500
steps, N_p = 20000):

* ``n_prune_fraction``: N_p as a fraction of the prunable weights, 20000 / 1,451,520 (the
  WRN-28-2 SparseTensor count). The reference kept N_p fixed across sparsities 0.5-0.9, so it
  is a fraction of all prunable weights, not of the active ones.
* rewire periods 100/200/400/800 iterations from epochs 0/25/80/140, stop at epoch 190: phase
  starts and stop are fractions of the run's epochs, periods fractions of its total steps
  (``schedules.RewireSchedule``), so the run reallocates as often as the reference.
* H^(0) = 1e-3 and delta = 0.1 are used as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from bench.config import check
from methods.base import MaskedMethod, SetupContext
from methods.rewiring import DeviceRNG
from methods.schedules import DSR_REF_N_PRUNE, DSR_REF_SPARSE_WEIGHTS, DSRScheduleHparams
from methods.selection import random_k


@dataclass(frozen=True)
class DSRHparams(DSRScheduleHparams):
    n_prune_fraction: float = field(default=DSR_REF_N_PRUNE / DSR_REF_SPARSE_WEIGHTS,
                                    metadata=check(gt=0, le=1))
    delta: float = field(default=0.1, metadata=check(ge=0, lt=1))
    initial_threshold: float = field(default=1.0e-3, metadata=check(gt=0))


def adjust_threshold(threshold: float, n_pruned: int, n_prune_target: int, delta: float) -> float:
    """main.py: halve H when too many were pruned, double it when too few."""
    if n_pruned > (1.0 + delta) * n_prune_target:
        return threshold / 2.0
    if n_pruned < (1.0 - delta) * n_prune_target:
        return threshold * 2.0
    return threshold


def allocation_round(shares: list[float], to_grow: int, generator: torch.Generator,
                     eligible: list[int] | None = None) -> list[int]:
    """One pass of the reference's growth split: shares * to_grow rounded half-to-even, the
    rounding discrepancy added to one random layer (of ``eligible``; all by default) and
    clamped at zero."""
    counts = torch.round(torch.tensor(shares, dtype=torch.float64) * to_grow).long()
    discrepancy = to_grow - int(counts.sum())
    if discrepancy != 0:
        pool = list(range(len(shares))) if eligible is None else eligible
        i = pool[int(torch.randint(len(pool), (1,), generator=generator))]
        counts[i] = max(0, int(counts[i]) + discrepancy)
    return counts.tolist()


class DSR(MaskedMethod):
    name = "dsr"
    Hparams = DSRHparams
    default_distribution = "learned"
    distributions = ("learned",)

    def __init__(self, config, hparams):
        super().__init__(config, hparams)
        self.threshold = float(self.hparams.initial_threshold)
        self.reallocations = 0
        self.pruned_total = 0
        self.last_pruned = 0

    def setup(self, ctx: SetupContext) -> None:
        super().setup(ctx)
        hp = self.hparams
        # The DSR code starts every SparseTensor at the same density; reallocation learns the rest.
        ctx.masking.init_random(self.density, "uniform", self.generator)
        total_steps = ctx.steps_per_epoch * ctx.config.train.epochs
        self.schedule = hp.rewire_schedule(total_steps)
        self.n_prune_target = max(1, int(round(hp.n_prune_fraction * ctx.masking.total())))
        self.rng = DeviceRNG(self.generator, ctx.device)
        self.layers = ctx.masking.flat()

    def promised_nonzero(self, model: nn.Module, masking) -> int | None:
        """Reallocation moves weights between layers but keeps the uniform start's total."""
        params = sum(p.numel() for p in model.parameters())
        uniform = masking.layer_counts(self.density, "uniform")
        return params - masking.total() + sum(uniform.values())

    @torch.no_grad()
    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
        super().after_step(model, optimizer, step)
        if self.schedule.is_rewire_step(step):
            self.reallocate()

    @torch.no_grad()
    def reallocate(self) -> dict[str, tuple[int, int]]:
        """One prune-and-regrow pass; returns {layer: (pruned, grown)}."""
        masking = self.masking
        assert masking is not None
        weights = masking.weights()
        masks = masking.masks
        names = list(weights)
        pruned: dict[str, torch.Tensor] = {}
        for name in names:
            mask, w = masks[name], weights[name]
            below = mask & (w.abs() < self.threshold)
            if int(below.sum()) == int(mask.sum()) and int(mask.sum()) > 0:
                # Keep the layer's first active weight rather than empty it.
                first = int(torch.nonzero(mask.flatten())[0])
                below.view(-1)[first] = False
            pruned[name] = below
            mask &= ~below
            w.mul_(mask)
        n_pruned = [int(pruned[n].sum()) for n in names]
        remaining = [int(masks[n].sum()) for n in names]
        total_pruned = sum(n_pruned)
        grown = [0] * len(names)
        if total_pruned > 0:
            shares = [r / sum(remaining) for r in remaining]
            # Room excludes the positions each layer just pruned (grow_random's setdiff1d).
            room = [int((~masks[n] & ~pruned[n]).sum()) for n in names]
            first = True
            while sum(grown) < total_pruned and sum(room) > 0:
                if first:
                    counts = allocation_round(shares, total_pruned - sum(grown), self.generator)
                    first = False
                else:
                    # What a full layer could not take goes to the layers with room. The
                    # reference keeps the full layer's share and can loop forever when that
                    # share rounds to the whole remainder; it agrees with this otherwise
                    # whenever its random fix-up lands on a layer with room.
                    open_ = [i for i, r in enumerate(room) if r > 0]
                    weight = [float(remaining[i]) if room[i] > 0 else 0.0
                              for i in range(len(names))]
                    if sum(weight) == 0.0:
                        weight = [1.0 if room[i] > 0 else 0.0 for i in range(len(names))]
                    redo = [x / sum(weight) for x in weight]
                    counts = allocation_round(redo, total_pruned - sum(grown), self.generator,
                                              open_)
                for i, name in enumerate(names):
                    n = min(counts[i], room[i])
                    if n <= 0:
                        continue
                    new = random_k(~masks[name] & ~pruned[name], n, self.rng.generator)
                    masks[name] |= new  # new weights are already 0
                    grown[i] += n
                    room[i] -= n
        self.threshold = adjust_threshold(self.threshold, total_pruned, self.n_prune_target,
                                          self.hparams.delta)
        self.reallocations += 1
        self.pruned_total += total_pruned
        self.last_pruned = total_pruned
        return {n: (n_pruned[i], grown[i]) for i, n in enumerate(names)}

    def summary(self) -> dict[str, Any]:
        assert self.masking is not None
        return {
            "threshold": self.threshold,
            "n_prune_target": self.n_prune_target,
            "reallocations": self.reallocations,
            "pruned_total": self.pruned_total,
            "layer_density": {n: float(m.float().mean()) for n, m in self.masking.masks.items()},
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            **self.rng.state_dict(),
            "threshold": self.threshold,
            "reallocations": self.reallocations,
            "pruned_total": self.pruned_total,
            "last_pruned": self.last_pruned,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.rng.load_state_dict(state)
        self.threshold = float(state["threshold"])
        self.reallocations = int(state["reallocations"])
        self.pruned_total = int(state["pruned_total"])
        self.last_pruned = int(state["last_pruned"])
