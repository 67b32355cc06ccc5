"""``sparsebench run GRID --preflight``: build every run of a grid and time a few training steps
of each distinct (model, dataset, method, recipe) before any GPU-hour is spent.

What it does, per grid:

1. Builds every run's network (``Method.build_model``, so thin dense solves its widths) on the
   dataset's real input shape and counts its parameters, prunable weights and dense MACs
   (``bench.flops.count``), once per distinct network (``build_key``). A run that cannot be
   built is reported with its error. Runs the selection reuses but left out (EigenDamage's
   dense run, ``bench.launch.plan.dependencies``) are added, marked "(reused)", and counted.
2. Groups runs by their per-step cost (``recipe_key``): the config without the fields listed
   in ``COST_NEUTRAL`` / ``COST_NEUTRAL_HPARAMS`` (seed, epochs, learning-rate schedule,
   weight decay, STR's s_init, the target for methods that compute densely at every target),
   plus the built parameter count (thin dense's width follows the target). The rest of the
   config stays in the key: batch size, model, dataset, method and its other hparams.
3. Times one run of each group for ``steps`` steps in a fresh subprocess (so each peak-memory
   reading is its own) through the real ``Trainer``, on the dataset when it is on disk, else on
   synthetic data of the same shape and class count. Methods that start from another run
   (EigenDamage prunes the dense run) get that run's freshly initialised network in a scratch
   root. The setup before the first step is timed, and its data passes apart from the rest
   (``PassRecorder``). STR without a fixed weight decay is timed at ``calibration_high``.
4. Estimates each run's device time from its own phases (``RunEstimate.parts``): epochs ×
   training examples × (step time / timed batch), one evaluation per epoch at a third of that
   per example (a forward is about a third of a training step: RigL's 3× accounting,
   ``bench.flops``), and the setup: SNIP/GraSP scoring timed at one repeat and multiplied by
   the run's repeats (``SCORING_REPEATS``, an upper bound); EigenDamage's K-FAC pass scaled
   from the preflight's examples to the training set, once per round, plus its BatchNorm
   refresh passes. Iterative EigenDamage's later
   rounds train a smaller network than the first, so its estimate is an upper bound. STR's
   calibration trials (each the run's full recipe) are estimated per grid cell at their upper
   bound (``TrialEstimate``).

Step time is the median of the timed steps after the first (warm-up) step. Peak memory is the
device's peak allocation on a GPU, the worker process's peak resident set size on a CPU
(interpreter and torch included). With ``batch_cap`` the step is timed at a smaller batch and
the per-example time scaled up: an approximation (per-example cost usually falls with the
batch on a GPU, so this overestimates there), said in the output.
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
from bench.errors import DataNotFound, UserError
from bench.flops import count
from bench.grid import GridRun
from bench.models import ModelMaker
from bench.train import make_method, resolve_hparams
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
    generator settings (40 points per example, 10 classes); the synthetic set is generated
    with ``train_subset`` examples (512 without it, bench/data/synthetic.py), a file dataset
    is cut to them."""
    d = config.data
    if d.name == "mnist1d":
        n_train = int(d.num_samples * d.train_split)
        shape = DataShape((40,), 10, n_train, d.num_samples - n_train)
    else:
        shape = SHAPES[d.name]
    if d.train_subset:
        shape = replace(shape, train_size=d.train_subset if d.name == "synthetic"
                        else min(shape.train_size, d.train_subset))
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


# Batches of synthetic data held at most (beyond what the setup's scoring reads): a longer
# timing cycles through them epoch by epoch, so --preflight-steps 100000 does not ask for
# 100,002 batches of memory (31 GB for LeNet-300-100 at batch 100). A step that follows an
# epoch's evaluation is slower; one in 8 at most, so the median step is not.
SYNTHETIC_BATCHES = 8


def synthetic_size(batch: int, steps: int, scoring: int) -> int:
    """Training examples of the synthetic set: the timed steps plus the warm-up and one spare
    batch, at most ``SYNTHETIC_BATCHES`` batches, and at least the `scoring` examples the
    setup reads (GraSP's examples of every class)."""
    return max(min(batch * (steps + 2), batch * SYNTHETIC_BATCHES), scoring)


