"""The rules a check applies to each cell (user-facing statement: README "Regression checks" and
baselines/pinned/README.md).

* **Gate: exact or sigma.** When the pin records a fingerprint (``bench.fingerprint``: torch
  version, CPU ISA torch dispatches to, intra-op threads, platform, device) and every current
  result has that same fingerprint, results are bit-reproducible, so the check is **exact**:
  every cell must have the pinned seeds with identical per-seed top-1 and nonzero counts, or it
  is "not identical" (a failure). Otherwise (another machine or torch, or a pin without a
  fingerprint) the **sigma** fallback below applies. ``rule_line`` prints which one and why.
* **Accuracy (sigma).** A cell regressed if ``current mean top-1 < baseline mean - tol`` and
  improved if ``current mean > baseline mean + tol`` (reported, never a failure), with::

      tol = max(floor, k * sqrt(s_b**2 / n_b + s_c**2 / n_c))

  k = ``--sigmas`` (default 3) and floor = ``--floor`` (default 0.5 points of top-1). ``n`` is
  the number of successful seeds on each side; ``s`` is that side's sample std (ddof=1) when
  n >= 2, else the baseline file's ``default_std``.
* **Counts (sigma).** ``counts_rule = "exact"`` cells (a fixed-budget method whose pinned seeds
  all kept the same count) must keep exactly ``params_nonzero`` on every seed and an achieved
  sparsity within ``SPARSITY_EPS``; ``"sigma"`` cells (STR, EigenDamage, or counts that varied
  over seeds) must keep their mean achieved sparsity within ``max(SPARSITY_EPS, k * sqrt(s_b**2
  / n_b + s_c**2 / n_c))`` of the baseline, either direction ("counts changed", a failure).
* **Seeds.** A cell whose number of successful seeds differs from the pin's is "n changed", a
  failure whatever its numbers: a cell that lost a seed is a different measurement (issue 11).
  With ``--only seed=S`` the baseline cell is first restricted to seed S (schema 2 pins).
* **Recipe.** A current cell trained with another recipe (``recipe_id``: the run id without the
  seed) than the pin's is "recipe differs", a failure: no tolerance makes two experiments
  comparable; the note names the differing fields. Cells are matched by label, then by the
  grid's label (``match``), so a label the report split by recipe is one "recipe differs" per
  extra recipe rather than "missing" + "new". Pins without recipes and configs that no longer
  parse skip this rule.
* **Status.** A baseline cell with no current result is "missing" (a failure unless
  ``allow_missing``); a current cell absent from the baseline is "new" (never a failure); a cell
  whose every seed failed is "failed" (a failure).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from bench.check.baseline import cell_key, only_filter
from bench.fingerprint import differences
from bench.report.recipes import base_label, differing_fields, recipe_fields

DEFAULT_SIGMAS = 3.0
DEFAULT_FLOOR = 0.5
SPARSITY_EPS = 1e-9

FAILING = ("recipe differs", "n changed", "not identical", "regressed", "counts changed",
           "failed", "missing")
VERDICTS = ("recipe differs", "n changed", "not identical", "regressed", "counts changed",
            "failed", "improved", "ok", "missing", "new")


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
    accuracy: str | None = None  # regressed / improved / ok (sigma) or identical / differs
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
    rule: str = "sigma"  # "exact" or "sigma"
    rule_reason: str = ""
    counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        self.counts = {v: sum(c.verdict == v for c in self.checks) for v in VERDICTS}

    @property
    def failed(self) -> bool:
        failing = [v for v in FAILING if not (v == "missing" and self.allow_missing)]
        return any(self.counts[v] for v in failing)


def _f(x) -> float | None:
    return None if x is None or pd.isna(x) else float(x)


def gate(baseline: dict[str, Any], current_fingerprint: dict | None) -> tuple[str, str]:
    """("exact" | "sigma", why): exact when the pin has a fingerprint and per-seed numbers and
    every current result shares that fingerprint."""
    pinned = baseline.get("fingerprint")
    if not baseline["cells"] or any("top1_seeds" not in c for c in baseline["cells"]):
        return "sigma", "the pin has no per-seed numbers (schema 1): re-pin for the exact rule"
    if not pinned:
        return "sigma", "the pin records no fingerprint"
    if not current_fingerprint:
        return "sigma", "the current results do not share one fingerprint"
    diff = differences(pinned, current_fingerprint)
    if diff:
        return "sigma", "fingerprint differs: " + "; ".join(diff)
    return "exact", "fingerprint matches the pin"


def _restrict(cell: dict[str, Any], seed: int) -> dict[str, Any]:
    """A schema-2 baseline cell cut down to one seed (``--only seed=S``)."""
    i = cell["seeds"].index(seed)
    top1, kept = cell["top1_seeds"][i], cell["nonzero_seeds"][i]
    out = dict(cell, n=1, seeds=[seed], top1_mean=top1, top1_std=None, top1_seeds=[top1],
               nonzero_seeds=[kept])
    if cell["counts_rule"] == "exact":
        out["params_nonzero"] = kept
    return out


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


def _exact_check(check: CellCheck, base: dict[str, Any], cur) -> None:
    """Bit-reproducible results: the same seeds with identical per-seed top-1 and counts."""
    check.counts_rule = "exact"
    check.base_nonzero = base["params_nonzero"]
    check.cur_nonzero_min, check.cur_nonzero_max = _f(cur.nonzero_min), _f(cur.nonzero_max)
    check.tol = 0.0
    cur_seeds = [int(s) for s in str(cur.seeds).split()]
    same_top1 = cur_seeds == base["seeds"] and list(cur.top1_seeds) == base["top1_seeds"]
    same_counts = cur_seeds == base["seeds"] and list(cur.nonzero_seeds) == base["nonzero_seeds"]
    check.accuracy = "identical" if same_top1 else "differs"
    check.counts = "ok" if same_counts else "changed"
    if not (same_top1 and same_counts):
        check.verdict = "not identical"
        parts = []
        if not same_top1:
            parts.append(f"top-1 {base['top1_seeds']} -> {list(cur.top1_seeds)}")
        if not same_counts:
            parts.append(f"nonzero {base['nonzero_seeds']} -> {list(cur.nonzero_seeds)}")
        check.note = "exact rule, per seed: " + "; ".join(parts)


def compare(baseline: dict[str, Any], current: pd.DataFrame, *, sigmas: float = DEFAULT_SIGMAS,
            floor: float = DEFAULT_FLOOR, allow_missing: bool = False,
            only: dict[str, str] | None = None,
            current_fingerprint: dict | None = None) -> Comparison:
    """Check `current` (rows of ``cells``) against `baseline` (``load_baseline``); baseline cells
    are filtered by ``only`` like the runs were. `current_fingerprint`: the fingerprint every
    current result shares (``baseline.common_fingerprint``), None if they do not share one."""
    entries = baseline["cells"]
    if only and entries:
        kept = only_filter(pd.DataFrame(entries), only, "seeds").index
        entries = [entries[i] for i in kept]
        if "seed" in only:
            entries = [_restrict(c, int(only["seed"])) if "top1_seeds" in c else c
                       for c in entries]
    rule, reason = gate(baseline, current_fingerprint)
    default_std = float(baseline["default_std"])
    # An old pin cut by --only seed= keeps its full n: the n rule would misfire there.
    check_n = not (only and "seed" in only and any("top1_seeds" not in c for c in entries))
    checks = []
    for key, b, c, other in sorted(match(entries, current), key=lambda p: p[0]):
        check = CellCheck(*key)
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
            if other is not None or (b.get("recipe") and c.recipe and c.recipe != b["recipe"]):
                # Different training recipes: no tolerance makes the numbers comparable.
                check.verdict = "recipe differs"
                check.note = _recipe_note(b, c, other)
            elif check_n and int(c.n) != int(b["n"]):
                check.verdict = "n changed"
                check.note = (f"pinned n={b['n']} (seeds {' '.join(map(str, b['seeds']))}), "
                              f"now n={int(c.n)} (seeds {c.seeds or 'none'})"
                              + (f"; {check.note}" if check.note else ""))
            elif rule == "exact":
                _exact_check(check, b, c)
            else:
                check.tol = tolerance(check.base_std, check.base_n, check.cur_std,
                                      check.cur_n, default_std, sigmas, floor)
                check.accuracy = ("regressed" if check.delta < -check.tol
                                  else "improved" if check.delta > check.tol else "ok")
                _counts_check(check, b, c, float(baseline["default_sparsity_std"]), sigmas)
                check.verdict = ("counts changed" if check.counts == "changed"
                                 else check.accuracy)
        checks.append(check)
    return Comparison(checks, sigmas, floor, default_std,
                      str(baseline.get("default_std_source", "")),
                      float(baseline["default_sparsity_std"]), allow_missing, rule, reason)


def _grid_key(model, dataset, label, target) -> tuple[str, str, str, float]:
    return cell_key(model, dataset, base_label(label), target)


def match(entries: list[dict[str, Any]], current: pd.DataFrame) -> list[tuple]:
    """Pair baseline cells with current cells: (check key, baseline cell or None, current
    cell or None, the pinned-recipe cell when the pair is another recipe of a pinned cell).

    A cell is first matched by its label; then a pinned cell and the current cells of the same
    model, dataset, target and *grid* label (the label before ``split_labels`` named a recipe
    in it, ``base_label``) are one cell under another name: the current cell with the pinned
    recipe is compared as usual, and every other recipe there is "recipe differs" (not
    "missing" + "new": one more recipe under a label renames the cells of the first, issue 11's
    split). What is left is missing (baseline) or new (current)."""
    base = {cell_key(c["model"], c["dataset"], c["method_label"], c["target_sparsity"]): c
            for c in entries}
    cur = {cell_key(r.model, r.dataset, r.method_label, r.target_sparsity): r
           for r in current.itertuples()}
    pairs = [(k, base[k], cur[k], None) for k in base if k in cur]
    base_groups: dict[tuple, list[tuple]] = {}
    for k, cell in base.items():
        g = _grid_key(cell["model"], cell["dataset"], cell["method_label"],
                      cell["target_sparsity"])
        base_groups.setdefault(g, []).append((k, cell, k in cur))
    cur_groups: dict[tuple, list[tuple]] = {}
    for k, row in cur.items():
        if k not in base:
            label = getattr(row, "base_label", None) or row.method_label
            g = _grid_key(row.model, row.dataset, label, row.target_sparsity)
            cur_groups.setdefault(g, []).append((k, row))
    for g, members in base_groups.items():
        free = [(k, cell) for k, cell, taken in members if not taken]
        candidates = cur_groups.pop(g, [])
        if not candidates:
            pairs += [(k, cell, None, None) for k, cell in free]
            continue
        # The current cell trained with the pinned recipe is the pinned cell, renamed.
        for k, cell in list(free):
            same = [(ck, row) for ck, row in candidates
                    if cell.get("recipe") and getattr(row, "recipe", None) == cell["recipe"]]
            if same:
                pairs.append((k, cell, same[0][1], None))
                candidates.remove(same[0])
                free.remove((k, cell))
        if len(free) == 1 and len(candidates) == 1:  # renamed, recipe judged as usual
            pairs.append((free[0][0], free[0][1], candidates[0][1], None))
            continue
        pinned = {id(c): c for _, c, _ in members}
        reference = [row for _, cell, row, _ in pairs if id(cell) in pinned and row is not None]
        for i, (ck, row) in enumerate(candidates):
            cell = free[i][1] if i < len(free) else members[0][1]
            pairs.append((ck, cell, row, reference[0] if reference else False))
        pairs += [(k, cell, None, None) for k, cell in free[len(candidates):]]
    pairs += [(k, None, row, None) for rows in cur_groups.values() for k, row in rows]
    return pairs


def _recipe_note(b: dict[str, Any], c, pinned_row) -> str:
    """What differs between the pinned recipe and the current cell's: the fields when known
    (from the pin's ``recipe_config``, else from the current cell that has the pinned
    recipe), else the two recipe ids."""
    pinned_fields = (recipe_fields(json.loads(b["recipe_config"])) if b.get("recipe_config")
                     else getattr(pinned_row, "recipe_fields", None) if pinned_row else None)
    fields = differing_fields(pinned_fields, getattr(c, "recipe_fields", None))
    where = (f"another recipe under the pinned label {b['method_label']!r}: "
             if c.method_label != b["method_label"] else "")
    ids = f"pinned recipe {b.get('recipe') or '?'}, current {c.recipe or '?'}"
    what = f"{'; '.join(fields)} ({ids})" if fields else ids
    return f"{where}{what}: rerun with the baseline's config, or re-pin"
