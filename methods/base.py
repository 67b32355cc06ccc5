"""The method contract: one base class with small explicit hooks, and the small service the
harness offers a method during setup.

The trainer (``bench.train.Trainer``) calls the hooks in this order for every run::

    model = method.build_model(make_model, target)
    method.setup(ctx)                                   # once, before the first step
    for each phase (usually one):
      model = method.start_phase(i, model, ctx)         # may replace the model
      for each epoch:
        for each batch:                                 # bench.train.train_step
            loss = loss_fn(model(x), y) + method.extra_loss(model)
            optimizer.zero_grad(); loss.backward()
            method.after_backward(model, step)          # the dense gradient is here
            optimizer.step()
            method.after_step(model, optimizer, step)
        method.end_epoch(model, optimizer, epoch)       # then the epoch's evaluation
    model = method.finalize(model)

The per-batch order exists once, in ``bench.train.train_step``, which the trainer and the tests'
hook driver (``tests/hook_driver.py``) both call; ``step`` counts optimizer steps from 1, over all
phases, and ``epoch`` is 0-based within the phase.

**The dense-gradient rule.** ``loss.backward()`` leaves the gradient of every weight, pruned
positions included, in ``.grad``: ``after_backward`` is the one place that sees it. A method that
needs the unmasked gradient (RigL grows connections by the magnitude of the dense gradient of
the current mini-batch: Evci et al., ICML 2020; ``shared/reference/methods.md`` §11) reads
it in ``after_backward`` *before* masking it: ``MaskedMethod.after_backward`` zeroes the pruned
positions' gradients (so momentum and Adam moments never accumulate there), so a subclass reads
first and then calls ``super().after_backward``. After that hook the dense gradient is gone.
A parameter whose ``.grad`` a method sets to None is skipped by the optimizer step that follows
(RigL's no-step mask-update batch).

A method overrides only what it needs. Everything it must carry across a resume goes through
``state_dict``/``load_state_dict`` (tensors and plain Python values only: checkpoints are loaded
with ``torch.load(weights_only=True)``). Masks live on the model as buffers, so they are in the
model's state already.

A method imports from ``bench`` only configuration, errors and models (a test enforces it).
What it needs from the rest of the harness (a finished run's weights, a trial training) it asks
of ``ctx.harness`` (``Harness``), which the harness implements (``bench.run.RunHarness``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, is_dataclass
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from bench.config import RunConfig, TrainConfig, validate_hparams
from bench.models import ModelMaker
from methods.masking import Masking

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class NoHparams:
    """For methods without hyperparameters of their own."""


@dataclass(frozen=True)
class TrialResult:
    """The outcome of a trial training: its run id, whether it diverged (a NaN/inf loss), and
    the sparsity of its final model over the prunable weights, counted as results count it
    (``bench.flops.ModelCounts.sparsity``; None when it diverged)."""

    run_id: str
    diverged: bool
    sparsity: float | None


@dataclass(frozen=True)
class FinishedRun:
    """A finished run of the same root: its run id, its final weights (the state dict of its
    ``model.pt``, on CPU) and its integrated training FLOPs."""

    run_id: str
    weights: dict[str, torch.Tensor]
    train_flops: float


class Harness(Protocol):
    """What a method may ask of the harness during ``setup`` and ``start_phase``."""

    def trial_train(self, config: RunConfig) -> TrialResult:
        """Train `config` to its end, as a run of the grid would be trained, and return its
        outcome. A function of `config` alone: the harness keeps each trial's outcome by run
        id, so an identical trial (asked again, by another run or another process) is
        trained once. It honours the run's stop request: a preemption during the trial
        checkpoints it and raises the trainer's ``Interrupted``, and the next attempt resumes
        it. Other errors propagate."""
        ...

    def finished_model(self, config: RunConfig) -> FinishedRun:
        """The finished run of `config` (found by run id). Raises an error naming the run
        when it has not finished successfully or its model file is missing: a method declares
        such runs in ``Method.dependencies`` and the launcher trains them first."""
        ...


@dataclass
class SetupContext:
    """What ``Method.setup`` may use. ``batches`` yields training batches on the run's device
    in a deterministic order that does not disturb the training data order."""

    model: nn.Module
    masking: Masking
    config: RunConfig
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    batches: Callable[[], Iterator[Batch]]
    steps_per_epoch: int
    device: torch.device
    # The method's own generator, seeded from the run seed and saved in checkpoints.
    generator: torch.Generator
    # The harness's services (trial trainings, finished runs); None where a method is driven
    # without one (unit tests), and a method that needs it says so.
    harness: Harness | None = None
    # True when the trainer is about to restore a checkpoint: rebuild structure (new modules,
    # reparameterisations) but skip expensive work whose result the checkpoint holds anyway.
    resuming: bool = False


@dataclass(frozen=True)
class Phase:
    """A stretch of training with its own recipe. Most methods have one phase (the run's
    recipe); EigenDamage has "prune + fine-tune" after loading the dense run. The trainer
    rebuilds the optimizer at every phase start and when ``start_phase`` replaces the model."""

    name: str
    train: TrainConfig


def variant_name(name: str, variant: str) -> str:
    """A method's name for one of its variants: the name itself for the paper's ("paper"),
    else ``<name>-<variant>`` (SET's and DeepR's variants)."""
    return name if variant == "paper" else f"{name}-{variant}"


def distribution_label(name: str, config: RunConfig, default: str | None) -> str:
    """`name`, plus the run's density distribution when it is neither "default" nor `default`
    (the one `name` uses by default): the rule of every ``Method.label``."""
    d = config.sparsity.distribution
    return name if d in ("default", default) else f"{name}-{d}"


class Method:
    """Base class. Subclasses set ``name`` and ``Hparams`` and override hooks as needed."""

    name: ClassVar[str] = ""
    Hparams: ClassVar[type] = NoHparams
    # Density distribution used when the run says "default".
    default_distribution: ClassVar[str] = "uniform"
    # Distributions the method accepts; "learned" means the method decides per-layer densities.
    distributions: ClassVar[tuple[str, ...]] = ("uniform", "erk")
    # Does the method use the sparsity target at all? (dense does not)
    uses_sparsity: ClassVar[bool] = True
    # Is the nonzero count set by the target (a fixed budget), or does training decide it (STR's
    # learned thresholds, EigenDamage's pruned eigen-directions)? Regression checks compare
    # fixed budgets exactly and learned ones within seed variance.
    fixed_budget: ClassVar[bool] = True

    def __init__(self, config: RunConfig, hparams: Any):
        self.config = config
        # None means the defaults: the one place that says so for every method.
        self.hparams = hparams if hparams is not None else self.Hparams()
        if is_dataclass(self.hparams):  # the fields' check metadata: no method re-checks by hand
            validate_hparams(self.name, self.hparams)
        self.masking: Masking | None = None
        self.generator = torch.Generator().manual_seed(config.seed + 7919)
        self.steps_per_epoch = 1

    # --- identity -----------------------------------------------------------------------
    @property
    def target(self) -> float:
        return self.config.sparsity.target

    @property
    def density(self) -> float:
        return 1.0 - self.config.sparsity.target

    @property
    def distribution(self) -> str:
        d = self.config.sparsity.distribution
        return self.default_distribution if d == "default" else d

    @classmethod
    def label(cls, config: RunConfig) -> str:
        """The name tables and plots use: method name, plus the distribution when it is not
        the method's default (so static-uniform and static-ERK are separate lines)."""
        if not cls.uses_sparsity:
            return cls.name
        return distribution_label(cls.name, config, cls.default_distribution)

    # --- hooks --------------------------------------------------------------------------
    def build_model(self, make_model: ModelMaker, target: float) -> nn.Module:
        """``make_model(width)`` builds the configured architecture at a width multiplier;
        ``make_model.with_channels(channels)`` at explicit per-group channel counts."""
        return make_model(self.config.model.width)

    def setup(self, ctx: SetupContext) -> None:
        self.masking = ctx.masking
        self.steps_per_epoch = ctx.steps_per_epoch

    def phases(self) -> list[Phase]:
        return [Phase("train", self.config.train)]

    def start_phase(self, index: int, model: nn.Module, ctx: SetupContext) -> nn.Module:
        """Called at the start of phase `index` (and again when resuming inside it, with
        ``ctx.resuming`` true). Return the model to train: the same one, or a replacement.
        A method that changes the architecture must return a new module object: the trainer
        re-attaches masks and rebuilds the optimizer only when the object changes."""
        return model

    def dependencies(self) -> list[RunConfig]:
        """Runs that must finish before this one starts (e.g. the dense run to prune)."""
        return []

    def owns_trial(self, trial: RunConfig) -> bool:
        """Whether `trial` is one of the trial trainings this run's setup may ask of the harness
        (``Harness.trial_train``), so ``status`` can show them beside the run. Default False:
        the method asks for none."""
        return False

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        return None

    def after_backward(self, model: nn.Module, step: int) -> None:
        pass

    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
        pass

    def end_epoch(self, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int) -> None:
        pass

    def finalize(self, model: nn.Module) -> nn.Module:
        return model

    def summary(self) -> dict[str, Any]:
        """Method-specific facts for result.json (e.g. calibrated knobs, rewiring counts)."""
        return {}

    def promised_nonzero(self, model: nn.Module, masking: Masking) -> int | None:
        """The exact nonzero parameter count (``bench.flops``: every parameter minus the masked-out
        weights) this method promises for `model` at the end of training, from the same rule that
        sets its masks; None when training decides the count (``fixed_budget`` False).
        ``bench.run`` fails a run whose final count differs (issue 11: a run that missed its
        budget is not the experiment its row names). Default: the per-layer budget of
        ``Masking.layer_counts`` at the run's density and distribution (static, SET, GMP); a
        method that builds its masks another way overrides this next to that code."""
        if not self.fixed_budget:
            return None
        params = sum(p.numel() for p in model.parameters())
        if not self.uses_sparsity:
            return params
        kept = sum(masking.layer_counts(self.density, self.distribution).values())
        return params - masking.total() + kept

    # --- state --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


class MaskedMethod(Method):
    """A method whose masks are fixed between its own explicit updates: keeps the invariant
    (masked weights exactly zero) after every optimizer step, and masks gradients so that
    momentum and Adam moments never accumulate on pruned positions."""

    def after_backward(self, model: nn.Module, step: int) -> None:
        """Zero the pruned positions' gradients. A subclass that needs the dense gradient
        reads it before calling this (the dense-gradient rule, module docstring)."""
        assert self.masking is not None
        self.masking.mask_gradients()

    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
        assert self.masking is not None
        self.masking.apply()
