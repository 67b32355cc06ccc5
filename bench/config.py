"""Typed run configuration, its canonical form and the run id.

A run is fully described by a frozen ``RunConfig``. Its identity is a short hash of the canonical
JSON of the config with every default-valued field left out, so that adding a new field with a
no-op default keeps every existing run id (and every finished run on disk) valid.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from bench.errors import UserError
from bench.validation import build, check, check_values, validate

LAYER_POLICIES = ("all", "dense_first", "dense_last", "dense_first_last")
DISTRIBUTIONS = ("default", "uniform", "erk", "learned")
OPTIMIZERS = ("sgd", "adam")
# Seeds are mixed into torch generator seeds (seed * 1_000_003 + epoch, bench/data/base.py),
# which must fit 64 bits; 2**32 - 1 is ample and numpy's classic bound.
MAX_SEED = 2**32 - 1
LR_SCHEDULES = ("constant", "step", "cosine")
SCHEDULE_UNITS = ("epoch", "step")
PRECISIONS = ("fp32", "bf16", "fp16", "auto")


@dataclass(frozen=True)
class DataConfig:
    name: str = "mnist1d"
    # MNIST-1D generator settings (its own defaults: 5000 samples, 80% train -> 4000/1000).
    # The generator's minimum (bench/data/mnist1d.py) is 10.
    num_samples: int = field(default=5000, metadata=check(ge=10))
    train_split: float = field(default=0.8, metadata=check(gt=0, lt=1))
    # For image datasets: train on the first `train_subset` examples only (0 = all).
    train_subset: int = field(default=0, metadata=check(ge=0))
    augment: bool = False


@dataclass(frozen=True)
class ModelConfig:
    name: str = "mnist1d_cnn"
    # Width multiplier of the hidden layers; thin dense solves for it.
    width: float = field(default=1.0, metadata=check(gt=0))


@dataclass(frozen=True)
class MethodConfig:
    name: str = "dense"
    # The method's own hyperparameter dataclass (frozen); None means the method's defaults.
    hparams: Any = None


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = field(default=20, metadata=check(ge=1))
    batch_size: int = field(default=100, metadata=check(ge=1))
    optimizer: str = field(default="adam", metadata=check(choices=OPTIMIZERS))
    lr: float = field(default=0.01, metadata=check(gt=0))
    momentum: float = field(default=0.9, metadata=check(ge=0, lt=1))
    nesterov: bool = False
    weight_decay: float = field(default=0.0, metadata=check(ge=0))
    lr_schedule: str = field(default="constant", metadata=check(choices=LR_SCHEDULES))
    # For "step": epochs at which the lr is multiplied by gamma.
    milestones: tuple[int, ...] = field(default=(), metadata=check(ge=0))
    gamma: float = field(default=0.1, metadata=check(gt=0))
    precision: str = field(default="fp32", metadata=check(choices=PRECISIONS))
    # "auto" (a GPU if there is one), "cpu", "cuda", "cuda:N", "mps"; whether this machine has
    # it is checked before a grid starts (bench.environment).
    device: str = field(default="auto", metadata=check(
        pattern=r"auto|cpu|mps|cuda(:\d+)?",
        pattern_text='a device: "auto", "cpu", "cuda", "cuda:N" or "mps"'))
    eval_batch_size: int = field(default=1000, metadata=check(ge=1))
    # Intra-op threads when training on a CPU. Float reductions split by thread, so CPU results
    # are bit-identical only at the same count: it is part of the run, not of the executor.
    # Ignored on GPUs.
    cpu_threads: int = field(default=1, metadata=check(ge=1))
    # Recipe knobs of the papers' grids (bench/recipe.py); the defaults are no-ops.
    # Linear lr warm-up over the first epochs (STR: 5).
    warmup_epochs: int = field(default=0, metadata=check(ge=0, below="epochs"))
    # "step": lr recomputed every step (RigL) instead of per epoch.
    schedule_unit: str = field(default="epoch", metadata=check(choices=SCHEDULE_UNITS))
    label_smoothing: float = field(default=0.0, metadata=check(ge=0, lt=1))
    no_bn_decay: bool = False  # STR's flag: no weight decay on norm parameters and biases
    # GPU execution (bench/accel.py); CPU runs compute the same either way.
    deterministic: bool = False  # deterministic algorithms instead of cuDNN autotuning
    compile: bool = False  # torch.compile the model's forward (masks never recompile it)
    # Processes (one per GPU) that train the run together with DistributedDataParallel
    # (bench/distributed.py). batch_size is the global batch: each rank takes batch_size /
    # world_size of it. Part of the run id: per-rank batch norm statistics and the gradient
    # reduction order change the numbers.
    world_size: int = field(default=1, metadata=check(ge=1, divides="batch_size"))
    # Batch norm statistics over the global batch (torch.nn.SyncBatchNorm; CUDA only) instead
    # of each rank's shard. Does nothing at world size 1.
    sync_batchnorm: bool = False


@dataclass(frozen=True)
class SparsityConfig:
    # Fraction of prunable weights that are zero; 0.0 = dense.
    target: float = field(default=0.0, metadata=check(ge=0, lt=1))
    layer_policy: str = field(default="all", metadata=check(choices=LAYER_POLICIES))
    # "default" lets the method pick its own (uniform for static/GMP, learned for SNIP, ...).
    distribution: str = field(default="default", metadata=check(choices=DISTRIBUTIONS))


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sparsity: SparsityConfig = field(default_factory=SparsityConfig)
    seed: int = field(default=0, metadata=check(ge=0, le=MAX_SEED))

    def validate(self) -> None:
        """Raise UserError with one clear line for any value its field's type and constraints
        (``check`` metadata, bench.validation) do not accept, the method's hparams included."""
        target = self.sparsity.target
        if not 0.0 <= target < 1.0:
            raise UserError(f"sparsity {target!r} is outside [0, 1): use e.g. 0.9 for 90% zeros",
                            key="sparsities")
        plain = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "method":
                if value.hparams is not None:
                    validate_hparams(value.name, value.hparams)
            elif is_dataclass(value):
                validate(value, f.name)
            else:
                plain[f.name] = value
        check_values(RunConfig, plain, "")


