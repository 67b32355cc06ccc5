"""Choosing weights by score: the one place that picks the k largest or smallest entries,
moves connections (drop-and-grow) and resets optimizer state for the positions it revived.

Tie rule (every function here): entries are ranked by score; among entries with the same score
at the k-th place, the ones with the lower flat (row-major) index are taken. ``torch.topk``
alone leaves that order unspecified; resolving it here makes a selection the same on every
device and torch version. Ineligible positions are never chosen.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def top_k(scores: torch.Tensor, k: int, eligible: torch.Tensor | None = None,
          largest: bool = True) -> torch.Tensor:
    """Boolean mask (shape of ``scores``) of the ``k`` eligible entries with the largest (or,
    ``largest=False``, smallest) score, ties as in the module docstring.

    ``eligible``: boolean tensor of the same number of elements (None: all). Raises ValueError
    when ``k`` is negative or exceeds the number of eligible entries.
    """
    flat = scores.detach().flatten()
    if not largest:
        flat = -flat
    n = flat.numel() if eligible is None else int(eligible.sum())
    if k < 0 or k > n:
        raise ValueError(f"cannot choose {k} of {n} eligible entries")
    if eligible is not None:
        flat = flat.masked_fill(~eligible.flatten(), -math.inf)
    out = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if k == 0:
        return out.view_as(scores)
    kth = kth_largest(flat, k)
    above = flat > kth
    ties = flat == kth
    if eligible is not None:
        ties &= eligible.flatten()
    # Take the lowest-index ties to fill up to k.
    need = k - above.sum()
    out = above | (ties & (torch.cumsum(ties, 0) <= need))
    return out.view_as(scores)


def kth_largest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest entry of ``scores`` (1 <= k <= numel), as a 0-d tensor: the threshold
    rules of pruning references (GraSP keeps what is <= its k-th largest score)."""
    return torch.topk(scores.detach().flatten(), k, sorted=False).values.min()


def random_k(eligible: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """A uniformly random k-subset of the True entries of ``eligible`` (any shape, bool; the
    result has its shape): the first ``k`` of a ``torch.randperm`` of the eligible positions in
    flat (row-major) order, drawn from ``generator`` on ``eligible``'s device. With every
    position eligible this is the classic ``randperm(numel)[:k]`` random mask (the one random
    subset rule of every method: initial random masks, SET/DSR regrowth, DeepR reactivation).

    Raises ValueError when ``k`` is negative or exceeds the number of eligible entries. ``k = 0``
    draws nothing, so the generator moves only when something is chosen.
    """
    positions = torch.nonzero(eligible.flatten()).flatten()
    if not 0 <= k <= positions.numel():
        raise ValueError(f"cannot choose {k} of {positions.numel()} eligible entries")
    out = torch.zeros(eligible.numel(), dtype=torch.bool, device=eligible.device)
    if k == 0:
        return out.view_as(eligible)
    order = torch.randperm(positions.numel(), generator=generator, device=eligible.device)
    out[positions[order[:k]]] = True
    return out.view_as(eligible)


def drop_and_grow(drop_score: torch.Tensor, grow_score: torch.Tensor, active: torch.Tensor,
                  n_drop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer's connection update, rigl's ``generic_mask_update`` / ``_get_update_op``
    (google-research/rigl ``rigl/sparse_optimizers_base.py``): keep the n_active - n_drop
    active positions with the largest ``drop_score``, then grow the ``n_drop`` positions with
    the largest ``grow_score`` among all that were not kept (just-dropped ones included), so
    the layer's count is unchanged.

    Returns ``(mask, new)``: the new boolean mask and the genuinely new connections (grown where
    the old mask was 0), whose weights and optimizer state the caller initialises. A dropped
    connection that is grown again is in ``mask`` but not in ``new``: it keeps its value, as in
    the reference. Deviation: the reference ranks every position for keeping (an inactive one
    carries only the drop noise); this ranks active positions only, the same unless an active
    |w| is below the noise.
    """
    n_active = int(active.sum())
    if not 0 <= n_drop <= n_active:
        raise ValueError(f"cannot drop {n_drop} of {n_active} active connections")
    keep = top_k(drop_score, n_active - n_drop, active)
    grow = top_k(grow_score, n_drop, ~keep)
    return keep | grow, grow & ~active


@torch.no_grad()
def reset_optimizer_state(optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor],
                          positions: Sequence[torch.Tensor | None]) -> None:
    """Zero every per-weight optimizer state tensor (momentum, Adam moments) of each parameter
    at the given positions: a boolean mask of the parameter's elements, a tensor of flat
    indices, or None (leave it). Scalar state (Adam's step count) is left alone. Used for
    regrown connections, which start with no history (rigl ``reset_momentum``; SET's sparse
    implementation; DeepR's reactivations)."""
    for p, where in zip(params, positions, strict=True):
        if where is None:
            continue
        for value in optimizer.state.get(p, {}).values():
            if torch.is_tensor(value) and value.shape == p.shape:
                if where.dtype == torch.bool:
                    value.masked_fill_(where.view(p.shape), 0)
                else:
                    value.view(-1)[where] = 0
