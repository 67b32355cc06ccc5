"""MNIST from the IDX files as torchvision stores them:
``<root>/MNIST/raw/train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each either plain or gzipped (``.gz``).
Held in memory as the uint8 (1, 28, 28) pixels (``bench.data.stored.Uint8Images``), each batch
normalised to float32 bit for bit as ``normalise`` of the whole set would.

MNIST has no standard train-time augmentation (LeNet-300-100 / LeNet-5 are trained on the plain
images), so ``augment = true`` is refused rather than silently ignored.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

from bench.config import DataConfig
from bench.data.base import DataBundle
from bench.data.stored import Uint8Images
from bench.errors import DataNotFound, UserError

SHAPE = (1, 28, 28)
NUM_CLASSES = 10
MEAN, STD = 0.1307, 0.3081  # training-set pixel statistics, values in [0, 1]
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_UBYTE = 0x08  # IDX type code of unsigned bytes, the only one MNIST uses


def raw_folder(root: Path) -> Path:
    return Path(root) / "MNIST" / "raw"


def find_file(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes: magic (0, 0, 0x08, ndim), ndim big-endian int32 sizes,
    then the data in C order."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            blob = f.read()
    except (OSError, EOFError) as e:
        raise UserError(f"{path} is not a readable IDX file ({e!r})") from None
    header = 4 + 4 * ndim
    if len(blob) < header or blob[:4] != bytes((0, 0, _UBYTE, ndim)):
        raise UserError(f"{path} is not an IDX file of {ndim}-d unsigned bytes "
                        f"(header {blob[:4].hex()})")
    dims = struct.unpack(f">{ndim}I", blob[4:header])
    expected = header + int(np.prod(dims))
    if len(blob) != expected:
        raise UserError(f"{path} has {len(blob)} bytes; its header {dims} says {expected}")
    return np.frombuffer(blob, dtype=np.uint8, offset=header).reshape(dims)


def read_split(folder: Path, paths: dict[str, Path], split: str):
    images = read_idx(paths[f"{split}_images"], 3)
    labels = read_idx(paths[f"{split}_labels"], 1).astype(np.int64)
    if images.shape[1:] != SHAPE[1:] or len(images) != len(labels):
        raise UserError(f"MNIST {split} files in {folder} disagree: images {images.shape}, "
                        f"{len(labels)} labels")
    if len(labels) and labels.max() >= NUM_CLASSES:
        raise UserError(f"MNIST {split} labels in {folder} go up to {labels.max()}")
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels)


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 1, 28, 28) -> float32 (x / 255 - MEAN) / STD."""
    return images.to(torch.float32).div_(255.0).sub_(MEAN).div_(STD)


def check(cfg: DataConfig, root: Path) -> dict[str, Path]:
    """The four IDX files, present and readable (UserError saying where we looked and how to
    get them), without reading the data; returns their paths."""
    if cfg.augment:
        raise UserError("mnist has no train-time augmentation; set data.augment = false")
    folder = raw_folder(root)
    found = {key: find_file(folder, name) for key, name in FILES.items()}
    missing = [FILES[k] for k, p in found.items() if p is None]
    if missing:
        raise DataNotFound(
            f"mnist not found: looked in {folder} for {', '.join(missing)} (or .gz); get it with "
            f"python -c \"import torchvision; torchvision.datasets.MNIST('{Path(root)}', "
            f"download=True)\" (on a machine with network, then copy MNIST/ here), or point "
            f"--data-root / SPARSEBENCH_DATA at a folder that holds MNIST/raw/")
    paths = {k: p for k, p in found.items() if p is not None}
    for path in paths.values():
        try:
            with open(path, "rb") as f:
                f.read(1)
        except OSError as e:
            raise UserError(f"{path} is not readable ({e.strerror})") from None
    return paths


def load(cfg: DataConfig, root: Path) -> DataBundle:
    paths = check(cfg, root)
    folder = raw_folder(root)
    x_train, y_train = read_split(folder, paths, "train")
    if cfg.train_subset:
        # Clone so the full set's memory is released.
        x_train = x_train[: cfg.train_subset].clone()
        y_train = y_train[: cfg.train_subset].clone()
    x_test, y_test = read_split(folder, paths, "test")
    return DataBundle(Uint8Images.from_normalise(x_train, y_train, normalise),
                      Uint8Images.from_normalise(x_test, y_test, normalise), SHAPE, NUM_CLASSES)
