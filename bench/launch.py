"""Executing the runs of a grid: ``debug`` (in this process, one after another), ``local``
(submitit subprocesses, at most ``--jobs`` at a time) and ``slurm`` (submitit job arrays).

Every job is a ``RunCell``: a submitit ``Checkpointable`` whose pickle holds only paths and the
run's config as plain data; the run's state lives in its run folder. On SLURM's warning signal
(USR2, ``signal_delay_s`` before a time limit or a preemption) or on SIGTERM (``scancel``,
``scontrol requeue``) the run checkpoints at the next step boundary; after USR2 submitit's own
handler then decides between preemption and timeout, requeues the job and it resumes from the
checkpoint. Runs that reuse another run (EigenDamage on its dense run) are ordered after it:
sequentially here, and with a SLURM dependency (``afterany``: a failed dense run makes the
dependent fail with the reason rather than wait forever) on the cluster.

Submitting is idempotent: every submitted job is appended to ``<root>/slurm/jobs.jsonl`` (run id,
job id, log), and a run is submitted only when it is neither done nor held by a job that
``squeue`` still lists. ``status`` reads the run folders, that manifest and one ``squeue``; it
never waits on a job.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import submitit

from bench import store
from bench.config import from_dict, run_id, to_dict
from bench.errors import UserError
from bench.failures import ENVIRONMENT, retried_by_plain_rerun
from bench.grid import GridRun
from bench.run import run_folder, run_one
from bench.train import Interrupted, resolve_device, resolve_hparams
from methods import get_method

EXECUTORS = ("local", "debug", "slurm")
MANIFEST = Path("slurm") / "jobs.jsonl"
# squeue states in which a job still holds its run.
QUEUED_STATES = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD",
                 "SUSPENDED"}
RUNNING_STATES = {"RUNNING", "CONFIGURING", "COMPLETING", "RESIZING", "SIGNALING", "STAGE_OUT"}


# --- dependencies and order -----------------------------------------------------------------------

def dependencies(run: GridRun) -> list[GridRun]:
    """The runs `run` reuses (EigenDamage: the dense run of the same model, data, recipe, seed)."""
    config = resolve_hparams(run.config)
    method = get_method(config.method.name)(config, config.method.hparams)
    return [GridRun(resolve_hparams(dep), dep.method.name) for dep in method.dependencies()]


def is_done(run: GridRun, root: Path, retry_failed: bool = False) -> bool:
    """Has a result that a rerun keeps: ok, or failed in training (unless `retry_failed`); an
    error of the environment (bench.failures) is retried by any rerun."""
    result = store.read_result(run_folder(root, run.config))
    return result is not None and (result.get("status") == "ok" or not (
        retry_failed or retried_by_plain_rerun(result)))


def with_dependencies(runs: list[GridRun], root: Path, retry_failed: bool = False
                      ) -> list[GridRun]:
    """`runs` plus the runs they depend on that are not done yet (even when the grid or
    ``--only`` left them out), every run after the runs it depends on."""
    ordered: list[GridRun] = []
    seen: set[str] = set()

    def visit(run: GridRun, chain: tuple[str, ...]) -> None:
        if run.run_id in seen:
            return
        if run.run_id in chain:
            raise UserError(f"runs depend on each other in a cycle: {' -> '.join(chain)}")
        for dep in dependencies(run):
            if not is_done(dep, root, retry_failed):
                visit(dep, (*chain, run.run_id))
        seen.add(run.run_id)
        ordered.append(run)

    for run in runs:
        visit(run, ())
    return ordered


def order_runs(runs: list[GridRun]) -> list[GridRun]:
    """Runs that reuse another run go after it (stable otherwise)."""
    ids = {r.run_id for r in runs}
    ordered, placed = [], set()
    pending_runs = list(runs)
    while pending_runs:
        progress = False
        for run in list(pending_runs):
            deps = {d.run_id for d in dependencies(run)} & ids
            if deps <= placed:
                ordered.append(run)
                placed.add(run.run_id)
                pending_runs.remove(run)
                progress = True
        if not progress:  # a cycle cannot come from the method registry; keep every run anyway
            ordered.extend(pending_runs)
            break
    return ordered


def pending(runs: list[GridRun], root: Path, retry_failed: bool = False) -> list[GridRun]:
    """Runs without a result (or, with `retry_failed`, without a successful one)."""
    return [r for r in runs if not is_done(r, root, retry_failed)]


# --- the job --------------------------------------------------------------------------------------

class Stopped(RuntimeError):
    """A signal stopped the run after it saved a checkpoint; running it again resumes it."""


class _StopOnSignal:
    """Turns SLURM's warning signal and SIGTERM into a flag that the trainer polls at every
    step boundary (``should_stop``), instead of dying wherever the signal lands."""

    def __init__(self) -> None:
        self.usr = getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG)
        self.received: list[int] = []
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> _StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (self.usr, signal.SIGTERM):
                self.previous[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: object) -> None:
        print(f"sparsebench: got {signal.Signals(signum).name}; checkpointing at the next step",
              flush=True)
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
        print(f"sparsebench: run {rid} -> {run_folder(Path(self.root), cfg)}", flush=True)
        with _StopOnSignal() as stop:
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


# --- debug and local executors --------------------------------------------------------------------

def run_debug(
    runs: list[GridRun],
    root: Path,
    data_root: Path | None,
    retry_failed: bool = False,
    on_result: Callable[[GridRun, dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Every run in this process, one after another (breakpoints work)."""
    results = []
    for run in order_runs(runs):
        result = run_one(run.config, root, data_root, label=run.label,
                         retry_failed=retry_failed)
        results.append(result)
        if on_result is not None:
            on_result(run, result)
    return results


