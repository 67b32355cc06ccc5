"""Grid files (TOML) -> run configs.

A grid is the product models x datasets x methods x sparsities x seeds::

    name = "smoke"
    [axes]
    models = ["mnist1d_cnn"]
    datasets = ["mnist1d"]
    methods = ["dense", "static", "static-erk", "gmp"]
    sparsities = [0.5, 0.9]
    seeds = [0]

    [train]                 # TrainConfig fields for every run (the recipe)
    epochs = 20
    [data]                  # DataConfig fields (besides the name)
    [sparsity]              # layer_policy, distribution
    [method.gmp]            # per-method settings: the method's hyperparameters...
    end_fraction = 0.75
    [method.gmp.train]      # ...and train/data/sparsity/model overrides for that method only
    epochs = 30
    [method.static-erk]     # a variant: a new name for a registered method with overrides
    method = "static"
    sparsity = { distribution = "erk" }
    [by_model.resnet32_grasp.train]     # overrides for one model of the axis...
    weight_decay = 1e-4
    [by_dataset.cifar100.train]         # ...or one dataset
    epochs = 200
    [method.str.by_sparsity."0.9"]      # a method's hparams/sections at one target
    weight_decay = 2.25e-5              # (also [method.E.by_model.M], [method.E.by_dataset.D])
    [slurm]                 # launcher settings, read by bench.launch

Precedence, one rule, general to specific (a later level overrides an earlier one field by
field): the grid's [train]/[data]/[sparsity]/[model] < [by_model.M] < [by_dataset.D] <
[method.E] < [method.E.by_model.M] < [method.E.by_dataset.D] < [method.E.by_sparsity."S"].
Hyperparameters are set only inside [method.E...] tables. ``sparsebench show GRID`` prints what
each run resolves to.

Methods that ignore the sparsity target (dense) get one run per (model, dataset, seed) at
sparsity 0. Grids are parsed, never evaluated.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

from bench.config import (
    MAX_SEED,
    DataConfig,
    MethodConfig,
    ModelConfig,
    RunConfig,
    SparsityConfig,
    TrainConfig,
    build_dataclass,
    run_id,
)
from bench.data import get_dataset_spec
from bench.errors import UserError
from bench.models import get_model_spec
from bench.toml_lines import locate, mention
from bench.toml_lines import read as read_toml
from bench.validation import check_values, toml_value
from methods import get_method

AXES = ("models", "datasets", "methods", "sparsities", "seeds")
TOP_LEVEL = ("name", "description", "axes", "train", "data", "sparsity", "model", "method",
             "by_model", "by_dataset", "slurm")
SECTIONS = {"train": TrainConfig, "data": DataConfig, "sparsity": SparsityConfig,
            "model": ModelConfig}


@dataclass(frozen=True)
class GridRun:
    """One expanded run and the grid entry it came from (a method name or variant name)."""

    config: RunConfig
    entry: str

    @property
    def run_id(self) -> str:
        return run_id(self.config)

    @property
    def label(self) -> str | None:
        """The table label: a variant's own name; None lets the method name itself."""
        return self.entry if self.entry != self.config.method.name else None


@dataclass
class Grid:
    name: str
    path: str
    runs: list[GridRun]
    slurm: dict[str, Any] = field(default_factory=dict)
    description: str = ""


def builtin_grids() -> dict[str, Path]:
    folder = resources.files("bench") / "grids"
    return {Path(p.name).stem: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".toml")}


def resolve_grid_path(spec: str) -> Path:
    path = Path(spec)
    if path.is_dir():
        raise UserError(f"grid {spec} is a directory; pass a grid TOML file or the name of a "
                        f"built-in grid ({', '.join(sorted(builtin_grids()))})")
    if path.suffix == ".toml" or path.exists():
        if not path.exists():
            builtin = path.stem if path.parent == Path(".") and path.stem in builtin_grids() \
                else None
            raise UserError(f"grid file {spec} does not exist"
                            + (f"; the built-in grid is named {builtin}, without .toml"
                               if builtin else ""))
        return path
    grids = builtin_grids()
    if spec in grids:
        return grids[spec]
    raise UserError(f"unknown grid {spec!r}: not a file and not a built-in grid; "
                    f"built-in: {', '.join(sorted(grids))}")