@dataclass
class Built:
    """One run's network as built: counts, or the error that stopped it."""

    run: GridRun
    params_total: int = 0
    params_prunable: int = 0
    macs_dense: int = 0
    has_batchnorm: bool = False
    error: str | None = None

    @property
    def nominal_nonzero(self) -> int:
        """Nonzero parameters the target asks for (learned-budget methods may differ)."""
        return self.params_total - round(self.run.config.sparsity.target * self.params_prunable)


def build_key(config: RunConfig) -> str:
    """Runs with equal keys build the same network, so one is built and counted: its size does
    not depend on the seed's draws, and only a method that builds its own network
    (``Method.build_model`` overridden: thin dense's widths) makes it depend on the method and
    target. The layer policy decides which weights are prunable."""
    from methods.base import Method

    try:
        config = resolve_hparams(config)
        own = type(make_method(config)).build_model is not Method.build_model
    except Exception:  # noqa: BLE001 - build() reports the error, once per config
        own = True
    body = canonical(config) if own else {
        "data": canonical(config.data), "model": canonical(config.model),
        "policy": config.sparsity.layer_policy}
    if own:
        body.pop("seed", None)
        body.setdefault("method", {})["name"] = config.method.name
    return json.dumps(body, sort_keys=True)


def build(run: GridRun) -> Built:
    cfg = run.config
    out = Built(run)
    try:
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
        out.has_batchnorm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                                for m in model.modules())
    except Exception as exc:  # noqa: BLE001 - every build error is reported, not raised
        out.error = f"{type(exc).__name__}: {exc}"
    return out


# What changes no training step's cost, and why (the timing key leaves these out, so the runs
# that differ only in them share one timed recipe; each run's own values still set its epochs).
# Everything else in the config stays in the key: batch size (the step's work), model and width
# (thin dense's solved widths enter through the built parameter count), dataset (input shape
# and classifier), method and its other hparams (rewiring periods, scoring examples, rounds),
# optimizer kind, momentum, Nesterov, label smoothing, augmentation, precision and device.
COST_NEUTRAL = {
    "seed": "other random numbers through the same operations",
    "train.epochs": "how many steps, not what one costs (each run's epochs are counted)",
    "train.lr": "a coefficient of the same update",
    "train.lr_schedule": "the learning rate's value per step, not the step's work",
    "train.milestones": "the learning rate's value per step, not the step's work",
    "train.gamma": "the learning rate's value per step, not the step's work",
    "train.warmup_epochs": "the learning rate's value per step, not the step's work",
    "train.schedule_unit": "the learning rate's value per step, not the step's work",
    "train.weight_decay": "a coefficient of the same update (0 skips one elementwise add per "
                          "parameter, small beside the forward and backward)",
    "data.train_subset": "how many examples an epoch has (counted per run), not their cost",
    "sparsity.target": "masked methods compute densely at every target (thin dense's target "
                       "enters through its built size; a method that rebuilds its network "
                       "during training, EigenDamage, keeps its target in the key)",
}
# Method hparams of the same kind, per method name.
COST_NEUTRAL_HPARAMS = {
    # s_init: the thresholds' starting value; weight_decay: a coefficient (None calibrates it
    # with trial trainings, counted separately); calibration_*: the trials' search settings.
    "str": ("weight_decay", "s_init", "calibration_low", "calibration_high",
            "calibration_rel_tol", "calibration_max_runs"),
    # The fine-tuning recipe's values and length (each run's epochs are counted).
    "eigendamage": ("finetune_epochs", "finetune_lr", "finetune_weight_decay", "lr_drops",
                    "lr_gamma"),
}
# Methods whose setup scores the weights on examples in identical repeats, and the hparam
# that counts the repeats: GraSP fetches ``samples_per_class`` examples of every class
# ``num_iters`` times (methods/grasp.py), SNIP averages over ``num_batches`` mini-batches
# (methods/snip.py). Each repeat costs the same forward and backward passes, so preflight times
# the setup at one repeat and multiplies the measured setup by the run's count
# (``scoring_repeats``): an upper bound, the setup's fixed work (copying the network,
# thresholding) is multiplied too. ``samples_per_class`` stays as it is: whether the data has
# that many examples of every class is what a run needs, and preflight must find out. Why:
# GraSP's reference Tiny-ImageNet setting scores 10 repeats of 200 examples with a double
# backward, 22 minutes of one CPU thread for VGG-19 when timed in full.
SCORING_REPEATS = {"grasp": ("num_iters",), "snip": ("num_batches",)}