def default_jobs() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_local_jobs(runs: list[GridRun]) -> int:
    """Runs at once that do not oversubscribe the cores: each CPU run uses its config's
    ``cpu_threads`` intra-op threads."""
    threads = [r.config.train.cpu_threads for r in runs
               if resolve_device(r.config.train.device).type == "cpu"]
    return max(1, default_jobs() // max(threads, default=1))


def run_local(
    runs: list[GridRun],
    root: Path,
    data_root: Path | None,
    jobs: int | None = None,
    retry_failed: bool = False,
    on_result: Callable[[GridRun, dict[str, Any]], None] | None = None,
    poll_s: float = 0.2,
) -> list[dict[str, Any]]:
    """Each run in its own submitit subprocess, at most `jobs` at a time (submitit's local
    executor starts everything at once), a run only after the runs it depends on. By default as
    many at once as the cores hold: cores / the largest ``train.cpu_threads`` of the CPU runs."""
    jobs = jobs or default_local_jobs(runs)
    if jobs < 1:
        raise UserError(f"--jobs {jobs}: need at least 1")
    root = Path(root).resolve()
    executor = submitit.LocalExecutor(folder=root / "local" / "%j")
    # No wall-clock limit locally (submitit's default is 5 minutes).
    executor.update_parameters(timeout_min=60 * 24 * 365)
    cell = RunCell(str(root), str(Path(data_root).resolve()) if data_root else None,
                   retry_failed, threads=max(1, default_jobs() // jobs))
    todo = order_runs(runs)
    ids = {r.run_id for r in todo}
    finished: set[str] = set()
    active: dict[Any, GridRun] = {}
    results: list[dict[str, Any]] = []
    try:
        while todo or active:
            for run in list(todo):
                if len(active) >= jobs:
                    break
                deps = {d.run_id for d in dependencies(run)} & ids
                if deps <= finished:
                    active[executor.submit(cell, to_dict(run.config), run.label)] = run
                    todo.remove(run)
            for job in [j for j in active if j.done()]:
                run = active.pop(job)
                finished.add(run.run_id)
                # A process that died without a result (killed, out of memory) is the
                # machine's failure, not the method's; nothing is on disk, so a rerun retries it.
                result = store.read_result(run_folder(root, run.config)) or {
                    "status": "error", "error_kind": ENVIRONMENT, "run_id": run.run_id,
                    "error": f"the job ended without a result; log: {job.paths.stdout}",
                }
                results.append(result)
                if on_result is not None:
                    on_result(run, result)
            if active:
                time.sleep(poll_s)
    except BaseException:
        for job in active:
            job.cancel(check=False)
        raise
    return results


# --- SLURM settings -------------------------------------------------------------------------------

@dataclass(frozen=True)
class SlurmSettings:
    """The grid's ``[slurm]`` table, overridden by command-line flags."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    # Wall-clock limit per job in minutes (TOML/CLI also take "HH:MM:SS" or "D-HH:MM:SS").
    # Keep it above 10 minutes: submitit counts any signal in a shorter job as a timeout.
    time: int = 240
    gpus: int = 0
    cpus: int = 2
    mem: str | None = None
    constraint: str | None = None
    # Tasks of one array running at once.
    array_parallelism: int = 256
    # Tasks per array; 0 = the cluster's MaxArraySize (scontrol show config).
    max_array_size: int = 0
    # How many times a timed-out job is requeued (preemptions are always requeued).
    max_requeues: int = 20
    # Seconds between SLURM's warning signal (USR2) and the end of the job.
    signal_delay_s: int = 120
    # Shell lines run before the job (module load ..., source venv/bin/activate).
    setup: tuple[str, ...] = ()
    # Further sbatch options, e.g. {"mail-type" = "FAIL", "exclude" = "node12"}.
    extra: dict[str, str] = field(default_factory=dict)


SLURM_KEYS = tuple(f.name for f in fields(SlurmSettings))
_INT_KEYS = {"gpus": 0, "cpus": 1, "array_parallelism": 1, "max_array_size": 0,
             "max_requeues": 0, "signal_delay_s": 0}
_STR_KEYS = ("partition", "account", "qos", "mem", "constraint")


def parse_time(value: Any) -> int:
    """Minutes from an int or a SLURM time string ("90", "4:00:00", "1-12:00:00", "1-12")."""
    if isinstance(value, int) and not isinstance(value, bool):
        minutes = value
    elif isinstance(value, str):
        match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", value.strip())
        if not match:
            raise ValueError(f"{value!r} is not a time (minutes, HH:MM:SS or D-HH:MM:SS)")
        days, a, b, c = match.groups()
        if days is not None:  # D-HH[:MM[:SS]]
            minutes = int(days) * 1440 + int(a) * 60 + int(b or 0) + (int(c or 0) + 59) // 60
        elif b is None:  # MM
            minutes = int(a)
        elif c is None:  # MM:SS
            minutes = int(a) + (int(b) + 59) // 60
        else:  # HH:MM:SS
            minutes = int(a) * 60 + int(b) + (int(c) + 59) // 60
    else:
        raise ValueError(f"{value!r} is not a time (minutes, HH:MM:SS or D-HH:MM:SS)")
    if minutes < 1:
        raise ValueError(f"{value!r}: the time limit must be at least one minute")
    return minutes


def _line(path: str | None, key: str) -> str:
    """'file:line' of `key` inside the grid's [slurm] table."""
    if not path or not Path(path).exists():
        return "[slurm]"
    in_table = False
    for number, text in enumerate(Path(path).read_text().splitlines(), start=1):
        if re.match(r"\s*\[", text):
            in_table = re.match(r"\s*\[\s*slurm\s*\]", text) is not None
        elif in_table and re.match(rf"\s*\"?{re.escape(key)}\"?\s*=", text):
            return f"{path}:{number}"
    return f"{path}"


def slurm_settings(table: dict[str, Any] | None, overrides: dict[str, Any] | None = None,
                   source: str | None = None) -> SlurmSettings:
    """Validate the grid's ``[slurm]`` table (`source` is the grid file, for line numbers) and
    apply the command-line `overrides` (None values ignored)."""
    values: dict[str, Any] = {}
    for origin, items in (("grid", table or {}), ("cli", overrides or {})):
        for key, value in items.items():
            if value is None:
                continue
            where = _line(source, key) if origin == "grid" else f"--{key.replace('_', '-')}"
            if key not in SLURM_KEYS:
                raise UserError(f"{where}: unknown key {key!r} in [slurm]; "
                                f"valid: {', '.join(sorted(SLURM_KEYS))}")
            try:
                values[key] = _check(key, value)
            except ValueError as exc:
                raise UserError(f"{where}: [slurm] {key}: {exc}") from None
    settings = SlurmSettings(**values)
    if settings.signal_delay_s >= settings.time * 60:
        raise UserError(f"[slurm] signal_delay_s = {settings.signal_delay_s} must be shorter "
                        f"than the time limit ({settings.time} min)")
    return settings


def _check(key: str, value: Any) -> Any:
    if key == "time":
        return parse_time(value)
    if key in _INT_KEYS:
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < _INT_KEYS[key]:
            raise ValueError(f"{value!r} should be an integer >= {_INT_KEYS[key]}")
        return value
    if key in _STR_KEYS:
        if key == "mem" and isinstance(value, int) and not isinstance(value, bool):
            value = f"{value}M"
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{value!r} should be a non-empty string")
        if key == "mem" and not re.fullmatch(r"\d+[KMGT]?", value.strip()):
            raise ValueError(f"{value!r} should be a size like 16G or 4000M")
        return value.strip()
    if key == "setup":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ValueError("should be a list of shell lines")
        return tuple(value)
    # extra
    if not isinstance(value, dict):
        raise ValueError("should be a table of sbatch options, e.g. { mail-type = \"FAIL\" }")
    out = {}
    for name, v in value.items():
        if not re.fullmatch(r"[a-z][a-z0-9-]*", str(name)):
            raise ValueError(f"{name!r} is not an sbatch long option name (e.g. mail-type)")
        if isinstance(v, (dict, list)):
            raise ValueError(f"{name}: {v!r} should be a string, number or boolean")
        out[str(name)] = v
    return out


# --- SLURM queries --------------------------------------------------------------------------------

def _slurm(*args: str, timeout: float = 60) -> str:
    try:
        proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise UserError(f"SLURM is not reachable: {args[0]} is not installed here "
                        "(run on a SLURM login node, or use --executor local)") from None
    except subprocess.TimeoutExpired:
        raise UserError(f"SLURM is not reachable: {args[0]} did not answer in "
                        f"{timeout:.0f} s") from None
    if proc.returncode != 0:
        raise UserError(f"SLURM is not reachable: {' '.join(args[:2])} failed: "
                        f"{proc.stderr.strip() or proc.returncode}")
    return proc.stdout


def queue() -> dict[str, str]:
    """Job id (array tasks as ``<array>_<task>``) -> state, for this user's jobs in squeue."""
    user = os.environ.get("USER") or _whoami()
    out = _slurm("squeue", "--noheader", "--array", "--user", user, "--format", "%i %T")
    states = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2:
            states[parts[0]] = parts[1]
    return states


def _whoami() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


def cluster_max_array_size() -> int:
    """Tasks one array may hold: indices run from 0 to MaxArraySize - 1."""
    out = _slurm("scontrol", "show", "config")
    match = re.search(r"^MaxArraySize\s*=\s*(\d+)", out, re.MULTILINE)
    return int(match.group(1)) if match else 1001


# --- manifest -------------------------------------------------------------------------------------

def read_manifest(root: Path) -> dict[str, dict[str, Any]]:
    """Run id -> its latest submitted job."""
    path = Path(root) / MANIFEST
    latest: dict[str, dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash mid-write; the rest is fine
            latest[entry["run_id"]] = entry
    return latest


def _append_manifest(root: Path, entries: Iterable[dict[str, Any]]) -> None:
    path = Path(root) / MANIFEST
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries)
    with open(path, "a") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


# --- SLURM submission -----------------------------------------------------------------------------

@dataclass
class Submission:
    """What one ``submit_slurm`` call did."""

    submitted: list[tuple[GridRun, str]] = field(default_factory=list)  # (run, job id)
    done: list[GridRun] = field(default_factory=list)
    active: list[tuple[GridRun, str]] = field(default_factory=list)  # already queued/running
    arrays: list[str] = field(default_factory=list)  # array job ids, in submission order


def _executor(root: Path, settings: SlurmSettings, name: str, dependency: str | None):
    executor = submitit.SlurmExecutor(folder=root / "slurm" / "logs" / "%j",
                                      max_num_timeout=settings.max_requeues)
    params: dict[str, Any] = {
        "job_name": name,
        "time": settings.time,
        "cpus_per_task": settings.cpus,
        "array_parallelism": settings.array_parallelism,
        "signal_delay_s": settings.signal_delay_s,
        "stderr_to_stdout": True,
        # Jobs import the same harness as the submitting process, installed or not.
        "setup": [*settings.setup, f"export PYTHONPATH={shlex.quote(str(_code_root()))}"
                                   "${PYTHONPATH:+:$PYTHONPATH}"],
    }
    optional = {"partition": settings.partition, "account": settings.account,
                "qos": settings.qos, "mem": settings.mem, "constraint": settings.constraint,
                "dependency": dependency}
    params.update({k: v for k, v in optional.items() if v is not None})
    if settings.gpus:
        params["gpus_per_node"] = settings.gpus
    if settings.extra:
        params["additional_parameters"] = dict(settings.extra)
    executor.update_parameters(**params)
    return executor


def _code_root() -> Path:
    return Path(__file__).resolve().parent.parent


def submit_slurm(
    runs: list[GridRun],
    root: Path,
    data_root: Path | None,
    settings: SlurmSettings,
    retry_failed: bool = False,
    name: str = "sparsebench",
) -> Submission:
    """Submit every run that is neither done nor held by a queued or running job, as job arrays
    of at most ``max_array_size`` tasks; runs that reuse another run wait for its job."""
    root = Path(root).resolve()
    out = Submission()
    runs = with_dependencies(runs, root, retry_failed)
    manifest = read_manifest(root)
    known = {manifest[r.run_id]["job_id"] for r in runs if r.run_id in manifest}
    live = queue() if known else {}
    todo: list[GridRun] = []
    job_of: dict[str, str] = {}
    for run in runs:
        entry = manifest.get(run.run_id)
        if is_done(run, root, retry_failed):
            out.done.append(run)
        elif entry is not None and entry["job_id"] in live:
            out.active.append((run, entry["job_id"]))
            job_of[run.run_id] = entry["job_id"]
        else:
            todo.append(run)
    if not todo:
        return out

    chunk = settings.max_array_size or cluster_max_array_size()
    cell = RunCell(str(root), str(Path(data_root).resolve()) if data_root else None,
                   retry_failed, threads=settings.cpus)
    remaining = list(todo)
    while remaining:
        # Runs whose dependencies are all submitted (or done), grouped by the jobs they wait on.
        groups: dict[tuple[str, ...], list[GridRun]] = {}
        waiting = []
        todo_ids = {r.run_id for r in remaining}
        for run in remaining:
            deps = [d.run_id for d in dependencies(run)]
            if any(d in todo_ids for d in deps):
                waiting.append(run)
                continue
            key = tuple(sorted({job_of[d] for d in deps if d in job_of}))
            groups.setdefault(key, []).append(run)
        for dep_jobs, group in groups.items():
            dependency = "afterany:" + ":".join(dep_jobs) if dep_jobs else None
            executor = _executor(root, settings, name, dependency)
            for start in range(0, len(group), chunk):
                part = group[start:start + chunk]
                try:
                    jobs = executor.map_array(cell, [to_dict(r.config) for r in part],
                                              [r.label for r in part])
                except Exception as exc:  # sbatch's message is the useful part
                    raise UserError(f"sbatch refused the job array: "
                                    f"{str(exc).strip().splitlines()[-1]}") from None
                entries = []
                for run, job in zip(part, jobs, strict=True):
                    job_of[run.run_id] = job.job_id
                    out.submitted.append((run, job.job_id))
                    entries.append({
                        "run_id": run.run_id, "job_id": job.job_id,
                        "folder": str(run_folder(root, run.config)),
                        "log": str(job.paths.stdout), "grid": name,
                        "dependency": dependency,
                        "submitted": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    })
                out.arrays.append(jobs[0].job_id.split("_")[0])
                _append_manifest(root, entries)
        if not groups:  # unreachable with an acyclic registry; never loop forever
            raise UserError("runs depend on each other in a cycle")
        remaining = waiting
    return out


# --- status ---------------------------------------------------------------------------------------

STATES = ("done", "queued", "running", "failed", "partial", "missing")


@dataclass
class RunStatus:
    run: GridRun
    state: str  # one of STATES
    folder: Path
    job_id: str | None = None
    log: str | None = None  # the log to read first: the job's for a dead job, else the run's
    detail: str = ""


def status(runs: list[GridRun], root: Path) -> tuple[list[RunStatus], bool]:
    """The state of every run from its folder, the manifest and one squeue call (only when some
    run was submitted to SLURM). Returns the states and whether SLURM was consulted."""
    root = Path(root)
    manifest = read_manifest(root)
    entries = {r.run_id: manifest[r.run_id] for r in runs if r.run_id in manifest}
    # Ask squeue before reading results: a job that leaves the queue has written its result.
    live = queue() if entries else {}
    out = []
    for run in runs:
        folder = run_folder(root, run.config)
        entry = entries.get(run.run_id)
        job_id = entry["job_id"] if entry else None
        job_log = entry.get("log") if entry else None
        result = store.read_result(folder)
        if result is not None:
            ok = result.get("status") == "ok"
            retry = f" ({result.get('error_kind')} error; a rerun retries it)" \
                if retried_by_plain_rerun(result) else ""
            out.append(RunStatus(run, "done" if ok else "failed", folder, job_id,
                                 None if ok else str(folder / store.LOG),
                                 "" if ok else f"{result.get('error')}{retry}"))
        elif job_id is not None and job_id in live:
            state = "running" if live[job_id] in RUNNING_STATES else "queued"
            out.append(RunStatus(run, state, folder, job_id, job_log,
                                 "" if live[job_id] in ("RUNNING", "PENDING") else live[job_id]))
        elif job_id is not None:
            resume = " (a rerun resumes from its checkpoint)" \
                if (folder / store.CHECKPOINT).exists() else ""
            out.append(RunStatus(run, "failed", folder, job_id, job_log,
                                 f"job {job_id} ended without a result{resume}"))
        elif (folder / store.CHECKPOINT).exists():
            out.append(RunStatus(run, "partial", folder, None, str(folder / store.LOG)))
        else:
            out.append(RunStatus(run, "missing", folder))
    return out, bool(entries)
