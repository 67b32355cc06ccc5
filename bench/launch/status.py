"""``status``: the state of every run from its folder, its lock, the SLURM manifest and one
``squeue`` call (only when some run of the selection was submitted and has no result yet), and
the trial trainings each run's method asks for (STR's calibration, ``bench.trial``); it never
waits on a job."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bench import locks, store
from bench.digests import Digests
from bench.failures import retried_by_plain_rerun
from bench.grid import GridRun
from bench.launch.slurm import RUNNING_STATES, queue, read_manifest
from bench.run import run_folder
from bench.train import make_method
from bench.trial import TrialState, scan_trials

STATES = ("done", "queued", "running", "failed", "partial", "corrupt", "missing")


@dataclass
class RunStatus:
    run: GridRun
    state: str  # one of STATES
    folder: Path
    job_id: str | None = None
    log: str | None = None  # the log to read first: the job's for a dead job, else the run's
    detail: str = ""
    # The trial trainings under ROOT/trials this run's method owns (``Method.owns_trial``).
    trials: list[TrialState] = field(default_factory=list)


def status(runs: list[GridRun], root: Path) -> tuple[list[RunStatus], bool]:
    """The state of every run from its folder, its lock, the manifest and one squeue call (only
    when some submitted run has no result yet: with every result in, a controller that is down
    does not matter). Returns the states and whether SLURM was consulted.

    States: done / failed (a valid result), corrupt (a result that does not parse or match the
    schema, or a done run whose model.pt is missing or does not match the size and SHA-256 its
    result recorded: a rerun retrains it; digests cached in the root, bench.digests),
    running (a process holds the run's lock, or squeue says so), queued, partial (a checkpoint,
    nobody training), missing. Each run also lists the trials its method owns: trials are
    shared (every seed and target of an STR grid cell uses the same ones), so one trial may be
    listed under several runs."""
    root = Path(root)
    manifest = read_manifest(root)
    entries = {r.run_id: manifest[r.run_id] for r in runs if r.run_id in manifest}
    unresolved = [rid for rid, e in entries.items()
                  if store.read_result(Path(e.get("folder", ""))) is None]
    # Ask squeue before reading results: a job that leaves the queue has written its result.
    live = queue() if unresolved else {}
    digests = Digests(root)
    out = []
    for run in runs:
        folder = run_folder(root, run.config)
        entry = entries.get(run.run_id)
        job_id = entry["job_id"] if entry else None
        job_log = entry.get("log") if entry else None
        result, problem = store.inspect_result(folder)
        training = locks.run_is_training(folder)
        if result is not None:
            ok = result.get("status") == "ok"
            damaged = store.model_problem(folder, result, sha256=digests.sha256)
            if damaged and not training:
                out.append(RunStatus(run, "corrupt", folder, job_id, str(folder / store.LOG),
                                     f"{damaged}; a rerun trains it again"))
            else:
                retry = f" ({result.get('error_kind')} error; a rerun retries it)" \
                    if retried_by_plain_rerun(result) else ""
                out.append(RunStatus(run, "done" if ok else "failed", folder, job_id,
                                     None if ok else str(folder / store.LOG),
                                     "" if ok else f"{result.get('error')}{retry}"))
        elif training:
            out.append(RunStatus(run, "running", folder, job_id, str(folder / store.LOG),
                                 "training now"))
        elif problem:
            out.append(RunStatus(run, "corrupt", folder, job_id, str(folder / store.RESULT),
                                 f"{store.RESULT} {problem}; a rerun trains it again"))
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
    trials = scan_trials(root)
    for st in out if trials else []:
        method = make_method(st.run.config)
        st.trials = [t for t in trials if method.owns_trial(t.config)]
    digests.save()
    return out, bool(unresolved)
