"""Sparse evolutionary training, SET (Mocanu et al., Nature Communications 2018).

Registry name ``set`` (the module is ``set_method`` so it does not read like the builtin).

``variant = "paper"`` (default): the authors' code, dcmocanu/sparse-evolutionary-artificial-neural-
networks, ``SET-MLP-Keras-Weights-Mask/set_mlp_keras_cifar10.py`` (``rewireMask``,
``weightsEvolution``), the implementation behind the paper's CIFAR-10 MLP results. After every
training epoch except the last, in every sparse layer:

* Sign-split magnitude pruning with the Keras code's exact counts. Of the layer's n_neg negative
  and n_pos positive weights it keeps the int((1 - zeta) n_neg) most negative and the
  n - 1 - int(min(n - 1, (n - n_pos) + zeta n_pos)) most positive (n = numel; the code sorts the
  whole kernel, zeros included, and keeps values strictly beyond the thresholds), i.e. it drops
  the zeta-fraction of negatives and int(zeta n_pos) + 1 positives closest to zero. Active
  weights that are exactly zero are dropped too. Kept by rank rather than by threshold value, so
  ties (which the reference resolves by value) cannot change the count.
* Regrow (initial count - kept) connections at uniformly random empty positions (just-pruned
  ones included: the code only checks the slot is empty), so the layer's nonzero count stays at
  its initial value. New weights start at 0 (the kernel is multiplied by the core mask).
* Optimizer state at every position that is not kept (pruned and new) is zeroed. The sparse-
  Python implementation (``weightsEvolution_Amar``) gives new connections a zero momentum entry
  and drops pruned ones; the Keras one re-creates the whole SGD optimizer every epoch, which the
  harness's shared optimizer (Adam step counts, schedules) cannot do, so we follow the former.
* zeta = 0.3 (both implementations). Initial topology: Erdős–Rényi (``createWeightsMask``,
  density proportional to (n_in + n_out) / (n_in n_out)), so the default distribution is "erk",
  which is exactly SET's ER for Linear layers and RigL's kernel extension for convolutions.
  SET's own MLP keeps the output layer dense ("no need for a sparse output layer"): run with
  ``layer_policy = "dense_last"`` to mirror it.

``variant = "dsr"``: SET as the DSR paper ran it (IntelAI/dynamic-reparameterization, ``main.py
--rewire`` without ``--threshold-prune``; ``parameterized_tensors.py``
``prune_small_connections`` + ``grow_random``): every rewire period (DSR's schedule, see
``methods.dsr``), each layer drops its int(zeta n_active) + 1 smallest-|w| active weights with
no sign split and regrows as many uniformly among the inactive positions other than the
just-pruned ones; new weights 0; optimizer state untouched; rewiring stops at 95% of the run;
uniform initial densities. DSR chose zeta per sparsity so that the number rewired matched its
N_p (0.138/0.07/0.046/0.034/0.028 at s = 0.9..0.5): zeta = ``dsr_prune_fraction`` / density
reproduces that table. The period schedule and stop scale with the run as in ``methods.dsr``.

The paper variant is the default because this is the SET entry of the benchmark; the DSR variant
is what the DSR paper's comparison reports as "SET", so it is offered to reproduce that table
(label ``set-dsr``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from bench.config import RunConfig, check
from methods.base import MaskedMethod, SetupContext, distribution_label, variant_name
from methods.rewiring import DeviceRNG
from methods.schedules import (
    DSR_REF_N_PRUNE,
    DSR_REF_SPARSE_WEIGHTS,
    DSR_SCHEDULE_FIELDS,
    DSRScheduleHparams,
    RewireSchedule,
)
from methods.selection import random_k, reset_optimizer_state, top_k

VARIANTS = ("paper", "dsr")
VARIANT_DISTRIBUTION = {"paper": "erk", "dsr": "uniform"}


@dataclass(frozen=True)
class SETHparams:
    variant: str = field(default="paper", metadata=check(choices=VARIANTS))
    zeta: float = field(default=0.3, metadata=check(ge=0, le=1))
    # Used by variant "dsr" only: its prune fraction and the DSR rewiring schedule, whose knobs
    # and defaults are ``schedules.DSRScheduleHparams``'s under their stored ``dsr_`` names
    # (run folders on disk spell them so).
    dsr_prune_fraction: float = field(default=DSR_REF_N_PRUNE / DSR_REF_SPARSE_WEIGHTS,
                                      metadata=check(gt=0, le=1))
    dsr_phase_fractions: tuple[float, ...] = DSR_SCHEDULE_FIELDS["phase_fractions"]
    dsr_period_fractions: tuple[float, ...] = DSR_SCHEDULE_FIELDS["period_fractions"]
    dsr_stop_fraction: float = DSR_SCHEDULE_FIELDS["stop_fraction"]

    def rewire_schedule(self, total_steps: int) -> RewireSchedule:
        return DSRScheduleHparams(self.dsr_phase_fractions, self.dsr_period_fractions,
                                  self.dsr_stop_fraction).rewire_schedule(total_steps)


def keras_keep_counts(n_neg: int, n_pos: int, numel: int, zeta: float) -> tuple[int, int]:
    """How many negative and positive weights ``rewireMask`` keeps (values assumed distinct),
    with the reference's own float expressions."""
    keep_neg = int((1 - zeta) * n_neg)
    last_zero_pos = numel - n_pos
    k = int(min(numel - 1, last_zero_pos + zeta * (numel - last_zero_pos)))
    keep_pos = numel - 1 - k
    return keep_neg, keep_pos


