"""One run as a submitit job (``RunCell``), and the signal handling that turns SLURM's warning
signal, SIGTERM and SIGINT (Ctrl-C reaches every process of the terminal's foreground group)
into a checkpoint at the next step boundary instead of a death wherever the signal lands.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import submitit

from bench.config import from_dict, run_id
from bench.run import run_folder, run_one
from bench.train import Interrupted
from methods import get_method


class Stopped(RuntimeError):
    """A signal stopped the run after it saved a checkpoint; running it again resumes it."""


class StopOnSignal:
    """Turns SLURM's warning signal and SIGTERM (and, with `interrupt`, SIGINT: Ctrl-C, or
    submitit's cancel of a local job) into a flag that the trainer polls at every step boundary
    (``should_stop``), instead of dying wherever the signal lands. It says which signal it got
    (not for SIGINT, whose one line is the command's), unless `quiet`: a process whose
    launcher says why it stops."""

    def __init__(self, interrupt: bool = False, quiet: bool = False) -> None:
        self.usr = getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG)
        self.signals = (self.usr, signal.SIGTERM) + ((signal.SIGINT,) if interrupt else ())
        self.quiet = quiet
        self.received: list[int] = []
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self.previous[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: object) -> None:
        if signum != signal.SIGINT and not self.quiet:  # Ctrl-C's line is the command's
            print(f"sparsebench: got {signal.Signals(signum).name}; checkpointing at the next "
                  "step", flush=True)
        self.received.append(signum)

    def __call__(self) -> bool:
        return bool(self.received)

    def after_interrupt(self, run: str) -> None:
        """The run has checkpointed. After the warning signal, hand over to submitit's handler
        (checkpoint() -> requeue -> exit); after SIGTERM SLURM is already ending or requeuing
        the job, so just stop."""
        handler = self.previous.get(self.usr)
        if self.usr in self.received and callable(handler):
            handler(self.usr, None)
        names = ", ".join(sorted({signal.Signals(s).name for s in self.received}))
        raise Stopped(f"run {run} checkpointed after {names or 'a stop request'}; "
                      "running it again resumes from the checkpoint")


class RunCell(submitit.helpers.Checkpointable):
    """One run as a submitit job. Picklable and small: root, data root and flags; the config
    travels as plain data (``to_dict``) so a job does not depend on pickled classes."""

    def __init__(self, root: str, data_root: str | None = None, retry_failed: bool = False,
                 threads: int | None = None):
        self.root = root
        self.data_root = data_root
        self.retry_failed = retry_failed
        self.threads = threads

    def __call__(self, config: dict[str, Any], label: str | None = None) -> dict[str, Any]:
        import torch

        if self.threads:
            torch.set_num_threads(self.threads)
        cfg = from_dict(config, get_method(config["method"]["name"]).Hparams)
        rid = run_id(cfg)
        if cfg.train.world_size > 1 and submitit.JobEnvironment().num_tasks > 1:
            # One task of a multi-task SLURM job: the tasks are the run's ranks
            # (bench.launch.ddp); submitit says who is who and where rank 0 listens.
            from bench import distributed

            submitit.helpers.TorchDistributedEnvironment().export(overwrite=True)
            distributed.init_from_env(cfg.train.device)
            try:
                return self._run(cfg, rid, label)
            finally:
                import torch.distributed as dist

                dist.destroy_process_group()
        return self._run(cfg, rid, label)

    def _run(self, cfg: Any, rid: str, label: str | None) -> dict[str, Any]:
        print(f"sparsebench: run {rid} -> {run_folder(Path(self.root), cfg)}", flush=True)
        with StopOnSignal(interrupt=True) as stop:
            try:
                result = run_one(cfg, Path(self.root),
                                 Path(self.data_root) if self.data_root else None,
                                 label=label, retry_failed=self.retry_failed, should_stop=stop)
            except Interrupted:
                stop.after_interrupt(rid)
        print(f"sparsebench: run {rid} {result['status']}"
              + (f": {result['error']}" if result.get("error") else ""), flush=True)
        return {"run_id": rid, "status": result["status"], "error": result.get("error")}

    def checkpoint(self, config: dict[str, Any],
                   label: str | None = None) -> submitit.helpers.DelayedSubmission:
        """Requeue with the same arguments: the state is in the run folder, not in `self`."""
        return submitit.helpers.DelayedSubmission(self, config, label)
