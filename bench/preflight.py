"""``sparsebench run GRID --preflight``: build every run of a grid and time a few training steps
of each distinct (model, dataset, method, recipe) before any GPU-hour is spent.

What it does, per grid:

1. Builds every run's network (``Method.build_model``, so thin dense solves its widths) on the
   dataset's real input shape and counts its parameters, prunable weights and dense MACs
   (``bench.flops.count``). A run that cannot be built is reported with its error.
2. Groups runs by their recipe: the config without seed and sparsity target, plus the built
   parameter count (thin dense's width changes with the target, so its step cost does too).
3. Trains one run of each group for ``steps`` steps in a fresh subprocess (so each peak-memory
   reading is its own) through the real ``Trainer``, on the dataset when it is on disk, else on
   synthetic data of the same shape and class count. Methods that start from another run
   (EigenDamage prunes the dense run) get that run's freshly initialised network in a scratch
   root. STR without a fixed weight decay would first calibrate it (several short trainings);
   preflight times it at ``calibration_high`` instead and says so.
4. Estimates each run's device time: per phase, epochs × training examples × (step time /
   measured batch), plus one evaluation per epoch at a third of that per example (a forward is
   about a third of a training step: RigL's 3× accounting, ``bench.flops``). Setup work
   (SNIP/GraSP scoring, K-FAC passes, calibration) is timed once on the preflight data and
   added unscaled. Iterative EigenDamage's later rounds train a smaller network than the first,
   so its estimate is an upper bound.

Step time is the median of the timed steps after the first (warm-up) step. Peak memory is the
device's peak allocation on a GPU, the worker process's peak resident set size on a CPU
(interpreter and torch included). With ``batch_cap`` the step is timed at a smaller batch and
the per-example time scaled up: an approximation, marked in the output, for CPUs that cannot
hold the real batch.
"""

from __future__ import annotations

import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import TensorDataset

from bench.config import RunConfig, canonical, from_dict, run_id, to_dict
from bench.data import load_dataset
from bench.data.base import DataBundle
from bench.errors import UserError
from bench.flops import count
from bench.grid import GridRun
from bench.models import ModelMaker
from methods import get_method
from methods.masking import Masking


@dataclass(frozen=True)
class DataShape:
    """A dataset's input shape (no batch dim), classes and split sizes."""

    input_shape: tuple[int, ...]
    num_classes: int
    train_size: int
    test_size: int


# The real datasets' shapes (bench/data loaders; split sizes of the official releases).
SHAPES = {
    "mnist": DataShape((1, 28, 28), 10, 60_000, 10_000),
    "cifar10": DataShape((3, 32, 32), 10, 50_000, 10_000),
    "cifar100": DataShape((3, 32, 32), 100, 50_000, 10_000),
    "tinyimagenet": DataShape((3, 64, 64), 200, 100_000, 10_000),
    "imagenet": DataShape((3, 224, 224), 1000, 1_281_167, 50_000),
    "synthetic": DataShape((3, 32, 32), 10, 512, 256),
}


def data_shape(config: RunConfig) -> DataShape:
    """The shape `config`'s data has, ``train_subset`` applied. MNIST-1D's follows its
    generator settings (40 points per example, 10 classes)."""
    d = config.data
    if d.name == "mnist1d":
        n_train = int(d.num_samples * d.train_split)
        shape = DataShape((40,), 10, n_train, d.num_samples - n_train)
    else:
        shape = SHAPES[d.name]
    if d.train_subset:
        shape = replace(shape, train_size=min(shape.train_size, d.train_subset))
    return shape


