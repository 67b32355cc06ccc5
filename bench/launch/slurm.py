"""Submitting runs to SLURM as job arrays, idempotently.

Every submitted job is appended to ``<root>/slurm/jobs.jsonl`` (run id, job id, log), and a run
is submitted only when it is neither done nor held by a job that ``squeue`` still lists. One
launcher at a time submits for a root (``<root>/slurm/.submit.lock``), so two launchers started
at once never submit the same run twice. Runs that reuse another run wait for its job with an
``afterany`` dependency (a failed dense run makes the dependent fail with the reason rather than
wait forever).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit

from bench import locks
from bench.config import to_dict
from bench.errors import UserError
from bench.grid import GridRun
from bench.launch.job import RunCell
from bench.launch.plan import plan
from bench.launch.slurm_settings import SlurmSettings
from bench.run import run_folder

MANIFEST = Path("slurm") / "jobs.jsonl"
# squeue states in which a job still holds its run.
QUEUED_STATES = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD",
                 "SUSPENDED"}
RUNNING_STATES = {"RUNNING", "CONFIGURING", "COMPLETING", "RESIZING", "SIGNALING", "STAGE_OUT"}


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
        # One line: the last line the tool printed says why (scontrol ends with "fatal: ...").
        lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
        raise UserError(f"SLURM is not reachable: {' '.join(args[:2])} failed: "
                        f"{lines[-1] if lines else f'exit status {proc.returncode}'}")
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
    added: list[GridRun] = field(default_factory=list)  # dependencies the selection left out
    notes: list[str] = field(default_factory=list)  # one line each, for the user
    active: list[tuple[GridRun, str]] = field(default_factory=list)  # already queued/running
    arrays: list[str] = field(default_factory=list)  # array job ids, in submission order


def _executor(root: Path, settings: SlurmSettings, name: str, dependency: str | None,
              world_size: int = 1):
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
    if world_size > 1:
        # One task per rank (and per GPU: check_gpus), on one node; RunCell forms the group.
        params["ntasks_per_node"] = world_size
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
    """Submit every run of the plan that is not held by a queued or running job, as job arrays
    of at most ``max_array_size`` tasks (capped at the cluster's MaxArraySize); runs that reuse
    another run wait for its job. One launcher per root at a time. ``squeue`` and ``scontrol``
    are asked only when an answer is needed: a grid whose runs are all done submits nothing
    without reaching the controller."""
    root = Path(root).resolve()
    with locks.hold(root / locks.SUBMIT_LOCK,
                    f"another launcher is submitting runs under {root}; waiting for it"):
        return _submit(runs, root, data_root, settings, retry_failed, name)


def _submit(runs, root, data_root, settings, retry_failed, name) -> Submission:
    planned = plan(runs, root, retry_failed)
    out = Submission(done=list(planned.done), added=list(planned.added))
    manifest = read_manifest(root)
    known = {manifest[r.run_id]["job_id"] for r in planned.order if r.run_id in manifest}
    live = queue() if known else {}
    todo: list[GridRun] = []
    job_of: dict[str, str] = {}
    for run in planned.order:
        entry = manifest.get(run.run_id)
        if entry is not None and entry["job_id"] in live:
            out.active.append((run, entry["job_id"]))
            job_of[run.run_id] = entry["job_id"]
        else:
            todo.append(run)
    if not todo:
        return out

    cluster_max = cluster_max_array_size()
    chunk = settings.max_array_size or cluster_max
    if chunk > cluster_max:
        out.notes.append(f"--max-array-size {chunk} is above the cluster's MaxArraySize "
                         f"({cluster_max}): arrays of at most {cluster_max} tasks")
        chunk = cluster_max
    cell = RunCell(str(root), str(Path(data_root).resolve()) if data_root else None,
                   retry_failed, threads=settings.cpus)
    # The plan's order puts every run after the runs it waits for, so grouping consecutive
    # ready runs by the jobs they wait on submits dependencies first.
    remaining = list(todo)
    while remaining:
        groups: dict[tuple[str, ...], list[GridRun]] = {}
        waiting = []
        todo_ids = {r.run_id for r in remaining}
        for run in remaining:
            deps = planned.waits_for.get(run.run_id, [])
            if any(d in todo_ids for d in deps):
                waiting.append(run)
                continue
            key = (run.config.train.world_size,
                   *sorted({job_of[d] for d in deps if d in job_of}))
            groups.setdefault(key, []).append(run)
        for (world_size, *dep_jobs), group in groups.items():
            dependency = "afterany:" + ":".join(dep_jobs) if dep_jobs else None
            executor = _executor(root, settings, name, dependency, world_size)
            for start in range(0, len(group), chunk):
                part = group[start:start + chunk]
                try:
                    # submitit prints sbatch's stderr itself before raising; the reason is
                    # reported once, in our line.
                    with contextlib.redirect_stderr(io.StringIO()):
                        jobs = executor.map_array(cell, [to_dict(r.config) for r in part],
                                                  [r.label for r in part])
                except Exception as exc:  # sbatch's own message is the useful part
                    raise UserError(f"sbatch refused the job array: {_sbatch_reason(exc)}"
                                    ) from None
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
        remaining = waiting
    return out


def _sbatch_reason(exc: Exception) -> str:
    """sbatch's first error line (the specific reason; the next ones generalise it) out of
    submitit's exception text."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if "sbatch: error:" in line:
            return line.split("sbatch: error:", 1)[1].strip()
    return lines[-1] if lines else type(exc).__name__
