"""Atomic save and verified restore of everything a run needs to resume exactly.

A checkpoint holds the model (masks included, as buffers), the optimizer, the method's state,
torch's global RNG states, the position in training (phase, epoch, batch, step), the metrics so
far and the integrated training FLOPs. It is loaded with ``torch.load(weights_only=True)``: only
tensors and plain Python containers, never pickled objects.

On disk: one header line ``sparsebench-checkpoint {"run_id": ..., "bytes": ..., "sha256": ...}``
then the ``torch.save`` payload. The header says whose checkpoint it is and the checksum of the
payload, so a flipped byte, a truncated file or a checkpoint copied from another run's folder is
recognised instead of resumed: it is set aside (``checkpoint.pt.corrupt``, with a warning naming
it) and the run starts from scratch.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import torch

from bench import store

MAGIC = b"sparsebench-checkpoint "


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def folder_run_id(path: Path) -> str:
    """The run id a file in a run folder belongs to: the folder is ``<label>-<run id>``."""
    return Path(path).parent.name.rsplit("-", 1)[-1]


def save(path: Path, payload: dict[str, Any], run_id: str | None = None) -> None:
    """Write `payload` (plus the RNG states) for run `run_id` (default: the run folder's)."""
    buffer = io.BytesIO()
    torch.save({**payload, "rng": rng_state()}, buffer)
    data = buffer.getvalue()
    header = json.dumps({"run_id": run_id or folder_run_id(path), "bytes": len(data),
                         "sha256": hashlib.sha256(data).hexdigest()}, sort_keys=True)
    store.atomic_write_bytes(Path(path), MAGIC + header.encode() + b"\n" + data)


def problem(path: Path, run_id: str | None = None) -> tuple[str | None, bytes]:
    """(why the checkpoint at `path` cannot be resumed or None, its payload bytes)."""
    try:
        raw = Path(path).read_bytes()
    except IsADirectoryError:
        return "is a directory, not a checkpoint", b""
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})", b""
    if not raw.startswith(MAGIC) or b"\n" not in raw:
        return ("is empty" if not raw else "is not a sparsebench checkpoint"), b""
    line, data = raw[len(MAGIC):].split(b"\n", 1)
    try:
        header = json.loads(line)
        expected = (str(header["run_id"]), int(header["bytes"]), str(header["sha256"]))
    except (ValueError, KeyError, TypeError):
        return "has a damaged header", b""
    owner, size, digest = expected
    if owner != (run_id or folder_run_id(path)):
        return f"belongs to run {owner}, not to run {run_id or folder_run_id(path)}", b""
    if len(data) != size:
        return f"is truncated ({len(data)} of {size} payload bytes)", b""
    if hashlib.sha256(data).hexdigest() != digest:
        return "does not match its checksum", b""
    return None, data


def load(path: Path, map_location: str | torch.device = "cpu",
         run_id: str | None = None) -> dict[str, Any] | None:
    """The checkpoint's payload, or None when there is none or it does not verify (then it has
    been set aside with a warning, and the caller starts from scratch)."""
    path = Path(path)
    if not path.exists():
        return None
    why, data = problem(path, run_id)
    if why is None:
        try:
            return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
        except Exception as exc:  # verified bytes that torch cannot read: written by another
            why = f"cannot be loaded ({type(exc).__name__})"  # torch version, say
    aside = store.set_aside(path, f"{why}; the run starts from scratch")
    store.append_log(path.parent, f"checkpoint {path.name} {why}: set aside as {aside.name}, "
                     "starting from scratch")
    return None
