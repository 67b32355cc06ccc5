"""Run folders on disk, atomic writes, and all results as one tidy DataFrame.

Layout under a root: ``<root>/runs/<label>-<run id>/`` holding ``config.json``,
``metrics.jsonl``, ``checkpoint.pt``, ``log.txt``, ``model.pt`` and ``result.json`` (written
last, atomically: a valid one means the run is done).

Nothing read back from a root is trusted: a ``result.json`` that does not parse or does not
match the schema is *corrupt* (reported, skipped, retrained), a ``model.pt`` that does not match
the size and SHA-256 its result recorded makes its run not done, a copy of a run folder is a
*duplicate* counted once, and a damaged file is renamed aside (``<name>.corrupt``) with a warning
naming it rather than deleted, so nothing is lost and nothing damaged is read twice.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

RESULT_SCHEMA_VERSION = 1
RESULT = "result.json"
CHECKPOINT = "checkpoint.pt"
CONFIG = "config.json"
METRICS = "metrics.jsonl"
LOG = "log.txt"
MODEL = "model.pt"
# Prefix and suffix of the temp files of atomic writes; one left behind by a killed process
# is removed by the next process that holds the folder's lock (``clean_temp_files``).
TEMP_PREFIX, TEMP_SUFFIX = ".", ".tmp"
RUN_ID = re.compile(r"[0-9a-f]{12}")

_warned: set[str] = set()


def warn(message: str) -> None:
    """One line on stderr, once per process per message (several readers meet the same file)."""
    if message not in _warned:
        _warned.add(message)
        print(f"sparsebench: warning: {message}", file=sys.stderr, flush=True)


def _umask() -> int:
    # Read without changing it where Linux allows (os.umask() sets it, racing other threads).
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{TEMP_PREFIX}{path.name}.",
                               suffix=TEMP_SUFFIX)
    try:
        # mkstemp creates 0600; the file we replace would have been 0666 & ~umask, so give it
        # that mode (colleagues on a shared filesystem read results by the group/other bits).
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def clean_temp_files(folder: Path) -> list[Path]:
    """Remove the temp files that interrupted atomic writes left in `folder`. Call it only while
    holding the folder's lock: another process's write in progress looks the same."""
    removed = []
    if Path(folder).is_dir():
        for path in Path(folder).glob(f"{TEMP_PREFIX}*{TEMP_SUFFIX}"):
            if path.is_file():
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def set_aside(path: Path, reason: str) -> Path:
    """Rename a damaged file to ``<name>.corrupt`` (``.corrupt-2``, ... if taken) and warn with
    both names and `reason`. Returns the new path."""
    path = Path(path)
    target = path.with_name(path.name + ".corrupt")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{n}")
    os.replace(path, target)
    warn(f"{path}: {reason}; set aside as {target.name}")
    return target


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic_write(Path(path), lambda fh: fh.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def append_log(folder: Path, message: str) -> None:
    """A timestamped line in the run folder's ``log.txt`` (the format run.py's logger writes)."""
    import time

    with open(Path(folder) / LOG, "a") as fh:
        fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")


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


def file_digest(path: Path) -> tuple[int, str]:
    """(size in bytes, SHA-256 hex digest) of a file."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def writable_folder(path: Path) -> bool:
    """Whether `path` is a folder this process may create files in."""
    return Path(path).is_dir() and os.access(path, os.W_OK | os.X_OK)


def creation_parent(path: Path) -> Path:
    """The nearest existing ancestor of a missing `path`: the folder creating it starts in
    (``writable_folder`` of it says whether that can succeed)."""
    parent = Path(path).parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    return parent


def runs_dir(root: Path) -> Path:
    return Path(root) / "runs"


def run_dir(root: Path, label: str, rid: str) -> Path:
    return runs_dir(root) / f"{label}-{rid}"


def find_run_dir(root: Path, rid: str) -> Path | None:
    matches = sorted(runs_dir(root).glob(f"*-{rid}")) if runs_dir(root).exists() else []
    return matches[0] if matches else None


def is_done(folder: Path) -> bool:
    return read_result(folder) is not None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(
        value)