class _Where:
    """Builds 'file:line: message' errors for a grid file."""

    def __init__(self, path: Path, text: str):
        self.path, self.text = path, text

    def error(self, key: str, message: str) -> UserError:
        line = mention(self.text, key)
        return UserError(f"{self.path}:{line if line else 1}: {message}")

    def at(self, path: tuple[str, ...], message: str) -> UserError:
        """The error at the line that sets the key `path` (e.g. ("method", "gmp", "lr"))."""
        line = locate(self.text, path)
        return UserError(f"{self.path}:{line if line else 1}: {message}")


def load_grid(spec: str) -> Grid:
    path = resolve_grid_path(spec)
    body, text = read_toml(path, "grid file", "grid")
    return expand(body, path, text)


def _section(cls: type, values: Any, where: _Where, key: str) -> dict[str, Any]:
    """A table of `cls` fields, each value checked (type, range, choices) where it is set."""
    path = tuple(key.split("."))
    if not isinstance(values, dict):
        raise where.at(path, f"{key} = {toml_value(values)}: expected a table [{key}]")
    known = {f.name for f in fields(cls)}
    for k in values:
        if k not in known:
            raise where.at((*path, k),
                           f"unknown key {k!r} in [{key}]; valid: {', '.join(sorted(known))}")
    _build(cls, values, where, key)
    return dict(values)


def _build(cls: type, values: dict[str, Any], where: _Where, key: str) -> Any:
    try:
        return build_dataclass(cls, values, key)
    except UserError as exc:
        if exc.path:
            raise where.at(exc.path, str(exc)) from None
        raise where.error(key.split(".")[-1], str(exc)) from None


def _no_names(sections: dict[str, dict[str, Any]], key: str, where: _Where) -> None:
    """`name` in a [data] or [model] section: the axes name every run's dataset and model, so a
    name there would be ignored; say so instead of training something the user did not ask
    for."""
    for section, noun in (("data", "dataset"), ("model", "model")):
        if "name" in sections[section]:
            path = (*key.split("."), section, "name") if key else (section, "name")
            raise where.at(path, f"{'.'.join(path)} = "
                           f"{toml_value(sections[section]['name'])}: the {noun} of every run "
                           f"comes from axes.{noun}s; remove the key (settings for one {noun} "
                           f"go in [by_{noun}.NAME])")


@dataclass(frozen=True)
class Layer:
    """One level of overrides: config sections (train/data/sparsity/model) and, inside a method
    table, the method's hyperparameters."""

    sections: dict[str, dict[str, Any]]
    hparams: dict[str, Any]


def _merge(layers: list[Layer | None], key: str | None) -> dict[str, Any]:
    """Field-by-field merge of section `key` (None: the hparams), later layers winning."""
    out: dict[str, Any] = {}
    for layer in layers:
        if layer is not None:
            out.update(layer.hparams if key is None else layer.sections.get(key, {}))
    return out


def _layer(table: Any, key: str, where: _Where, method_cls: type | None = None) -> Layer:
    """A table of overrides: SECTIONS sub-tables, plus hparams when `method_cls` is given (their
    names are checked when the hparams are built)."""
    if not isinstance(table, dict):
        raise where.error(key.split(".")[-1], f"[{key}] must be a table")
    table = dict(table)
    sections = {name: _section(cls, table.pop(name, {}), where, f"{key}.{name}")
                for name, cls in SECTIONS.items()}
    _no_names(sections, key, where)
    if table and method_cls is None:
        bad = sorted(table)[0]
        raise where.error(key, f"unknown key {bad!r} in [{key}]; valid: "
                          f"{', '.join(SECTIONS)}")
    if method_cls is not None:
        # Each value where it is set; rules between fields once the layers are merged.
        try:
            check_values(method_cls.Hparams, table, key, relations=False)
        except UserError as exc:
            raise where.at(exc.path or tuple(key.split(".")), str(exc)) from None
    return Layer(sections, table)


