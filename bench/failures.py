"""Whose fault a run's exception is: the training's, or the machine's.

A run that raises is recorded in ``result.json`` either as

* ``status: "failed"``, ``error_kind: "training"``: the training itself went wrong (the loss
  diverged, a method raised): rerunning the same config gives the same failure, so it stays
  failed until ``run --retry-failed``; or
* ``status: "error"`` with ``error_kind`` ``"out_of_memory"``, ``"environment"`` (a missing or
  unreadable file, a full disk, a missing device) or ``"input"`` (data or settings refused by a
  ``UserError`` that the checks before the grid could not see): nothing is wrong with the
  method, so a plain rerun retries the run (from its checkpoint, if it has one).
"""

from __future__ import annotations

from bench.errors import UserError

TRAINING = "training"
OUT_OF_MEMORY = "out_of_memory"
ENVIRONMENT = "environment"
INPUT = "input"

# Messages of RuntimeErrors (and torch's AssertionError) that say the device, not the code, is
# at fault. A device-side assert is not among them: that is usually a bug in the code.
_DEVICE_MESSAGES = (
    "no cuda gpus are available",
    "invalid device ordinal",
    "cuda-capable device(s) is/are busy or unavailable",
    "found no nvidia driver",
    "cuda driver version is insufficient",
    "torch not compiled with cuda enabled",
    "uncorrectable ecc error",
    # A collective of a multi-process run whose other rank died (gloo's words; NCCL raises
    # torch.distributed.DistError): the machine's failure, retried by a plain rerun.
    "connection closed by peer",
    "connection reset by peer",
)
_MEMORY_MESSAGES = ("out of memory", "can't allocate memory", "not enough memory")


class DependencyNotDone(RuntimeError):
    """A run that this run starts from (``Method.dependencies``, e.g. EigenDamage's dense run)
    has not finished: not the method's fault; a plain rerun trains it first and retries."""


def _is_dist_error(exc: BaseException) -> bool:
    """torch.distributed's own errors (a lost rank, a collective timeout, the rendezvous)."""
    import torch.distributed as dist

    return dist.is_available() and isinstance(exc, dist.DistError)


def classify(exc: BaseException) -> tuple[str, str]:
    """(status, error_kind) for a run that raised `exc`."""
    text = str(exc).lower()
    if isinstance(exc, DependencyNotDone):
        return "error", ENVIRONMENT
    if isinstance(exc, MemoryError) or (
        isinstance(exc, RuntimeError) and any(m in text for m in _MEMORY_MESSAGES)
    ):
        return "error", OUT_OF_MEMORY
    if isinstance(exc, UserError):
        return "error", INPUT
    if isinstance(exc, OSError) or _is_dist_error(exc):
        return "error", ENVIRONMENT
    if isinstance(exc, (RuntimeError, AssertionError)) and any(m in text
                                                               for m in _DEVICE_MESSAGES):
        return "error", ENVIRONMENT
    return "failed", TRAINING


def retried_by_plain_rerun(result: dict) -> bool:
    """A stored result that ``run`` trains again without ``--retry-failed``."""
    return result.get("status") == "error"