def rebuilds_network(config: RunConfig) -> bool:
    """Whether the method replaces the network during training (``Method.start_phase``
    overridden: EigenDamage's pruned network), so the step cost depends on the target."""
    from methods.base import Method

    return type(make_method(config)).start_phase is not Method.start_phase


def recipe_key(built: Built) -> str:
    """Runs with equal keys cost the same per training step: one of them is timed. The key is
    the config without the ``COST_NEUTRAL`` fields and ``COST_NEUTRAL_HPARAMS``, plus the built
    network's parameter count (thin dense's width follows the target)."""
    cfg = built.run.config
    body = canonical(cfg)
    for path in COST_NEUTRAL:
        if path == "sparsity.target" and rebuilds_network(cfg):
            continue
        *parents, leaf = path.split(".")
        node = body
        for part in parents:
            node = node.get(part, {})
        node.pop(leaf, None)
    hparams = body.get("method", {}).get("hparams")
    if isinstance(hparams, dict):
        # scoring repeats are timed at 1 and scaled per run (``scoring_repeats``)
        for name in (*COST_NEUTRAL_HPARAMS.get(cfg.method.name, ()),
                     *SCORING_REPEATS.get(cfg.method.name, ())):
            hparams.pop(name, None)
    body.setdefault("method", {})["name"] = cfg.method.name
    return json.dumps([_without_empty(body), built.params_total], sort_keys=True)


def _without_empty(node: Any) -> Any:
    """`node` without the tables the removals emptied (an emptied table and an absent one are
    the same config)."""
    if not isinstance(node, dict):
        return node
    out = {k: _without_empty(v) for k, v in node.items()}
    return {k: v for k, v in out.items() if v != {}}


def scoring_repeats(config: RunConfig) -> tuple[RunConfig, int]:
    """`config` with its ``SCORING_REPEATS`` hparams at 1, and their product in `config`: the
    factor its timed setup is multiplied by (1, and `config` unchanged, for other methods)."""
    config = resolve_hparams(config)
    names = SCORING_REPEATS.get(config.method.name, ())
    hp = config.method.hparams
    factor = math.prod(getattr(hp, name) for name in names)
    if factor == 1:
        return config, 1
    hp = replace(hp, **{name: 1 for name in names})
    return replace(config, method=replace(config.method, hparams=hp)), factor


def fixed_weight_decay(config: RunConfig) -> tuple[RunConfig, bool]:
    """`config` with STR's calibrated weight decay (hparam None) fixed at ``calibration_high``,
    and whether it calibrates: its trial trainings are estimated separately (``TrialEstimate``),
    its own steps cost the same at any weight decay."""
    config = resolve_hparams(config)
    hp = config.method.hparams
    if getattr(hp, "weight_decay", 0.0) is None and hasattr(hp, "calibration_high"):
        hp = replace(hp, weight_decay=hp.calibration_high)
        return (replace(config, method=replace(config.method, hparams=hp)),
                config.sparsity.target > 0.0)
    return config, False


def planned_phases(config: RunConfig) -> list[tuple[str, int]]:
    """(name, epochs) of each phase `config` trains (``Method.phases``). STR chooses its weight
    decay in setup and only then knows its phase: it is fixed first (its epochs do not depend
    on it)."""
    config, _ = fixed_weight_decay(config)
    method = make_method(config)
    choose = getattr(method, "choose_weight_decay", None)
    if choose is not None:
        choose(None)  # a fixed weight decay returns before it reads the context
    return [(p.name, p.train.epochs) for p in method.phases()]


