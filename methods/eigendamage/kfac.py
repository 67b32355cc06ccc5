"""K-FAC factors A = E[a aᵀ] and G = E[g gᵀ] for Conv1d/Conv2d/Linear layers.

Follows alecwangcq/EigenDamage-Pytorch ``utils/kfac_utils.py`` (``ComputeCovAPatch``,
``ComputeCovG``, ``batch_averaged=True``) and ``pruner/kfac_eigen_pruner.py``
(``_compute_fisher``), with its per-layer scaling kept because the global threshold compares
importances across layers:

- Linear, batch of B rows:   A += aᵀa / B,                 G += B · gᵀg
- Conv, S output positions, P kernel positions (``use_patch``: kernel positions are extra samples,
  so A is C_in × C_in):      A += Σ_{b,s,p} a aᵀ / (S² · B · P),   G += B · S · Σ_{b,s} g gᵀ

where g is the gradient of the batch-mean cross-entropy with respect to the layer's output, and
both factors are summed (not averaged) over the batches of one pass, in ``model.eval()``.
Deviation: the reference appends a homogeneous coordinate for the bias to A; here the bias is
kept outside the eigenbasis (it stays on the output rotation), so A covers input channels only.
This keeps the rebuilt layers ordinary Conv/Linear modules that compute exactly the original
function when nothing is pruned (a constant input channel would not survive the core conv's zero
padding).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

Batch = tuple[torch.Tensor, torch.Tensor]
FISHER_TYPES = ("true", "empirical")
CONV_TYPES = (nn.Conv1d, nn.Conv2d)


@dataclass
class Factors:
    A: torch.Tensor  # C_in x C_in (float64)
    G: torch.Tensor  # C_out x C_out (float64)


def is_supported(layer: nn.Module) -> bool:
    """Layers whose factors we can compute with patch extraction: Linear, and Conv1d/Conv2d with
    groups 1 and numeric zero padding."""
    if isinstance(layer, nn.Linear):
        return True
    if isinstance(layer, CONV_TYPES):
        return (layer.groups == 1 and not isinstance(layer.padding, str)
                and layer.padding_mode == "zeros")
    return False


def conv_patches(x: torch.Tensor, layer: nn.Conv1d | nn.Conv2d) -> torch.Tensor:
    """Input patches as (B, S, P, C_in): S output positions, P kernel positions."""
    if isinstance(layer, nn.Conv1d):
        # A Conv1d is a Conv2d over a height-1 image; F.unfold handles stride/padding/dilation.
        x = x.unsqueeze(2)
        kernel, stride = (1, layer.kernel_size[0]), (1, layer.stride[0])
        padding, dilation = (0, layer.padding[0]), (1, layer.dilation[0])
    else:
        kernel, stride = layer.kernel_size, layer.stride
        padding, dilation = layer.padding, layer.dilation
    cols = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)
    batch, channels = x.shape[0], x.shape[1]
    p = math.prod(kernel)
    return cols.view(batch, channels, p, -1).permute(0, 3, 2, 1)


def cov_a(a: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    a = a.detach().double()
    if isinstance(layer, nn.Linear):
        batch = a.shape[0]
        rows = a.reshape(-1, a.shape[-1])
        return rows.t() @ rows / batch
    patches = conv_patches(a, layer)
    batch, spatial, p, _ = patches.shape
    rows = patches.reshape(-1, patches.shape[-1]) / spatial
    return rows.t() @ rows / (batch * p)


def cov_g(g: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    g = g.detach().double()
    batch = g.shape[0]
    if isinstance(layer, nn.Linear):
        rows = g.reshape(-1, g.shape[-1])
        return rows.t() @ rows * batch
    spatial = math.prod(g.shape[2:])
    rows = g.movedim(1, -1).reshape(-1, g.shape[1])
    return rows.t() @ rows * (batch * spatial)


def sample_labels(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """y ~ p(y|x) from the model's own softmax: the "true" Fisher. Sampled on the CPU from the
    method's generator so that the draw is reproducible and resumable on any device."""
    probs = torch.softmax(logits.detach().float().cpu(), dim=1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1).to(logits.device)


def collect_factors(
    model: nn.Module,
    layers: dict[str, nn.Module],
    batches: Iterable[Batch],
    fisher_type: str = "true",
    generator: torch.Generator | None = None,
) -> dict[str, Factors]:
    """One pass over `batches`; returns summed factors per layer name. Leaves no gradients on
    the parameters (gradients are taken with respect to the layer outputs only)."""
    if fisher_type not in FISHER_TYPES:
        raise ValueError(f"fisher_type {fisher_type!r}; valid: {', '.join(FISHER_TYPES)}")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    inputs: dict[str, torch.Tensor] = {}
    outputs: dict[str, torch.Tensor] = {}

    def make_hook(name: str):
        def hook(_mod, inp, out):
            if name in outputs:
                raise ValueError(f"layer {name} is applied twice per forward; K-FAC needs one")
            inputs[name] = inp[0]
            outputs[name] = out

        return hook

    handles = [m.register_forward_hook(make_hook(n)) for n, m in layers.items()]
    factors: dict[str, Factors] = {}
    was_training = model.training
    model.eval()
    try:
        for x, y in batches:
            inputs.clear()
            outputs.clear()
            with torch.enable_grad():
                logits = model(x)
                target = sample_labels(logits, generator) if fisher_type == "true" else y
                loss = F.cross_entropy(logits, target)
                names = list(layers)
                grads = torch.autograd.grad(loss, [outputs[n] for n in names])
            for name, grad in zip(names, grads, strict=True):
                layer = layers[name]
                a, g = cov_a(inputs[name], layer), cov_g(grad, layer)
                if name in factors:
                    factors[name].A += a
                    factors[name].G += g
                else:
                    factors[name] = Factors(a, g)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return factors
