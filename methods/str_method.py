"""STR: soft threshold weight reparameterization (Kusupati et al., ICML 2020).

Forward rule, as in RAIVNLab/STR ``utils/conv_type.py`` (``sparseFunction``, ``STRConv``)::

    W_hat = sign(W) * relu(|W| - sigmoid(s))

with one learnt scalar s per prunable layer (``sparseThreshold``, shape [1, 1] there), trained by
autograd together with W; pruned entries get zero (sub)gradient through the ReLU and can come back
when |W| grows past the threshold again. s starts at the constant ``s_init``: -3200, the
reference's ResNet-50 config (``configs/largescale/resnet50-str.yaml``; MobileNetV1 uses -12800),
so sigmoid(s) is 0 and training starts dense.

How it fits the hook contract: ``setup`` reparameterizes every prunable module's ``weight``. W
becomes ``<layer>.parametrizations.weight.original`` and s ``<layer>.parametrizations.weight.0.s``
(the keys and parameter order ``torch.nn.utils.parametrize`` gives, which STR used before); both
are ordinary parameters of the model, so the optimizer the trainer builds after ``setup`` trains
them and applies the *same* weight decay to s as to everything else (STR's ``--st-decay``
default None; ``main.py``, ``get_optimizer``). Checkpoints hold both, and a resumed run
re-registers the parametrization in ``setup`` before the trainer loads the state. After every
step the layers' ``weight_mask`` buffers are set, in place, to the nonzero pattern of the W_hat
that step computed with, so the density the trainer logs and integrates into training FLOPs is
STR's own. The rule runs as one custom autograd node (``_SoftThreshold``) with exactly the
reference composition's values and sub-gradients (tested), because six small autograd nodes per
layer cost more than the convolutions of a small model. ``<layer>.weight`` is a property giving
W_hat; a forward pre-hook on the model computes W_hat for all layers at once, in one node, for
that forward pass (the pattern of torch's parametrize plus its per-access cost made STR's step
1.3x the dense one on the MNIST-1D CNN); outside a forward pass the property computes W_hat
afresh. ``finalize`` bakes the thresholds in: each weight becomes the plain tensor W_hat, the
reparameterization and the hooks are removed, and the masks equal W_hat != 0, so counting sees
exactly the zeros the forward pass has.

Sparsity comes from the weight decay (the threshold grows as decay pulls s towards 0), so a run
with a target gets its weight decay from ``methods.calibration`` (bisection over trial runs of
the same recipe, trained through ``ctx.harness.trial_train``, which keeps each trial under
``<root>/trials/``); ``weight_decay`` in the hyperparameters overrides the search. The chosen
decay replaces the recipe's in this run's single training phase, and ``summary()`` records it
with the achieved sparsity and per-layer thresholds.

Deviations, on purpose: the reference uses Kaiming-normal fan-in init and learned-affine BN; the
harness keeps each model's own init.

Use SGD for STR cells. STR's optimizer is SGD with momentum (its Adam branch has no weight decay
at all, so STR never prunes there). Under the harness's Adam, decay enters as L2 and Adam
normalises it away: s moves by about lr per step whatever the decay, so from s_init = -3200 the
thresholds never wake up in a short run and calibration reports ``converged: false``. Under SGD
s decays like s_init * exp(-lr_eff * wd * steps), so a short run needs a large decay to wake
the thresholds from -3200 (the reference's value suits 100 ImageNet epochs); a smaller
``|s_init|`` is the knob for short schedules, at the cost of leaving the reference config.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import torch
from torch import nn

from bench.config import RunConfig, check, run_id
from methods.base import Method, Phase, SetupContext
from methods.calibration import (
    CALIBRATION_SEED,
    Calibration,
    CalibrationSettings,
    bisect_weight_decay,
)
from methods.masking import MASK_BUFFER


@dataclass(frozen=True)
class STRHparams:
    s_init: float = -3200.0
    # None: calibrate for the run's target sparsity; a number: use it and skip the search.
    weight_decay: float | None = field(default=None, metadata=check(ge=0))
    calibration_low: float = field(default=1e-6, metadata=check(gt=0))
    calibration_high: float = field(default=1e-1, metadata=check(gt=0, above="calibration_low"))
    calibration_rel_tol: float = field(default=0.05, metadata=check(gt=0))
    calibration_max_runs: int = field(default=10, metadata=check(ge=1))


class _SoftThreshold(torch.autograd.Function):
    """(n, W_1..W_n, s_1..s_n) -> (W_hat_1..W_hat_n) with W_hat = sign(W) * relu(|W| - t),
    t = sigmoid(s), for all layers as one autograd node.

    Forward: W - clamp(W, -t, t), the same values up to the sign of zeros. Backward: the
    sub-gradients autograd takes through the reference's sigmoid/sign/abs/relu composition
    (relu'(0) = 0): dW = g * 1[|W| > t] and ds = -sum(g * sign(W) * 1[|W| > t]) * t * (1 - t),
    where sign(W) * 1[|W| > t] = sign(W_hat), the one tensor saved per layer.
    One node for the whole model, each step a ``_foreach`` call over all layers: on small
    models the cost of launching an op rivals the convolutions (six autograd nodes per layer
    made STR's step 1.3x the dense one on the MNIST-1D CNN). The ``_foreach`` calls run, per
    tensor, the same kernels as the single-tensor ops, so the values do not depend on the
    batching (tested). No ``.item()``: thresholds stay tensors, so nothing syncs a GPU."""

    @staticmethod
    def forward(ctx, n: int, *tensors: torch.Tensor):
        weights, ss = tensors[:n], tensors[n:]
        ts = torch._foreach_sigmoid(ss)
        clamped = torch._foreach_minimum(torch._foreach_maximum(weights, torch._foreach_neg(ts)),
                                         ts)
        hats = torch._foreach_sub(weights, clamped)
        ctx.n = n
        ctx.save_for_backward(*torch._foreach_sign(hats), *ts)
        ctx.set_materialize_grads(False)
        return tuple(hats)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor | None):
        n = ctx.n
        saved = ctx.saved_tensors
        if all(g is not None for g in grads):
            grad_w, grad_s = _SoftThreshold.gradients(grads, saved[:n], saved[n:])
            return (None, *grad_w, *grad_s)
        used = [i for i, g in enumerate(grads) if g is not None]  # layers the loss reached
        grad_w, grad_s = _SoftThreshold.gradients([grads[i] for i in used],
                                                  [saved[i] for i in used],
                                                  [saved[n + i] for i in used])
        out: list[torch.Tensor | None] = [None] * (1 + 2 * n)
        for k, i in enumerate(used):
            out[1 + i], out[1 + n + i] = grad_w[k], grad_s[k]
        return tuple(out)

    @staticmethod
    def gradients(grads, signs, ts) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        grad_w = torch._foreach_mul(grads, torch._foreach_abs(signs))
        sums = [x.sum() for x in torch._foreach_mul(grads, signs)]
        grad_s = torch._foreach_mul(sums, torch._foreach_mul(ts, torch._foreach_sub(ts, 1.0)))
        return grad_w, grad_s


def soft_threshold(weight: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """STR's ``sparseFunction``: sign(W) * relu(|W| - sigmoid(s))."""
    return _SoftThreshold.apply(1, weight, s)[0]


class SoftThreshold(nn.Module):
    """W -> sign(W) * relu(|W| - sigmoid(s)), owning the layer's s. Keeps the W_hat it last
    produced (detached) in ``last``: its nonzeros are the layer's live weights."""

    def __init__(self, s_init: float, like: torch.Tensor):
        super().__init__()
        self.s = nn.Parameter(torch.full((1,), float(s_init), dtype=like.dtype,
                                         device=like.device))
        self.last: torch.Tensor | None = None

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        out = soft_threshold(weight, self.s)
        self.last = out.detach()
        return out

    def threshold(self) -> float:
        return float(torch.sigmoid(self.s.detach()))


class _Reparametrized(nn.ModuleList):
    """W (``original``) followed by its SoftThreshold (``[0]``): the layout, and so the
    state-dict keys and parameter order, of ``torch.nn.utils.parametrize``'s
    ``ParametrizationList``, which STR used before (old checkpoints still load)."""

    def __init__(self, original: nn.Parameter, st: SoftThreshold):
        super().__init__([st])
        self.register_parameter("original", original)


class _Parametrizations(nn.Module):
    """``<layer>.parametrizations``, holding ``weight``. Deliberately not a ModuleDict, so
    ``parametrize.is_parametrized`` does not mistake it for torch's own mechanism."""


_HAT = "_str_weight_hat"  # per-layer W_hat of the running model forward, in the instance dict


def _weight_hat(self: nn.Module) -> torch.Tensor:
    """The layer's ``weight`` property: W_hat. Inside a forward of the model it is the tensor
    the model's pre-hook computed for all layers at once; elsewhere it is computed afresh, so
    it always reflects the current W and s (like an uncached parametrization)."""
    hat = self.__dict__.get(_HAT)
    if hat is None:
        holder = self._modules["parametrizations"]._modules["weight"]
        hat = holder._modules["0"](holder._parameters["original"])
    return hat


_CLASSES: dict[type, type] = {}


def _str_class(cls: type) -> type:
    if cls not in _CLASSES:
        _CLASSES[cls] = type(f"SoftThresholded{cls.__name__}", (cls,),
                             {"weight": property(_weight_hat), "_str_base": cls})
    return _CLASSES[cls]


def is_reparameterized(module: nn.Module) -> bool:
    return "_str_base" in type(module).__dict__


_LAYERS = "_str_layers"  # the model's _ForwardBatch, in its instance dict


class _ForwardBatch:
    """The model's reparameterized layers, whose W_hat one autograd node computes at the start
    of each forward pass (the model's pre-hook) and which the layers read during it. The
    parameter lists are looked up once: per-step attribute lookups through ``nn.Module`` are a
    measurable share of a small model's step."""

    def __init__(self, modules: list[nn.Module]):
        self.modules = modules
        parts = [_parts(m) for m in modules]
        self.weights = [w for w, _ in parts]
        self.thresholds = [st for _, st in parts]
        self.ss = [st.s for st in self.thresholds]

    def before_forward(self, model: nn.Module, args: Any) -> None:
        hats = _SoftThreshold.apply(len(self.weights), *self.weights, *self.ss)
        for module, st, hat in zip(self.modules, self.thresholds, hats, strict=True):
            module.__dict__[_HAT] = hat
            # Straight into the instance dict: a plain attribute, without nn.Module's
            # __setattr__ bookkeeping on every forward.
            st.__dict__["last"] = hat.detach()

    def after_forward(self, model: nn.Module, args: Any, output: Any) -> None:
        # W_hat belongs to one forward pass (its graph is freed by that pass's backward).
        for module in self.modules:
            module.__dict__.pop(_HAT, None)


def reparameterize(layers: dict[str, nn.Module], s_init: float,
                   model: nn.Module | None = None) -> None:
    """Move each layer's weight W to ``<layer>.parametrizations.weight.original`` next to its
    threshold ``...weight.0.s`` and make ``<layer>.weight`` read W_hat. With ``model``, its
    forward computes all W_hat once up front (one autograd node) instead of per access."""
    for module in layers.values():
        if is_reparameterized(module):
            continue
        original = module._parameters.pop("weight")
        container = _Parametrizations()
        container.weight = _Reparametrized(original, SoftThreshold(s_init, original))
        module.parametrizations = container
        module.__class__ = _str_class(type(module))
    if model is not None and _LAYERS not in model.__dict__:
        batch = _ForwardBatch(list(layers.values()))
        model.__dict__[_LAYERS] = batch
        model.register_forward_pre_hook(batch.before_forward)
        model.register_forward_hook(batch.after_forward, always_call=True)


def _remove_hooks(model: nn.Module) -> None:
    # By identity rather than by saved handles: a deep copy of the model shares the handles'
    # references to the original's hook dicts.
    batch = model.__dict__.pop(_LAYERS, None)
    if batch is None:
        return
    ours = (batch.before_forward, batch.after_forward)
    for hooks in (model._forward_pre_hooks, model._forward_hooks):
        for key in [k for k, fn in hooks.items() if fn in ours]:
            del hooks[key]
            model._forward_hooks_always_called.pop(key, None)


def _parts(module: nn.Module) -> tuple[torch.Tensor, SoftThreshold]:
    holder = module._modules["parametrizations"]._modules["weight"]
    return holder._parameters["original"], holder._modules["0"]


@torch.no_grad()
def sync_masks(layers: dict[str, nn.Module]) -> None:
    """weight_mask <- (W_hat != 0), in place, from the current W and s."""
    for module in layers.values():
        original, st = _parts(module)
        # W_hat != 0 iff |W| > sigmoid(s) >= 0 (IEEE subtraction of distinct finite floats is
        # never 0).
        torch.gt(original.abs(), torch.sigmoid(st.s), out=getattr(module, MASK_BUFFER))


@torch.no_grad()
def bake(layers: dict[str, nn.Module], model: nn.Module | None = None) -> None:
    """Replace every reparameterized weight by its current W_hat as a plain parameter (the
    same Parameter object as W, as ``parametrize.remove_parametrizations`` leaves it), with
    the mask buffer equal to its nonzero pattern, and drop the model's hooks."""
    if model is not None:
        _remove_hooks(model)
    for module in layers.values():
        if not is_reparameterized(module):
            continue
        module.__dict__.pop(_HAT, None)
        original, _ = _parts(module)
        original.set_(module.weight)
        module.__class__ = type(module).__dict__["_str_base"]
        del module.parametrizations
        module.register_parameter("weight", original)
        getattr(module, MASK_BUFFER).copy_(module.weight != 0)


class STR(Method):
    name = "str"
    Hparams = STRHparams
    default_distribution = "learned"
    fixed_budget = False
    distributions = ("learned",)

    def __init__(self, config, hparams):
        super().__init__(config, hparams)
        self.weight_decay: float | None = None
        self.weight_decay_source = ""
        self.calibration: Calibration | None = None
        self.layers: dict[str, nn.Module] = {}
        self.masks: list[torch.Tensor] = []
        self.soft_thresholds: list[SoftThreshold] = []
        self.final: dict[str, Any] = {}

    # --- weight decay -------------------------------------------------------------------
    def trial_config(self, weight_decay: float) -> RunConfig:
        """The calibration's run at `weight_decay`: this run's config with what does not change
        that run normalised away, so that identical trials have one run id: the seed (every seed
        of a grid cell shares one calibration), the target (ignored once the weight decay is
        given, so every target shares the trials), the recipe's weight decay (replaced) and the
        search settings (set to their defaults)."""
        search = {f.name: f.default for f in fields(STRHparams)
                  if f.name.startswith("calibration_")}
        hp = replace(self.hparams, weight_decay=weight_decay, **search)
        return replace(self.config, seed=CALIBRATION_SEED,
                       sparsity=replace(self.config.sparsity, target=0.0),
                       train=replace(self.config.train, weight_decay=0.0),
                       method=replace(self.config.method, hparams=hp))

    def owns_trial(self, trial: RunConfig) -> bool:
        """A calibration trial of this run: ``trial_config`` at the trial's weight decay (the
        same config, hence the same run id), with a target to calibrate for and no weight
        decay given."""
        hp = trial.method.hparams
        if (self.hparams.weight_decay is not None or self.target <= 0.0
                or trial.method.name != self.name or not isinstance(hp, STRHparams)
                or hp.weight_decay is None):
            return False
        return run_id(trial) == run_id(self.trial_config(hp.weight_decay))

    def settings(self) -> CalibrationSettings:
        hp = self.hparams
        return CalibrationSettings(low=hp.calibration_low, high=hp.calibration_high,
                                   rel_tol=hp.calibration_rel_tol,
                                   max_runs=hp.calibration_max_runs)

    def choose_weight_decay(self, ctx: SetupContext) -> None:
        hp = self.hparams
        if hp.weight_decay is not None:
            self.weight_decay, self.weight_decay_source = float(hp.weight_decay), "hparams"
            return
        if self.target <= 0.0:
            self.weight_decay, self.weight_decay_source = self.config.train.weight_decay, \
                "recipe"
            return
        harness = ctx.harness
        if harness is None:
            raise RuntimeError("STR calibrates its weight decay with trial runs: it needs the "
                               "harness (ctx.harness), or a weight_decay in its hparams")

        def sparsity_at(weight_decay: float) -> float:
            trial = harness.trial_train(self.trial_config(weight_decay))
            # A diverged trial counts as fully sparse: too much decay (calibration docstring).
            return 1.0 if trial.diverged else float(trial.sparsity)

        self.calibration = bisect_weight_decay(sparsity_at, self.target, self.settings())
        self.weight_decay, self.weight_decay_source = self.calibration.weight_decay, \
            "calibrated"

    # --- hooks --------------------------------------------------------------------------
    def setup(self, ctx: SetupContext) -> None:
        super().setup(ctx)
        self.layers = dict(ctx.masking.layers)
        reparameterize(self.layers, self.hparams.s_init, ctx.model)
        sync_masks(self.layers)
        # Looked up once: after_step runs every step, and on small models its Python cost shows.
        self.masks = [getattr(m, MASK_BUFFER) for m in self.layers.values()]
        self.soft_thresholds = [_parts(m)[1] for m in self.layers.values()]
        if not ctx.resuming:  # a resumed run gets its weight decay from load_state_dict
            self.choose_weight_decay(ctx)

    def phases(self) -> list[Phase]:
        if self.weight_decay is None:
            raise RuntimeError("STR.phases() before setup chose the weight decay")
        return [Phase("train", replace(self.config.train, weight_decay=self.weight_decay))]

    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
        # The masks describe the weights this step computed with: the density the trainer
        # integrates into training FLOPs for it (RigL's accounting).
        lasts = [st.last for st in self.soft_thresholds]
        if any(last is None for last in lasts):  # no forward pass yet: the current pattern
            sync_masks(self.layers)
            return
        with torch.no_grad():
            torch._foreach_copy_(self.masks, lasts)  # a float copied to bool is x != 0

    def thresholds(self) -> dict[str, float]:
        return {name: _parts(m)[1].threshold() for name, m in self.layers.items()
                if is_reparameterized(m)}

    def finalize(self, model: nn.Module) -> nn.Module:
        thresholds = self.thresholds()
        bake(self.layers, model)
        nonzero = {n: int(getattr(m, MASK_BUFFER).sum()) for n, m in self.layers.items()}
        total = sum(m.weight.numel() for m in self.layers.values())
        self.final = {
            "achieved_sparsity": 1.0 - sum(nonzero.values()) / total if total else 0.0,
            "thresholds": thresholds,
            "layer_sparsity": {n: 1.0 - nonzero[n] / m.weight.numel()
                               for n, m in self.layers.items()},
        }
        return model

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "weight_decay": self.weight_decay,
            "weight_decay_source": self.weight_decay_source,
            "s_init": self.hparams.s_init,
            **self.final,
        }
        if self.calibration is not None:
            out["calibration"] = {**self.calibration.to_dict(), "seed": CALIBRATION_SEED,
                                  "settings": asdict(self.settings())}
        return out

    # --- state --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["weight_decay"] = self.weight_decay
        state["weight_decay_source"] = self.weight_decay_source
        state["calibration"] = self.calibration.to_dict() if self.calibration else None
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.weight_decay = state["weight_decay"]
        self.weight_decay_source = state["weight_decay_source"]
        body = state.get("calibration")
        self.calibration = Calibration.from_dict(body) if body else None