def _scoped(tables: Any, names: list, key: str, where: _Where,
            method_cls: type | None = None) -> dict[str, Layer]:
    """``[by_model.NAME]`` / ``[by_dataset.NAME]`` tables, keyed by a name of the grid's axis."""
    if not isinstance(tables, dict):
        raise where.error(key.split(".")[-1], f"[{key}] must hold one table per name")
    out = {}
    for name, table in tables.items():
        if name not in names:
            raise where.error(f"{key}.{name}", f"[{key}.{name}]: {name!r} is not on the grid's "
                              "axis; "
                              f"valid: {', '.join(map(str, names))}")
        out[name] = _layer(table, f"{key}.{name}", where, method_cls)
    return out


def _by_sparsity(tables: Any, sparsities: list, key: str, where: _Where,
                 method_cls: type) -> dict[float, Layer]:
    """``[method.E.by_sparsity."0.9"]``: overrides for one target of the sparsities axis."""
    if not isinstance(tables, dict):
        raise where.error("by_sparsity", f"[{key}.by_sparsity] must hold one table per "
                          "sparsity, e.g. [{key}.by_sparsity.\"0.9\"]")
    if tables and not method_cls.uses_sparsity:
        raise where.error(f"{key}.by_sparsity", f"[{key}.by_sparsity]: method "
                          f"{method_cls.name!r} "
                          "ignores the sparsity target")
    out = {}
    for text, table in tables.items():
        try:
            value = float(text)
        except ValueError:
            value = None
        match = [float(s) for s in sparsities if value is not None and abs(s - value) < 1e-9]
        if not match:
            raise where.at((*key.split("."), "by_sparsity", text),
                           f"[{key}.by_sparsity.\"{text}\"]: not a sparsity of the grid; "
                           f"valid: {', '.join(f'{s:g}' for s in sparsities)}")
        out[match[0]] = _layer(table, f"{key}.by_sparsity.{text}", where, method_cls)
    return out


def _registered(name: str) -> bool:
    """Whether `name` is a registered method (built in or from a plugin)."""
    try:
        get_method(name)
    except UserError:
        return False
    return True


def _dotted_name(entry: str) -> str:
    head, _, rest = entry.partition(".")
    return (f"[method.{entry}] is read by TOML as table {rest!r} inside [method.{head}] (a dot "
            f"nests tables), so {entry!r} of axes.methods has no table; quote the name: "
            f"[method.\"{entry}\"]")


def _method_tables(body: dict[str, Any], entries: list[str], where: _Where) -> dict[str, dict]:
    """The [method.NAME] tables, each a table of settings for an entry of axes.methods."""
    tables = body.get("method", {})
    if not isinstance(tables, dict):
        raise where.at(("method",), "[method] must hold one table per method, e.g. "
                       "[method.gmp]")
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise where.at(("method", name), f"method.{name} = {toml_value(table)}: expected "
                           f"a table of {name}'s settings ([method.{name}] with its "
                           "hyperparameters and train/data/sparsity/model overrides)")
    return tables


def _unused_tables(tables: dict[str, dict], entries: list[str], where: _Where) -> None:
    """A [method.NAME] table for no entry of axes.methods is a typo or a dotted name."""
    for name in tables:
        if name not in entries:
            dotted = [e for e in entries if e.startswith(f"{name}.")]
            if dotted:
                raise where.at(("method", name, *dotted[0][len(name) + 1:].split(".")),
                               _dotted_name(dotted[0]))
            raise where.at(("method", name), f"[method.{name}] configures no entry of "
                           f"axes.methods ({', '.join(entries)}): add {name!r} there or remove "
                           "the table")


