"""Masks shared by every method: which layers are prunable, how density is spread, and the
invariant that masked weights are exactly zero after every optimizer step.

Masks are boolean buffers named ``weight_mask`` registered on the Conv/Linear module that owns
the weight, so they travel with ``model.state_dict()`` into checkpoints and are read by the
parameter/FLOP counter without any side channel.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from methods.selection import random_k, top_k

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
    """Erdős–Rényi-Kernel densities, sized as RigL's ``sparse_utils.get_sparsities_erdos_renyi``
    (google-research/rigl, ``include_kernel=True``, ``erk_power_scale=1``).

    Each layer's raw score is (sum of dims) / (product of dims) and its density eps * raw. The
    budget is whole per-layer counts, as the reference sizes it: eps * sum(raw_i N_i) =
    sum(N_i - floor(s N_i)) over the sparse layers minus sum(floor(s N_j)) over the layers made
    dense (s = 1 - density). While some eps * raw_i exceeds 1, every layer with the largest raw
    score is made dense (the reference moves all layers tied at the maximum) and eps is solved
    again. Each layer then keeps ``kept_count(N_i, eps * raw_i)`` weights.
    """
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    raw = {n: sum(s) / math.prod(s) for n, s in shapes.items()}
    sparsity = 1.0 - density
    zeros = {n: int(math.floor(sparsity * size + 1e-9)) for n, size in sizes.items()}
    dense: set[str] = set()
    eps = 0.0
    while True:
        rest = [n for n in shapes if n not in dense]
        if not rest:
            break
        budget = sum(sizes[n] - zeros[n] for n in rest) - sum(zeros[n] for n in dense)
        eps = budget / sum(raw[n] * sizes[n] for n in rest)
        top = max(raw[n] for n in rest)
        if eps * top <= 1.0:
            break
        dense.update(n for n in rest if raw[n] == top)
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


class FlatLayers:
    """Several layers' weights and masks as one flat vector, so the per-step work of a method is
    a handful of vector ops instead of a few ops per layer.

    ``weights()`` gathers the weights into a persistent flat buffer, ``write_weights`` copies
    it back; the masks have a persistent flat float copy (1 active, 0 inactive). Per-layer views
    of both buffers are made once, so a step creates no views. The float masks are rebuilt when
    a mask buffer changes behind the method's back (``tensor._version`` moves on every in-place
    write: ``load_state_dict``, ``Masking.set_mask``), so a checkpoint restored after ``setup``
    is always seen.
    """

    def __init__(self, masking: Any, names: Sequence[str]):
        self.names = list(names)
        self.params = [masking.layers[n].weight for n in self.names]
        self.data = [p.detach() for p in self.params]
        self.buffers = [masking.masks[n] for n in self.names]
        self.shapes = [p.shape for p in self.params]
        self.sizes = [p.numel() for p in self.params]
        self.starts = [sum(self.sizes[:i]) for i in range(len(self.sizes))]
        self.total = sum(self.sizes)
        device = self.params[0].device if self.params else torch.device("cpu")
        dtype = self.params[0].dtype if self.params else torch.float32
        self.segment = torch.repeat_interleave(
            torch.arange(len(self.sizes), device=device),
            torch.tensor(self.sizes, device=device, dtype=torch.long))
        self._w = torch.zeros(self.total, device=device, dtype=dtype)
        self._w_views = self.chunks(self._w)
        self._m = torch.zeros(self.total, device=device, dtype=dtype)
        self._m_views = self.chunks(self._m)
        self._versions: list[int] = [-1] * len(self.buffers)
        self._counts: list[int] | None = None

    def __len__(self) -> int:
        return len(self.names)

    def chunks(self, flat: torch.Tensor) -> list[torch.Tensor]:
        return [c.view(s) for c, s in zip(flat.split(self.sizes), self.shapes, strict=True)]

    def weights(self) -> torch.Tensor:
        """The weights, gathered into the persistent flat buffer (edit it, then write back)."""
        torch._foreach_copy_(self._w_views, self.data)
        return self._w

    def write_weights(self, flat: torch.Tensor) -> None:
        if flat is not self._w:
            self._w.copy_(flat)
        torch._foreach_copy_(self.data, self._w_views)

    def _refresh(self) -> None:
        versions = [b._version for b in self.buffers]
        if versions != self._versions:
            torch._foreach_copy_(self._m_views, self.buffers)
            self._versions = [b._version for b in self.buffers]
            self._counts = None

    def counts(self) -> list[int]:
        """Active count of every layer (cached with the float masks)."""
        self._refresh()
        if self._counts is None:
            self._counts = self.segment_sums(self._m).long().tolist()
        return list(self._counts)

    def layer_of(self, index: int) -> int:
        return bisect.bisect_right(self.starts, index) - 1

    def mask(self) -> torch.Tensor:
        """The masks as one flat float vector (1 active, 0 inactive); read-only for callers."""
        self._refresh()
        return self._m

    def mask_views(self) -> list[torch.Tensor]:
        self._refresh()
        return self._m_views

    def write_mask(self, flat: torch.Tensor, counts: list[int] | None = None) -> None:
        """Store a new flat float mask into the bool buffers and the float copy (``counts``:
        its per-layer active counts when the caller knows them)."""
        if flat is not self._m:
            self._m.copy_(flat)
        torch._foreach_copy_(self.buffers, self._m_views)
        self._versions = [b._version for b in self.buffers]
        self._counts = None if counts is None else list(counts)

    def segment_sums(self, flat: torch.Tensor) -> torch.Tensor:
        """Per-layer sums of a flat vector."""
        return torch.stack([c.sum() for c in flat.split(self.sizes)])

    @torch.no_grad()
    def mask_gradients(self) -> None:
        if not self.params:
            return
        views = self.mask_views()
        pairs = [(p.grad, m) for p, m in zip(self.params, views, strict=True)
                 if p.grad is not None]
        if pairs:
            torch._foreach_mul_([g for g, _ in pairs], [m for _, m in pairs])

    @torch.no_grad()
    def apply(self) -> None:
        if self.params:
            torch._foreach_mul_(self.data, self.mask_views())


@dataclass
class Masking:
    """The masks of one model. Create once per run; every method goes through it."""

    layers: dict[str, nn.Module]
    # Flat float copies of the masks for the per-step hooks (built on first use).
    _flat: FlatLayers | None = field(default=None, init=False, repr=False)

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

    def flat(self) -> FlatLayers:
        """All layers as one FlatLayers, shared by every per-step user of these masks."""
        if self._flat is None:
            self._flat = FlatLayers(self, list(self.layers))
        return self._flat

    def apply(self) -> None:
        """Zero every masked weight: the invariant every method restores after each step.
        One foreach multiply by cached float masks (about 3x faster than a loop over bool
        masks on small models, and the same values)."""
        self.flat().apply()

    def mask_gradients(self) -> None:
        self.flat().mask_gradients()

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
        counts = self.layer_counts(density, distribution)
        for name, module in self.layers.items():
            everywhere = torch.ones(module.weight.shape, dtype=torch.bool)
            self.set_mask(name, random_k(everywhere, counts[name], generator))
        self.apply()
        return counts

    def layer_counts(self, density: float, distribution: str) -> dict[str, int]:
        """Exactly how many weights each layer keeps at `density` spread by `distribution`:
        the per-layer budget ``init_random`` draws and ``Method.promised_nonzero`` promises."""
        densities = layer_densities(self.shapes(), density, distribution)
        return {name: kept_count(module.weight.numel(), densities[name])
                for name, module in self.layers.items()}

    def global_count(self, density: float) -> int:
        """Exactly how many weights a global top-k over every layer keeps
        (``init_from_scores``)."""
        return kept_count(self.total(), density)

    def init_from_scores(
        self, scores: dict[str, torch.Tensor], n_keep: int, keep: str = "largest"
    ) -> None:
        """Global top-k over all layers' scores (``selection.top_k``; ``keep="smallest"`` for
        the lowest scores): exactly ``n_keep`` weights survive (the caller's counting rule)."""
        flat = torch.cat([scores[n].flatten() for n in self.layers])
        self.set_flat_mask(top_k(flat, n_keep, largest=keep == "largest"))

    def set_flat_mask(self, flat: torch.Tensor) -> None:
        """Set every layer's mask from one bool vector over all layers' weights (layer order,
        each flattened: shape [total()]) and apply the masks: the end of every global rule."""
        sizes = [module.weight.numel() for module in self.layers.values()]
        for (name, module), part in zip(self.layers.items(), flat.split(sizes), strict=True):
            self.set_mask(name, part.view_as(module.weight))
        self.apply()


def iter_masked(model: nn.Module) -> Iterable[tuple[str, nn.Module, torch.Tensor]]:
    """Every module carrying a mask, wherever it came from (for counting and checks)."""
    for name, module in model.named_modules():
        mask = getattr(module, MASK_BUFFER, None)
        if isinstance(mask, torch.Tensor):
            yield name, module, mask
