"""EigenDamage (Wang, Grosse, Fidler & Zhang, ICML 2019): structured pruning of a trained network
in the Kronecker-factored eigenbasis, then fine-tuning.

Reference: alecwangcq/EigenDamage-Pytorch (commit 0e2174f): ``pruner/kfac_eigen_pruner.py``,
``utils/kfac_utils.py``, ``utils/prune_utils.py``, ``main_prune.py`` and the ``configs/``
(``fisher_type: true``, ``normalize: false``, ``fix_rotation: false``, ``re_init: false``,
``prune_ratio_limit`` 0.95 one-pass / 0.5 iterative, fine-tuning SGD momentum 0.9, lr 1e-3,
wd 1e-4, ×0.1 at 50% and ×0.01 at 75% of the epochs). See ``shared/reference/methods.md`` §9.

How it runs in the harness:

- It starts from the finished dense run of the same model, data, recipe and seed, found by run
  id through ``ctx.harness.finished_model``, never from a private copy. It declares that run in
  ``dependencies`` and the launcher trains it first; a run whose dense run has not finished
  fails, naming it, and never trains it itself.
- Each phase is one pruning round followed by fine-tuning: ``one_pass`` has one round,
  ``iterative`` has ``rounds`` of them, each pruning the network the previous one left (new
  eigenbases are composed with the existing rotations, the reference's ``_merge_Qs``).
- The sparsity target is a *parameter reduction*: a bisection over the pooled importances finds
  the global threshold whose rebuilt network has at most (1 − target) of the parameters of the
  layers EigenDamage may prune (``budget_scope="prunable"``: every Conv/Linear except the last,
  and the first too when the run's layer policy keeps it dense; weights and biases, rotations
  included) or of the whole network (``budget_scope="total"``, the reference's
  ``compute_ratio``). Iterative rounds follow a geometric schedule of budgets reaching the target
  at the last round (the reference applies a fixed ratio per round instead). Achieved params and
  MACs come from the harness counter on the rebuilt network; ``summary()`` records the knobs.

Deviations, on purpose: the bias stays outside the eigenbasis (see ``kfac.py``); the "keep at
least one direction" rule keeps the most important one (see ``prune.py``); the reported accuracy
is the final one, not the reference's best-over-epochs (a choice made on the test set); the
fine-tuning length defaults to 0.75 × the run's epochs (the reference's 150 of 200) per round.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, replace
from itertools import islice
from typing import Any

import torch
from torch import nn

from bench.config import RunConfig, TrainConfig, check, run_id, validate_hparams
from methods.base import Method, Phase, SetupContext
from methods.dense_start import dense_config, finished_dense_run, load_dense_weights
from methods.eigendamage.kfac import FISHER_TYPES
from methods.eigendamage.pruner import eligible_slots, prune_round, slot_params, slot_weights
from methods.eigendamage.rebuild import empty_bottleneck, replace_module

MODES = ("one_pass", "iterative")
BUDGET_SCOPES = ("prunable", "total")


@dataclass(frozen=True)
class EigenDamageHparams:
    mode: str = field(default="one_pass", metadata=check(choices=MODES))
    # "true": labels sampled from the model; "empirical": data labels
    fisher_type: str = field(default="true", metadata=check(choices=FISHER_TYPES))
    # one-pass configs
    prune_ratio_limit: float = field(default=0.95, metadata=check(ge=0, lt=1))
    # iterative configs
    iterative_prune_ratio_limit: float = field(default=0.5, metadata=check(ge=0, lt=1))
    rounds: int = field(default=7, metadata=check(ge=1))  # iterative: the reference prunes 7x
    # Fine-tuning epochs per round; 0 = round(0.75 x the run's epochs), the reference's 150/200.
    finetune_epochs: int = field(default=0, metadata=check(ge=0))
    finetune_lr: float = field(default=1e-3, metadata=check(gt=0))
    finetune_momentum: float = field(default=0.9, metadata=check(ge=0, lt=1))
    finetune_weight_decay: float = field(default=1e-4, metadata=check(ge=0))
    # fractions of the fine-tuning epochs
    lr_drops: tuple[float, ...] = field(default=(0.5, 0.75), metadata=check(ge=0, le=1))
    lr_gamma: float = field(default=0.1, metadata=check(gt=0))
    normalize: bool = False
    fix_rotation: bool = False
    fisher_batches: int = field(default=0, metadata=check(ge=0))  # 0 = one full data pass
    budget_scope: str = field(default="prunable", metadata=check(choices=BUDGET_SCOPES))
    stabilize_bn: bool = True  # re-estimate BN statistics after fine-tuning (``stablize_bn``)

    def __post_init__(self) -> None:
        # Hparams built in code fail at once, by the fields' check metadata.
        validate_hparams("eigendamage", self)


def finetune_train(train: TrainConfig, hp: EigenDamageHparams) -> TrainConfig:
    epochs = hp.finetune_epochs or max(1, round(0.75 * train.epochs))
    milestones = tuple(int(epochs * f) for f in hp.lr_drops)
    return replace(train, epochs=epochs, optimizer="sgd", lr=hp.finetune_lr,
                   momentum=hp.finetune_momentum, nesterov=False,
                   weight_decay=hp.finetune_weight_decay, lr_schedule="step",
                   milestones=milestones, gamma=hp.lr_gamma)


@torch.no_grad()
def stabilize_batchnorm(model: nn.Module, batches) -> None:
    """The reference's ``stablize_bn``: one pass in train mode to refresh BN running stats."""
    was_training = model.training
    model.train()
    for x, _ in batches:
        model(x)
    model.train(was_training)