def expand(body: dict[str, Any], path: Path, text: str = "") -> Grid:
    where = _Where(path, text)
    for key in body:
        if key not in TOP_LEVEL:
            raise where.error(key, f"unknown top-level key {key!r}; valid: {', '.join(TOP_LEVEL)}")
    axes = body.get("axes")
    if not isinstance(axes, dict):
        raise where.error("axes", "the grid needs an [axes] table with " + ", ".join(AXES))
    for key in axes:
        if key not in AXES:
            raise where.error(key, f"unknown axis {key!r}; valid: {', '.join(AXES)}")
    values: dict[str, list] = {}
    for axis in AXES:
        value = axes.get(axis)
        if not isinstance(value, list) or not value:
            raise where.error(axis if axis in axes else "axes",
                              f"axis {axis!r} must be a non-empty list")
        if axis in ("models", "datasets", "methods") and not all(isinstance(v, str)
                                                                 for v in value):
            raise where.at(("axes", axis), f"axes.{axis} = {toml_value(value)}: expected a "
                           "list of names (strings)")
        values[axis] = value

    for name in values["models"]:
        try:
            get_model_spec(name)
        except UserError as exc:
            raise where.error("models", str(exc)) from None
    for name in values["datasets"]:
        try:
            get_dataset_spec(name)
        except UserError as exc:
            raise where.error("datasets", str(exc)) from None
    for s in values["sparsities"]:
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0.0 <= s < 1.0:
            raise where.error("sparsities", f"sparsity {s!r} is outside [0, 1): "
                              "use e.g. 0.9 for 90% zeros")
    for seed in values["seeds"]:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
            raise where.error("seeds", f"seed {seed!r} must be an integer in [0, {MAX_SEED}]")
    for axis, items in values.items():
        # A repeated value would expand to the same runs twice (kept once): a typo for another.
        repeated = next((v for i, v in enumerate(items) if v in items[:i]), None)
        if repeated is not None:
            raise where.at(("axes", axis), f"axes.{axis} lists {toml_value(repeated)} twice; "
                           "give each value once")
    for key in ("name", "description"):
        if key in body and (not isinstance(body[key], str)
                            or (key == "name" and not body[key].strip())):
            raise where.at((key,), f"{key} = {toml_value(body[key])}: expected "
                           f"{'a non-empty string' if key == 'name' else 'a string'}")

    common = {key: _section(cls, body.get(key, {}), where, key) for key, cls in SECTIONS.items()}
    _no_names(common, "", where)
    method_tables = _method_tables(body, values["methods"], where)
    by_model = _scoped(body.get("by_model", {}), values["models"], "by_model", where)
    by_dataset = _scoped(body.get("by_dataset", {}), values["datasets"], "by_dataset", where)

    runs: dict[str, GridRun] = {}
    for entry in values["methods"]:
        table = dict(method_tables.get(entry, {}))
        method_name = table.pop("method", entry)
        if not isinstance(method_name, str):
            raise where.at(("method", entry, "method"), f"method.{entry}.method = "
                           f"{toml_value(method_name)}: expected the name of a registered method")
        if method_name != entry and _registered(entry):
            raise where.at(("method", entry, "method"), f"method.{entry}.method = "
                           f"{toml_value(method_name)}: {entry!r} is a registered method, so "
                           f"its table cannot make it {method_name}; a variant of "
                           f"{method_name} needs a name of its own, e.g. [method.{method_name}-"
                           f"{entry}] with method = {toml_value(method_name)}")
        head, _, rest = entry.partition(".")
        if rest and entry not in method_tables and head in method_tables:
            raise where.at(("method", head, *rest.split(".")), _dotted_name(entry))
        try:
            method_cls = get_method(method_name)
        except UserError as exc:
            raise where.error(exc.key or entry, str(exc)) from None
        where_m = f"method.{entry}"
        m_by_model = _scoped(table.pop("by_model", {}), values["models"],
                             f"{where_m}.by_model", where, method_cls)
        m_by_dataset = _scoped(table.pop("by_dataset", {}), values["datasets"],
                               f"{where_m}.by_dataset", where, method_cls)
        m_by_sparsity = _by_sparsity(table.pop("by_sparsity", {}), values["sparsities"],
                                     where_m, where, method_cls)
        own = _layer(table, where_m, where, method_cls)
        if getattr(method_cls, "needs_width", False):  # thin dense sizes the model's widths
            for model in values["models"]:
                spec = get_model_spec(model)
                if not spec.has_width:
                    raise where.error(entry, f"method {entry!r} needs a model with width "
                                             f"groups; {model} has none: {spec.no_width_reason}")
        sparsities = values["sparsities"] if method_cls.uses_sparsity else [0.0]
        hparams_cache: dict[str, Any] = {}
        for model in values["models"]:
            for dataset in values["datasets"]:
                for seed in values["seeds"]:
                    for target in sparsities:
                        layers = [Layer(common, {}), by_model.get(model), by_dataset.get(dataset),
                                  own, m_by_model.get(model), m_by_dataset.get(dataset),
                                  m_by_sparsity.get(float(target))]
                        parts = {
                            key: _build(cls, _merge(layers, key), where, key)
                            for key, cls in SECTIONS.items()
                        }
                        hp_values = _merge(layers, None)
                        cache_key = repr(sorted(hp_values.items()))
                        if cache_key not in hparams_cache:
                            hparams_cache[cache_key] = _build(method_cls.Hparams, hp_values,
                                                              where, where_m)
                        config = RunConfig(
                            data=replace(parts["data"], name=dataset),
                            model=replace(parts["model"], name=model),
                            method=MethodConfig(name=method_name,
                                                hparams=hparams_cache[cache_key]),
                            train=parts["train"],
                            sparsity=replace(parts["sparsity"], target=float(target)),
                            seed=seed,
                        )
                        if config.sparsity.distribution not in ("default",
                                                                *method_cls.distributions):
                            raise where.error(
                                "distribution",
                                f"method {method_name!r} does not take distribution "
                                f"{config.sparsity.distribution!r}; valid: "
                                f"{', '.join(method_cls.distributions)}")
                        try:
                            config.validate()
                        except UserError as exc:
                            raise where.error(exc.key or entry, str(exc)) from None
                        try:  # the method's own rules (e.g. DeepR's variant vs distribution)
                            method_cls(config, config.method.hparams)
                        except UserError as exc:
                            raise where.at(("method", entry), str(exc)) from None
                        run = GridRun(config, entry)
                        same = runs.setdefault(run.run_id, run)
                        if same.entry != entry:
                            # Two entries of axes.methods that resolve to one config would be
                            # trained and reported once, under the first name only.
                            raise where.at(("method", entry), f"{entry!r} of axes.methods "
                                           f"resolves to the same runs as {same.entry!r} (e.g. "
                                           f"{model} {dataset} s={target:g} seed={seed}): no "
                                           "setting differs; change one or remove it")
    _unused_tables(method_tables, values["methods"], where)
    slurm = body.get("slurm", {})
    if not isinstance(slurm, dict):
        raise where.error("slurm", "[slurm] must be a table")
    return Grid(name=str(body.get("name", path.stem)), path=str(path), runs=list(runs.values()),
                slurm=slurm, description=str(body.get("description", "")))


