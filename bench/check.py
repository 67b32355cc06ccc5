"""`sparsebench check`: compare seed-aggregated results with a pinned baseline.

A *cell* is one (model, dataset, method label, target sparsity), aggregated over its seeds by
``bench.report.aggregate`` (the same numbers the report shows). ``pin`` turns the results under a
root into a baseline file; ``compare`` checks current results against one.

Rules (also printed as one line by ``rule_line`` and written up in baselines/pinned/README.md):

* **Accuracy.** A cell regressed if ``current mean top-1 < baseline mean - tol`` and improved if
  ``current mean > baseline mean + tol`` (reported, never a failure), with::

      tol = max(floor, k * sqrt(s_b**2 / n_b + s_c**2 / n_c))

  k = ``--sigmas`` (default 3) and floor = ``--floor`` (default 0.5 points of top-1). ``n`` is
  the number of successful seeds on each side; ``s`` is that side's sample std (ddof=1) over its
  seeds when n >= 2, else the baseline file's ``default_std`` (taken at pin time from
  ``--default-std``, or else the median top-1 std of the pinned multi-seed cells; the file says
  which). The std is taken per side: a 3-seed baseline checked against a 1-seed rerun uses the
  baseline's own std and ``default_std`` for the rerun.
* **Counts.** For count-exact methods the nonzero parameters and achieved sparsity are a
  deterministic function of the method, so any change is a regression even if accuracy holds
  ("counts changed"). A baseline cell gets ``counts_rule = "exact"`` when every pinned seed had
  the same ``params_nonzero`` and its method has a fixed budget (``Method.fixed_budget``); then
  every current seed must have exactly that ``params_nonzero`` and an achieved sparsity within
  ``SPARSITY_EPS`` of the baseline's. Otherwise (counts varied across the pinned seeds, or the
  method learns its sparsity during training: STR, EigenDamage) the rule is ``"sigma"``: the mean
  achieved sparsity must stay within ``max(SPARSITY_EPS, k * sqrt(s_b**2 / n_b + s_c**2 / n_c))``
  of the baseline's, in either direction, with s the per-side sparsity std, or
  ``default_sparsity_std`` for a side with one seed. Two-sided because a method measured at a
  different sparsity is not the same data point, whichever way it moved.
* **Recipe.** The pin records each cell's recipe: ``recipe_id``, the run id of its config with
  the seed left out. A current cell trained with another recipe (other epochs, optimizer,
  hparams, layer policy, ...) is "recipe differs", a failure whatever its accuracy: no tolerance
  makes two different experiments comparable. Rerun with the baseline's config, or re-pin.
  Cells whose config no longer parses (a method since removed), and baselines pinned without
  recipes, skip this rule.
* **Status.** A baseline cell with no current result is "missing" (a failure unless
  ``allow_missing``); a current cell absent from the baseline is "new" (listed, never a failure);
  a current cell whose every seed failed is "failed" (a failure). Seeds that failed in a cell
  that still has successful ones are noted, and the cell is judged on the successful ones.

The baseline file is JSON with sorted keys and cells in a fixed order, so that two pins of the
same results are byte-identical and diffs of a pinned file read cell by cell. It carries no
wall-clock time for that reason: when it was pinned is the file's own git history, and what it
was pinned from is recorded as the results' git revisions, torch versions and devices.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench import store
from bench.config import from_dict, run_id
from bench.errors import UserError
from bench.report.aggregate import AGG_COLUMNS, KEYS, aggregate, normalise, order
from methods import REGISTRY

SCHEMA = 1
KIND = "sparsebench-baseline"
DEFAULT_SIGMAS = 3.0
DEFAULT_FLOOR = 0.5
SPARSITY_EPS = 1e-9
# A sparsity std for learned-count cells pinned from one seed when nothing better is known: one
# percentage point, about what STR's calibration promises (its rel_tol on the density).
FALLBACK_SPARSITY_STD = 0.01

_SPREAD = ["nonzero_min", "nonzero_max", "sparsity_min", "sparsity_max", "sparsity_std"]
FAILING = ("recipe differs", "regressed", "counts changed", "failed", "missing")
VERDICTS = ("recipe differs", "regressed", "counts changed", "failed", "improved", "ok",
            "missing", "new")

_CELL_FIELDS = {
    "model": str, "dataset": str, "method": str, "method_label": str,
    "target_sparsity": (int, float), "n": int, "seeds": list, "top1_mean": (int, float),
    "achieved_sparsity": (int, float), "params_nonzero": (int, float), "counts_rule": str,
}


# --- current results --------------------------------------------------------------------------
def _only_filter(df: pd.DataFrame, only: dict[str, str], seeds_col: str | None) -> pd.DataFrame:
    """``--only`` on runs (``seeds_col`` None: a ``seed`` column) or on baseline cells (a list of
    seeds per cell), with the same keys and matching as ``bench.grid.matches``; its values were
    checked by ``bench.grid.parse_only``."""
    keep = pd.Series(True, index=df.index)
    for key, value in only.items():
        if key == "model":
            keep &= df["model"] == value
        elif key == "dataset":
            keep &= df["dataset"] == value
        elif key == "method":
            keep &= (df["method_label"] == value) | (df["method"] == value)
        elif key == "sparsity":
            keep &= (df["target_sparsity"].astype(float) - float(value)).abs() <= 1e-9
        elif seeds_col is None:
            keep &= df["seed"] == int(value)
        else:
            keep &= df[seeds_col].map(lambda seeds, s=int(value): s in seeds)
    return df[keep]


def recipe_id(config: dict[str, Any] | None) -> str | None:
    """The run id of a result's config with the seed left out: equal for two runs exactly when
    they trained with the same recipe (model, data, method and its hparams, training, sparsity).
    None when the config no longer parses (a method or field since removed)."""
    try:
        parsed = from_dict(config or {}, REGISTRY[(config or {})["method"]["name"]].Hparams)
    except (KeyError, TypeError, UserError):
        return None
    return run_id(replace(parsed, seed=0))


def load_runs(root: Path, only: dict[str, str] | None = None) -> pd.DataFrame:
    """The runs under `root` (normalised as the report does) with each run's ``recipe``
    (``recipe_id``), filtered by ``--only``."""
    runs = store.load(root)
    if runs.empty:
        raise UserError(f"no results under {store.runs_dir(root)}: run a grid first or pass "
                        "--root DIR")
    recipes = {str(folder): recipe_id(result.get("config"))
               for folder, result in store.iter_results(root)}
    runs = runs.assign(recipe=runs["path"].map(recipes))
    return _only_filter(normalise(runs), only or {}, None)


def cells(runs: pd.DataFrame) -> pd.DataFrame:
    """Seed aggregation of ``bench.report.aggregate`` plus what the count rules need: the method,
    the spread of nonzero counts and achieved sparsity over the successful seeds."""
    if runs.empty:  # everything filtered out by --only: every baseline cell is missing
        return pd.DataFrame(columns=[*AGG_COLUMNS, "method", "recipe", *_SPREAD])
    agg = aggregate(runs)
    df = normalise(runs)
    ok = df[df["status"] == "ok"]
    spread = ok.groupby(KEYS, sort=True).agg(
        nonzero_min=("params_nonzero", "min"), nonzero_max=("params_nonzero", "max"),
        sparsity_min=("achieved_sparsity", "min"), sparsity_max=("achieved_sparsity", "max"),
        sparsity_std=("achieved_sparsity", "std"),
    ).reset_index()
    method = df.groupby(KEYS, sort=True)["method"].first().reset_index()
    if "recipe" in df:
        recipes = df.groupby(KEYS, sort=True)["recipe"].agg(_joined).reset_index()
        method = method.merge(recipes, on=KEYS, how="left")
    else:
        method = method.assign(recipe="")
    return order(agg.merge(method, on=KEYS, how="left").merge(spread, on=KEYS, how="left"))


def _joined(recipes: pd.Series) -> str:
    """A cell's distinct recipe ids, space-separated ('' when none is known)."""
    return " ".join(sorted({r for r in recipes if isinstance(r, str) and r}))


