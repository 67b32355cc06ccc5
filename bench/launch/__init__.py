"""Executing the runs of a grid: ``debug`` (in this process, one after another), ``local``
(submitit subprocesses, at most ``--jobs`` at a time) and ``slurm`` (submitit job arrays).

One module per job: ``plan`` (which runs train, in what order: the dependency graph, once),
``job`` (one run as a submitit job, checkpointing on signals), ``local`` (the debug and local
executors), ``slurm_settings`` (the ``[slurm]`` table), ``slurm`` (idempotent submission) and
``status``. Every job is a ``RunCell``: a submitit ``Checkpointable`` whose pickle holds only
paths and the run's config as plain data; the run's state lives in its run folder, whose lock
keeps it in one process at a time.
"""

from bench.launch.job import RunCell, StopOnSignal, Stopped
from bench.launch.local import default_jobs, default_local_jobs, run_debug, run_local
from bench.launch.plan import Plan, dependencies, is_done, plan
from bench.launch.slurm import (
    MANIFEST,
    Submission,
    cluster_max_array_size,
    queue,
    read_manifest,
    submit_slurm,
)
from bench.launch.slurm_settings import SLURM_KEYS, SlurmSettings, parse_time, slurm_settings
from bench.launch.status import STATES, RunStatus, status

EXECUTORS = ("local", "debug", "slurm")

__all__ = [
    "EXECUTORS", "MANIFEST", "SLURM_KEYS", "STATES", "Plan", "RunCell", "RunStatus",
    "SlurmSettings", "StopOnSignal", "Stopped", "Submission", "cluster_max_array_size",
    "default_jobs", "default_local_jobs", "dependencies", "is_done", "parse_time", "plan", "queue",
    "read_manifest", "run_debug", "run_local", "slurm_settings", "status", "submit_slurm",
]
