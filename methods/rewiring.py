"""Random regrowth shared by the dynamic sparse training methods (DeepR, SET, DSR).

* Exact-count uniform random selection of positions per layer segment (DeepR's reactivation
  and regrowth): one random sort, the counts a device tensor, so the per-step path never syncs
  a GPU and a run draws the same on every device. (A single layer's random subset is
  ``selection.random_k``; schedules are in ``methods.schedules``.)
* A generator on the model's device, drawn from the method's own (checkpointed) generator.
"""

from __future__ import annotations

from typing import Any

import torch

from methods.masking import FlatLayers


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