def synthetic_bundle(shape: DataShape, n_train: int) -> DataBundle:
    """Random inputs of the real shape; labels cycle through the classes so every class has
    ⌊n/C⌋ examples (GraSP fetches a fixed number per class)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn((n_train, *shape.input_shape), generator=g)
    y = torch.arange(n_train) % shape.num_classes
    n_test = min(shape.num_classes, 256)
    test = TensorDataset(torch.randn((n_test, *shape.input_shape), generator=g),
                         torch.arange(n_test) % shape.num_classes)
    return DataBundle(TensorDataset(x, y), test, shape.input_shape, shape.num_classes)


@dataclass
class Built:
    """One run's network as built: counts, or the error that stopped it."""

    run: GridRun
    params_total: int = 0
    params_prunable: int = 0
    macs_dense: int = 0
    error: str | None = None

    @property
    def nominal_nonzero(self) -> int:
        """Nonzero parameters the target asks for (learned-budget methods may differ)."""
        return self.params_total - round(self.run.config.sparsity.target * self.params_prunable)


def build(run: GridRun) -> Built:
    cfg = run.config
    out = Built(run)
    try:
        from bench.train import resolve_hparams

        cfg = resolve_hparams(cfg)
        cfg.validate()
        shape = data_shape(cfg)
        method = get_method(cfg.method.name)(cfg, cfg.method.hparams)
        torch.manual_seed(cfg.seed)
        make = ModelMaker(cfg.model.name, shape.num_classes, shape.input_shape)
        model = method.build_model(make, cfg.sparsity.target)
        Masking.attach(model, cfg.sparsity.layer_policy)
        counts = count(model, shape.input_shape)
        out.params_total, out.params_prunable = counts.params_total, counts.params_prunable
        out.macs_dense = counts.macs_dense
    except Exception as exc:  # noqa: BLE001 - every build error is reported, not raised
        out.error = f"{type(exc).__name__}: {exc}"
    return out


def recipe_key(built: Built) -> str:
    """Runs with equal keys train the same network with the same recipe: one is timed."""
    body = canonical(built.run.config)
    body.pop("seed", None)
    body.get("sparsity", {}).pop("target", None)
    body.setdefault("method", {})["name"] = built.run.config.method.name
    return json.dumps([body, built.params_total], sort_keys=True)


# --- the worker: one timed run in its own process ------------------------------------------


class _Enough(Exception):
    """Raised from the progress callback once the steps are timed."""


def _seed_dependencies(method, root: Path, shape: DataShape) -> None:
    """Put a freshly initialised, 'finished' network where a method looks for the runs it
    starts from (EigenDamage's dense run), so preflight times its real pruned network."""
    from bench import store
    from bench.run import MODEL_FILE, run_folder
    from bench.train import resolve_hparams

    for dep in method.dependencies():
        dep = resolve_hparams(dep)
        dep_method = get_method(dep.method.name)(dep, dep.method.hparams)
        torch.manual_seed(dep.seed)
        model = dep_method.build_model(
            ModelMaker(dep.model.name, shape.num_classes, shape.input_shape), 0.0)
        folder = run_folder(root, dep)
        folder.mkdir(parents=True, exist_ok=True)
        store.atomic_torch_save(model.state_dict(), folder / MODEL_FILE)
        # A result that passes the store's schema and vouches for the model (bench/store.py).
        from bench.config import run_id, to_dict

        store.atomic_write_json(folder / store.RESULT, {
            "status": "ok", "train_flops": 0.0, "preflight": True, "run_id": run_id(dep),
            "config": to_dict(dep), "top1": 0.0, "counts": {},
            "model_file": store.model_record(folder / MODEL_FILE)})