def _is_default(f: dataclasses.Field, value: Any) -> bool:
    if f.default is not dataclasses.MISSING:
        return value == f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return value == f.default_factory()  # type: ignore[misc]
    return False


def canonical(obj: Any, *, drop_defaults: bool = True) -> Any:
    """JSON-ready form of a config dataclass; default-valued fields left out when asked."""
    if is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        for f in fields(obj):
            value = getattr(obj, f.name)
            if drop_defaults and _is_default(f, value):
                continue
            value = canonical(value, drop_defaults=drop_defaults)
            if drop_defaults and value == {} and is_dataclass(getattr(obj, f.name)):
                continue
            out[f.name] = value
        return out
    if isinstance(obj, (tuple, list)):
        return [canonical(v, drop_defaults=drop_defaults) for v in obj]
    if isinstance(obj, float) and obj.is_integer():
        # 1.0 and 1 must hash the same; TOML users write either.
        return int(obj)
    return obj


def canonical_json(config: RunConfig) -> str:
    body = canonical(config)
    # The method name is always part of the identity, even for the default method.
    body.setdefault("method", {})["name"] = config.method.name
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


def validate_hparams(method: str, hparams: Any) -> None:
    """Check hyperparameters of `method` built in code against their fields' types and
    ``check`` metadata (``bench.validation``), as ``RunConfig.validate`` checks a run's: the one
    rule set, which methods never restate by hand. Raises UserError naming
    ``method.<method>.<key>``, the value and what is valid."""
    validate(hparams, f"method.{method}")


def run_id(config: RunConfig) -> str:
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()[:12]


def run_label(config: RunConfig) -> str:
    """Readable folder prefix: model-dataset-method-sparsity-seed."""
    pct = f"{config.sparsity.target * 100:g}"
    return f"{config.model.name}-{config.data.name}-{config.method.name}-s{pct}-seed{config.seed}"


def to_dict(config: RunConfig) -> dict[str, Any]:
    """Full (defaults included) JSON-ready form, with the hparams' own fields spelled out."""
    return canonical(config, drop_defaults=False)


def build_dataclass(cls: type, values: dict[str, Any], where: str) -> Any:
    """Instantiate a config dataclass from parsed TOML/JSON, rejecting unknown keys and values
    of the wrong type or out of range (bench.validation) with a UserError that names `where`."""
    return build(cls, values, where)


def make_hparams(hparams_cls: type, values: dict[str, Any], where: str) -> Any:
    return build_dataclass(hparams_cls, values, where)


def from_dict(body: dict[str, Any], hparams_cls: type | None = None) -> RunConfig:
    """Inverse of ``to_dict``/``canonical``: missing fields take their defaults."""
    parts: dict[str, Any] = {}
    sections = {
        "data": DataConfig,
        "model": ModelConfig,
        "train": TrainConfig,
        "sparsity": SparsityConfig,
    }
    for key, cls in sections.items():
        parts[key] = build_dataclass(cls, dict(body.get(key, {})), key)
    method_body = dict(body.get("method", {}))
    name = method_body.pop("name", "dense")
    hp_values = method_body.pop("hparams", None) or {}
    if method_body:
        raise UserError(f"unknown key(s) {', '.join(sorted(method_body))} in method")
    hparams = make_hparams(hparams_cls, hp_values, f"method.{name}") if hparams_cls else None
    parts["method"] = MethodConfig(name=name, hparams=hparams)
    parts["seed"] = int(body.get("seed", 0))
    extra = set(body) - set(sections) - {"method", "seed"}
    if extra:
        raise UserError(f"unknown key(s) {', '.join(sorted(extra))} in run config")
    return RunConfig(**parts)
