"""Random regrowth shared by the dynamic sparse training methods (DeepR, SET, DSR).

* Exact-count uniform random selection of positions per layer segment (regrowth, DeepR
  reactivation), with variants that take the count as a device tensor so the per-step path never
  syncs a GPU. (A single layer's random subset is ``selection.random_k``; schedules are in
  ``methods.schedules``.)
* A generator on the model's device, drawn from the method's own (checkpointed) generator.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from methods.masking import FlatLayers
from methods.selection import random_k


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
    layer still short after ``max_rounds`` is completed by ``selection.random_k`` over its remaining
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
        picked = torch.nonzero(random_k(rest, n, generator)).flatten() + start
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
