"""Starting the N processes of a run with ``train.world_size`` N > 1 (``bench.distributed``).

Two ways in, one code path for the ranks (``bench.run.run_body`` with the rank):

- **Spawned here** (the ``local`` and ``debug`` executors, any plain ``run_one`` call): this
  process holds the run folder's lock for the whole run and starts N subprocesses
  (``python -m bench.launch.ddp``) with torchrun's variables (``MASTER_ADDR=127.0.0.1``, a
  free ``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); rank r of a CUDA run uses
  ``cuda:r``. A stop request here (SIGTERM, Ctrl-C, SLURM's warning) is passed to every rank as
  SIGTERM; the ranks agree on the step, rank 0 checkpoints, and ``Interrupted`` is raised here.
  When a rank dies, the others are stopped (killed after ``RANK_GRACE_S``).
- **Already a rank** (one task of a SLURM job with ``ntasks = N``, or ``torchrun``): the
  process group is formed from the environment; rank 0 takes the run folder's lock.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import distributed, locks, store
from bench.config import RunConfig, from_dict, run_id, to_dict
from bench.train import Interrupted

# Exit status of a rank that stopped on request after its checkpoint.
EXIT_INTERRUPTED = 3
# The launcher holds the run folder's lock for the ranks it spawned.
LOCK_HELD_ENV = "SPARSEBENCH_RUN_LOCK_HELD"
# How long the other ranks get to end on their own after one rank died.
RANK_GRACE_S = 30.0


def run_distributed(
    config: RunConfig,
    root: Path,
    data_root: Path | None,
    *,
    label: str | None = None,
    retry_failed: bool = False,
    should_stop: Callable[[], bool] | None = None,
    stop_after_epoch: int | None = None,
) -> dict[str, Any]:
    """Train the multi-process run `config` (``run_one``'s contract): as one rank of an
    existing process group, or by spawning its ranks here."""
    from bench.run import run_body, run_folder

    folder = run_folder(root, config)
    kwargs = dict(label=label, retry_failed=retry_failed, should_stop=should_stop,
                  stop_after_epoch=stop_after_epoch)
    if distributed.in_group():
        rank = distributed.group(config.train.world_size)
        assert rank is not None
        if rank.writes and os.environ.get(LOCK_HELD_ENV) != "1":
            with locks.hold(folder / locks.LOCK, f"run {folder.name} is being trained by "
                            f"another process (lock {folder / locks.LOCK}); waiting for it"):
                return run_body(config, root, data_root, rank=rank, **kwargs)
        return run_body(config, root, data_root, rank=rank, **kwargs)
    with locks.hold(folder / locks.LOCK, f"run {folder.name} is being trained by another "
                    f"process (lock {folder / locks.LOCK}); waiting for it to finish"):
        from bench.run import finished_result

        done = finished_result(folder, retry_failed) if folder.exists() else None
        if done is not None:
            return done
        return _spawn(config, root, data_root, should_stop or (lambda: False), label=label,
                      retry_failed=retry_failed, stop_after_epoch=stop_after_epoch)


def _spawn(config: RunConfig, root: Path, data_root: Path | None,
           should_stop: Callable[[], bool], **kwargs: Any) -> dict[str, Any]:
    from bench.run import run_folder

    world = config.train.world_size
    job = json.dumps({"config": to_dict(config), "root": str(root),
                      "data_root": str(data_root) if data_root else None, **kwargs})
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(distributed.free_port()),
           "WORLD_SIZE": str(world), LOCK_HELD_ENV: "1"}
    ranks = []
    # The ranks start with SIGINT blocked (the mask is inherited through fork and exec) until
    # rank_main can take it: a terminal's Ctrl-C reaches them while they import torch, and
    # ended each with a KeyboardInterrupt traceback. Blocked, not ignored: it waits, and stops
    # the rank once it can checkpoint. Only this thread's mask changes, for the forks.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        for r in range(world):
            proc = subprocess.Popen([sys.executable, "-m", "bench.launch.ddp"],
                                    stdin=subprocess.PIPE,
                                    env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, text=True)
            proc.stdin.write(job)  # type: ignore[union-attr]
            proc.stdin.close()  # type: ignore[union-attr]
            ranks.append(proc)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    forwarded, died_at = False, None
    try:
        while any(p.poll() is None for p in ranks):
            if should_stop() and not forwarded:
                _signal_all(ranks, signal.SIGTERM)
                forwarded = True
            # A rank that ended early (failed, or stopped while the others wait in a
            # collective) leaves the others waiting for it: stop them, then kill them.
            ended = [p for p in ranks if p.returncode not in (None, 0)]
            if ended and died_at is None:
                died_at = time.monotonic()
                _signal_all(ranks, signal.SIGTERM)
            if died_at is not None and time.monotonic() - died_at > RANK_GRACE_S:
                _signal_all(ranks, signal.SIGKILL)
            time.sleep(0.05)
    finally:
        _signal_all(ranks, signal.SIGKILL)
        for p in ranks:
            p.wait()
    codes = [p.returncode for p in ranks]
    result = store.read_result(run_folder(root, config))
    if result is not None:
        return result
    # Rank 0 stopped after writing the checkpoint; or we stopped the ranks, and a rank still
    # starting (no signal handler yet) died of our SIGTERM: a stop, not a failure.
    if codes[0] == EXIT_INTERRUPTED or forwarded:
        raise Interrupted(f"run {run_id(config)} stopped in its {world} processes")
    raise RuntimeError(f"run {run_id(config)}: its {world} processes ended with exit codes "
                       f"{codes} and no result")


def _signal_all(ranks: list[subprocess.Popen], sig: int) -> None:
    for p in ranks:
        if p.poll() is None:
            p.send_signal(sig)


def rank_main() -> int:
    """One spawned rank: the job (JSON) on stdin, the rendezvous in the environment."""
    import torch.distributed as dist

    from bench.launch.job import StopOnSignal
    from bench.run import run_body
    from methods import get_method

    job = json.loads(sys.stdin.read())
    body = job.pop("config")
    config = from_dict(body, get_method(body["method"]["name"]).Hparams)
    rank = distributed.init_from_env(config.train.device)
    try:
        # Quiet: the launcher stops its ranks with SIGTERM whatever it got (Ctrl-C included)
        # and says so itself; a "got SIGTERM" line per rank would only repeat it, wrongly.
        with StopOnSignal(interrupt=True, quiet=True) as stop:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # see _spawn
            try:
                run_body(config, Path(job["root"]),
                         Path(job["data_root"]) if job["data_root"] else None,
                         label=job["label"], retry_failed=job["retry_failed"],
                         stop_after_epoch=job["stop_after_epoch"], should_stop=stop,
                         rank=rank)
            except Interrupted:
                return EXIT_INTERRUPTED
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(rank_main())
