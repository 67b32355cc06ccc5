"""MNIST-1D generated offline by the ``mnist1d`` package's own procedural generator
(greydanus/mnist1d ``mnist1d/data.py: make_dataset``), cached under the data root.

``make_dataset`` reseeds Python's global ``random`` and NumPy's global generator
(``mnist1d.utils.set_seed``); we save and restore both around the call so that generating the
data cannot disturb anything else in the process.
"""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from bench import store
from bench.config import DataConfig
from bench.data.base import DataBundle
from bench.locks import hold
from bench.store import atomic_torch_save

GENERATOR_SEED = 42  # the package's default: the canonical MNIST-1D


def generate(num_samples: int, train_split: float) -> dict[str, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = num_samples
    args.train_split = train_split
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        return make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def cache_path(cfg: DataConfig, root: Path) -> Path:
    return Path(root) / "mnist1d" / f"mnist1d-n{cfg.num_samples}-split{cfg.train_split:g}.pt"


KEYS = {"x": (torch.float32, 2), "y": (torch.long, 1), "x_test": (torch.float32, 2),
        "y_test": (torch.long, 1)}


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in KEYS:
        digest.update(key.encode())
        digest.update(tensors[key].contiguous().numpy().tobytes())
    return digest.hexdigest()


def cache_problem(tensors: object, num_samples: int) -> str | None:
    """Why a loaded cache cannot be used: wrong type, missing tensors, wrong dtypes or shapes,
    a sample count other than `num_samples`, or data that does not match its SHA-256."""
    if not isinstance(tensors, dict):
        return f"holds a {type(tensors).__name__}, not the cached tensors"
    for key, (dtype, dim) in KEYS.items():
        value = tensors.get(key)
        if not isinstance(value, torch.Tensor) or value.dtype != dtype or value.dim() != dim:
            return f"has no {dim}-d {dtype} tensor {key!r}"
    x, y, xt, yt = (tensors[k] for k in KEYS)
    if len(x) != len(y) or len(xt) != len(yt) or x.shape[1:] != xt.shape[1:]:
        return "has tensors of mismatched shapes"
    if len(x) + len(xt) != num_samples:
        return f"holds {len(x) + len(xt)} samples, not {num_samples}"
    if tensors.get("sha256") != _digest(tensors):
        return "does not match its checksum"
    return None


def read_cache(path: Path, num_samples: int) -> dict[str, torch.Tensor] | None:
    """The cached tensors, or None when there is no cache or it is damaged (then it has been
    set aside as ``<name>.corrupt`` with a warning naming it, and the caller regenerates it)."""
    if not path.exists() and not path.is_symlink():
        return None
    try:
        tensors = torch.load(path, weights_only=True)
        problem = cache_problem(tensors, num_samples)
    except Exception as exc:  # truncated, empty, not a torch file, a directory, ...
        problem = f"cannot be read ({type(exc).__name__})"
    if problem is None:
        return tensors
    store.set_aside(path, f"data cache {problem}; regenerating it")
    return None


def check(cfg: DataConfig, root: Path) -> None:
    """Settings the generator can use, and a cache that is readable or can be written (the
    nearest existing folder above it writable), without generating anything."""
    from bench.errors import UserError

    if cfg.num_samples < 10 or not 0.0 < cfg.train_split < 1.0:
        raise UserError("mnist1d needs num_samples >= 10 and train_split in (0, 1)")
    n_test = cfg.num_samples - int(cfg.num_samples * cfg.train_split)
    if n_test < 1 or cfg.num_samples - n_test < 1:
        raise UserError(f"mnist1d: num_samples = {cfg.num_samples} with train_split = "
                        f"{cfg.train_split:g} leaves an empty train or test set")
    path = cache_path(cfg, root)
    if path.exists():
        if not os.access(path, os.R_OK):
            raise UserError(f"the MNIST-1D cache {path} is not readable")
        return
    folder = store.creation_parent(path)
    if not store.writable_folder(folder):
        raise UserError(f"cannot write the MNIST-1D cache under {root}: {folder} is not a "
                        "writable folder; point --data-root / SPARSEBENCH_DATA at one")


def load(cfg: DataConfig, root: Path) -> DataBundle:
    check(cfg, root)
    path = cache_path(cfg, root)
    # Parallel runs share the cache: one generates it, the others wait and read it.
    with hold(path.with_name(path.name + ".lock"), f"waiting for another process using the "
              f"data cache {path} (checking or writing it)"):
        tensors = read_cache(path, cfg.num_samples)
        if tensors is None:
            store.clean_temp_files(path.parent)
            data = generate(cfg.num_samples, cfg.train_split)
            tensors = {
                "x": torch.tensor(data["x"], dtype=torch.float32),
                "y": torch.tensor(data["y"], dtype=torch.long),
                "x_test": torch.tensor(data["x_test"], dtype=torch.float32),
                "y_test": torch.tensor(data["y_test"], dtype=torch.long),
            }
            atomic_torch_save({**tensors, "sha256": _digest(tensors)}, path)
    train = TensorDataset(tensors["x"], tensors["y"])
    if cfg.train_subset:
        train = TensorDataset(tensors["x"][: cfg.train_subset], tensors["y"][: cfg.train_subset])
    test = TensorDataset(tensors["x_test"], tensors["y_test"])
    return DataBundle(train, test, (tensors["x"].shape[1],), 10)