def measure(config: RunConfig, steps: int, batch_cap: int | None,
            data_root: Path | None) -> dict[str, Any]:
    """Train `config` for `steps` timed steps (plus one warm-up step); returns step time,
    setup time, peak memory, the data used and the method's phases. Runs in the caller's
    process: ``measure_in_subprocess`` isolates it."""
    from bench.run import RunHarness
    from bench.train import Trainer, intra_op_threads, resolve_device, resolve_hparams

    config = resolve_hparams(config)
    notes = []
    hp = config.method.hparams
    if getattr(hp, "weight_decay", 0.0) is None and hasattr(hp, "calibration_high"):
        hp = replace(hp, weight_decay=hp.calibration_high)
        config = replace(config, method=replace(config.method, hparams=hp))
        notes.append("weight-decay calibration not timed")
    batch = config.train.batch_size
    world = config.train.world_size
    if world > 1:
        # A multi-process run's step is one rank's share of the batch, in each rank at once.
        batch //= world
        notes.append(f"timed as one of {world} ranks (batch {batch}), without gradient "
                     "communication")
    if batch_cap and batch > batch_cap:
        notes.append(f"timed at batch {batch_cap}, scaled to {batch}")
        batch = batch_cap
    timed = replace(config, train=replace(config.train, batch_size=batch, world_size=1))
    shape = data_shape(config)
    try:
        data = load_dataset(config.data, data_root)
        source = "real"
    except UserError:
        per_class = getattr(hp, "samples_per_class", 0) * getattr(hp, "num_iters", 1)
        data = synthetic_bundle(shape, max(batch * (steps + 2), per_class * shape.num_classes))
        source = "synthetic"
    device = resolve_device(config.train.device)
    times: list[float] = []

    def progress(step: int, total: int) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter())
        if len(times) > steps:
            raise _Enough

    with tempfile.TemporaryDirectory(prefix="sparsebench-preflight-") as tmp:
        root = Path(tmp)
        method = get_method(config.method.name)(timed, hp)
        _seed_dependencies(method, root, shape)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        trainer = Trainer(method, root / "run", harness=RunHarness(root, data_root),
                          data_root=data_root, progress=progress, data=data)
        started = time.perf_counter()
        with intra_op_threads(config.train):
            try:
                trainer.run()
            except _Enough:
                pass
        phases = [{"name": p.name, "epochs": p.train.epochs} for p in trainer.method.phases()]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    step_s = statistics.median(gaps) if gaps else float("nan")
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {
        "step_s": step_s, "batch": batch, "setup_s": max(0.0, times[0] - started - step_s),
        "peak_bytes": int(peak), "memory": "allocated" if device.type == "cuda" else "rss",
        "device": str(device), "data": source, "train_size": len(data.train)
        if source == "real" else shape.train_size, "test_size": len(data.test)
        if source == "real" else shape.test_size, "phases": phases, "notes": notes,
    }


def measure_in_subprocess(config: RunConfig, steps: int, batch_cap: int | None,
                          data_root: Path | None) -> dict[str, Any]:
    """``measure`` in a fresh interpreter (same code, same environment): peak memory is this
    run's alone, and a crash is reported instead of ending the preflight."""
    job = {"config": to_dict(config), "steps": steps, "batch_cap": batch_cap,
           "data_root": str(data_root) if data_root else None}
    proc = subprocess.run([sys.executable, "-m", "bench.preflight"], input=json.dumps(job),
                          capture_output=True, text=True, env=os.environ.copy())
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {proc.returncode}: {tail}"}
    return json.loads(lines[-1])


def _worker() -> int:
    job = json.loads(sys.stdin.read())
    body = job["config"]
    method_cls = get_method(body["method"]["name"])
    config = from_dict(body, method_cls.Hparams)
    data_root = Path(job["data_root"]) if job["data_root"] else None
    try:
        out = measure(config, job["steps"], job["batch_cap"], data_root)
    except Exception as exc:  # noqa: BLE001 - reported to the parent as this run's error
        out = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(out))
    return 0


# --- the whole grid ------------------------------------------------------------------------


@dataclass
class RunEstimate:
    built: Built
    timing: dict[str, Any] = field(default_factory=dict)

    @property
    def error(self) -> str | None:
        return self.built.error or self.timing.get("error")

    @property
    def seconds(self) -> float:
        """Estimated device seconds of the whole run (see the module docstring)."""
        t = self.timing
        per_example = t["step_s"] / t["batch"]
        epochs = sum(p["epochs"] for p in t["phases"])
        train = epochs * t["train_size"] * per_example
        evaluate = epochs * t["test_size"] * per_example / 3
        return train + evaluate + t["setup_s"]


