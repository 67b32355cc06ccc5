"""Pieces shared by the dynamic sparse training methods (DeepR, SET, DSR).

* The DSR reference schedule (IntelAI/dynamic-reparameterization, ``main.py`` ``train()`` and
  ``learning_schedules/wrnet_schedule.yaml``: WRN-28-2 on CIFAR-10, 200 epochs of 500 steps),
  expressed as fractions of a run so that it keeps its shape on a run of any length.
* Exact-count uniform random selection of positions (regrowth, DeepR reactivation), with a
  variant that takes the count as a device tensor so the per-step path never syncs a GPU.
* A generator on the model's device, drawn from the method's own (checkpointed) generator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from methods.masking import FlatLayers

# --- the DSR reference run (WRN-28-2, CIFAR-10) ------------------------------------------------
DSR_REF_EPOCHS = 200
DSR_REF_STEPS = DSR_REF_EPOCHS * 500  # 50,000 training images, batch 100 (main.py default)
# Weights in the WRN-28-2 SparseTensors (every 3x3 block conv; first conv, shortcuts and the
# classifier are dense in that model): 69,120 + 276,480 + 1,105,920.
DSR_REF_SPARSE_WEIGHTS = 1_451_520
DSR_REF_N_PRUNE = 20_000  # --n-prune-params in experiments/wrnet_experiments.yaml
# rewire_period_schedule / DeepR_temperature_schedule change at these epochs ...
DSR_PHASE_FRACTIONS = tuple(e / DSR_REF_EPOCHS for e in (0, 25, 80, 140))
# ... to these rewire periods (iterations) ...
DSR_PERIOD_FRACTIONS = tuple(p / DSR_REF_STEPS for p in (100, 200, 400, 800))
# ... and these DeepR temperatures.
DSR_TEMPERATURES = (1.0e-5, 1.0e-8, 1.0e-12, 1.0e-15)
DSR_STOP_FRACTION = 190 / DSR_REF_EPOCHS  # --stop-rewire-epoch 190


def scaled(fraction: float, total_steps: int) -> int:
    return int(round(fraction * total_steps))


def piecewise_index(starts: Sequence[int], iteration: int) -> int:
    """Index of the last phase whose start is <= iteration (the reference's
    ``get_schedule_val``: the value of the last schedule entry not after the query)."""
    index = 0
    for i, start in enumerate(starts):
        if iteration >= start:
            index = i
    return index


@dataclass(frozen=True)
class RewireSchedule:
    """When a periodic rewiring happens, in optimizer steps.

    The reference rewires after the batch with 0-based global index ``it`` when ``it != 0``,
    ``it % period == 0`` and the batch's epoch is before the stop epoch, the period being the
    one of the schedule phase the batch is in. Here phase starts, periods and the stop point are
    fractions of the run's total steps (periods at least one step), so a 20-epoch run rewires
    as many times, at the same relative points, as the 200-epoch reference.
    """

    starts: tuple[int, ...]
    periods: tuple[int, ...]
    stop: int

    @classmethod
    def scaled(cls, phase_fractions: Sequence[float], period_fractions: Sequence[float],
               stop_fraction: float, total_steps: int) -> RewireSchedule:
        if len(phase_fractions) != len(period_fractions) or not phase_fractions:
            raise ValueError("phase and period fractions must be non-empty and of equal length")
        return cls(
            starts=tuple(scaled(f, total_steps) for f in phase_fractions),
            periods=tuple(max(1, scaled(f, total_steps)) for f in period_fractions),
            stop=scaled(stop_fraction, total_steps),
        )

    def is_rewire_step(self, step: int) -> bool:
        """``step`` is the trainer's 1-based count of optimizer steps taken."""
        it = step - 1
        if it <= 0 or it >= self.stop:
            return False
        return it % self.periods[piecewise_index(self.starts, it)] == 0

    def points(self, total_steps: int) -> list[int]:
        return [s for s in range(1, total_steps + 1) if self.is_rewire_step(s)]


