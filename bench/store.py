"""Run folders on disk, atomic writes, and all results as one tidy DataFrame.

Layout under a root: ``<root>/runs/<label>-<run id>/`` holding ``config.json``,
``metrics.jsonl``, ``checkpoint.pt``, ``log.txt`` and ``result.json`` (written last, atomically:
its presence means the run is done).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

RESULT_SCHEMA_VERSION = 1
RESULT = "result.json"
CHECKPOINT = "checkpoint.pt"
CONFIG = "config.json"
METRICS = "metrics.jsonl"
LOG = "log.txt"


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    _atomic_write(Path(path), lambda fh: fh.write(text.encode()))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def atomic_torch_save(obj: Any, path: Path) -> None:
    import torch

    _atomic_write(Path(path), lambda fh: torch.save(obj, fh))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def runs_dir(root: Path) -> Path:
    return Path(root) / "runs"


def run_dir(root: Path, label: str, rid: str) -> Path:
    return runs_dir(root) / f"{label}-{rid}"


def find_run_dir(root: Path, rid: str) -> Path | None:
    matches = sorted(runs_dir(root).glob(f"*-{rid}")) if runs_dir(root).exists() else []
    return matches[0] if matches else None


def is_done(folder: Path) -> bool:
    return (folder / RESULT).exists()


def read_result(folder: Path) -> dict[str, Any] | None:
    path = folder / RESULT
    return read_json(path) if path.exists() else None


def iter_results(root: Path):
    base = runs_dir(root)
    if not base.exists():
        return
    for folder in sorted(base.iterdir()):
        result = read_result(folder) if folder.is_dir() else None
        if result is not None:
            yield folder, result


# One row per run; fixed columns so reports never depend on which methods happen to be present.
COLUMNS = [
    "run_id", "status", "model", "dataset", "method", "method_label", "target_sparsity",
    "seed", "layer_policy", "distribution", "top1", "top5", "test_loss", "achieved_sparsity",
    "params_total", "params_prunable", "params_nonzero", "macs", "flops", "macs_dense",
    "train_flops", "epochs", "wall_time_s", "device", "error", "path",
]


def result_row(folder: Path, result: dict[str, Any]) -> dict[str, Any]:
    cfg = result.get("config", {})
    counts = result.get("counts", {})
    return {
        "run_id": result.get("run_id"),
        "status": result.get("status"),
        "model": cfg.get("model", {}).get("name"),
        "dataset": cfg.get("data", {}).get("name"),
        "method": cfg.get("method", {}).get("name"),
        "method_label": result.get("method_label", cfg.get("method", {}).get("name")),
        "target_sparsity": cfg.get("sparsity", {}).get("target"),
        "seed": cfg.get("seed"),
        "layer_policy": cfg.get("sparsity", {}).get("layer_policy"),
        "distribution": result.get("distribution"),
        "top1": result.get("top1"),
        "top5": result.get("top5"),
        "test_loss": result.get("test_loss"),
        "achieved_sparsity": counts.get("sparsity"),
        "params_total": counts.get("params_total"),
        "params_prunable": counts.get("params_prunable"),
        "params_nonzero": counts.get("params_nonzero"),
        "macs": counts.get("macs"),
        "flops": counts.get("flops"),
        "macs_dense": counts.get("macs_dense"),
        "train_flops": result.get("train_flops"),
        "epochs": cfg.get("train", {}).get("epochs"),
        "wall_time_s": result.get("wall_time_s"),
        "device": result.get("device"),
        "error": result.get("error"),
        "path": str(folder),
    }


def config_columns(config: dict[str, Any]) -> dict[str, Any]:
    """The run's whole config flattened to dotted columns: ``train.lr``, ``sparsity.target``,
    ``model.width``, ``seed``; a method's hyperparameters drop the ``hparams`` level
    (``method.drop_fraction``). Lists become tuples so the columns can be grouped on."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        else:
            out[prefix] = tuple(value) if isinstance(value, list) else value

    for section, value in config.items():
        if section == "method" and isinstance(value, dict):
            walk("method", {k: v for k, v in value.items() if k != "hparams"})
            walk("method", value.get("hparams") or {})
        else:
            walk(section, value)
    return out


def load(root: Path):
    """All results under `root` as one tidy DataFrame, one row per run (failed runs included,
    ``status`` says which): the columns ``COLUMNS`` (metrics and achieved counts from
    result.json), then the run's config flattened by ``config_columns``, sorted by name
    (``data.name``, ``method.end_fraction``, ``train.lr``, ...; NaN where a run's method has no
    such hyperparameter)."""
    import pandas as pd

    rows, flat = [], []
    for folder, result in iter_results(root):
        rows.append(result_row(folder, result))
        flat.append(config_columns(result.get("config") or {}))
    extra = sorted({key for row in flat for key in row} - set(COLUMNS))
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return pd.concat([frame, pd.DataFrame(flat, columns=extra, index=frame.index)], axis=1)
