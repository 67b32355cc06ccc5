"""Small image datasets decoded once into a verified uint8 cache (Tiny-ImageNet: 64x64 JPEGs).

Decoding 110,000 JPEGs with PIL every epoch (or every run) keeps a GPU waiting; the decoded set
is 1.35 GB of uint8, so it is decoded once, with DataLoader workers, into
``<data root>/cache/<name>-uint8.pt`` and every later load reads that file and takes the
in-memory path (the uint8 images as ``bench.data.stored.Uint8Images``, moved to the training
device once, each batch normalised and augmented there, drawing from the run's batch
generator).

The cache holds the images as (N, 3, H, W) uint8 exactly as ``PIL.Image.convert("RGB")`` gives
them (``torchvision.transforms.ToTensor``'s layout before its division), the labels, a digest
of the source files (relative path, label, size and modification time of every image: a
changed image set makes it stale) and a SHA-256 of the tensors. A cache that cannot be read,
does not match its checksum or its shapes is set aside as ``.corrupt`` (``bench.store``) and
decoded again; a stale one is decoded again and replaced. Parallel runs share it: one decodes
under a lock, the others wait and read it. Where the cache folder cannot be written, the images
are decoded in memory for this run and a warning says so.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from bench import store
from bench.data.base import default_workers
from bench.errors import UserError
from bench.locks import hold
from bench.store import atomic_torch_save

KEYS = ("x", "y", "x_test", "y_test")
DECODE_BATCH = 256


def cache_path(root: Path, name: str) -> Path:
    return Path(root) / "cache" / f"{name}-uint8.pt"


def source_digest(base: Path, train: list[tuple[str, int]],
                  test: list[tuple[str, int]]) -> str:
    """SHA-256 of (split, path relative to `base`, label, size, mtime_ns) of every sample: what
    the decoded arrays were made from."""
    digest = hashlib.sha256()
    for split, samples in (("train", train), ("test", test)):
        for path, label in samples:
            st = os.stat(path)
            rel = os.path.relpath(path, base)
            digest.update(f"{split}\0{rel}\0{label}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def data_digest(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in KEYS:
        t = tensors[key].contiguous()
        digest.update(f"{key}{tuple(t.shape)}{t.dtype}".encode())
        digest.update(t.numpy())  # the buffer itself: no 1.2 GB copy of it
    return digest.hexdigest()


class _Decode(Dataset):
    """Item i: the image of ``paths[i]`` as (3, H, W) uint8, and "" or why it cannot be used
    (unreadable, or not `size`); problems travel back as strings so the caller raises one clear
    UserError instead of a worker's traceback."""

    def __init__(self, paths: list[str], size: tuple[int, int]) -> None:
        self.paths, self.size = paths, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        h, w = self.size
        try:
            with Image.open(self.paths[i]) as img:
                rgb = np.asarray(img.convert("RGB"))
        except (OSError, UnidentifiedImageError) as e:
            return torch.zeros(3, h, w, dtype=torch.uint8), f"cannot be decoded ({e})"
        if rgb.shape != (h, w, 3):
            return (torch.zeros(3, h, w, dtype=torch.uint8),
                    f"is {rgb.shape[1]}x{rgb.shape[0]}, not {w}x{h}")
        return torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous(), ""


def decode(paths: list[str], size: tuple[int, int], workers: int | None = None) -> torch.Tensor:
    """The images of `paths` as one (N, 3, H, W) uint8 tensor, decoded by `workers` DataLoader
    processes (default ``default_workers()``; the result does not depend on it). Raises
    UserError naming the first image that cannot be decoded or is not `size` (H, W)."""
    out = torch.empty(len(paths), 3, *size, dtype=torch.uint8)
    workers = default_workers() if workers is None else workers
    loader = DataLoader(_Decode(paths, size), batch_size=DECODE_BATCH, num_workers=workers,
                        collate_fn=lambda items: items)
    i = 0
    for items in loader:
        for image, problem in items:
            if problem:
                raise UserError(f"{paths[i]} {problem}; every image of this dataset must be a "
                                f"{size[1]}x{size[0]} image")
            out[i] = image
            i += 1
    return out


