"""Trial trainings: the runs a method trains during its own setup to choose a knob (STR's
weight decay, ``methods/calibration.py``), offered to methods as ``Harness.trial_train``
(``methods/base.py``).

A trial is a function of its config. It lives in ``<root>/trials/<label>-<run id>/`` (its
checkpoint while it trains, then ``result.json``), so an identical trial asked for again (by
another seed or target of the same grid cell, a rerun, another process at the same time) is
trained once and read back afterwards: what is already there can save time but never change an
answer. A per-trial file lock makes a second asker wait for the process training it, polling
the run's stop request while it waits. A trial stopped by that request keeps its checkpoint and
resumes, bit-identically, the next time it is asked for. Trials are not runs of the grid: they
live outside ``<root>/runs`` and never appear in reports; ``status`` shows them beside the runs
that ask for them (``scan_trials``, ``Method.owns_trial``), from the ``config.json`` each trial
folder gets before it trains.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench import distributed, locks, store
from bench.checkpoint import folder_run_id
from bench.config import RunConfig, from_dict, run_id, run_label, to_dict
from bench.errors import UserError
from bench.flops import count
from bench.train import (
    Diverged,
    Interrupted,
    Trainer,
    intra_op_threads,
    make_method,
    resolve_hparams,
)
from methods import get_method
from methods.base import Harness, TrialResult

TRIALS = "trials"
LOCK = "trial.lock"
# How often a process waiting for another's trial checks its own stop request (s).
LOCK_POLL_S = 1.0


def trial_folder(root: Path, config: RunConfig) -> Path:
    return Path(root) / TRIALS / f"{run_label(config)}-{run_id(config)}"


def train_trial(
    config: RunConfig,
    root: Path,
    *,
    data_root: Path | None = None,
    should_stop: Callable[[], bool] | None = None,
    harness: Harness | None = None,
    log: Callable[[str], None] = lambda _msg: None,
) -> TrialResult:
    """Train `config` in its trial folder under `root`, or read its finished outcome there.

    The trainer gets `should_stop` (a stop checkpoints the trial and raises ``Interrupted``)
    and `harness` (for the trial method's own setup). The caller's global RNG state and
    thread count are left as they were. Errors other than divergence propagate and record
    nothing, so the trial is tried again next time.

    In a multi-process run every rank asks for the same trials in the same order (the method's
    setup is the same code on every rank) and they train each one together: rank 0 holds the
    trial's lock, reads and writes its folder, and tells the others whether it is done."""
    config = resolve_hparams(config)
    rid = run_id(config)
    folder = trial_folder(root, config)
    rank = distributed.group(config.train.world_size)
    writes = rank is None or rank.writes
    with ExitStack() as held:
        done = None
        if writes:
            folder.mkdir(parents=True, exist_ok=True)
            held.enter_context(locks.hold(
                folder / LOCK, None, should_stop=should_stop or (lambda: False),
                stopped=lambda: Interrupted(f"stopped while waiting for trial {rid}"),
                poll_s=LOCK_POLL_S))
            done = read_trial(folder, rid)
        if rank is not None:
            done = distributed.broadcast(done)
        if done is not None:
            log(f"trial {rid}: done before, sparsity {done.sparsity}")
            return done
        log(f"trial {rid}: training in {folder}")
        if writes:
            store.prepare_folder(folder, to_dict(config))  # config.json: what status reads
        result = _train(config, folder, data_root, should_stop, harness)
        if writes:
            store.atomic_write_json(folder / store.RESULT, {
                "run_id": rid, "config": to_dict(config), "diverged": result.diverged,
                "sparsity": result.sparsity})
            (folder / store.CHECKPOINT).unlink(missing_ok=True)
    log(f"trial {rid}: " + ("diverged" if result.diverged else f"sparsity {result.sparsity}"))
    return result


def read_trial(folder: Path, rid: str) -> TrialResult | None:
    """The recorded outcome of trial `rid`, or None when there is none or it does not read
    back as one (then the trial is trained again and the record replaced)."""
    try:
        body: Any = store.read_json(folder / store.RESULT)
    except (OSError, ValueError):
        return None
    if not isinstance(body, dict) or body.get("run_id") != rid:
        return None
    diverged, sparsity = body.get("diverged"), body.get("sparsity")
    if diverged is True and sparsity is None:
        return TrialResult(rid, True, None)
    if (diverged is False and isinstance(sparsity, (int, float))
            and not isinstance(sparsity, bool) and 0.0 <= sparsity <= 1.0):
        return TrialResult(rid, False, float(sparsity))
    return None


def _train(config: RunConfig, folder: Path, data_root: Path | None,
           should_stop: Callable[[], bool] | None, harness: Harness | None) -> TrialResult:
    rid = run_id(config)
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    trainer = Trainer(make_method(config), folder, harness=harness, data_root=data_root,
                      should_stop=should_stop)
    with torch.random.fork_rng(devices=cuda), intra_op_threads(config.train):
        try:
            outcome = trainer.run()
        except Diverged:
            return TrialResult(rid, True, None)
    return TrialResult(rid, False, count(outcome.model, outcome.data.input_shape).sparsity)


TRIAL_STATES = ("done", "running", "partial")


@dataclass(frozen=True)
class TrialState:
    """A trial folder as ``status`` sees it: its config and whether it is done (a valid
    outcome), running (a process holds its lock) or partial (neither: the next ask resumes it
    from its checkpoint, or starts it again)."""

    folder: Path
    config: RunConfig
    state: str  # one of TRIAL_STATES


def scan_trials(root: Path) -> list[TrialState]:
    """Every trial under `root` whose config can be read back (``config.json``, or the result's
    ``config``) and matches its folder's run id, sorted by folder; other folders are skipped."""
    out = []
    base = Path(root) / TRIALS
    for folder in sorted(base.iterdir()) if base.is_dir() else []:
        config = _read_config(folder)
        if config is None:
            continue
        rid = run_id(config)
        if read_trial(folder, rid) is not None:
            state = "done"
        elif locks.is_held(folder / LOCK):
            state = "running"
        else:
            state = "partial"
        out.append(TrialState(folder, config, state))
    return out


def _read_config(folder: Path) -> RunConfig | None:
    for name, key in ((store.CONFIG, None), (store.RESULT, "config")):
        try:
            body: Any = store.read_json(folder / name)
            body = body[key] if key is not None else body
            config = from_dict(body, get_method(body["method"]["name"]).Hparams)
        except (OSError, ValueError, KeyError, TypeError, UserError):
            continue
        if run_id(config) == folder_run_id(folder / name):
            return config
    return None
