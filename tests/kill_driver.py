"""The kill -9 sweep of issue 12 ("all 27 resumed bit-identical: keep that"): kill a run with
SIGKILL at every point where it writes a file, resume it, and compare with a run that was
never interrupted.

A write point is one of three moments of each atomic write (``bench.store._atomic_write``):
before it starts, after the temp file is written but before it replaces the target (a temp
file is left behind), and after the replace. Counting them in a run that is not killed gives
the sweep's points; the child for point k counts the same way and SIGKILLs itself at the k-th.
Mid-epoch progress writes are timed by the clock, so the children write ``progress.json`` only
at deterministic moments (first step, epoch ends): the k-th point is the same in every child.

Run as ``python -m tests.kill_driver OUT DATA [K ...]``: this process imports torch once and
forks a child per run (a fresh interpreter per run would cost seconds of imports each); it runs
no torch op itself, so the children fork from a clean state. Writes ``OUT/points.json`` (the
reference's write points, in order) and ``OUT/sweep.json`` (per point: how the killed child
ended and how its resume ended), leaving each point's root under ``OUT/k<N>``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import torch

from bench import progress, store
from bench.run import run_one
from tests.helpers import tiny_config

torch.set_num_threads(1)

# A dynamic method (SET: random regrowth from the global RNG) over two epochs: the resume must
# restore RNG state, masks and optimizer exactly, across an epoch boundary.
CONFIG = tiny_config("set", 0.8, epochs=2)
LANES = 2


def _instrument(kill_at: int, record: Path | None) -> None:
    """Count write points in this (child) process; SIGKILL itself at point `kill_at` (0:
    never); append each point to `record` when given."""
    count = 0
    real_write = store._atomic_write

    def point(stage: str, path: Path) -> None:
        nonlocal count
        count += 1
        if record is not None:
            with open(record, "a") as fh:
                fh.write(json.dumps([count, stage, Path(path).name]) + "\n")
        if count == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    def atomic_write(path, write):
        point("before", path)

        def written(fh):
            write(fh)
            fh.flush()
            point("temp written", path)

        real_write(path, written)
        point("replaced", path)

    store._atomic_write = atomic_write
    real_init = progress.ProgressFile.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self.interval_s = float("inf")

    progress.ProgressFile.__init__ = init


def _child(root: Path, data: Path, kill_at: int, record: Path | None = None) -> int:
    """Run CONFIG under `root` in a forked child; its wait status decoded: the exit code, or
    minus the signal that ended it."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            _instrument(kill_at, record)
            run_one(CONFIG, root, data)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _warm(data: Path) -> None:
    """Generate the data cache in a child first: its write would otherwise be points of the
    reference only, shifting every later point."""
    pid = os.fork()
    if pid == 0:
        from bench.data import load_dataset

        code = 1
        try:
            load_dataset(CONFIG.data, data)
            code = 0
        finally:
            os._exit(code)
    assert os.waitpid(pid, 0)[1] == 0


def main(out: Path, data: Path, points: list[int]) -> None:
    _warm(data)
    record = out / "points.jsonl"
    assert _child(out / "reference", data, 0, record) == 0
    reference = [json.loads(line) for line in record.read_text().splitlines()]
    (out / "points.json").write_text(json.dumps(reference))
    points = points or list(range(1, len(reference) + 1))
    # Two lanes (forked; each runs its points one after another): CI machines have 2 cores.
    lanes = []
    for lane in range(LANES):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                sweep = {}
                for k in points[lane::LANES]:
                    started = time.perf_counter()
                    killed = _child(out / f"k{k}", data, k)
                    resumed = _child(out / f"k{k}", data, 0)
                    sweep[k] = {"killed": killed, "resumed": resumed,
                                "seconds": round(time.perf_counter() - started, 2)}
                (out / f"sweep-{lane}.json").write_text(json.dumps(sweep))
                code = 0
            finally:
                os._exit(code)
        lanes.append(pid)
    assert all(os.waitpid(pid, 0)[1] == 0 for pid in lanes)
    sweep = {}
    for lane in range(LANES):
        sweep.update(json.loads((out / f"sweep-{lane}.json").read_text()))
    (out / "sweep.json").write_text(json.dumps(sweep))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), [int(k) for k in sys.argv[3:]])