def preflight(runs: list[GridRun], steps: int, batch_cap: int | None, data_root: Path | None,
              log=lambda _line: None) -> list[RunEstimate]:
    """Build every run, time one run per recipe, return an estimate per run (in run order)."""
    if steps < 1:
        raise UserError(f"--preflight-steps {steps} must be a positive integer")
    if batch_cap is not None and batch_cap < 1:
        raise UserError(f"--preflight-batch {batch_cap} must be a positive integer")
    # The network does not depend on the seed's draws in size: build one per seed-less config.
    cache: dict[str, Built] = {}
    built = []
    for run in runs:
        body = canonical(run.config)
        body.pop("seed", None)
        key = json.dumps([body, run.config.method.name], sort_keys=True)
        if key not in cache:
            cache[key] = build(run)
        first = cache[key]
        built.append(replace(first, run=run))
    timings: dict[str, dict[str, Any]] = {}
    groups = {}
    for b in built:
        if b.error is None:
            groups.setdefault(recipe_key(b), b)
    for i, (key, b) in enumerate(groups.items(), start=1):
        cfg = b.run.config
        log(f"timing {i}/{len(groups)}: {cfg.model.name} {cfg.data.name} {b.run.entry} "
            f"s={cfg.sparsity.target:g}")
        timings[key] = measure_in_subprocess(cfg, steps, batch_cap, data_root)
    return [RunEstimate(b, timings.get(recipe_key(b), {}) if b.error is None else {})
            for b in built]


def _mb(n: int) -> str:
    return f"{n / 2**20:.0f}"


def format_report(estimates: list[RunEstimate], grid_name: str) -> list[str]:
    """One line per run, then the grid's total estimated device-hours."""
    head = (f"{'run':12s}  {'model':16s} {'dataset':12s} {'method':14s} {'s':>6s} {'seed':>4s} "
            f"{'params':>11s} {'nonzero≈':>11s} {'dense MACs':>14s} {'step ms':>9s} "
            f"{'peak MB':>8s} {'est h':>8s}  data")
    lines = [head]
    total, failed, notes = 0.0, 0, set()
    for e in estimates:
        cfg = e.built.run.config
        ident = (f"{run_id(cfg):12s}  {cfg.model.name:16s} {cfg.data.name:12s} "
                 f"{e.built.run.entry:14s} {cfg.sparsity.target:6g} {cfg.seed:4d}")
        if e.error:
            failed += 1
            lines.append(f"{ident}  FAILED: {e.error}")
            continue
        t = e.timing
        hours = e.seconds / 3600
        total += hours
        notes.update(t["notes"])
        lines.append(f"{ident} {e.built.params_total:11,d} {e.built.nominal_nonzero:11,d} "
                     f"{e.built.macs_dense:14,d} {1000 * t['step_s']:9.1f} "
                     f"{_mb(t['peak_bytes']):>8s} {hours:8.3f}  {t['data']} {t['device']}")
    devices = sorted({e.timing["device"] for e in estimates if not e.error})
    lines.append(f"grid {grid_name}: {len(estimates)} runs, {failed} failed preflight; "
                 f"estimated {total:.2f} device-hours on {', '.join(devices) or '-'} "
                 f"(step time x examples x epochs + evaluation + setup)")
    memory = sorted({e.timing["memory"] for e in estimates if not e.error})
    lines.append("note: peak MB is " + " / ".join(
        {"rss": "the worker's peak resident set (CPU)",
         "allocated": "torch's peak allocation (GPU)"}[m] for m in memory))
    lines += [f"note: {n}" for n in sorted(notes)]
    if any(not math.isfinite(e.seconds) for e in estimates if not e.error):
        lines.append("note: some runs had no timed step; raise --preflight-steps")
    return lines


if __name__ == "__main__":
    sys.exit(_worker())