def parse_only(spec: str | None) -> dict[str, str]:
    """``--only model=mnist1d_cnn,method=gmp`` -> {"model": "mnist1d_cnn", "method": "gmp"}."""
    if not spec:
        return {}
    out: dict[str, str] = {}
    valid = ("model", "dataset", "method", "sparsity", "seed")
    for part in spec.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in valid:
            raise UserError(f"--only takes key=value pairs separated by commas with keys "
                            f"{', '.join(valid)}; got {part!r}")
        if key in out:
            raise UserError(f"--only names {key} twice ({key}={out[key]} and {part.strip()}); "
                            "give each key once")
        out[key] = value.strip()
    if "sparsity" in out:
        try:
            value = float(out["sparsity"])
        except ValueError:
            raise UserError(f"--only sparsity={out['sparsity']} is not a number") from None
        # nan would match every run (no distance to it exceeds the tolerance) and inf none.
        if not math.isfinite(value):
            raise UserError(f"--only sparsity={out['sparsity']} is not a finite number (a "
                            "fraction of zeros, e.g. 0.9)")
    if "seed" in out and not out["seed"].isdigit():
        raise UserError(f"--only seed={out['seed']} is not a non-negative integer")
    return out


def only_keeps(only: dict[str, str], *, model: str, dataset: str, methods: Collection[str],
               sparsity: float, seeds: Collection[int]) -> bool:
    """The one ``--only`` predicate, for grid runs (``matches``) and for finished runs and
    baseline cells (``bench.check.baseline.only_filter``): `only` (from ``parse_only``) keeps
    a run or cell of `model` and `dataset`, known by the names `methods` (a variant's name and
    its method's), at target `sparsity` (within 1e-9), with one of `seeds` (a run has one, a
    baseline cell one per seed)."""
    for key, value in only.items():
        if key == "model" and model != value:
            return False
        if key == "dataset" and dataset != value:
            return False
        if key == "method" and value not in methods:
            return False
        if key == "sparsity" and abs(sparsity - float(value)) > 1e-9:
            return False
        if key == "seed" and int(value) not in seeds:
            return False
    return True


