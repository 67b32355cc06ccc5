"""Atomic save and safe restore of everything a run needs to resume exactly.

A checkpoint holds the model (masks included, as buffers), the optimizer, the method's state,
torch's global RNG states, the position in training (phase, epoch, batch, step), the metrics so
far and the integrated training FLOPs. It is loaded with ``torch.load(weights_only=True)``: only
tensors and plain Python containers, never pickled objects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from bench.store import atomic_torch_save


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: Path, payload: dict[str, Any]) -> None:
    atomic_torch_save({**payload, "rng": rng_state()}, path)


def load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    if not Path(path).exists():
        return None
    return torch.load(path, map_location=map_location, weights_only=True)