def result_problem(result: Any) -> str | None:
    """Why a parsed ``result.json`` does not match the schema run.py writes, or None."""
    if not isinstance(result, dict):
        return f"holds a JSON {type(result).__name__}, not an object"
    if not isinstance(result.get("run_id"), str) or not result["run_id"]:
        return "has no valid run_id"
    if result.get("status") not in ("ok", "failed", "error"):
        return f"has status {result.get('status')!r}, not 'ok', 'failed' or 'error'"
    if not isinstance(result.get("config"), dict):
        return "has no config"
    if result["status"] == "ok":
        if not _number(result.get("top1")):
            return "is 'ok' without a numeric top1"
        if not isinstance(result.get("counts"), dict):
            return "is 'ok' without counts"
    return None


def inspect_result(folder: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(result, None) for a valid ``result.json``; (None, why) for a corrupt one (does not parse,
    is not a file, or does not match the schema); (None, None) when there is none."""
    path = Path(folder) / RESULT
    if not path.exists() and not path.is_symlink():
        return None, None
    try:
        text = path.read_bytes().decode("utf-8")
    except IsADirectoryError:
        return None, "is a directory, not a file"
    except OSError as exc:
        return None, f"cannot be read ({exc.strerror or exc})"
    except UnicodeDecodeError:
        return None, "is not UTF-8 text"
    if not text.strip():
        return None, "is empty"
    try:
        result = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"is not valid JSON ({exc.msg} at line {exc.lineno})"
    problem = result_problem(result)
    owner = Path(folder).name.rsplit("-", 1)[-1]
    if problem is None and RUN_ID.fullmatch(owner) and result["run_id"] != owner:
        problem = f"belongs to run {result['run_id']}, not to run {owner} (copied here?)"
    return (None, problem) if problem else (result, None)


def read_result(folder: Path) -> dict[str, Any] | None:
    """The run's result, or None when there is none or it is corrupt (``inspect_result`` says
    which and why)."""
    return inspect_result(folder)[0]


def model_record(path: Path) -> dict[str, Any]:
    """What a result records about its final model so a later reader can verify it."""
    size, digest = file_digest(path)
    return {"file": Path(path).name, "bytes": size, "sha256": digest}


def model_problem(folder: Path, result: dict[str, Any], full: bool = True,
                  sha256=None) -> str | None:
    """Why a successful run's ``model.pt`` cannot be used, or None. `full` also checks the
    SHA-256 (reads the file, or asks `sha256(path)`: ``bench.digests.Digests.sha256``);
    otherwise presence and size only. Results written before the record existed are checked
    for presence only."""
    if result.get("status") != "ok":
        return None
    record = result.get("model_file")
    path = Path(folder) / (record.get("file", MODEL) if isinstance(record, dict) else MODEL)
    if not path.is_file():
        return f"{path} is missing"
    if not isinstance(record, dict):
        return None
    size = path.stat().st_size
    if size != record.get("bytes"):
        return f"{path} is {size} bytes, its result recorded {record.get('bytes')}"
    if full and (sha256(path) if sha256 else file_digest(path)[1]) != record.get("sha256"):
        return f"{path} does not match the SHA-256 its result recorded"
    return None


def usable_result(folder: Path) -> dict[str, Any] | None:
    """The run's result when it is valid and (for a successful run) its model.pt verifies;
    otherwise None, after setting aside the corrupt result, or the damaged model and the result
    that vouched for it, with a warning naming them. Call it holding the run's lock."""
    result, problem = inspect_result(folder)
    if problem:
        set_aside(Path(folder) / RESULT, f"{problem}; the run is trained again")
        return None
    if result is None:
        return None
    damaged = model_problem(folder, result, full=True)
    if damaged:
        model = Path(folder) / MODEL
        if model.exists() or model.is_symlink():
            set_aside(model, f"{damaged}; the run is trained again")
        set_aside(Path(folder) / RESULT, f"its model is unusable ({damaged})")
        return None
    return result


def prepare_folder(folder: Path, config: dict[str, Any]) -> None:
    """Before training: ``config.json`` holds `config` (written when missing; a damaged or
    foreign one is set aside and rewritten) and ``metrics.jsonl``, rewritten from the
    checkpoint's history at the next epoch, is set aside when it is damaged or another run's
    (``inspect_metrics``)."""
    path = Path(folder) / CONFIG
    if path.exists() or path.is_symlink():
        try:
            ok = read_json(path) == json.loads(json.dumps(config, default=_json_default))
            why = "does not hold this run's config"
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            ok, why = False, f"does not parse ({type(exc).__name__})"
        if not ok:
            set_aside(path, f"{why}; rewritten")
    if not path.exists():
        atomic_write_json(path, config)
    _, problem = inspect_metrics(folder)
    if problem:
        set_aside(Path(folder) / METRICS, f"{problem}; rewritten at the next epoch")