# --- random selection ---------------------------------------------------------------------------
def random_subset(candidates: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """A boolean mask (shape of ``candidates``) with exactly ``n`` True entries, a uniformly random
    n-subset of the True entries of ``candidates`` (which must hold at least n)."""
    out = torch.zeros(candidates.numel(), dtype=torch.bool, device=candidates.device)
    if n > 0:
        scores = torch.rand(candidates.numel(), generator=generator, device=candidates.device)
        scores.masked_fill_(~candidates.flatten(), -1.0)
        out[torch.topk(scores, n, sorted=False).indices] = True
    return out.view_as(candidates)


def random_subset_by_rank(candidates: torch.Tensor, n: torch.Tensor,
                          generator: torch.Generator) -> torch.Tensor:
    """``random_subset`` with the count as a 0-d tensor: ranks random scores by a sort and keeps
    the first n ranks, so nothing waits on the device. Same distribution, different draws."""
    numel = candidates.numel()
    scores = torch.rand(numel, generator=generator, device=candidates.device)
    scores.masked_fill_(~candidates.flatten(), -1.0)
    order = torch.argsort(scores, descending=True)
    chosen = torch.arange(numel, device=candidates.device) < n
    out = torch.empty(numel, dtype=torch.bool, device=candidates.device)
    out.scatter_(0, order, chosen)
    return out.view_as(candidates)


def smallest_active(weight: torch.Tensor, active: torch.Tensor, k: int) -> torch.Tensor:
    """The k active positions with the smallest |w| (boolean mask)."""
    out = torch.zeros(weight.numel(), dtype=torch.bool, device=weight.device)
    if k > 0:
        scores = weight.detach().abs().flatten().neg().masked_fill(~active.flatten(), -math.inf)
        out[torch.topk(scores, k, sorted=False).indices] = True
    return out.view_as(active)


def largest(scores: torch.Tensor, eligible: torch.Tensor, k: int) -> torch.Tensor:
    """The k eligible positions with the largest score (boolean mask)."""
    out = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if k > 0:
        s = scores.detach().flatten().masked_fill(~eligible.flatten(), -math.inf)
        out[torch.topk(s, k, sorted=False).indices] = True
    return out.view_as(eligible)


# --- generators -----------------------------------------------------------------------------------
class DeviceRNG:
    """The generator a method draws its per-step randomness from: the method's own generator on
    CPU; on an accelerator a generator there, seeded from the method's own, so no random numbers
    cross the bus. Its state is checkpointed alongside the method's generator."""

    def __init__(self, base: torch.Generator, device: torch.device):
        self.base = base
        if device.type == "cpu":
            self.generator = base
        else:
            self.generator = torch.Generator(device=device)
            seed = int(torch.randint(0, 2**62, (1,), generator=base))
            self.generator.manual_seed(seed)

    @property
    def separate(self) -> bool:
        return self.generator is not self.base

    def state_dict(self) -> dict[str, Any]:
        return {"device_generator": self.generator.get_state()} if self.separate else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.separate and "device_generator" in state:
            self.generator.set_state(state["device_generator"])


# --- flat views over layers ----------------------------------------------------------------------
def sample_in_segments(flat: FlatLayers, candidates: torch.Tensor, counts: Sequence[int],
                       generator: torch.Generator, max_rounds: int = 4) -> dict[int, list[int]]:
    """{layer: flat indices of ``counts[layer]`` distinct candidates inside the layer's segment},
    each set uniform without replacement. Rejection sampling with one draw for all layers:
    uniform positions in order, keeping each new candidate, so a step costs O(sum(counts))
    rather than O(numel) when candidates are plentiful (a sparse layer's inactive positions). A
    layer still short after ``max_rounds`` is completed by ``random_subset`` over its remaining
    candidates, which keeps the sample uniform."""
    device = candidates.device
    todo = {i: n for i, n in enumerate(counts) if n > 0}
    chosen: dict[int, list[int]] = {i: [] for i in todo}
    seen: set[int] = set()
    for _ in range(max_rounds):
        if not todo:
            break
        layers = list(todo)
        per = [2 * todo[i] + 8 for i in layers]
        u = torch.rand(sum(per), generator=generator, device=device,
                       dtype=torch.float64).tolist()
        draws: list[int] = []
        pos = 0
        for i, k in zip(layers, per, strict=True):
            start, size = flat.starts[i], flat.sizes[i]
            draws.extend(start + min(size - 1, int(x * size)) for x in u[pos:pos + k])
            pos += k
        good = candidates[torch.tensor(draws, device=device)].tolist()
        pos = 0
        for i, k in zip(layers, per, strict=True):
            got = chosen[i]
            for d, ok in zip(draws[pos:pos + k], good[pos:pos + k], strict=True):
                if ok and d not in seen:
                    seen.add(d)
                    got.append(d)
                    if len(got) == counts[i]:
                        break
            pos += k
            if len(got) == counts[i]:
                del todo[i]
            else:
                todo[i] = counts[i] - len(got)
    for i, n in todo.items():
        start, size = flat.starts[i], flat.sizes[i]
        rest = candidates[start:start + size].clone()
        rest[[d - start for d in chosen[i]]] = False
        n = min(n, int(rest.sum()))
        picked = torch.nonzero(random_subset(rest, n, generator)).flatten() + start
        chosen[i].extend(picked.tolist())
    return chosen


def segmented_random_choice(flat: FlatLayers, candidates: torch.Tensor, counts: torch.Tensor,
                            generator: torch.Generator) -> torch.Tensor:
    """Sync-free: a flat bool vector choosing ``counts[l]`` uniformly random candidates inside
    every layer's segment. One sort orders each segment's candidates randomly first, then the
    first ``counts[l]`` ranks of every segment are taken."""
    assert flat.segment is not None
    device = candidates.device
    scores = torch.rand(flat.total, generator=generator, device=device)
    key = flat.segment.to(scores.dtype) * 2 + torch.where(candidates, scores, 1.5)
    order = torch.argsort(key)
    starts = torch.tensor(flat.starts, device=device)
    seg_sorted = flat.segment[order]
    rank = torch.arange(flat.total, device=device) - starts[seg_sorted]
    chosen_sorted = rank < counts.to(device)[seg_sorted]
    out = torch.empty(flat.total, dtype=torch.bool, device=device)
    out.scatter_(0, order, chosen_sorted)
    return out & candidates


def zero_state_at(optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor],
                  positions: Sequence[torch.Tensor | None]) -> None:
    """Zero per-weight optimizer state (momentum, Adam moments) of each parameter at flat
    indices or a bool mask (None: none): ``Masking.zero_optimizer_state`` for the per-step path,
    where building a bool mask per layer would cost more than the indices."""
    for p, where in zip(params, positions, strict=True):
        if where is None:
            continue
        for value in optimizer.state.get(p, {}).values():
            if torch.is_tensor(value) and value.shape == p.shape:
                if where.dtype == torch.bool:
                    value.masked_fill_(where.view(p.shape), 0)
                else:
                    value.view(-1)[where] = 0