class EigenDamage(Method):
    name = "eigendamage"
    Hparams = EigenDamageHparams
    default_distribution = "learned"
    fixed_budget = False
    distributions = ("learned",)

    def __init__(self, config: RunConfig, hparams: EigenDamageHparams | None):
        super().__init__(config, hparams)
        hp = self.hparams
        self.n_rounds = hp.rounds if hp.mode == "iterative" else 1
        self.limit = hp.iterative_prune_ratio_limit if hp.mode == "iterative" \
            else hp.prune_ratio_limit
        self.ctx: SetupContext | None = None
        self.slots: list[str] = []
        self.shapes: dict[str, tuple[int, int]] = {}
        self.rounds_done: list[dict[str, Any]] = []
        self.dense_counts: dict[str, int] = {}
        # Training FLOPs of the dense run this one prunes: part of EigenDamage's real cost.
        self.dense_train_flops: float | None = None

    # --- the dense run ------------------------------------------------------------------
    def dependencies(self) -> list[RunConfig]:
        return [dense_config(self.config)]

    def _dense_state(self, ctx: SetupContext) -> dict[str, torch.Tensor]:
        dense = finished_dense_run(ctx, self.config, self.name)
        self.dense_train_flops = dense.train_flops
        return dense.weights

    # --- phases -------------------------------------------------------------------------
    def setup(self, ctx: SetupContext) -> None:
        super().setup(ctx)
        self.ctx = ctx
        policy = self.config.sparsity.layer_policy
        self.slots = eligible_slots(ctx.model, keep_first=policy.startswith("dense_first"))
        layers = [ctx.model.get_submodule(s) for s in self.slots]
        self.dense_counts = {
            "params_total": sum(p.numel() for p in ctx.model.parameters()),
            "params_prunable": sum(slot_params(m) for m in layers),
            "weights_prunable": sum(slot_weights(m) for m in layers),
        }

    def phases(self) -> list[Phase]:
        train = finetune_train(self.config.train, self.hparams)
        if self.n_rounds == 1:
            return [Phase("prune+finetune", train)]
        return [Phase(f"round{r + 1}", train) for r in range(self.n_rounds)]

    def budget(self, round_index: int) -> tuple[float, int]:
        """(target reduction after this round, weight budget of the prunable layers)."""
        keep = (1.0 - self.target) ** ((round_index + 1) / self.n_rounds)
        c = self.dense_counts
        if self.hparams.budget_scope == "prunable":
            fixed, base = c["params_prunable"] - c["weights_prunable"], c["params_prunable"]
        else:
            fixed, base = c["params_total"] - c["weights_prunable"], c["params_total"]
        return 1.0 - keep, int(math.floor(keep * base + 1e-9)) - fixed

    def start_phase(self, index: int, model: nn.Module, ctx: SetupContext) -> nn.Module:
        # A new module object, so the trainer re-attaches masks and rebuilds the optimizer.
        model = copy.deepcopy(model)
        if ctx.resuming:
            # The checkpoint holds the weights; only the architecture must be rebuilt.
            for slot, (kept_in, kept_out) in self.shapes.items():
                neck = empty_bottleneck(model.get_submodule(slot), kept_in, kept_out,
                                        not self.hparams.fix_rotation)
                replace_module(model, slot, neck)
            return model
        if index == 0:
            load_dense_weights(model, self._dense_state(ctx))
        elif self.hparams.stabilize_bn and _has_batchnorm(model):
            stabilize_batchnorm(model, ctx.batches())
        target, budget = self.budget(index)
        batches = ctx.batches()
        if self.hparams.fisher_batches:
            batches = islice(batches, self.hparams.fisher_batches)
        result = prune_round(
            model, self.slots, batches, budget, limit=self.limit,
            fisher_type=self.hparams.fisher_type, normalize=self.hparams.normalize,
            trainable_rotations=not self.hparams.fix_rotation, generator=self.generator,
        )
        self.shapes = dict(result.shapes)
        self.rounds_done.append(self._round_record(model, target, budget, result))
        return model

    def _round_record(self, model: nn.Module, target: float, budget: int, result) -> dict:
        params_total = sum(p.numel() for p in model.parameters())
        params_prunable = sum(slot_params(model.get_submodule(s)) for s in self.slots)
        c = self.dense_counts
        return {
            "target_reduction": target,
            "weight_budget": budget,
            # None when nothing had to be pruned (the threshold is -inf; JSON has no such value).
            "threshold": result.search.threshold if math.isfinite(result.search.threshold)
            else None,
            "ratio": result.search.ratio,
            "reached": result.search.reached,
            "params_total": params_total,
            "params_prunable": params_prunable,
            "reduction_total": 1.0 - params_total / c["params_total"],
            "reduction_prunable": 1.0 - params_prunable / max(c["params_prunable"], 1),
            "rebuilt": sorted(s for s, d in result.decisions.items() if d.rebuild),
        }

    def finalize(self, model: nn.Module) -> nn.Module:
        if self.hparams.stabilize_bn and _has_batchnorm(model) and self.ctx is not None:
            stabilize_batchnorm(model, self.ctx.batches())
        return model

    # --- reporting and state ------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        last = self.rounds_done[-1] if self.rounds_done else {}
        return {
            "dense_run_id": run_id(dense_config(self.config)),
            "mode": self.hparams.mode,
            "budget_scope": self.hparams.budget_scope,
            "dense_params_total": self.dense_counts.get("params_total"),
            "dense_params_prunable": self.dense_counts.get("params_prunable"),
            "dense_train_flops": self.dense_train_flops,
            "param_reduction_total": last.get("reduction_total"),
            "param_reduction_prunable": last.get("reduction_prunable"),
            "target_reached": last.get("reached"),
            "bottlenecks": {s: list(v) for s, v in self.shapes.items()},
            "rounds": self.rounds_done,
        }

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["shapes"] = {s: [int(a), int(b)] for s, (a, b) in self.shapes.items()}
        state["rounds_done"] = copy.deepcopy(self.rounds_done)
        state["dense_train_flops"] = self.dense_train_flops
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.shapes = {s: (int(a), int(b)) for s, (a, b) in state["shapes"].items()}
        self.rounds_done = copy.deepcopy(state["rounds_done"])
        self.dense_train_flops = state["dense_train_flops"]


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