def matches(run: GridRun, only: dict[str, str]) -> bool:
    cfg = run.config
    return only_keeps(only, model=cfg.model.name, dataset=cfg.data.name,
                      methods=(run.entry, cfg.method.name), sparsity=cfg.sparsity.target,
                      seeds=(cfg.seed,))


ONLY_PLURALS = {"model": "models", "dataset": "datasets", "method": "methods",
                "sparsity": "sparsities", "seed": "seeds"}


def _grid_values(grid: Grid, key: str) -> list[str]:
    """The values of `key` that the grid's runs take, as --only spells them."""
    if key == "method":
        names = {n for r in grid.runs for n in (r.entry, r.config.method.name)}
        return sorted(names)
    found = {
        "model": lambda r: r.config.model.name, "dataset": lambda r: r.config.data.name,
        "sparsity": lambda r: r.config.sparsity.target, "seed": lambda r: r.config.seed,
    }[key]
    return [f"{v:g}" if isinstance(v, float) else str(v)
            for v in sorted({found(r) for r in grid.runs})]


def unmatched_only(key: str, value: str, what: str, possessive: str,
                   values: list[str]) -> UserError:
    """The error for ``--only key=value`` matching no `what` ('run of grid smoke', 'cell of
    FILE or ROOT'): the `values` of `key` they hold ("its"/"their": `possessive`), with the
    percent hint for sparsity=90; for ``select`` and ``check --only``."""
    hint = ""
    if key == "sparsity" and float(value) >= 1:
        hint = f" (a fraction of zeros: {float(value) / 100:g} for {value}%)"
    return UserError(f"--only {key}={value} matches no {what}{hint}; {possessive} "
                     f"{ONLY_PLURALS[key]}: {', '.join(values)}")


def select(grid: Grid, only: dict[str, str]) -> list[GridRun]:
    """The runs `only` (from ``parse_only``, which checks its form) keeps. A value that matches
    no run of the grid, or values that no run has together, are a UserError listing what the
    grid holds (an empty selection is always a mistake)."""
    for key, value in only.items():
        if not any(matches(run, {key: value}) for run in grid.runs):
            raise unmatched_only(key, value, f"run of grid {grid.name}", "its",
                                 _grid_values(grid, key))
    runs = [run for run in grid.runs if matches(run, only)]
    if not runs:
        spec = ",".join(f"{k}={v}" for k, v in only.items())
        raise UserError(f"--only {spec} selects no run of grid {grid.name}: each value occurs, "
                        "but no run has them all (methods that ignore the target, such as "
                        "dense, run at sparsity 0 only)")
    return runs
