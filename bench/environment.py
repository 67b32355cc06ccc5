"""What a grid needs from this machine, checked for the whole grid before any run starts: the
output root (a writable folder, its ``runs/`` etc. folders), the data of every run (present and
readable: ``bench.data.check_dataset``), that every run's model takes its data's examples
(``bench.fit``) and every run's device.

Everything here reads; nothing is created. A problem is one ``UserError`` line, so ``sparsebench
run`` exits 2 with nothing written, instead of recording each run as failed.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from bench import store
from bench.data import check_dataset
from bench.errors import DataNotFound, UserError
from bench.fit import check_model_fits, check_subset

# Folders the harness creates under a root; a file of that name would break every run.
ROOT_FOLDERS = ("runs", "local", "slurm", "report", "calibration")


def check_root(root: Path, out: Path | None = None) -> None:
    """`root` is, or can be created as, a writable folder, and none of the folders the harness
    writes under it (or `out`, the report folder) is a file."""
    root = Path(root)
    if root.exists():
        if not root.is_dir():
            raise UserError(f"output root {root} is a file, not a folder; pass --root DIR or set "
                            "SPARSEBENCH_ROOT")
        if not store.writable_folder(root):
            raise UserError(f"output root {root} is not writable; pass --root DIR or set "
                            "SPARSEBENCH_ROOT")
        for name in ROOT_FOLDERS:
            sub = root / name
            if sub.exists() and not sub.is_dir():
                raise UserError(f"{sub} is a file, but {root} keeps its {name} there in a "
                                "folder: move the file away")
    else:
        parent = store.creation_parent(root)
        if not store.writable_folder(parent):
            raise UserError(f"output root {root} is not writable (cannot create it under "
                            f"{parent}); pass --root DIR or set SPARSEBENCH_ROOT")
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise UserError(f"report folder {out} is a file; pass --out DIR")


def check_device(name: str) -> None:
    """The device `name` (TrainConfig.device, already of a valid form) exists on this machine."""
    import torch

    if name in ("auto", "cpu"):
        return
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            build = "a CPU-only torch build" if torch.version.cuda is None else "no CUDA device"
            raise UserError(f'train.device = "{name}": this machine has no CUDA device '
                            f'({build}); use device = "auto" or "cpu"')
        index = device.index or 0
        if index >= count:
            raise UserError(f'train.device = "{name}": this machine has {count} CUDA '
                            f"device{'s' if count > 1 else ''} (cuda:0 to cuda:{count - 1})")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise UserError(f'train.device = "{name}": MPS is not available on this machine; '
                            'use device = "auto" or "cpu"')


def check_world_size(name: str, world_size: int) -> None:
    """A multi-process run started here (bench.launch.ddp) puts rank r on ``cuda:r`` of a CUDA
    run: this machine must have `world_size` CUDA devices. CPU ranks need nothing; MPS has no
    process-group backend for DDP."""
    import torch

    device = name if name != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device.startswith("cuda") and world_size > count:
        raise UserError(f"train.world_size = {world_size} trains on one CUDA device per "
                        f"process, and this machine has {count}")
    if device == "mps":
        raise UserError(f"train.world_size = {world_size} needs CUDA devices or CPUs; "
                        'DDP does not run on MPS (use device = "cpu")')


def check_runs(runs: Iterable, data_root: Path | None, *, devices: bool = True,
               missing_data_ok: bool = False) -> None:
    """Data and devices of every run (``GridRun`` or ``RunConfig``), each distinct setting once.
    `devices` False skips the device check (SLURM: the runs train on other machines);
    `missing_data_ok` lets a dataset be absent (``DataNotFound``; preflight times on synthetic
    data then), not unreadable."""
    data_seen, devices_seen, fits_seen = set(), set(), set()
    for run in runs:
        config = getattr(run, "config", run)
        if config.data not in data_seen:
            data_seen.add(config.data)
            try:
                check_dataset(config.data, data_root)
            except DataNotFound:
                if not missing_data_ok:
                    raise
            check_subset(config)
        if (config.model, config.data) not in fits_seen:
            fits_seen.add((config.model, config.data))
            check_model_fits(config)
        if devices and config.train.device not in devices_seen:
            devices_seen.add(config.train.device)
            check_device(config.train.device)
        if devices and config.train.world_size > 1:
            check_world_size(config.train.device, config.train.world_size)
