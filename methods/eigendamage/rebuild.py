"""The pruned layer as a bottleneck of ordinary modules: rotation into the kept input
eigen-directions → core layer in the eigenbasis → rotation back to the output channels.

alecwangcq/EigenDamage-Pytorch ``utils/prune_utils.py`` (``register_bottleneck_layer``,
``ConvLayerRotation``, ``LinearLayerRotation``): the input rotation is Q_A[:, kept_in]ᵀ, the core
is W*[kept_out, kept_in] with the original kernel, stride, padding and dilation and no bias, the
output rotation is Q_G[:, kept_out]. Here the rotations are plain 1×1 ``nn.Conv1d``/``nn.Conv2d``
(or ``nn.Linear``) modules so the harness's parameter/MAC counter sees them like any other layer,
and the original bias sits on the output rotation (see ``kfac.py`` for why). Rotations are
trainable by default (the reference's ``fix_rotation: false``).
"""

from __future__ import annotations

import torch
from torch import nn


class Bottleneck(nn.Module):
    """rotate_in → core → rotate_out; each an ordinary Conv/Linear module."""

    def __init__(self, rotate_in: nn.Module, core: nn.Module, rotate_out: nn.Module):
        super().__init__()
        self.rotate_in = rotate_in
        self.core = core
        self.rotate_out = rotate_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rotate_out(self.core(self.rotate_in(x)))

    @property
    def in_rotation(self) -> torch.Tensor:
        """Q_a as (C_in, kept_in)."""
        w = self.rotate_in.weight
        return w.reshape(w.shape[0], w.shape[1]).t()

    @property
    def out_rotation(self) -> torch.Tensor:
        """Q_g as (C_out, kept_out)."""
        w = self.rotate_out.weight
        return w.reshape(w.shape[0], w.shape[1])


def core_of(layer: nn.Module) -> nn.Module:
    """The module whose weight is pruned: the layer itself, or a bottleneck's core."""
    return layer.core if isinstance(layer, Bottleneck) else layer


def outer_dims(layer: nn.Module) -> tuple[int, int]:
    """(C_in, C_out) that the layer presents to the rest of the network."""
    if isinstance(layer, Bottleneck):
        return layer.in_rotation.shape[0], layer.out_rotation.shape[0]
    w = layer.weight
    return w.shape[1], w.shape[0]


def _like(template: nn.Module, c_in: int, c_out: int, bias: bool, pointwise: bool) -> nn.Module:
    factory = {"device": template.weight.device, "dtype": template.weight.dtype}
    if isinstance(template, nn.Linear):
        return nn.Linear(c_in, c_out, bias=bias, **factory)
    cls = type(template)
    if pointwise:
        return cls(c_in, c_out, 1, bias=bias, **factory)
    return cls(c_in, c_out, template.kernel_size, stride=template.stride,
               padding=template.padding, dilation=template.dilation,
               padding_mode=template.padding_mode, bias=bias, **factory)


def empty_bottleneck(layer: nn.Module, kept_in: int, kept_out: int,
                     trainable_rotations: bool = True) -> Bottleneck:
    """A bottleneck with the right shapes for `layer` (an original layer or a bottleneck);
    its weights are freshly initialised and meant to be overwritten from a checkpoint."""
    core = core_of(layer)
    c_in, c_out = outer_dims(layer)
    bias = (layer.rotate_out.bias if isinstance(layer, Bottleneck) else layer.bias) is not None
    neck = Bottleneck(
        _like(core, c_in, kept_in, bias=False, pointwise=True),
        _like(core, kept_in, kept_out, bias=False, pointwise=False),
        _like(core, kept_out, c_out, bias=bias, pointwise=True),
    )
    neck.rotate_in.weight.requires_grad_(trainable_rotations)
    neck.rotate_out.weight.requires_grad_(trainable_rotations)
    return neck


@torch.no_grad()
def make_bottleneck(
    layer: nn.Module,
    q_in: torch.Tensor,
    w_core: torch.Tensor,
    q_out: torch.Tensor,
    trainable_rotations: bool = True,
) -> Bottleneck:
    """Build the bottleneck replacing `layer`. q_in: (C_in, kept_in) rotation from the layer's
    input channels; w_core: (kept_out, kept_in, *kernel); q_out: (C_out, kept_out)."""
    neck = empty_bottleneck(layer, q_in.shape[1], q_out.shape[1], trainable_rotations)
    dtype = neck.core.weight.dtype
    neck.rotate_in.weight.copy_(q_in.t().reshape(neck.rotate_in.weight.shape).to(dtype))
    neck.core.weight.copy_(w_core.reshape(neck.core.weight.shape).to(dtype))
    neck.rotate_out.weight.copy_(q_out.reshape(neck.rotate_out.weight.shape).to(dtype))
    bias = layer.rotate_out.bias if isinstance(layer, Bottleneck) else layer.bias
    if bias is not None:
        neck.rotate_out.bias.copy_(bias)
    return neck


def bottleneck_weight_count(c_in: int, c_out: int, kept_in: int, kept_out: int,
                            kernel_numel: int) -> int:
    """Weights of a bottleneck (bias excluded: it is the same before and after)."""
    return c_in * kept_in + kept_in * kept_out * kernel_numel + kept_out * c_out


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