def cache_problem(tensors: object, source: str, shape: tuple[int, ...]) -> str | None:
    """Why a loaded cache cannot be used: wrong type, tensors, dtypes or shapes, other source
    files (``"stale"``), or data that does not match its SHA-256."""
    if not isinstance(tensors, dict):
        return f"holds a {type(tensors).__name__}, not the cached arrays"
    for key in KEYS:
        value = tensors.get(key)
        want = (torch.uint8, 1 + len(shape)) if key.startswith("x") else (torch.long, 1)
        if not isinstance(value, torch.Tensor) or (value.dtype, value.dim()) != want:
            return f"has no {want[1]}-d {want[0]} tensor {key!r}"
    if tuple(tensors["x"].shape[1:]) != shape or tuple(tensors["x_test"].shape[1:]) != shape \
            or len(tensors["x"]) != len(tensors["y"]) \
            or len(tensors["x_test"]) != len(tensors["y_test"]):
        return "has arrays of the wrong shapes"
    if tensors.get("sha256") != data_digest(tensors):
        return "does not match its checksum"
    if tensors.get("source") != source:
        return "stale"
    return None


def read_cache(path: Path, source: str, shape: tuple[int, ...]) -> dict[str, torch.Tensor] | None:
    """The cached arrays, or None when there is none, it is stale (decode again and replace
    it) or damaged (set aside as ``<name>.corrupt`` with a warning naming it)."""
    if not path.exists() and not path.is_symlink():
        return None
    try:
        tensors = torch.load(path, weights_only=True)
        problem = cache_problem(tensors, source, shape)
    except Exception as exc:  # truncated, empty, not a torch file, a directory, ...
        problem = f"cannot be read ({type(exc).__name__})"
    if problem is None:
        return tensors
    if problem == "stale":
        store.warn(f"{path} was decoded from other files than those now in the dataset; "
                   "decoding them again")
    else:
        store.set_aside(path, f"data cache {problem}; decoding the images again")
    return None


def writable(folder: Path) -> bool:
    """Whether `folder` exists as a writable folder or can be created (its nearest existing
    ancestor is a writable folder)."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)


def load_decoded(name: str, root: Path, base: Path, train: list[tuple[str, int]],
                 test: list[tuple[str, int]], size: tuple[int, int],
                 workers: int | None = None) -> dict[str, torch.Tensor]:
    """``{"x", "y", "x_test", "y_test"}``: the train and test `samples` ((path, label) pairs
    under `base`) as uint8 (N, 3, H, W) images and int64 labels, from the verified cache of
    dataset `name` under `root` (decoded and written first when missing, stale or damaged)."""
    shape = (3, *size)
    source = source_digest(base, train, test)

    def fresh() -> dict[str, torch.Tensor]:
        return {"x": decode([p for p, _ in train], size, workers),
                "y": torch.tensor([t for _, t in train], dtype=torch.long),
                "x_test": decode([p for p, _ in test], size, workers),
                "y_test": torch.tensor([t for _, t in test], dtype=torch.long)}

    path = cache_path(root, name)
    if not writable(path.parent):
        store.warn(f"cannot write the {name} cache under {path.parent}: decoding the images in "
                   "memory for this run (point --data-root / SPARSEBENCH_DATA at a writable "
                   "folder to decode them once)")
        return fresh()
    with hold(path.with_name(path.name + ".lock"), f"waiting for another process using the "
              f"data cache {path} (checking or writing it)"):
        tensors = read_cache(path, source, shape)
        if tensors is None:
            store.clean_temp_files(path.parent)
            tensors = fresh()
            atomic_torch_save({**tensors, "source": source, "sha256": data_digest(tensors)},
                              path)
    return {k: tensors[k] for k in KEYS}
