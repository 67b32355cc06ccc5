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

``decay = "geometric"`` moves the density geometrically instead (``schedules.
geometric_sparsity``: every update removes the same fraction of the weights left), as DSR's
ResNet-50 compressed-sparse jobs do.

Deviation, on purpose: the TF library finds the threshold from a 256-bin histogram of |W|; we
take an exact per-layer top-k, so every update hits its nonzero count exactly.

**From a trained dense network** (``from_dense = true``; DSR's "compressed sparse" baseline,
Mostafa & Wang, ICML 2019, run by IntelAI/dynamic-reparameterization ``main.py --resume
--prune``): the run starts from the weights of the finished dense run of the same model, data,
recipe and seed (``methods.dense_start``: declared in ``dependencies``, so every executor trains
it first; found by run id through the harness), and prunes it on the same schedule as above,
its fractions taken of the pruning phase. That phase trains with the run's recipe except
``finetune_epochs``, ``finetune_lr`` and ``finetune_milestones`` (a step schedule with the
run's gamma, no warm-up) when ``finetune_epochs`` is set: DSR's prune jobs keep the dense run's
SGD settings (its optimizer state is restored, weight decay included) and change only the lr
schedule and the length (``learning_schedules/*_prune_schedule.yaml``). The optimizer starts
afresh: our dense run keeps no momentum buffers, and DSR's first pruning epoch runs at lr 0,
which refills them from the current gradients anyway. ``summary()`` records the dense run's id
and training FLOPs (part of this baseline's real cost; ``train_flops`` counts this run only).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from bench.config import RunConfig, TrainConfig, check, run_id
from bench.errors import UserError
from methods.base import MaskedMethod, Phase, SetupContext
from methods.dense_start import dense_config, finished_dense_run, load_dense_weights
from methods.masking import kept_count, layer_densities
from methods.schedules import PruningSchedule, cubic_sparsity, geometric_sparsity
from methods.selection import top_k

RIGL_CIFAR_STEPS = 97656
DECAYS = ("polynomial", "geometric")


@dataclass(frozen=True)
class GMPHparams:
    begin_fraction: float = field(default=20000 / RIGL_CIFAR_STEPS, metadata=check(ge=0, le=1))
    end_fraction: float = field(default=75000 / RIGL_CIFAR_STEPS,
                                metadata=check(ge=0, le=1, above="begin_fraction"))
    frequency_fraction: float = field(default=1000 / RIGL_CIFAR_STEPS,
                                      metadata=check(gt=0, le=1))
    initial_sparsity: float = field(default=0.0, metadata=check(ge=0, lt=1))
    exponent: int = field(default=3, metadata=check(ge=1))
    # How the sparsity moves between updates: Zhu & Gupta's polynomial (power `exponent`), or
    # "geometric" (each update removes the same fraction of what is left; DSR's ResNet-50).
    decay: str = field(default="polynomial", metadata=check(choices=DECAYS))
    # Start from the finished dense run (DSR's "compressed sparse"); off: train from scratch.
    from_dense: bool = False
    # The pruning phase's recipe when starting from dense: its epochs (0 = the run's recipe
    # unchanged), its initial lr (0 = the run's) and its step-schedule milestones (epochs).
    finetune_epochs: int = field(default=0, metadata=check(ge=0))
    finetune_lr: float = field(default=0.0, metadata=check(ge=0))
    finetune_milestones: tuple[int, ...] = field(default=(), metadata=check(ge=0))

    def __post_init__(self) -> None:
        given = [k for k, v in (("finetune_epochs", self.finetune_epochs),
                                ("finetune_lr", self.finetune_lr),
                                ("finetune_milestones", self.finetune_milestones)) if v]
        if given and not self.from_dense:
            raise UserError(f"gmp {given[0]} applies only with from_dense = true (the recipe of "
                            "the phase that prunes a trained dense run)", key=given[0])
        if given and not self.finetune_epochs:
            raise UserError(f"gmp {given[0]} needs finetune_epochs (the pruning phase's length; "
                            "without it the run's own recipe is used)", key=given[0])
        late = [m for m in self.finetune_milestones if m >= self.finetune_epochs]
        if late:
            raise UserError(f"gmp finetune_milestones {list(self.finetune_milestones)}: each "
                            f"must be below finetune_epochs ({self.finetune_epochs})",
                            key="finetune_milestones")


def pruning_train(train: TrainConfig, hp: GMPHparams) -> TrainConfig:
    """The recipe GMP trains with: the run's, or when starting from dense with
    ``finetune_epochs`` set, the run's with that length, lr and step milestones (no warm-up)."""
    if not (hp.from_dense and hp.finetune_epochs):
        return train
    return replace(train, epochs=hp.finetune_epochs, lr=hp.finetune_lr or train.lr,
                   lr_schedule="step", milestones=hp.finetune_milestones, warmup_epochs=0)


class GMP(MaskedMethod):
    name = "gmp"
    Hparams = GMPHparams

    def __init__(self, config: RunConfig, hparams: GMPHparams | None):
        super().__init__(config, hparams)
        # Training FLOPs of the dense run a from-dense run prunes (None otherwise).
        self.dense_train_flops: float | None = None

    def dependencies(self) -> list[RunConfig]:
        return [dense_config(self.config)] if self.hparams.from_dense else []

    def phases(self) -> list[Phase]:
        train = pruning_train(self.config.train, self.hparams)
        return [Phase("prune+finetune" if self.hparams.from_dense else "train", train)]

    def setup(self, ctx: SetupContext) -> None:
        super().setup(ctx)
        hp = self.hparams
        total = ctx.steps_per_epoch * self.phases()[0].train.epochs
        self.schedule = PruningSchedule.scaled(hp.begin_fraction, hp.end_fraction,
                                               hp.frequency_fraction, total)
        shapes = ctx.masking.shapes()
        self.final_densities = layer_densities(shapes, self.density, self.distribution)
        if hp.from_dense and not ctx.resuming:
            # A resumed run's checkpoint holds its weights (and the dense FLOPs, in our state).
            dense = finished_dense_run(ctx, self.config, self.name)
            load_dense_weights(ctx.model, dense.weights)
            self.dense_train_flops = dense.train_flops

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
            if hp.decay == "geometric":
                s_t = geometric_sparsity(step, self.schedule.begin, self.schedule.end,
                                         hp.initial_sparsity, s_final)
            else:
                s_t = cubic_sparsity(step, self.schedule.begin, self.schedule.end,
                                     hp.initial_sparsity, s_final, hp.exponent)
            n_keep = kept_count(weight.numel(), 1.0 - s_t)
            current = masking.masks[name]
            if n_keep >= int(current.sum()):
                continue
            masking.set_mask(name, top_k(weight.abs(), n_keep, current))
        masking.apply()


    # --- reporting and state ------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        if not self.hparams.from_dense:
            return {}
        return {"dense_run_id": run_id(dense_config(self.config)),
                "dense_train_flops": self.dense_train_flops}

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.hparams.from_dense:
            state["dense_train_flops"] = self.dense_train_flops
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if self.hparams.from_dense:
            self.dense_train_flops = state["dense_train_flops"]
