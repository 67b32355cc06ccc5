"""Locks that keep a run in one process and a root's submissions in one launcher.

A run folder's ``.lock`` is held (``filelock.FileLock``: ``flock`` on the open file, released
by the kernel when the process dies, so a ``kill -9`` or a requeue never leaves a stale lock)
for as long as a process trains or finishes that run. A second process that wants the same run
waits for it with a message, then finds the result the first one wrote. ``status`` reports a
run whose lock is held as ``running``, whichever executor trains it.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from filelock import FileLock, Timeout

LOCK = ".lock"
SUBMIT_LOCK = Path("slurm") / ".submit.lock"

F = TypeVar("F", bound=Callable[..., Any])

# Inside ``silent_waits()``: hold() waits without its message.
_SILENT = contextvars.ContextVar("sparsebench_silent_lock_waits", default=False)


@contextmanager
def silent_waits() -> Iterator[None]:
    """Locks taken inside wait without printing their message: for the ranks of a
    multi-process run other than rank 0, whose waits are for their own rank 0 or were already
    reported by it (``bench.distributed.rank_0_first``)."""
    token = _SILENT.set(True)
    try:
        yield
    finally:
        _SILENT.reset(token)


@contextmanager
def hold(path: Path, waiting: str | None, *, should_stop: Callable[[], bool] | None = None,
         stopped: Callable[[], BaseException] = RuntimeError, poll_s: float = 1.0
         ) -> Iterator[None]:
    """Hold the lock file `path`; when another process holds it, print `waiting` (unless None
    or inside ``silent_waits()``) and wait. With `should_stop`, the wait asks it every `poll_s`
    seconds and raises ``stopped()`` once it says stop: a run asked to stop (preemption) is
    never stuck behind another process's lock."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path, is_singleton=False, thread_local=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if waiting is not None and not _SILENT.get():
            print(f"sparsebench: {waiting}", flush=True)
        while True:
            try:
                lock.acquire(timeout=-1 if should_stop is None else poll_s)
                break
            except Timeout:
                if should_stop is not None and should_stop():
                    raise stopped() from None
    try:
        yield
    finally:
        lock.release()


def is_held(path: Path) -> bool:
    """Whether some process holds the lock file `path` now (this process included)."""
    path = Path(path)
    if not path.exists():
        return False
    lock = FileLock(path, is_singleton=False, thread_local=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    lock.release()
    return False


def run_is_training(folder: Path) -> bool:
    return is_held(Path(folder) / LOCK)


def exclusive_run(folder_of: Callable[[Any, Any], Path]) -> Callable[[F], F]:
    """Decorate ``f(config, root, ...)`` so it runs holding the lock of the run folder
    ``folder_of(root, config)``: one process at a time trains a run, anywhere."""

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(config, root, *args, **kwargs):
            folder = folder_of(root, config)
            with hold(folder / LOCK, f"run {folder.name} is being trained by another process "
                      f"(lock {folder / LOCK}); waiting for it to finish"):
                return func(config, root, *args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
