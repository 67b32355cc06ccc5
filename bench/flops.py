"""Parameter and MAC counting, per layer, from the actual masks.

Conventions (reference/flops-and-performance.md §A.5):
- params: ``params_total`` = every parameter of the model; ``params_prunable`` = weights of the
  masked (prunable) layers; ``params_nonzero`` = params_total minus the masked-out weights.
- inference MACs per example: for every Conv/Linear, nonzero weights x output positions (1 for a
  Linear on a flat input). ``macs_dense`` is the same with every weight counted. Bias adds,
  BN, activations and pooling are *not* included (they are the "dense extras", ~1% for CNNs).
  ``flops`` = 2 x macs (multiply + add), reported beside macs because papers use both.
- training FLOPs (RigL's accounting): each step costs forward + 2 x forward (backward) on the
  density the step actually had, times the batch size; integrated over the run by the trainer
  with ``StepCost``.
A layer without a mask counts all its weights as nonzero.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from methods.masking import MASK_BUFFER, PRUNABLE_TYPES


@dataclass(frozen=True)
class LayerCount:
    name: str
    kind: str
    shape: tuple[int, ...]
    params: int
    nonzero: int
    density: float
    positions: int
    macs: int
    macs_dense: int
    masked: bool


@dataclass(frozen=True)
class ModelCounts:
    layers: tuple[LayerCount, ...]
    params_total: int
    params_prunable: int
    params_nonzero: int
    macs: int
    macs_dense: int

    @property
    def flops(self) -> int:
        return 2 * self.macs

    @property
    def sparsity(self) -> float:
        """Achieved sparsity over the prunable weights."""
        pruned = self.params_total - self.params_nonzero
        return pruned / self.params_prunable if self.params_prunable else 0.0

    def as_dict(self) -> dict:
        return {
            "params_total": self.params_total,
            "params_prunable": self.params_prunable,
            "params_nonzero": self.params_nonzero,
            "sparsity": self.sparsity,
            "macs": self.macs,
            "flops": self.flops,
            "macs_dense": self.macs_dense,
            "flops_dense": 2 * self.macs_dense,
        }

    def layer_table(self) -> list[dict]:
        return [
            {k: v for k, v in asdict(layer).items() if k != "positions"} for layer in self.layers
        ]


def output_positions(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Per Conv/Linear module: how many times its weight is applied per example."""
    positions: dict[str, int] = {}
    hooks = []

    def make_hook(name: str, module: nn.Module):
        def hook(_mod, _inp, out):
            if isinstance(module, nn.Linear):
                positions[name] = math.prod(out.shape[1:-1]) if out.dim() > 2 else 1
            else:
                positions[name] = math.prod(out.shape[2:])

        return hook

    for name, module in model.named_modules():
        if isinstance(module, PRUNABLE_TYPES):
            hooks.append(module.register_forward_hook(make_hook(name, module)))
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), device=device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return positions


def count(
    model: nn.Module, input_shape: tuple[int, ...], positions: dict[str, int] | None = None
) -> ModelCounts:
    """Count params and MACs of `model` for one example of `input_shape` (no batch dim)."""
    positions = positions if positions is not None else output_positions(model, input_shape)
    layers = []
    masked_out = 0
    prunable = 0
    for name, module in model.named_modules():
        if not isinstance(module, PRUNABLE_TYPES):
            continue
        weight = module.weight
        mask = getattr(module, MASK_BUFFER, None)
        numel = weight.numel()
        nonzero = int(mask.sum()) if isinstance(mask, torch.Tensor) else numel
        if isinstance(mask, torch.Tensor):
            prunable += numel
            masked_out += numel - nonzero
        pos = positions.get(name, 0)
        layers.append(
            LayerCount(
                name=name,
                kind=type(module).__name__,
                shape=tuple(weight.shape),
                params=numel,
                nonzero=nonzero,
                density=nonzero / numel if numel else 1.0,
                positions=pos,
                macs=nonzero * pos,
                macs_dense=numel * pos,
                masked=isinstance(mask, torch.Tensor),
            )
        )
    total = sum(p.numel() for p in model.parameters())
    return ModelCounts(
        layers=tuple(layers),
        params_total=total,
        params_prunable=prunable,
        params_nonzero=total - masked_out,
        macs=sum(layer.macs for layer in layers),
        macs_dense=sum(layer.macs_dense for layer in layers),
    )


class StepCost:
    """Forward MACs per example at the model's current masks, kept as a device tensor so the
    trainer can integrate training FLOPs every step without a host sync."""

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...]):
        positions = output_positions(model, input_shape)
        self._masked: list[tuple[torch.Tensor, int]] = []
        self._fixed = 0
        for name, module in model.named_modules():
            if not isinstance(module, PRUNABLE_TYPES):
                continue
            mask = getattr(module, MASK_BUFFER, None)
            pos = positions.get(name, 0)
            if isinstance(mask, torch.Tensor):
                self._masked.append((mask, pos))
            else:
                self._fixed += module.weight.numel() * pos

        # train_flops per batch size, valid while every mask's version counter stands still
        # (``tensor._version`` moves on every in-place write, as methods/masking.py relies on):
        # a step whose masks did not change costs no tensor op here.
        self._versions: list[int] = []
        self._per_batch: dict[int, torch.Tensor] = {}

    def forward_macs(self) -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float64)
        for mask, pos in self._masked:
            total = total.to(mask.device) + mask.sum(dtype=torch.float64) * pos
        return total + self._fixed

    def train_flops(self, batch_size: int) -> torch.Tensor:
        """RigL: forward + backward (2 x forward), in FLOPs (2 per MAC), for one step. Shape
        [], float64, on the masks' device; recomputed only after a mask changed."""
        versions = [mask._version for mask, _ in self._masked]
        if versions != self._versions:
            self._versions, self._per_batch = versions, {}
        flops = self._per_batch.get(batch_size)
        if flops is None:
            flops = self._per_batch[batch_size] = 3 * 2 * self.forward_macs() * batch_size
        return flops