def _key(model: str, dataset: str, label: str, target: float) -> tuple[str, str, str, float]:
    return (str(model), str(dataset), str(label), round(float(target), 9))


def _num(x: Any) -> float | None:
    """JSON-friendly number: None for NaN (json would write the invalid token NaN)."""
    return None if x is None or pd.isna(x) else float(x)


def _count(x: Any) -> int | float | None:
    """A count: int when integral (a mean over seeds whose counts varied may not be)."""
    x = _num(x)
    return int(x) if x is not None and x.is_integer() else x


# --- pinning ----------------------------------------------------------------------------------
def _distinct(values) -> list[str]:
    return sorted({str(v) for v in values if v not in (None, "")})


def pin(root: Path, only_spec: str | None = None, default_std: float | None = None,
        default_sparsity_std: float | None = None) -> tuple[dict[str, Any], list[str]]:
    """The baseline object for the results under `root`, and notes for the user."""
    from bench.grid import parse_only
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
                     + ", ".join(_label(r) for r in skipped.itertuples()) + ")")
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

    entries = []
    for row in table.itertuples():
        exact = row.counts_rule == "exact"
        entries.append({
            "model": row.model, "dataset": row.dataset, "method": row.method,
            "method_label": row.method_label, "target_sparsity": float(row.target_sparsity),
            "n": int(row.n), "n_failed": int(row.n_failed),
            "seeds": [int(s) for s in row.seeds.split()],
            "top1_mean": _num(row.top1_mean), "top1_std": _num(row.top1_std),
            "achieved_sparsity": _num(row.achieved_sparsity),
            "achieved_sparsity_std": None if exact else _num(row.sparsity_std),
            "params_nonzero": _count(row.nonzero_min if exact else row.params_nonzero),
            "macs": _count(row.macs),
            "counts_constant": bool(row.nonzero_min == row.nonzero_max),
            "counts_rule": row.counts_rule,
            "recipe": row.recipe or None,
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
        "default_std": std, "default_std_source": std_source,
        "default_sparsity_std": sp_std, "default_sparsity_std_source": sp_source,
        "cells": entries,
    }
    return baseline, notes


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
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read baseline {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"baseline {path} is not valid JSON (line {exc.lineno}: "
                        f"{exc.msg})") from None
    if not isinstance(data, dict) or data.get("kind") != KIND:
        raise UserError(f"baseline {path} is not a sparsebench baseline (no \"kind\": \"{KIND}\")")
    if data.get("schema") != SCHEMA:
        raise UserError(f"baseline {path} has schema {data.get('schema')!r}; this sparsebench "
                        f"reads schema {SCHEMA}")
    for name in ("default_std", "default_sparsity_std"):
        value = data.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise UserError(f"baseline {path}: {name} must be a number >= 0, got {value!r}")
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
        key = _key(cell["model"], cell["dataset"], cell["method_label"], cell["target_sparsity"])
        if key in seen:
            raise UserError(f"baseline {path}: cell {i} repeats {'/'.join(map(str, key))}")
        seen.add(key)
    return data


# --- comparison -------------------------------------------------------------------------------
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


def tolerance(base_std: float | None, base_n: int, cur_std: float | None, cur_n: int,
              default_std: float, sigmas: float = DEFAULT_SIGMAS,
              floor: float = DEFAULT_FLOOR) -> float:
    """``max(floor, sigmas * sqrt(s_b²/n_b + s_c²/n_c))``; a side with n < 2 (or no std) uses
    ``default_std``."""
    def side(std, n):
        return std if n >= 2 and std is not None and math.isfinite(std) else default_std

    sb, sc = side(base_std, base_n), side(cur_std, cur_n)
    return max(floor, sigmas * math.sqrt(sb * sb / base_n + sc * sc / cur_n))


@dataclass
class CellCheck:
    """One cell's comparison; numbers are None where a side has none."""

    model: str
    dataset: str
    method_label: str
    target_sparsity: float
    verdict: str = "ok"
    accuracy: str | None = None  # regressed / improved / ok
    counts: str | None = None  # changed / ok
    note: str = ""
    base_top1: float | None = None
    base_std: float | None = None
    base_n: int | None = None
    cur_top1: float | None = None
    cur_std: float | None = None
    cur_n: int | None = None
    cur_failed: int | None = None
    delta: float | None = None
    tol: float | None = None
    counts_rule: str | None = None
    base_nonzero: float | None = None
    cur_nonzero_min: float | None = None
    cur_nonzero_max: float | None = None
    base_sparsity: float | None = None
    cur_sparsity_min: float | None = None
    cur_sparsity_max: float | None = None
    cur_sparsity: float | None = None
    sparsity_delta: float | None = None
    sparsity_tol: float | None = None


@dataclass
class Comparison:
    checks: list[CellCheck]
    sigmas: float
    floor: float
    default_std: float
    default_std_source: str
    default_sparsity_std: float
    allow_missing: bool
    counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        self.counts = {v: sum(c.verdict == v for c in self.checks) for v in VERDICTS}

    @property
    def failed(self) -> bool:
        failing = [v for v in FAILING if not (v == "missing" and self.allow_missing)]
        return any(self.counts[v] for v in failing)


def _f(x) -> float | None:
    return None if x is None or pd.isna(x) else float(x)


def _counts_check(check: CellCheck, base: dict[str, Any], cur, default_sp: float,
                  sigmas: float) -> None:
    check.counts_rule = base["counts_rule"]
    check.base_nonzero = base["params_nonzero"]
    check.base_sparsity = base["achieved_sparsity"]
    check.cur_nonzero_min, check.cur_nonzero_max = _f(cur.nonzero_min), _f(cur.nonzero_max)
    check.cur_sparsity_min, check.cur_sparsity_max = _f(cur.sparsity_min), _f(cur.sparsity_max)
    check.cur_sparsity = _f(cur.achieved_sparsity)
    check.sparsity_delta = check.cur_sparsity - check.base_sparsity
    if base["counts_rule"] == "exact":
        check.sparsity_tol = SPARSITY_EPS
        moved = (check.cur_nonzero_min != check.base_nonzero
                 or check.cur_nonzero_max != check.base_nonzero
                 or abs(check.cur_sparsity_min - check.base_sparsity) > SPARSITY_EPS
                 or abs(check.cur_sparsity_max - check.base_sparsity) > SPARSITY_EPS)
    else:
        check.sparsity_tol = max(SPARSITY_EPS, tolerance(
            base.get("achieved_sparsity_std"), base["n"], _f(cur.sparsity_std), int(cur.n),
            default_sp, sigmas, 0.0))
        moved = abs(check.sparsity_delta) > check.sparsity_tol
    check.counts = "changed" if moved else "ok"


def compare(baseline: dict[str, Any], current: pd.DataFrame, *, sigmas: float = DEFAULT_SIGMAS,
            floor: float = DEFAULT_FLOOR, allow_missing: bool = False,
            only: dict[str, str] | None = None) -> Comparison:
    """Check `current` (rows of ``cells``) against `baseline` (``load_baseline``); baseline cells
    are filtered by ``only`` like the runs were."""
    entries = baseline["cells"]
    if only and entries:
        kept = _only_filter(pd.DataFrame(entries), only, "seeds").index
        entries = [entries[i] for i in kept]
    base = {_key(c["model"], c["dataset"], c["method_label"], c["target_sparsity"]): c
            for c in entries}
    cur = {_key(r.model, r.dataset, r.method_label, r.target_sparsity): r
           for r in current.itertuples()}
    default_std = float(baseline["default_std"])
    checks = []
    for key in sorted(set(base) | set(cur), key=lambda k: (k[0], k[1], k[2], k[3])):
        check = CellCheck(*key)
        b, c = base.get(key), cur.get(key)
        if b is not None:
            check.base_top1, check.base_std, check.base_n = (b["top1_mean"], b.get("top1_std"),
                                                             b["n"])
        if c is not None:
            check.cur_n, check.cur_failed = int(c.n), int(c.n_failed)
            check.cur_top1, check.cur_std = _f(c.top1_mean), _f(c.top1_std)
            if c.n_failed and c.n:
                check.note = f"{int(c.n_failed)} of {int(c.n + c.n_failed)} seeds failed"
        if b is None:
            check.verdict = "new"
        elif c is None:
            check.verdict = "missing"
        elif c.n == 0 or check.cur_top1 is None:
            check.verdict = "failed"
            check.note = f"{int(c.n_failed)} of {int(c.n + c.n_failed)} seeds failed"
        else:
            check.delta = check.cur_top1 - check.base_top1
            if b.get("recipe") and c.recipe and c.recipe != b["recipe"]:
                # Different training recipes: no tolerance makes the numbers comparable.
                check.verdict = "recipe differs"
                check.note = (f"baseline recipe {b['recipe']}, current {c.recipe}: rerun with "
                              "the baseline's config, or re-pin")
                checks.append(check)
                continue
            check.tol = tolerance(check.base_std, check.base_n, check.cur_std, check.cur_n,
                                  default_std, sigmas, floor)
            check.accuracy = ("regressed" if check.delta < -check.tol
                              else "improved" if check.delta > check.tol else "ok")
            _counts_check(check, b, c, float(baseline["default_sparsity_std"]), sigmas)
            check.verdict = ("counts changed" if check.counts == "changed"
                             else check.accuracy)
        checks.append(check)
    return Comparison(checks, sigmas, floor, default_std,
                      str(baseline.get("default_std_source", "")),
                      float(baseline["default_sparsity_std"]), allow_missing)


# --- output -----------------------------------------------------------------------------------
def _label(row) -> str:
    return f"{row.model}/{row.dataset} {row.method_label} s={float(row.target_sparsity):g}"


def rule_line(comp: Comparison) -> str:
    k = f"{comp.sigmas:g}"
    return (f"rule: regression if top-1 mean < baseline - tol, tol = max({comp.floor:g}, {k} * "
            f"sqrt(s_b^2/n_b + s_c^2/n_c)), s = seed std if n >= 2 else {comp.default_std:.3g} "
            f"({comp.default_std_source}); counts exact where constant over the baseline seeds, "
            f"else sparsity within the same {k}-sigma rule")


def _acc(value: float | None, n: int | None) -> str:
    return "-" if value is None else f"{value:.2f} (n={n})"


def _signed(x: float | None, fmt: str) -> str:
    return "" if x is None else format(x, "+" + fmt)


def _span(lo, hi, fmt: str) -> str:
    return format(lo, fmt) if lo == hi else f"{format(lo, fmt)}..{format(hi, fmt)}"


def table_rows(comp: Comparison) -> list[list[str]]:
    """One row per (cell, metric) that moved beyond tolerance or changed status."""
    rows = []
    for c in comp.checks:
        head = [c.model, c.dataset, c.method_label, f"{c.target_sparsity:g}"]
        verdict = c.verdict + (" (allowed)" if c.verdict == "missing" and comp.allow_missing
                               else "")
        if c.verdict in ("missing", "new", "failed", "recipe differs"):
            current = (_acc(c.cur_top1, c.cur_n) if c.verdict in ("new", "recipe differs")
                       else "failed" if c.verdict == "failed" else "-")
            rows.append(head + ["top1", _acc(c.base_top1, c.base_n), current, "", "", verdict,
                                c.note])
            continue
        if c.accuracy != "ok" or c.note:
            rows.append(head + ["top1", _acc(c.base_top1, c.base_n), _acc(c.cur_top1, c.cur_n),
                                _signed(c.delta, ".2f"), f"{c.tol:.2f}",
                                c.accuracy, c.note])
        if c.counts == "changed":
            if c.counts_rule == "exact" and (c.cur_nonzero_min != c.base_nonzero
                                             or c.cur_nonzero_max != c.base_nonzero):
                lo, hi = c.cur_nonzero_min, c.cur_nonzero_max
                worst = lo if abs(lo - c.base_nonzero) >= abs(hi - c.base_nonzero) else hi
                rows.append(head + ["params_nonzero", f"{c.base_nonzero:.0f}",
                                    _span(lo, hi, ".0f"), _signed(worst - c.base_nonzero, ".0f"),
                                    "0", "counts changed", "exact rule"])
            else:
                rows.append(head + ["achieved_sparsity", f"{c.base_sparsity:.6g}",
                                    _span(c.cur_sparsity_min, c.cur_sparsity_max, ".6g"),
                                    _signed(c.sparsity_delta, ".3g"), f"{c.sparsity_tol:.3g}",
                                    "counts changed", f"{c.counts_rule} rule"])
    return rows


HEADER = ["model", "dataset", "method", "sparsity", "metric", "baseline", "current", "delta",
          "tol", "verdict", "note"]


def format_table(rows: list[list[str]]) -> str:
    """Aligned Markdown table (numbers right-aligned)."""
    right = {3, 5, 6, 7, 8}
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]

    def line(cells):
        return "| " + " | ".join(c.rjust(w) if i in right else c.ljust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths, strict=True))) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if i in right else "-" * (w + 2)
                          for i, w in enumerate(widths)) + "|"
    return "\n".join([line(HEADER), rule, *map(line, rows)])


def summary_line(comp: Comparison) -> str:
    n = comp.counts
    missing = f"{n['missing']} missing" + (" (allowed)" if comp.allow_missing and n["missing"]
                                          else "")
    recipe = f"{n['recipe differs']} recipe differs, " if n["recipe differs"] else ""
    return (f"{recipe}{n['regressed']} regressed, {n['counts changed']} counts changed, "
            f"{n['failed']} failed, {n['improved']} improved, {n['ok']} within tolerance, "
            f"{missing}, {n['new']} new")


def to_csv(comp: Comparison) -> str:
    table = pd.DataFrame([asdict(c) for c in comp.checks],
                         columns=list(CellCheck.__dataclass_fields__))
    ints = ["base_n", "cur_n", "cur_failed", "base_nonzero", "cur_nonzero_min", "cur_nonzero_max"]
    for col in ints:
        values = pd.to_numeric(table[col]).astype(float)
        if values.dropna().map(float.is_integer).all():  # a varying-count mean stays a float
            table[col] = values.astype("Int64")
    return table.to_csv(index=False)
