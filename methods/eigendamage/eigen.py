"""Eigendecomposition of the K-FAC factors, the weights in the Kronecker-factored eigenbasis (KFE),
and the importance of each input / output eigen-direction.

alecwangcq/EigenDamage-Pytorch ``pruner/kfac_eigen_pruner.py`` (``_update_inv``,
``_get_unit_importance``): A = Q_A diag(d_A) Q_Aᵀ, G = Q_G diag(d_G) Q_Gᵀ, eigenvalues below 1e-10
set to 0; W* = Q_Gᵀ W Q_A per kernel position; the importance of a KFE weight is
(W*)² · d_G d_Aᵀ (the ½ of ΔL is dropped, as in the code), summed over kernel positions; input
direction j scores Σ_i imp_ij and output direction i scores Σ_j imp_ij. ``normalize=False`` is the
configs' setting (the code notes normalising "will harm the performance").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

EIG_EPS = 1e-10


@dataclass
class LayerEigen:
    Q_a: torch.Tensor  # C_in x C_in, columns are input eigen-directions
    d_a: torch.Tensor
    Q_g: torch.Tensor  # C_out x C_out
    d_g: torch.Tensor
    W_star: torch.Tensor  # C_out x C_in x *kernel, the weight in the eigenbasis
    imp_in: torch.Tensor  # C_in
    imp_out: torch.Tensor  # C_out


def eigh_clamped(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (ascending, tiny ones zeroed) and orthonormal eigenvectors of a symmetric
    matrix, in float64."""
    m = m.double()
    d, q = torch.linalg.eigh((m + m.t()) / 2)
    return d * (d > EIG_EPS), q


def to_eigenbasis(weight: torch.Tensor, Q_a: torch.Tensor, Q_g: torch.Tensor) -> torch.Tensor:
    """W* = Q_gᵀ W Q_a at every kernel position; weight is (C_out, C_in, *kernel)."""
    w = weight.double()
    return torch.einsum("oi...,oa,ib->ab...", w, Q_g.double(), Q_a.double())


def importance(
    w_star: torch.Tensor, d_a: torch.Tensor, d_g: torch.Tensor, normalize: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input-direction importances, output-direction importances)."""
    squared = w_star.pow(2).reshape(w_star.shape[0], w_star.shape[1], -1).sum(2)
    per_weight = squared * torch.outer(d_g, d_a)
    imp_in, imp_out = per_weight.sum(0), per_weight.sum(1)
    if normalize:
        imp_in = imp_in / imp_in.sum()
        imp_out = imp_out / imp_out.sum()
    return imp_in, imp_out


def decompose_layer(
    weight: torch.Tensor, A: torch.Tensor, G: torch.Tensor, normalize: bool = False
) -> LayerEigen:
    d_a, Q_a = eigh_clamped(A)
    d_g, Q_g = eigh_clamped(G)
    w_star = to_eigenbasis(weight.detach(), Q_a, Q_g)
    imp_in, imp_out = importance(w_star, d_a, d_g, normalize)
    return LayerEigen(Q_a, d_a, Q_g, d_g, w_star, imp_in, imp_out)