def setup_data_passes(config: RunConfig, has_batchnorm: bool) -> tuple[int, int]:
    """(full training-data passes with backward, forward-only passes) a run's setup makes over
    the whole training set, beyond its training steps. EigenDamage with ``fisher_batches`` 0:
    one K-FAC statistics pass per round, and with ``stabilize_bn`` on a network with
    BatchNorm one refresh pass before every later round and after the last
    (methods/eigendamage/method.py). Other
    methods' setup reads a fixed number of examples (SNIP, GraSP): its measured time is used,
    multiplied by ``scoring_repeats``."""
    config = resolve_hparams(config)
    hp = config.method.hparams
    if config.method.name != "eigendamage":
        return 0, 0
    rounds = hp.rounds if hp.mode == "iterative" else 1
    return ((rounds if hp.fisher_batches == 0 else 0),
            (rounds if hp.stabilize_bn and has_batchnorm else 0))


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


class PassRecorder:
    """Times how long the consumer of each ``DataBundle.batches`` iterator works on its batches
    (from one yield to the next request), so the setup's data passes (EigenDamage's K-FAC
    statistics) are measured apart from its fixed work (eigendecompositions, rebuilding)."""

    def __init__(self) -> None:
        self.busy_s = 0.0
        self.examples = 0
        self.active = True  # switched off at the first training step

    def wrap(self, batches):
        for x, y in batches:
            if not self.active:
                yield x, y
                continue
            started = time.perf_counter()
            yield x, y
            if self.active:  # not the batch of the first training step
                self.busy_s += time.perf_counter() - started
                self.examples += len(y)


@dataclass
class RecordedBundle(DataBundle):
    """A ``DataBundle`` whose batch iterators report to `recorder` (kept through ``to``)."""

    recorder: PassRecorder | None = None

    def to(self, device: torch.device) -> RecordedBundle:
        moved = super().to(device)
        return RecordedBundle(moved.train, moved.test, moved.input_shape, moved.num_classes,
                              moved.batch_transform, recorder=self.recorder)

    def batches(self, *args, **kwargs):
        inner = super().batches(*args, **kwargs)
        return self.recorder.wrap(inner) if self.recorder is not None else inner