class SET(MaskedMethod):
    name = "set"
    Hparams = SETHparams
    default_distribution = "erk"
    distributions = ("uniform", "erk")

    def __init__(self, config: RunConfig, hparams: Any):
        super().__init__(config, hparams)
        self.rewirings = 0
        self.rewired_total = 0

    @property
    def distribution(self) -> str:
        d = self.config.sparsity.distribution
        return VARIANT_DISTRIBUTION[self.hparams.variant] if d == "default" else d

    @classmethod
    def label(cls, config: RunConfig) -> str:
        hp = config.method.hparams if config.method.hparams is not None else SETHparams()
        return distribution_label(variant_name(cls.name, hp.variant), config,
                                  VARIANT_DISTRIBUTION.get(hp.variant))

    def setup(self, ctx: SetupContext) -> None:
        super().setup(ctx)
        hp = self.hparams
        self.targets = ctx.masking.init_random(self.density, self.distribution, self.generator)
        self.epochs = ctx.config.train.epochs
        total_steps = ctx.steps_per_epoch * self.epochs
        self.schedule = hp.rewire_schedule(total_steps)
        self.dsr_zeta = hp.dsr_prune_fraction / self.density
        self.rng = DeviceRNG(self.generator, ctx.device)
        self.layers = ctx.masking.flat()

    # --- hooks ------------------------------------------------------------------------------
    @torch.no_grad()
    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
        super().after_step(model, optimizer, step)
        if self.hparams.variant == "dsr" and self.schedule.is_rewire_step(step):
            self.rewire_dsr()

    @torch.no_grad()
    def end_epoch(self, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int) -> None:
        # `epoch` is 0-based: the reference evolves after every epoch but the last.
        if self.hparams.variant == "paper" and epoch < self.epochs - 1:
            self.rewire_paper(optimizer)

    # --- the two rules ----------------------------------------------------------------------
    @torch.no_grad()
    def rewire_paper(self, optimizer: torch.optim.Optimizer | None) -> dict[str, tuple[int, int]]:
        """One ``weightsEvolution``; returns {layer: (removed, regrown)}."""
        masking = self.masking
        assert masking is not None
        zeta = self.hparams.zeta
        masks = masking.masks
        report: dict[str, tuple[int, int]] = {}
        reset: list[torch.Tensor | None] = []
        for name, w in masking.weights().items():
            mask = masks[name]
            numel = w.numel()
            n_active = int(mask.sum())
            if n_active == numel:
                reset.append(None)
                continue  # a dense layer has no empty slot to move a connection to
            negative = mask & (w < 0)
            positive = mask & (w > 0)
            keep_neg, keep_pos = keras_keep_counts(int(negative.sum()), int(positive.sum()),
                                                   numel, zeta)
            keep = top_k(w, keep_neg, negative, largest=False) | top_k(w, keep_pos, positive)
            kept = keep_neg + keep_pos
            n_new = min(self.targets[name] - kept, numel - kept)
            new = random_k(~keep, n_new, self.rng.generator)
            w.mul_(keep)  # survivors keep their values, new connections start at 0
            mask.copy_(keep | new)
            reset.append(~keep)
            report[name] = (n_active - kept, n_new)
            self.rewired_total += n_new
        if optimizer is not None:
            reset_optimizer_state(optimizer, list(masking.weights().values()), reset)
        self.rewirings += 1
        return report

    @torch.no_grad()
    def rewire_dsr(self) -> dict[str, tuple[int, int]]:
        """One ``prune_small_connections`` + ``grow_random`` pass over every layer."""
        masking = self.masking
        assert masking is not None
        masks = masking.masks
        report: dict[str, tuple[int, int]] = {}
        for name, w in masking.weights().items():
            mask = masks[name]
            n_active = int(mask.sum())
            room = w.numel() - n_active  # inactive before pruning = inactive minus just-pruned
            # Prune no more than can be regrown, so the layer's count stays exact.
            n = min(int(self.dsr_zeta * n_active) + 1, n_active, room)
            if n <= 0:
                continue
            pruned = top_k(w.abs(), n, mask, largest=False)
            new = random_k(~mask, n, self.rng.generator)
            mask.copy_((mask & ~pruned) | new)
            w.mul_(mask & ~new)  # pruned weights reset to 0, new weights start at 0
            report[name] = (n, n)
            self.rewired_total += n
        self.rewirings += 1
        return report

    # --- state ------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        return {"variant": self.hparams.variant, "rewirings": self.rewirings,
                "rewired_total": self.rewired_total}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), **self.rng.state_dict(),
                "rewirings": self.rewirings, "rewired_total": self.rewired_total}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.rng.load_state_dict(state)
        self.rewirings = int(state["rewirings"])
        self.rewired_total = int(state["rewired_total"])
