"""Reference initialisations, applied with ``model.apply(fn)`` after construction as the
reference code does (so the default init's draws come first, then these, in module order)."""

from __future__ import annotations

from torch import nn


def grasp_init(m: nn.Module) -> None:
    """GraSP (alecwangcq/GraSP ``models/base/init_utils.py::weights_init``): conv weights He
    normal in fan-out mode, Linear weights N(0, 0.01), biases 0, BN weight 1 / bias 0. The
    reference has only 2-d layers; 1-d and 3-d ones get the same rule (GraSP's pruning on them)."""
    if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, 0.0, 0.01)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)) and m.affine:
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def eigendamage_init(m: nn.Module) -> None:
    """EigenDamage (alecwangcq/EigenDamage-Pytorch ``models/resnet.py::_weights_init``): conv and
    Linear weights He normal in fan-in mode (``init.kaiming_normal``'s defaults), biases 0, BN
    weight 1 / bias 0."""
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        nn.init.kaiming_normal_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
