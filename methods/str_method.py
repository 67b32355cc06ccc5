"""STR: soft threshold weight reparameterization (Kusupati et al., ICML 2020).

Forward rule, as in RAIVNLab/STR ``utils/conv_type.py`` (``sparseFunction``, ``STRConv``)::

    W_hat = sign(W) * relu(|W| - sigmoid(s))

with one learnt scalar s per prunable layer (``sparseThreshold``, shape [1, 1] there), trained by
autograd together with W; pruned entries get zero (sub)gradient through the ReLU and can come back
when |W| grows past the threshold again. s starts at the constant ``s_init``: -3200, the
reference's ResNet-50 config (``configs/largescale/resnet50-str.yaml``; MobileNetV1 uses -12800),
so sigmoid(s) is 0 and training starts dense.

How it fits the hook contract: ``setup`` registers a ``torch.nn.utils.parametrize``
parametrization on every prunable module's ``weight``. W becomes
``<layer>.parametrizations.weight.original`` and s ``<layer>.parametrizations.weight.0.s``; both
are ordinary parameters of the model, so the optimizer the trainer builds after ``setup`` trains
them and applies the *same* weight decay to s as to everything else (STR's ``--st-decay``
default None; ``main.py``, ``get_optimizer``). Checkpoints hold both, and a resumed run
re-registers the parametrization in ``setup`` before the trainer loads the state. After every
step the layers' ``weight_mask`` buffers are set, in place, to the nonzero pattern of the W_hat
that step computed with, so the density the trainer logs and integrates into training FLOPs is
STR's own. The rule runs as one custom autograd node (``_SoftThreshold``) with exactly the
reference composition's values and sub-gradients (tested), because six small autograd nodes per
layer cost more than the convolutions of a small model. ``finalize`` bakes the
thresholds in: each weight becomes the plain tensor W_hat, the parametrization is removed, and
the masks equal W_hat != 0, so counting sees exactly the zeros the forward pass has.

Sparsity comes from the weight decay (the threshold grows as decay pulls s towards 0), so a run
with a target gets its weight decay from ``methods.calibration`` (bisection over runs of the same
recipe, cached under ``<root>/calibration/``); ``weight_decay`` in the hyperparameters overrides
the search. The chosen decay replaces the recipe's in this run's single training phase, and
``summary()`` records it with the achieved sparsity and per-layer thresholds.

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

from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from methods.base import Method, Phase, SetupContext
from methods.calibration import (
    CALIBRATION_SEED,
    Calibration,
    CalibrationSettings,
    cached_calibration,
    trainer_short_run,
)
from methods.masking import MASK_BUFFER


@dataclass(frozen=True)
class STRHparams:
    s_init: float = -3200.0
    # None: calibrate for the run's target sparsity; a number: use it and skip the search.
    weight_decay: float | None = None
    calibration_low: float = 1e-6
    calibration_high: float = 1e-1
    calibration_rel_tol: float = 0.05
    calibration_max_runs: int = 10


class _SoftThreshold(torch.autograd.Function):
    """(W, s) -> sign(W) * relu(|W| - t), t = sigmoid(s), as one autograd node.

    Forward: W - clamp(W, -t, t), the same values up to the sign of zeros. Backward: the
    sub-gradients autograd takes through the reference's sigmoid/sign/abs/relu composition
    (relu'(0) = 0): dW = g * 1[|W| > t] and ds = -sum(g * sign(W) * 1[|W| > t]) * t * (1 - t).
    One node instead of six keeps the per-layer overhead small on small models. Also returns
    the alive pattern 1[|W| > t], which is exactly where the output is nonzero."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, s: torch.Tensor):
        t = torch.sigmoid(s)
        alive = weight.abs() > t
        ctx.save_for_backward(weight, alive, t)
        ctx.mark_non_differentiable(alive)
        return weight - torch.clamp(weight, -t, t), alive

    @staticmethod
    def backward(ctx, grad: torch.Tensor, _grad_alive: torch.Tensor | None):
        weight, alive, t = ctx.saved_tensors
        grad_w = torch.where(alive, grad, 0.0)
        grad_s = None
        if ctx.needs_input_grad[1]:
            grad_s = (grad_w * torch.sign(weight)).sum() * (t * (t - 1.0))
        return grad_w, grad_s


def soft_threshold(weight: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """STR's ``sparseFunction``: sign(W) * relu(|W| - sigmoid(s))."""
    return _SoftThreshold.apply(weight, s)[0]


class SoftThreshold(nn.Module):
    """The parametrization W -> sign(W) * relu(|W| - sigmoid(s)), owning the layer's s. Keeps
    the nonzero pattern of the weight it last produced in ``alive``."""

    def __init__(self, s_init: float, like: torch.Tensor):
        super().__init__()
        self.s = nn.Parameter(torch.full((1,), float(s_init), dtype=like.dtype,
                                         device=like.device))
        self.alive: torch.Tensor | None = None

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        out, self.alive = _SoftThreshold.apply(weight, self.s)
        return out

    def threshold(self) -> float:
        return float(torch.sigmoid(self.s.detach()))


def reparameterize(layers: dict[str, nn.Module], s_init: float) -> None:
    for module in layers.values():
        if not parametrize.is_parametrized(module, "weight"):
            parametrize.register_parametrization(module, "weight",
                                                 SoftThreshold(s_init, module.weight))


def _parts(module: nn.Module) -> tuple[torch.Tensor, SoftThreshold]:
    entry = module.parametrizations["weight"]
    return entry.original, entry[0]


@torch.no_grad()
def sync_masks(layers: dict[str, nn.Module], fresh: bool = True) -> None:
    """weight_mask <- (W_hat != 0), in place. With ``fresh`` the pattern is recomputed from
    the current W and s; otherwise it is the one of the weight the last forward pass used
    (what that step computed with), when there is one."""
    for module in layers.values():
        original, st = _parts(module)
        mask = getattr(module, MASK_BUFFER)
        if fresh or st.alive is None:
            # W_hat != 0 iff |W| > sigmoid(s) >= 0 (IEEE subtraction of distinct finite
            # floats is never 0).
            torch.gt(original.abs(), torch.sigmoid(st.s), out=mask)
        else:
            mask.copy_(st.alive)


@torch.no_grad()
def bake(layers: dict[str, nn.Module]) -> None:
    """Replace every parametrized weight by its current W_hat as a plain parameter, with the
    mask buffer equal to its nonzero pattern."""
    for module in layers.values():
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        getattr(module, MASK_BUFFER).copy_(module.weight != 0)


class STR(Method):
    name = "str"
    Hparams = STRHparams
    default_distribution = "learned"
    distributions = ("learned",)

    def __init__(self, config, hparams):
        super().__init__(config, hparams)
        self.weight_decay: float | None = None
        self.weight_decay_source = ""
        self.calibration: Calibration | None = None
        self.layers: dict[str, nn.Module] = {}
        self.final: dict[str, Any] = {}

    # --- weight decay -------------------------------------------------------------------
    def calibration_config(self):
        """The run's config with everything that does not change the answer normalised away:
        the seed (all seeds share one calibration) and every weight-decay field."""
        hp = replace(self.hparams, weight_decay=None)
        return replace(self.config, seed=CALIBRATION_SEED,
                       train=replace(self.config.train, weight_decay=0.0),
                       method=replace(self.config.method, hparams=hp))

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
        base = self.calibration_config()

        def with_decay(wd: float):
            return replace(base, method=replace(base.method,
                                                hparams=replace(base.method.hparams,
                                                                weight_decay=wd)))

        self.calibration = cached_calibration(ctx.root, base,
                                              trainer_short_run(with_decay, ctx.data_root),
                                              self.settings())
        self.weight_decay, self.weight_decay_source = self.calibration.weight_decay, \
            "calibrated"

    # --- hooks --------------------------------------------------------------------------
    def setup(self, ctx: SetupContext) -> None:
        super().setup(ctx)
        self.layers = dict(ctx.masking.layers)
        reparameterize(self.layers, self.hparams.s_init)
        sync_masks(self.layers)
        if not ctx.resuming:  # a resumed run gets its weight decay from load_state_dict
            self.choose_weight_decay(ctx)

    def phases(self) -> list[Phase]:
        if self.weight_decay is None:
            raise RuntimeError("STR.phases() before setup chose the weight decay")
        return [Phase("train", replace(self.config.train, weight_decay=self.weight_decay))]

    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
        # The masks describe the weights this step computed with: the density the trainer
        # integrates into training FLOPs for it (RigL's accounting).
        sync_masks(self.layers, fresh=False)

    def thresholds(self) -> dict[str, float]:
        return {name: _parts(m)[1].threshold() for name, m in self.layers.items()
                if parametrize.is_parametrized(m, "weight")}

    def finalize(self, model: nn.Module) -> nn.Module:
        thresholds = self.thresholds()
        bake(self.layers)
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

