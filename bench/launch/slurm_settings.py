"""The ``[slurm]`` table of a grid and the command-line flags that override it, validated into
one typed ``SlurmSettings``."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from bench.errors import UserError
from bench.toml_lines import locate


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
    """'file:line' of `key` inside the grid's [slurm] table (just 'file' when it is not there)."""
    if not path or not Path(path).exists():
        return "[slurm]"
    line = locate(Path(path).read_text(), ("slurm", key), exact=True)
    return f"{path}:{line}" if line else f"{path}"


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


def check_gpus(settings: SlurmSettings, world_sizes: set[int]) -> None:
    """``train.world_size`` is the one source of truth for how many processes (and GPUs) a run
    uses; ``[slurm] gpus`` must agree with it: 0 (CPU jobs, gloo) or one GPU per process.
    Raises UserError on the first disagreement."""
    for world in sorted(world_sizes):
        if settings.gpus in (0, world) or (world == 1 and settings.gpus == 1):
            continue
        fix = (f"set gpus = {world} (or 0 to train its {world} processes on CPUs)" if world > 1
               else f"set train.world_size = {settings.gpus} to train each run on "
                    f"{settings.gpus} GPUs, or gpus = 1")
        raise UserError(f"[slurm] gpus = {settings.gpus} but train.world_size = {world}: a run "
                        f"uses one GPU per process; {fix}")
