"""Results as check cells, pinning them, and the baseline file (format: baselines/pinned/README.md).

The baseline file is JSON with its keys in a fixed order and cells sorted, so that two pins of
the same results are byte-identical and a diff reads cell by cell. It carries no wall-clock time
for that reason: when it was pinned is the file's own git history; what it was pinned from is
recorded as the results' git revisions, torch versions, devices and their common fingerprint
(``bench.fingerprint``), which decides whether a later check may compare exactly.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench import store
from bench.errors import UserError
from bench.grid import only_keeps, parse_only
from bench.report.aggregate import AGG_COLUMNS, KEYS, aggregate, normalise, order
from bench.report.recipes import (
    base_label,
    recipe_config,
    recipe_id,  # noqa: F401 - part of bench.check's API
)
from bench.report.recipes import load as load_results
from methods import REGISTRY

# Schema 2 adds the runs' fingerprint and per-seed top-1 and counts (the exact rule); schema 1
# files are still read and checked with the sigma rule alone.
SCHEMA = 2
READABLE = (1, 2)
KIND = "sparsebench-baseline"
# A sparsity std for learned-count cells pinned from one seed when nothing better is known: one
# percentage point, about what STR's calibration promises (its rel_tol on the density).
FALLBACK_SPARSITY_STD = 0.01

_SPREAD = ["nonzero_min", "nonzero_max", "sparsity_min", "sparsity_max", "sparsity_std",
           "top1_seeds", "nonzero_seeds"]

_CELL_FIELDS = {
    "model": str, "dataset": str, "method": str, "method_label": str,
    "target_sparsity": (int, float), "n": int, "seeds": list, "top1_mean": (int, float),
    "achieved_sparsity": (int, float), "params_nonzero": (int, float), "counts_rule": str,
}


# --- current results --------------------------------------------------------------------------
def only_filter(df: pd.DataFrame, only: dict[str, str], seeds_col: str | None) -> pd.DataFrame:
    """``--only`` on runs (``seeds_col`` None: a ``seed`` column) or on baseline cells (a list of
    seeds per cell): the rows ``bench.grid.only_keeps`` keeps, a row's names being its grid
    label (a label split by recipe, 'gmp [train.epochs=3]', is still its grid label's) and its
    ``method``; its values were checked by ``bench.grid.parse_only``."""
    if not only:
        return df
    keep = [only_keeps(only, model=row["model"], dataset=row["dataset"],
                       methods=(row["base_label"] if "base_label" in row
                                else base_label(row["method_label"]), row["method"]),
                       sparsity=float(row["target_sparsity"]),
                       seeds=row[seeds_col] if seeds_col is not None else (row["seed"],))
            for row in df.to_dict("records")]
    return df[pd.Series(keep, index=df.index, dtype=bool)]


def load_runs(root: Path, only: dict[str, str] | None = None) -> pd.DataFrame:
    """The runs under `root` as the report reads them (``bench.report.recipes.load``: with each
    run's ``recipe`` and ``fingerprint``), normalised, filtered by ``--only``."""
    runs = load_results(root)
    if runs.empty:
        raise UserError(f"no results under {store.runs_dir(root)}: run a grid first or pass "
                        "--root DIR")
    return only_filter(normalise(runs), only or {}, None)


def common_fingerprint(runs: pd.DataFrame) -> dict[str, Any] | None:
    """The fingerprint every run shares, or None (none recorded, or they differ)."""
    if "fingerprint" not in runs or runs.empty:
        return None
    values = set(runs["fingerprint"])
    if len(values) != 1 or not isinstance(next(iter(values)), str):
        return None
    return json.loads(next(iter(values)))


def cells(runs: pd.DataFrame) -> pd.DataFrame:
    """Seed aggregation of ``bench.report.aggregate`` plus what the rules need: the method, the
    spread of nonzero counts and achieved sparsity over the successful seeds, and their per-seed
    top-1 and nonzero counts in seed order (the exact rule)."""
    if runs.empty:  # everything filtered out by --only: every baseline cell is missing
        return pd.DataFrame(columns=[*AGG_COLUMNS, "method", "base_label", "recipe",
                                     "recipe_fields", *_SPREAD])
    agg = aggregate(runs)
    df = normalise(runs)
    ok = df[df["status"] == "ok"].sort_values("seed", kind="stable")
    spread = ok.groupby(KEYS, sort=True).agg(
        nonzero_min=("params_nonzero", "min"), nonzero_max=("params_nonzero", "max"),
        sparsity_min=("achieved_sparsity", "min"), sparsity_max=("achieved_sparsity", "max"),
        sparsity_std=("achieved_sparsity", "std"),
        top1_seeds=("top1", lambda v: [float(x) for x in v]),
        nonzero_seeds=("params_nonzero", lambda v: [_count(x) for x in v]),
    ).reset_index()
    method = df.groupby(KEYS, sort=True)[["method", "base_label"]].first().reset_index()
    for col in ("recipe", "recipe_fields"):
        if col in df:
            values = df.groupby(KEYS, sort=True)[col].agg(
                _joined if col == "recipe" else _one).reset_index()
            method = method.merge(values, on=KEYS, how="left")
        else:
            method = method.assign(**{col: "" if col == "recipe" else None})
    return order(agg.merge(method, on=KEYS, how="left").merge(spread, on=KEYS, how="left"))


def _joined(recipes: pd.Series) -> str:
    """A cell's distinct recipe ids, space-separated ('' when none is known)."""
    return " ".join(sorted({r for r in recipes if isinstance(r, str) and r}))


def _one(fields: pd.Series) -> str | None:
    """A cell's recipe fields (``recipe_fields`` JSON text), None unless there is one."""
    known = {f for f in fields if isinstance(f, str)}
    return next(iter(known)) if len(known) == 1 else None


def cell_key(model: str, dataset: str, label: str, target: float) -> tuple[str, str, str, float]:
    return (str(model), str(dataset), str(label), round(float(target), 9))


def _num(x: Any) -> float | None:
    """JSON-friendly number: None for NaN (json would write the invalid token NaN)."""
    return None if x is None or pd.isna(x) else float(x)


def _count(x: Any) -> int | float | None:
    """A count: int when integral (a mean over seeds whose counts varied may not be)."""
    x = _num(x)
    return int(x) if x is not None and x.is_integer() else x


def label(row) -> str:
    return f"{row.model}/{row.dataset} {row.method_label} s={float(row.target_sparsity):g}"


# --- pinning ----------------------------------------------------------------------------------
def _distinct(values) -> list[str]:
    return sorted({str(v) for v in values if v not in (None, "")})


def _default_std(given: float | None, flag: str, measured: pd.Series,
                 measured_source: str) -> tuple[float, str] | None:
    """The std for single-seed sides and where it came from: the flag's value, else the median
    of the measured stds, else None."""
    if given is not None:
        return float(given), flag
    if len(measured):
        return float(np.median(measured.to_numpy(dtype=float))), measured_source
    return None


def _fixed_budget(method: str) -> bool:
    """Whether the method's nonzero count is set by the target; a method no longer registered
    is compared within seed variance, the safer assumption."""
    cls = REGISTRY.get(method)
    return bool(cls and cls.fixed_budget)


def pin(root: Path, only_spec: str | None = None, default_std: float | None = None,
        default_sparsity_std: float | None = None) -> tuple[dict[str, Any], list[str]]:
    """The baseline object for the results under `root`, and notes for the user."""
    from bench.run import versions

    root = Path(root)
    runs = load_runs(root, parse_only(only_spec))
    if runs.empty:
        raise UserError(f"--only {only_spec} matches no run under {root}")
    table = cells(runs)
    notes = []
    skipped = table[table["n"] == 0]
    if len(skipped):
        notes.append(f"not pinned: {len(skipped)} cells whose every seed failed ("
                     + ", ".join(label(r) for r in skipped.itertuples()) + ")")
    table = table[table["n"] > 0]
    if table.empty:
        raise UserError(f"no successful run under {root} to pin")

    rules = []
    for row in table.itertuples():
        constant = row.nonzero_min == row.nonzero_max
        rules.append("exact" if constant and _fixed_budget(row.method) else "sigma")
    table = table.assign(counts_rule=rules)

    multi = table[(table["n"] >= 2) & table["top1_std"].notna()]
    chosen = _default_std(default_std, "--default-std", multi["top1_std"],
                          f"median top-1 std of {len(multi)} multi-seed cells")
    if chosen is None:
        raise UserError("every pinned cell has one seed, so there is no seed std to default "
                        "to: pass --default-std POINTS (e.g. the std of a few seeds of one "
                        "method) or pin results with several seeds per cell")
    std, std_source = chosen
    varying = table[table["nonzero_min"] != table["nonzero_max"]]
    sp_std, sp_source = _default_std(
        default_sparsity_std, "--default-sparsity-std", varying["sparsity_std"],
        f"median achieved-sparsity std of {len(varying)} cells whose counts varied",
    ) or (FALLBACK_SPARSITY_STD, "fallback: no pinned cell's counts varied over seeds")
    notes.append(f"default_std {std:.4g} points ({std_source}); default_sparsity_std "
                 f"{sp_std:.4g} ({sp_source})")
    fp = common_fingerprint(runs)
    notes.append("fingerprint: " + (
        "none (the runs do not share one): checks against this pin use the sigma rule only"
        if fp is None else f"{', '.join(f'{k} {v}' for k, v in fp.items())}; a check whose "
        "results share it compares every top-1 and count exactly"))

    configs = _recipe_configs(root, runs)
    entries = []
    for row in table.itertuples():
        exact = row.counts_rule == "exact"
        entries.append({
            "model": row.model, "dataset": row.dataset, "method": row.method,
            "method_label": row.method_label, "target_sparsity": float(row.target_sparsity),
            "n": int(row.n), "n_failed": int(row.n_failed),
            "seeds": [int(s) for s in row.seeds.split()],
            "top1_mean": _num(row.top1_mean), "top1_std": _num(row.top1_std),
            "top1_seeds": list(row.top1_seeds),
            "achieved_sparsity": _num(row.achieved_sparsity),
            "achieved_sparsity_std": None if exact else _num(row.sparsity_std),
            "params_nonzero": _count(row.nonzero_min if exact else row.params_nonzero),
            "nonzero_seeds": list(row.nonzero_seeds),
            "macs": _count(row.macs),
            "counts_constant": bool(row.nonzero_min == row.nonzero_max),
            "counts_rule": row.counts_rule,
            "recipe": row.recipe or None,
            "recipe_config": configs.get(cell_key(row.model, row.dataset, row.method_label,
                                                  row.target_sparsity)),
        })
    paths = set(runs["path"])
    used = [(res.get("versions") or {}, res.get("device"))
            for folder, res in store.iter_results(root) if str(folder) in paths]
    baseline = {
        "schema": SCHEMA, "kind": KIND,
        "pinned_from": {
            "root": str(root), "only": only_spec, "runs": int(len(runs)),
            "git": _distinct(v.get("git") for v, _ in used),
            "torch": _distinct(v.get("torch") for v, _ in used),
            "python": _distinct(v.get("python") for v, _ in used),
            "device": _distinct(d for _, d in used),
        },
        "pinned_with": versions(),
        "fingerprint": fp,
        "default_std": std, "default_std_source": std_source,
        "default_sparsity_std": sp_std, "default_sparsity_std_source": sp_source,
        "cells": entries,
    }
    return baseline, notes


def _recipe_configs(root: Path, runs: pd.DataFrame) -> dict[tuple, str]:
    """Per cell with one recipe: its config as ``recipe_config`` JSON text, so that a later
    check can name the fields in which a current recipe differs from the pinned one."""
    texts = {str(folder): recipe_config(result.get("config"))
             for folder, result in store.iter_results(root)}
    out: dict[tuple, set] = {}
    for run in runs[runs["status"] == "ok"].itertuples():
        key = cell_key(run.model, run.dataset, run.method_label, run.target_sparsity)
        out.setdefault(key, set()).add(texts.get(str(run.path)))
    return {k: next(iter(v)) for k, v in out.items() if len(v) == 1 and None not in v}


# --- the file ---------------------------------------------------------------------------------
def dumps(baseline: dict[str, Any]) -> str:
    """JSON in the dicts' own (fixed) key order, one field per line, number lists inline: two
    pins of the same results give the same bytes, and a diff shows which field of which cell
    moved."""
    def inline(match: re.Match) -> str:
        try:
            return json.dumps(json.loads(match.group(0)))
        except json.JSONDecodeError:  # a "]" inside a string ended the match early
            return match.group(0)

    # json starts a non-empty list with "[" and a raw newline, which no JSON string contains,
    # so this only ever matches a real list without nested lists or objects.
    text = json.dumps(baseline, indent=2, allow_nan=False)
    return re.sub(r"\[\n[^\[\]{}]*\]", inline, text) + "\n"


def write_baseline(path: Path, baseline: dict[str, Any]) -> None:
    try:
        store.atomic_write_text(Path(path), dumps(baseline))
    except OSError as exc:
        raise UserError(f"cannot write baseline {path}: {exc.strerror or exc}") from None


def load_baseline(path: Path) -> dict[str, Any]:
    """Read and validate a baseline file; any problem is one UserError line naming the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"baseline {path} does not exist; pin one with "
                        f"`sparsebench check --baseline {path} --root DIR --pin`") from None
    except OSError as exc:
        raise UserError(f"cannot read baseline {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"cannot read baseline {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"baseline {path} is not valid JSON (line {exc.lineno}: "
                        f"{exc.msg})") from None
    if not isinstance(data, dict) or data.get("kind") != KIND:
        raise UserError(f"baseline {path} is not a sparsebench baseline (no \"kind\": \"{KIND}\")")
    if data.get("schema") not in READABLE:
        raise UserError(f"baseline {path} has schema {data.get('schema')!r}; this sparsebench "
                        f"reads schema {', '.join(map(str, READABLE))}")
    for name in ("default_std", "default_sparsity_std"):
        value = data.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise UserError(f"baseline {path}: {name} must be a number >= 0, got {value!r}")
    if data.get("fingerprint") is not None and not isinstance(data["fingerprint"], dict):
        raise UserError(f"baseline {path}: \"fingerprint\" must be an object or null")
    entries = data.get("cells")
    if not isinstance(entries, list):
        raise UserError(f"baseline {path}: \"cells\" must be a list")
    seen = set()
    for i, cell in enumerate(entries):
        if not isinstance(cell, dict):
            raise UserError(f"baseline {path}: cell {i} is not an object")
        for name, kind in _CELL_FIELDS.items():
            if isinstance(cell.get(name), bool) or not isinstance(cell.get(name), kind):
                raise UserError(f"baseline {path}: cell {i} has no valid {name!r}")
        if cell["counts_rule"] not in ("exact", "sigma"):
            raise UserError(f"baseline {path}: cell {i} has counts_rule "
                            f"{cell['counts_rule']!r}; valid: exact, sigma")
        if cell["n"] < 1:
            raise UserError(f"baseline {path}: cell {i} has n = {cell['n']}; need >= 1")
        for name in ("top1_seeds", "nonzero_seeds"):
            values = cell.get(name)
            if values is not None and (not isinstance(values, list)
                                       or len(values) != len(cell["seeds"])):
                raise UserError(f"baseline {path}: cell {i} has {name} that is not one number "
                                "per seed")
        key = cell_key(cell["model"], cell["dataset"], cell["method_label"],
                       cell["target_sparsity"])
        if key in seen:
            raise UserError(f"baseline {path}: cell {i} repeats {'/'.join(map(str, key))}")
        seen.add(key)
    return data