def metrics_lines(run_id: str, history: list[dict[str, Any]]) -> str:
    """``metrics.jsonl``'s text: one JSON object per finished epoch, each tagged with the run
    id (``run_id``), so a file copied from another run's folder is recognised."""
    return "".join(json.dumps({**record, "run_id": run_id}, sort_keys=True) + "\n"
                   for record in history)


def inspect_metrics(folder: Path, history: list[dict[str, Any]] | None = None
                    ) -> tuple[list[dict[str, Any]], str | None]:
    """(records, None) for the run's own ``metrics.jsonl`` (its epoch records, without the
    ``run_id`` tag); ([], why) for a damaged or foreign one; ([], None) when there is none.

    The file is rewritten whole after each epoch (``metrics_lines``, atomically), so it is
    never empty, every line is an epoch record (a JSON object with an integer ``epoch``,
    increasing), and every line carries the folder's run id (lines written before the tag
    existed carry none and pass that check). `history`, the run's result's, when given must
    equal the records: that catches a damaged value that still parses, and a foreign untagged
    file."""
    path = Path(folder) / METRICS
    if not path.exists() and not path.is_symlink():
        return [], None
    try:
        text = path.read_bytes().decode("utf-8")
    except IsADirectoryError:
        return [], "is a directory, not a file"
    except OSError as exc:
        return [], f"cannot be read ({exc.strerror or exc})"
    except UnicodeDecodeError:
        return [], "is not UTF-8 text"
    if not text.strip():
        return [], "is empty"
    owner = Path(folder).name.rsplit("-", 1)[-1]
    records: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            return [], f"line {number} is not valid JSON"
        if not isinstance(record, dict) or not isinstance(record.get("epoch"), int) or (
                records and record["epoch"] <= records[-1]["epoch"]):
            return [], f"line {number} is not the record of the next epoch"
        tag = record.pop("run_id", None)
        if tag is not None and RUN_ID.fullmatch(owner) and tag != owner:
            return [], f"belongs to run {tag}, not to run {owner} (copied here?)"
        records.append(record)
    if history is not None and json.dumps(records, sort_keys=True) != json.dumps(
            history, sort_keys=True, default=_json_default):
        return [], "does not match the history its run's result recorded"
    return records, None


def iter_results(root: Path):
    """(folder, result) for every valid result under ``root/runs``, once per run id. Corrupt
    results are skipped with a warning naming the file; a second folder holding the same run
    (a copy) is skipped with a warning naming both: the folder named after the run id wins."""
    base = runs_dir(root)
    if not base.is_dir():
        return
    by_id: dict[str, list[tuple[Path, dict[str, Any]]]] = {}
    for folder in sorted(base.iterdir()):
        if not folder.is_dir():
            continue
        result, problem = inspect_result(folder)
        if problem:
            warn(f"{folder / RESULT} {problem}: skipped (status says corrupt; run retrains it)")
        elif result is not None:
            by_id.setdefault(result["run_id"], []).append((folder, result))
    kept = []
    for rid, found in by_id.items():
        own = [f for f in found if f[0].name.endswith(f"-{rid}")] or found
        kept.append(own[0])
        for folder, _ in found:
            if folder != own[0][0]:
                warn(f"{folder} holds a copy of run {rid} ({own[0][0].name}): "
                     "a duplicate, counted once")
    yield from sorted(kept, key=lambda item: item[0])


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
    return results_frame(list(iter_results(root)))


def results_frame(results: list[tuple[Path, dict[str, Any]]]):
    """``load``'s DataFrame from (folder, result) pairs already read (``iter_results``)."""
    import pandas as pd

    rows, flat = [], []
    for folder, result in results:
        rows.append(result_row(folder, result))
        flat.append(config_columns(result.get("config") or {}))
    extra = sorted({key for row in flat for key in row} - set(COLUMNS))
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return pd.concat([frame, pd.DataFrame(flat, columns=extra, index=frame.index)], axis=1)
