"""The ``debug`` executor (every run in this process, one after another) and the ``local`` one
(each run in its own submitit subprocess, at most ``--jobs`` at a time, a run only after the runs
it depends on)."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import submitit

from bench import store
from bench.config import to_dict
from bench.errors import UserError
from bench.failures import ENVIRONMENT
from bench.grid import GridRun
from bench.launch.job import RunCell, StopOnSignal
from bench.launch.plan import Plan, plan
from bench.run import run_folder, run_one
from bench.train import Interrupted, resolve_device


def _as_plan(todo: Plan | list[GridRun], root: Path, retry_failed: bool) -> Plan:
    return todo if isinstance(todo, Plan) else plan(todo, root, retry_failed)


def run_debug(
    todo: Plan | list[GridRun],
    root: Path,
    data_root: Path | None,
    retry_failed: bool = False,
    on_result: Callable[[GridRun, dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Every run of the plan (or of `todo`'s plan) in this process, one after another
    (breakpoints work). Ctrl-C checkpoints the current run at its next step, then raises
    KeyboardInterrupt."""
    results = []
    for run in _as_plan(todo, root, retry_failed).order:
        with StopOnSignal(interrupt=True) as stop:
            try:
                result = run_one(run.config, root, data_root, label=run.label,
                                 retry_failed=retry_failed, should_stop=stop)
            except Interrupted:
                raise KeyboardInterrupt from None
        results.append(result)
        if on_result is not None:
            on_result(run, result)
    return results


def default_jobs() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_local_jobs(runs: list[GridRun]) -> int:
    """Runs at once that do not oversubscribe the cores: each CPU run uses its config's
    ``cpu_threads`` intra-op threads in each of its ``world_size`` processes."""
    threads = [r.config.train.cpu_threads * r.config.train.world_size for r in runs
               if resolve_device(r.config.train.device).type == "cpu"]
    return max(1, default_jobs() // max(threads, default=1))


# How long Ctrl-C waits for the running jobs to checkpoint (one step each) before killing them.
STOP_GRACE_S = 120.0


def run_local(
    todo: Plan | list[GridRun],
    root: Path,
    data_root: Path | None,
    jobs: int | None = None,
    retry_failed: bool = False,
    on_result: Callable[[GridRun, dict[str, Any]], None] | None = None,
    poll_s: float = 0.2,
) -> list[dict[str, Any]]:
    """Each run of the plan in its own submitit subprocess, at most `jobs` at a time
    (submitit's local executor starts everything at once), a run only after the runs it
    depends on. By default as many at once as the cores hold: cores / the largest
    ``train.cpu_threads`` of the CPU runs. On Ctrl-C every running job checkpoints at its next
    step (as on SIGTERM) before KeyboardInterrupt propagates; rerunning resumes them."""
    root = Path(root).resolve()
    planned = _as_plan(todo, root, retry_failed)
    jobs = jobs or default_local_jobs(planned.order)
    if jobs < 1:
        raise UserError(f"--jobs {jobs}: need at least 1")
    executor = submitit.LocalExecutor(folder=root / "local" / "%j")
    # No wall-clock limit locally (submitit's default is 5 minutes); one log per job, so the
    # path we print holds the job's errors too. submitit's controller process (between us and
    # the job) writes to our terminal and dies with a traceback on Ctrl-C, killing the job
    # before it checkpoints: it starts with SIGINT ignored (_submit), and we stop jobs with
    # SIGTERM, which it forwards. The job installs its own SIGINT handler.
    executor.update_parameters(timeout_min=60 * 24 * 365, stderr_to_stdout=True)
    cell = RunCell(str(root), str(Path(data_root).resolve()) if data_root else None,
                   retry_failed, threads=max(1, default_jobs() // jobs))
    waiting = list(planned.order)
    finished: set[str] = set()
    active: dict[Any, GridRun] = {}
    results: list[dict[str, Any]] = []
    try:
        while waiting or active:
            for run in list(waiting):
                if len(active) >= jobs:
                    break
                if set(planned.waits_for.get(run.run_id, ())) <= finished:
                    active[_submit(executor, cell, to_dict(run.config), run.label)] = run
                    waiting.remove(run)
            for job in [j for j in active if j.done()]:
                run = active.pop(job)
                finished.add(run.run_id)
                # A process that died without a result (killed, out of memory) is the
                # machine's failure, not the method's; nothing is on disk, so a rerun retries it.
                result = store.read_result(run_folder(root, run.config)) or {
                    "status": "error", "error_kind": ENVIRONMENT, "run_id": run.run_id,
                    "error": f"the job ended without a result ({_job_error(job)}); "
                             f"log: {job.paths.stdout}",
                }
                results.append(result)
                if on_result is not None:
                    on_result(run, result)
            if active:
                time.sleep(poll_s)
    except KeyboardInterrupt:
        _stop(active)
        raise
    except BaseException:
        for job in active:
            job.cancel(check=False)
        raise
    return results


def _submit(executor: submitit.LocalExecutor, *args: Any) -> Any:
    """``executor.submit(*args)`` with SIGINT ignored while submitit starts the job's
    controller, which inherits the ignored SIGINT through exec (from the main thread only:
    elsewhere signal dispositions cannot be changed, and a Ctrl-C reaches the main thread).
    Not with a shell's ``trap '' INT`` in front of it: the job's process would be that shell,
    our SIGTERM would end the shell alone, and the controller and the job would go on
    training, unsignalled, after Ctrl-C had reported the run interrupted. A Ctrl-C during the
    submission itself (milliseconds) is lost: press it again."""
    if threading.current_thread() is not threading.main_thread():
        return executor.submit(*args)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return executor.submit(*args)
    finally:
        # None: a handler not set from Python, which signal.signal cannot put back.
        signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)


def _job_error(job: Any) -> str:
    """The exception line a job's log ends with ("UserError: unknown method ..."), or how the
    job ended when it logged none."""
    try:
        text = Path(job.paths.stdout).read_text(errors="replace")
    except OSError:
        text = ""
    lines = [line.strip() for line in text.splitlines()
             if re.match(r"^[\w.]+(Error|Exception|Interrupt|Exit)\b", line.strip())]
    if lines:
        return lines[-1].rsplit(".", 1)[-1] if ": " not in lines[-1] else \
            lines[-1].split(": ", 1)[0].rsplit(".", 1)[-1] + ": " + lines[-1].split(": ", 1)[1]
    return f"job state {job.state}"


def _stop(active: dict[Any, GridRun]) -> None:
    """Ask every running job to checkpoint (SIGTERM to its controller, which forwards it) and
    wait for them; kill those that do not stop within STOP_GRACE_S."""
    for job in active:
        process = getattr(job, "_process", None)
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    while time.monotonic() < deadline and not all(j.done() for j in active):
        try:
            time.sleep(0.1)
        except KeyboardInterrupt:  # a second Ctrl-C: stop waiting
            break
    for job in active:
        process = getattr(job, "_process", None)
        if process is not None and process.poll() is None:
            process.kill()
