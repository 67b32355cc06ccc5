"""Masks shared by every method: which layers are prunable, how density is spread, and the
invariant that masked weights are exactly zero after every optimizer step.

Masks are boolean buffers named ``weight_mask`` registered on the Conv/Linear module that owns
the weight, so they travel with ``model.state_dict()`` into checkpoints and are read by the
parameter/FLOP counter without any side channel.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

MASK_BUFFER = "weight_mask"
PRUNABLE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def prunable_layers(model: nn.Module, layer_policy: str = "all") -> dict[str, nn.Module]:
    """Conv/Linear modules whose ``weight`` may be sparsified, in module order.

    Biases and normalisation layers are never prunable. ``dense_first`` keeps the first
    Conv/Linear dense, ``dense_last`` the last one, ``dense_first_last`` both.
    """
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)]
    if layer_policy in ("dense_first", "dense_first_last") and layers:
        layers = layers[1:]
    if layer_policy in ("dense_last", "dense_first_last") and layers:
        layers = layers[:-1]
    return dict(layers)


def uniform_densities(sizes: dict[str, int], density: float) -> dict[str, float]:
    return {name: density for name in sizes}


def erk_densities(shapes: dict[str, tuple[int, ...]], density: float) -> dict[str, float]:
    """Erdős–Rényi-Kernel densities (RigL, ``sparse_utils.get_sparsities_erdos_renyi``).

    Each layer's density is eps * (sum of dims) / (product of dims); eps is set so the total
    number of kept weights equals ``density`` times the total. A layer whose density would
    exceed 1 is made dense, its weights leave the budget, and eps is solved again.
    """
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    raw = {n: sum(s) / math.prod(s) for n, s in shapes.items()}
    total = sum(sizes.values())
    dense: set[str] = set()
    while True:
        budget = density * total - sum(sizes[n] for n in dense)
        rest = [n for n in shapes if n not in dense]
        if not rest:
            break
        eps = budget / sum(raw[n] * sizes[n] for n in rest)
        over = [n for n in rest if eps * raw[n] > 1.0]
        if not over:
            break
        # RigL moves only the layer with the largest raw score per iteration.
        dense.add(max(over, key=lambda n: raw[n]))
    return {n: 1.0 if n in dense else eps * raw[n] for n in shapes}


def layer_densities(
    shapes: dict[str, tuple[int, ...]], density: float, distribution: str
) -> dict[str, float]:
    if distribution == "uniform":
        return uniform_densities({n: math.prod(s) for n, s in shapes.items()}, density)
    if distribution == "erk":
        return erk_densities(shapes, density)
    raise ValueError(f"distribution {distribution!r} does not give densities before training")


def kept_count(numel: int, density: float) -> int:
    """Exactly how many weights a layer keeps: numel - floor(sparsity * numel) (RigL's rule)."""
    sparsity = 1.0 - density
    # A tiny tolerance keeps 0.9 * 100 from flooring to 89 through float error.
    return numel - int(math.floor(sparsity * numel + 1e-9))


def random_mask(shape: torch.Size, n_keep: int, generator: torch.Generator) -> torch.Tensor:
    numel = math.prod(shape)
    mask = torch.zeros(numel, dtype=torch.bool)
    mask[torch.randperm(numel, generator=generator)[:n_keep]] = True
    return mask.view(shape)


def topk_mask(scores: torch.Tensor, n_keep: int) -> torch.Tensor:
    flat = scores.flatten()
    mask = torch.zeros_like(flat, dtype=torch.bool)
    if n_keep > 0:
        mask[torch.topk(flat, n_keep, sorted=False).indices] = True
    return mask.view_as(scores)


@dataclass
class Masking:
    """The masks of one model. Create once per run; every method goes through it."""

    layers: dict[str, nn.Module]

    @classmethod
    def attach(cls, model: nn.Module, layer_policy: str) -> Masking:
        """Register an all-ones mask on every prunable layer (idempotent)."""
        layers = prunable_layers(model, layer_policy)
        for module in layers.values():
            if not hasattr(module, MASK_BUFFER):
                module.register_buffer(
                    MASK_BUFFER, torch.ones_like(module.weight, dtype=torch.bool)
                )
        return cls(layers)

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        return {n: getattr(m, MASK_BUFFER) for n, m in self.layers.items()}

    def weights(self) -> dict[str, nn.Parameter]:
        return {n: m.weight for n, m in self.layers.items()}

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: tuple(m.weight.shape) for n, m in self.layers.items()}

    def set_mask(self, name: str, mask: torch.Tensor) -> None:
        buf = getattr(self.layers[name], MASK_BUFFER)
        buf.copy_(mask.to(device=buf.device, dtype=torch.bool))

    @torch.no_grad()
    def apply(self) -> None:
        """Zero every masked weight: the invariant every method restores after each step."""
        for module in self.layers.values():
            module.weight.mul_(getattr(module, MASK_BUFFER))

    @torch.no_grad()
    def mask_gradients(self) -> None:
        for module in self.layers.values():
            if module.weight.grad is not None:
                module.weight.grad.mul_(getattr(module, MASK_BUFFER))

    @torch.no_grad()
    def zero_optimizer_state(self, optimizer: torch.optim.Optimizer, where: dict) -> None:
        """Reset per-weight optimizer state (momentum, Adam moments) at the given positions.

        ``where`` maps layer name -> boolean tensor of positions to reset (e.g. regrown weights).
        """
        for name, positions in where.items():
            state = optimizer.state.get(self.layers[name].weight, {})
            for value in state.values():
                if torch.is_tensor(value) and value.shape == positions.shape:
                    value.masked_fill_(positions, 0)

    def nonzero(self) -> dict[str, int]:
        return {n: int(m.sum()) for n, m in self.masks.items()}

    def total(self) -> int:
        return sum(m.weight.numel() for m in self.layers.values())

    def density(self) -> float:
        total = self.total()
        return sum(self.nonzero().values()) / total if total else 1.0

    def init_random(
        self, density: float, distribution: str, generator: torch.Generator
    ) -> dict[str, int]:
        """Random masks with an exact per-layer kept count; returns the counts."""
        densities = layer_densities(self.shapes(), density, distribution)
        counts = {}
        for name, module in self.layers.items():
            n_keep = kept_count(module.weight.numel(), densities[name])
            self.set_mask(name, random_mask(module.weight.shape, n_keep, generator))
            counts[name] = n_keep
        self.apply()
        return counts

    def init_from_scores(
        self, scores: dict[str, torch.Tensor], density: float, keep: str = "largest"
    ) -> None:
        """Global top-k over all layers' scores: exactly kept_count(total, density) survive."""
        flat = torch.cat([scores[n].flatten() for n in self.layers])
        n_keep = kept_count(flat.numel(), density)
        if keep == "smallest":
            flat = -flat
        global_mask = topk_mask(flat, n_keep)
        offset = 0
        for name, module in self.layers.items():
            n = module.weight.numel()
            self.set_mask(name, global_mask[offset : offset + n].view_as(module.weight))
            offset += n
        self.apply()


def iter_masked(model: nn.Module) -> Iterable[tuple[str, nn.Module, torch.Tensor]]:
    """Every module carrying a mask, wherever it came from (for counting and checks)."""
    for name, module in model.named_modules():
        mask = getattr(module, MASK_BUFFER, None)
        if isinstance(mask, torch.Tensor):
            yield name, module, mask