def measure(config: RunConfig, steps: int, batch_cap: int | None,
            data_root: Path | None) -> dict[str, Any]:
    """Train `config` for `steps` timed steps (plus one warm-up step); returns the median step
    time ``step_s`` (s) at ``batch`` examples, the setup time before the first step
    ``setup_s`` (s) and the part of it spent on data passes (``pass_s`` over
    ``pass_examples``), peak memory, the data used. Runs in the caller's process:
    ``measure_in_subprocess`` isolates it."""
    from bench.run import RunHarness
    from bench.train import Trainer, intra_op_threads, resolve_device

    config, calibrates = fixed_weight_decay(config)
    hp = config.method.hparams
    notes = ["weight-decay calibration timed at calibration_high"] if calibrates else []
    batch = config.train.batch_size
    world = config.train.world_size
    if world > 1:
        # A multi-process run's step is one rank's share of the batch, in each rank at once.
        batch //= world
        notes.append(f"timed as one of {world} ranks (batch {batch}), without gradient "
                     "communication")
    if batch_cap and batch > batch_cap:
        notes.append(f"timed at batch {batch_cap}, scaled per example to {batch}")
        batch = batch_cap
    timed = replace(config, train=replace(config.train, batch_size=batch, world_size=1))
    shape = data_shape(config)
    try:
        data = load_dataset(config.data, data_root)
        source = "real"
    except DataNotFound:  # absent: its shape is known; present but unreadable: the run fails
        scoring = getattr(hp, "samples_per_class", 0) * getattr(hp, "num_iters", 1) * \
            shape.num_classes
        data = synthetic_bundle(shape, synthetic_size(batch, steps, scoring))
        source = "synthetic"
    recorder = PassRecorder()
    data = RecordedBundle(data.train, data.test, data.input_shape, data.num_classes,
                          data.batch_transform, recorder=recorder)
    device = resolve_device(config.train.device)
    times: list[float] = []

    def progress(step: int, total: int) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter())
        recorder.active = False
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
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    step_s = statistics.median(gaps) if gaps else float("nan")
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    setup_s = max(0.0, times[0] - started - step_s) if times else float("nan")
    return {
        "step_s": step_s, "batch": batch, "setup_s": setup_s,
        "pass_s": min(recorder.busy_s, setup_s), "pass_examples": recorder.examples,
        "peak_bytes": int(peak), "memory": "allocated" if device.type == "cuda" else "rss",
        "device": str(device), "data": source, "train_size": len(data.train)
        if source == "real" else shape.train_size, "test_size": len(data.test)
        if source == "real" else shape.test_size, "notes": notes,
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
    """One run's estimate: its built network, the timing of its recipe (shared by every run
    with the same ``recipe_key``) and what the run itself trains."""

    built: Built
    timing: dict[str, Any] = field(default_factory=dict)
    phases: list[tuple[str, int]] = field(default_factory=list)  # (name, epochs)
    # (full training-data passes, forward-only passes) of its setup: ``setup_data_passes``
    data_passes: tuple[int, int] = (0, 0)
    # How often the measured setup recurs: once per phase for a method that rebuilds its
    # network in every phase (EigenDamage's rounds), else once.
    setups: int = 1
    # The product of the run's ``SCORING_REPEATS`` hparams: its setup was timed at one repeat.
    scoring_repeats: int = 1
    added: bool = False  # a run the selection reuses but left out (EigenDamage's dense run)
    calibrates: bool = False  # STR with a weight decay to calibrate (trials: TrialEstimate)

    @property
    def error(self) -> str | None:
        return self.built.error or self.timing.get("error")

    def parts(self) -> dict[str, float]:
        """Estimated device seconds of the run, by part. With ``p`` = step time / timed batch
        (per example), ``E`` = the phases' epochs, ``N``/``M`` = training/test examples:
        train ``E·N·p``; evaluation ``E·M·p/3`` (a forward is a third of a training step,
        RigL's 3x, bench.flops); setup: the measured setup ``setups`` times, its data pass (when
        the setup reads the whole training set) scaled from the preflight's examples to
        ``N`` per pass, plus forward-only passes at ``N·p/3`` each; a setup that scores on a
        fixed number of examples, timed at one repeat, times ``scoring_repeats``."""
        t = self.timing
        per = t["step_s"] / t["batch"]
        epochs = sum(e for _, e in self.phases)
        full, forward = self.data_passes
        if full and t["pass_examples"]:
            fixed = t["setup_s"] - t["pass_s"]
            setup = self.setups * fixed + full * t["pass_s"] / t["pass_examples"] * \
                t["train_size"]
        else:
            setup = self.setups * t["setup_s"] * self.scoring_repeats
        setup += forward * t["train_size"] * per / 3
        return {"train": epochs * t["train_size"] * per,
                "evaluate": epochs * t["test_size"] * per / 3, "setup": setup}

    @property
    def seconds(self) -> float:
        """Estimated device seconds of the whole run (``parts`` summed)."""
        return sum(self.parts().values())


@dataclass
class TrialEstimate:
    """STR's weight-decay calibration for one grid cell (``STR.trial_config``: the runs that
    differ only in seed and target share their trials): each trial trains the run's full
    recipe. The bisection (methods/calibration.py) starts every target at ``calibration_high``
    (one trial shared by all) and stops after at most ``calibration_max_runs`` trials per
    target, so the cell needs between 1 and ``1 + targets·(max_runs − 1)`` trials; the
    estimate counts the upper bound."""

    entry: str
    runs: list[RunEstimate]
    targets: int
    max_runs: int

    @property
    def trials(self) -> int:
        return 1 + self.targets * (self.max_runs - 1)

    @property
    def each_s(self) -> float:
        parts = self.runs[0].parts()
        return parts["train"] + parts["evaluate"]

    @property
    def seconds(self) -> float:
        return self.trials * self.each_s


@dataclass
class Preflight:
    """A grid's estimate: its runs (the selection, then the runs it reuses but left out), the
    calibration trials, and how many distinct recipes were timed for how many steps."""

    runs: list[RunEstimate]
    trials: list[TrialEstimate]
    timed: int
    steps: int

    @property
    def seconds(self) -> float:
        return (sum(e.seconds for e in self.runs if not e.error)
                + sum(t.seconds for t in self.trials if not t.runs[0].error))


def preflight(runs: list[GridRun], steps: int, batch_cap: int | None, data_root: Path | None,
              log=lambda _line: None, measure=None) -> Preflight:
    """Build every run (and every run they reuse that the selection left out), time one run
    per ``recipe_key`` with `measure` (default ``measure_in_subprocess``; same signature as
    ``measure``), and estimate each run and each STR calibration. Raises UserError for a
    non-positive `steps` or `batch_cap`."""
    from bench.launch.plan import dependencies

    if steps < 1:
        raise UserError(f"--preflight-steps {steps} must be a positive integer")
    if batch_cap is not None and batch_cap < 1:
        raise UserError(f"--preflight-batch {batch_cap} must be a positive integer")
    measure = measure or measure_in_subprocess
    selected = {r.run_id for r in runs}
    added: list[GridRun] = []
    for run in runs:
        try:
            deps = dependencies(run)
        except Exception:  # noqa: BLE001 - the run's own build reports the error
            deps = []
        for dep in deps:
            if dep.run_id not in selected:
                selected.add(dep.run_id)
                added.append(dep)
    cache: dict[str, Built] = {}
    estimates = []
    for run in [*runs, *added]:
        key = build_key(run.config)
        if key not in cache:
            cache[key] = build(run)
        e = RunEstimate(replace(cache[key], run=run), added=run in added)
        if e.built.error is None:
            try:
                e.phases = planned_phases(run.config)
                e.data_passes = setup_data_passes(run.config, e.built.has_batchnorm)
                e.setups = len(e.phases) if rebuilds_network(run.config) else 1
                e.calibrates = fixed_weight_decay(run.config)[1]
                e.scoring_repeats = scoring_repeats(run.config)[1]
            except Exception as exc:  # noqa: BLE001 - reported as this run's error
                e.built = replace(e.built, error=f"{type(exc).__name__}: {exc}")
        estimates.append(e)
    groups: dict[str, Built] = {}
    for e in estimates:
        if e.built.error is None:
            groups.setdefault(recipe_key(e.built), e.built)
    timings: dict[str, dict[str, Any]] = {}
    for i, (key, b) in enumerate(groups.items(), start=1):
        cfg = b.run.config
        log(f"timing {i}/{len(groups)}: {cfg.model.name} {cfg.data.name} {b.run.entry} "
            f"s={cfg.sparsity.target:g}")
        timings[key] = measure(scoring_repeats(cfg)[0], steps, batch_cap, data_root)
    for e in estimates:
        if e.built.error is None:
            e.timing = timings[recipe_key(e.built)]
    return Preflight(estimates, calibration_trials(estimates), len(groups), steps)


def calibration_trials(estimates: list[RunEstimate]) -> list[TrialEstimate]:
    """One ``TrialEstimate`` per grid cell of calibrating STR runs (``STR.trial_config`` gives
    the trials' shared identity)."""
    cells: dict[str, list[RunEstimate]] = {}
    for e in estimates:
        if e.calibrates and e.built.error is None:
            config, _ = fixed_weight_decay(e.built.run.config)
            method = make_method(e.built.run.config)
            cells.setdefault(run_id(method.trial_config(1.0)), []).append(e)
    out = []
    for members in cells.values():
        hp = resolve_hparams(members[0].built.run.config).method.hparams
        targets = len({m.built.run.config.sparsity.target for m in members})
        out.append(TrialEstimate(members[0].built.run.entry, members, targets,
                                 hp.calibration_max_runs))
    return out


def _mb(n: int) -> str:
    return f"{n / 2**20:.0f}"


def format_report(result: Preflight, grid_name: str) -> list[str]:
    """One line per run (the runs the selection reuses last, marked), the device-hours per
    grid entry and of the STR calibrations, the grid's total, then how it was timed."""
    head = (f"{'run':12s}  {'model':16s} {'dataset':12s} {'method':22s} {'s':>6s} {'seed':>4s} "
            f"{'params':>11s} {'nonzero≈':>11s} {'dense MACs':>14s} {'step ms':>9s} "
            f"{'peak MB':>8s} {'est h':>8s}  data")
    lines = [head]
    failed, notes = 0, set()
    by_entry: dict[str, list[float]] = {}
    for e in result.runs:
        cfg = e.built.run.config
        entry = e.built.run.entry + (" (reused)" if e.added else "")
        ident = (f"{run_id(cfg):12s}  {cfg.model.name:16s} {cfg.data.name:12s} "
                 f"{entry:22s} {cfg.sparsity.target:6g} {cfg.seed:4d}")
        if e.error:
            failed += 1
            lines.append(f"{ident}  FAILED: {e.error}")
            continue
        t = e.timing
        hours = e.seconds / 3600
        by_entry.setdefault(entry, []).append(hours)
        notes.update(t["notes"])
        lines.append(f"{ident} {e.built.params_total:11,d} {e.built.nominal_nonzero:11,d} "
                     f"{e.built.macs_dense:14,d} {1000 * t['step_s']:9.1f} "
                     f"{_mb(t['peak_bytes']):>8s} {hours:8.3f}  {t['data']} {t['device']}")
    for entry, hours in by_entry.items():
        lines.append(f"  {entry}: {len(hours)} runs, {sum(hours):.2f} device-hours")
    for trial in result.trials:
        if trial.runs[0].error:
            continue
        cfg = trial.runs[0].built.run.config
        lines.append(f"  {trial.entry} weight-decay calibration ({cfg.model.name} "
                     f"{cfg.data.name}, targets calibrating: {trial.targets}): 1 to "
                     f"{trial.trials} trials "
                     f"of {trial.each_s / 3600:.2f} h each, counted at {trial.trials}: "
                     f"{trial.seconds / 3600:.2f} device-hours")
    n_added = sum(e.added for e in result.runs)
    n_runs = len(result.runs) - n_added
    devices = sorted({e.timing["device"] for e in result.runs if not e.error})
    lines.append(f"grid {grid_name}: {n_runs} runs"
                 + (f" + {n_added} they reuse" if n_added else "")
                 + f", {failed} failed preflight; estimated {result.seconds / 3600:.2f} "
                 f"device-hours on {', '.join(devices) or '-'}")
    sources = sorted({e.timing["data"] for e in result.runs if not e.error})
    lines.append(f"timed: {result.timed} distinct recipes, {result.steps} steps each after a "
                 f"warm-up step, on {' and '.join(sources) or '-'} data; runs that differ "
                 "only in seed, epochs, learning-rate schedule, weight decay or (masked "
                 "methods) target share one timing (bench/preflight.py COST_NEUTRAL)")
    lines.append("estimate: step time per example x (training examples x epochs + test "
                 "examples x epochs / 3) + setup (K-FAC passes scaled to the training set)")
    repeats = sorted({(e.built.run.config.method.name, e.scoring_repeats)
                      for e in result.runs if not e.error and e.scoring_repeats > 1})
    if repeats:
        lines.append("note: SNIP/GraSP scoring timed with " + ", ".join(sorted(
            {f"{n}=1" for name, _ in repeats for n in SCORING_REPEATS[name]}))
            + " and multiplied by each run's count ("
            + ", ".join(f"{name} x{k}" for name, k in repeats) + "): an upper bound")
    memory = sorted({e.timing["memory"] for e in result.runs if not e.error})
    if memory:
        lines.append("note: peak MB is " + " / ".join(
            {"rss": "the worker's peak resident set (CPU)",
             "allocated": "torch's peak allocation (GPU)"}[m] for m in memory))
    if any(e.setups > 1 for e in result.runs if not e.error):
        lines.append("note: a method that rebuilds its network every round (iterative "
                     "EigenDamage) has every round timed at its first, largest network: an "
                     "upper bound")
    lines += [f"note: {n}" for n in sorted(notes)]
    if any(not math.isfinite(e.seconds) for e in result.runs if not e.error):
        lines.append("note: some runs had no timed step; raise --preflight-steps")
    return lines


if __name__ == "__main__":
    sys.exit(_worker())
