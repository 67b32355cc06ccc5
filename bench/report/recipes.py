"""Recipe identity (issue 11): a report cell is one recipe, never an average of several.

A run's *recipe* is the run id of its config with the seed left out (``recipe_id``), the identity
``sparsebench check`` pins. Two runs under one method label with different recipes (another
optimizer, epochs, hparams, ...) are different experiments: ``split_labels`` gives each recipe a
row of its own, named by the label plus the fields in which the recipes differ, e.g.
``gmp [train.epochs=3]``. Target sparsity and seed are not part of the comparison (they are a
cell's own axes).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from bench import store
from bench.config import canonical, canonical_json, from_dict, run_id
from bench.errors import UserError


def _parsed(config: dict[str, Any] | None):
    from methods import REGISTRY

    try:
        return from_dict(config or {}, REGISTRY[(config or {})["method"]["name"]].Hparams)
    except (KeyError, TypeError, UserError):
        return None


def recipe_id(config: dict[str, Any] | None) -> str | None:
    """The run id of a result's config with the seed left out: equal for two runs exactly when
    they trained with the same recipe (model, data, method and its hparams, training, sparsity).
    None when the config no longer parses (a method or field since removed)."""
    parsed = _parsed(config)
    return None if parsed is None else run_id(replace(parsed, seed=0))


def recipe_config(config: dict[str, Any] | None) -> str | None:
    """The JSON text ``recipe_id`` hashes (defaults left out, seed 0): short enough for a pin
    to record, and read back by ``recipe_fields(json.loads(...))``. None when the config no
    longer parses."""
    parsed = _parsed(config)
    return None if parsed is None else canonical_json(replace(parsed, seed=0))


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, sub in value.items():
            out |= _flat(sub, f"{prefix}{key}.")
        return out
    return {prefix[:-1]: value}


def recipe_fields(config: dict[str, Any] | None) -> str | None:
    """The config's fields (dotted names, defaults spelled out) without seed and target, as JSON
    text: what ``split_labels`` compares. None when the config no longer parses."""
    parsed = _parsed(config)
    if parsed is None:
        return None
    body = canonical(replace(parsed, seed=0, sparsity=replace(parsed.sparsity, target=0.0)),
                     drop_defaults=False)
    flat = {k: v for k, v in _flat(body).items() if k not in ("seed", "sparsity.target")}
    return json.dumps(flat, sort_keys=True)


def load(root: Path) -> pd.DataFrame:
    """``store.load`` plus what the report and check judge by, read from each result.json:
    ``recipe``, ``recipe_fields``, ``fingerprint`` (JSON text), ``num_classes``,
    ``test_examples`` and ``calibration_converged`` (None where a result predates them)."""
    results = list(store.iter_results(root))  # one scan: its warnings are said once
    runs = store.results_frame(results)
    extra: dict[str, dict[str, Any]] = {}
    for folder, result in results:
        fp = result.get("fingerprint")
        extra[str(folder)] = {
            "recipe": recipe_id(result.get("config")),
            "recipe_fields": recipe_fields(result.get("config")),
            "fingerprint": json.dumps(fp, sort_keys=True) if isinstance(fp, dict) else None,
            "num_classes": result.get("num_classes"),
            "test_examples": result.get("test_examples"),
            "calibration_converged": result.get("calibration_converged"),
        }
    columns = ["recipe", "recipe_fields", "fingerprint", "num_classes", "test_examples",
               "calibration_converged"]
    for col in columns:
        runs[col] = [extra.get(str(p), {}).get(col) for p in runs["path"]]
    return runs


def split_labels(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs whose (model, dataset, method label) holds several recipes get the label
    ``<label> [field=value, ...]`` naming the fields in which those recipes differ (and
    ``recipe_split`` True); every other run keeps its label. ``base_label`` keeps the label
    the grid gave (what ``sparsebench check`` matches a pinned cell by). Idempotent."""
    if "base_label" not in runs:
        runs = runs.assign(base_label=runs["method_label"])
    if "recipe_fields" not in runs or runs.empty:
        return runs
    df = runs.copy()
    if "recipe_split" not in df:
        df["recipe_split"] = False
    for _, group in df.groupby(["model", "dataset", "method_label"], sort=False, dropna=False):
        kinds = {f for f in group["recipe_fields"] if isinstance(f, str)}
        if len(kinds) < 2:
            continue
        flats = {f: json.loads(f) for f in kinds}
        keys = sorted({k for flat in flats.values() for k in flat})
        differ = [k for k in keys if len({json.dumps(flat.get(k)) for flat in flats.values()}) > 1]
        for index, fields in group["recipe_fields"].items():
            if isinstance(fields, str):
                shown = ", ".join(f"{k}={_value(flats[fields].get(k))}" for k in differ)
                df.at[index, "method_label"] = f"{df.at[index, 'method_label']} [{shown}]"
                df.at[index, "recipe_split"] = True
    return df


def _value(value: Any) -> str:
    return "-" if value is None else str(value)


def differing_fields(fields_a: str | None, fields_b: str | None) -> list[str]:
    """'train.epochs: 40 -> 3' for each field (``recipe_fields`` JSON text) in which two
    recipes differ, sorted by name; [] when either is unknown (None)."""
    if not isinstance(fields_a, str) or not isinstance(fields_b, str):
        return []
    a, b = json.loads(fields_a), json.loads(fields_b)
    return [f"{k}: {_value(a.get(k))} -> {_value(b.get(k))}" for k in sorted(set(a) | set(b))
            if json.dumps(a.get(k)) != json.dumps(b.get(k))]


def base_label(label: str) -> str:
    """A cell's label without the recipe fields ``split_labels`` added: 'gmp [train.epochs=3]'
    -> 'gmp' (a pinned cell records only its label)."""
    return str(label).partition(" [")[0]
