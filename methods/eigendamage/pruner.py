"""One EigenDamage pruning round on a model, in place: factors → eigenbasis → threshold for a
weight budget → bottlenecks (alecwangcq/EigenDamage-Pytorch ``pruner/kfac_eigen_pruner.py``,
``make_pruned_model``).

Layers are addressed by their *slot*: the module name in the original network. After a round a
slot holds a ``Bottleneck``; a later (iterative) round prunes its core and composes the new
eigenbases with the rotations already there (the reference's ``_merge_Qs``:
Q_total = Q_previous @ Q_new), so the slot still holds one bottleneck.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from methods.eigendamage.eigen import decompose_layer
from methods.eigendamage.kfac import Batch, collect_factors, is_supported
from methods.eigendamage.prune import (
    Decision,
    LayerPlan,
    ThresholdSearch,
    decide_all,
    find_threshold,
)
from methods.eigendamage.rebuild import (
    Bottleneck,
    core_of,
    make_bottleneck,
    outer_dims,
    replace_module,
)
from methods.masking import PRUNABLE_TYPES


def eligible_slots(model: nn.Module, keep_first: bool = False) -> list[str]:
    """Conv/Linear layers EigenDamage may prune: all but the last (the reference's
    ``self.modules[fix_layers:-1]``), and not the first when the run keeps it dense. Layers whose
    factors cannot be computed (grouped convs, string padding, Conv3d) stay as they are."""
    names = [n for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)]
    names = names[1 if keep_first else 0 : -1]
    return [n for n in names if is_supported(model.get_submodule(n))]


def slot_weights(layer: nn.Module) -> int:
    if isinstance(layer, Bottleneck):
        return sum(m.weight.numel() for m in (layer.rotate_in, layer.core, layer.rotate_out))
    return layer.weight.numel()


def slot_params(layer: nn.Module) -> int:
    return sum(p.numel() for p in layer.parameters())


@dataclass
class RoundResult:
    search: ThresholdSearch
    decisions: dict[str, Decision]
    shapes: dict[str, tuple[int, int]]  # slot -> (kept_in, kept_out) of every bottleneck now


def prune_round(
    model: nn.Module,
    slots: list[str],
    batches: Iterable[Batch],
    budget: int,
    *,
    limit: float,
    fisher_type: str = "true",
    normalize: bool = False,
    trainable_rotations: bool = True,
    generator: torch.Generator | None = None,
) -> RoundResult:
    """Prune `model` in place so that the weights of `slots` total at most `budget`."""
    layers = {s: model.get_submodule(s) for s in slots}
    cores = {s: core_of(m) for s, m in layers.items()}
    factors = collect_factors(model, cores, batches, fisher_type, generator)
    plans: dict[str, LayerPlan] = {}
    bases: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    for s, layer in layers.items():
        core = cores[s]
        eig = decompose_layer(core.weight, factors[s].A, factors[s].G, normalize)
        q_a, q_g = eig.Q_a, eig.Q_g
        if isinstance(layer, Bottleneck):
            q_a = layer.in_rotation.detach().double() @ q_a
            q_g = layer.out_rotation.detach().double() @ q_g
        bases[s] = (q_a, eig.W_star, q_g)
        c_in, c_out = outer_dims(layer)
        plans[s] = LayerPlan(
            c_in=c_in,
            c_out=c_out,
            kernel_numel=math.prod(core.weight.shape[2:]),
            current_weights=slot_weights(layer),
            is_bottleneck=isinstance(layer, Bottleneck),
            imp_in=eig.imp_in,
            imp_out=eig.imp_out,
        )
    search = find_threshold(plans, budget, limit)
    decisions = decide_all(plans, search.threshold, limit)
    for s, d in decisions.items():
        if not d.rebuild:
            continue
        q_a, w_star, q_g = bases[s]
        neck = make_bottleneck(
            layers[s],
            q_a[:, d.kept_in],
            w_star[d.kept_out][:, d.kept_in],
            q_g[:, d.kept_out],
            trainable_rotations,
        )
        replace_module(model, s, neck)
    shapes = {}
    for s in slots:
        layer = model.get_submodule(s)
        if isinstance(layer, Bottleneck):
            shapes[s] = (layer.core.weight.shape[1], layer.core.weight.shape[0])
    return RoundResult(search, decisions, shapes)
