"""CIFAR-10 / CIFAR-100 from the python-pickle release as torchvision stores it:
``<root>/cifar-10-batches-py/data_batch_1..5, test_batch`` and
``<root>/cifar-100-python/train, test``.

The whole set is held in memory as its uint8 pixels (``bench.data.stored.Uint8Images``: 150
MB for CIFAR-10's training set, not 600 MB of float32), each batch normalised to float32 on its
device bit for bit as ``normalise`` of the whole set would; train-time augmentation (random
crop 32 with 4-pixel zero padding + horizontal flip, as in torchvision's
``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip``) runs vectorised on each normalised
batch and draws only from the batch generator, so it is reproducible and resumable.

The batch files are Python 2 pickles. We unpickle them with an allow-list (dicts, lists, bytes
and plain numpy uint8 arrays) so a tampered file cannot run code.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.config import DataConfig
from bench.data.base import DataBundle
from bench.data.stored import Uint8Images
from bench.errors import DataNotFound, UserError

SHAPE = (3, 32, 32)
PADDING = 4


@dataclass(frozen=True)
class CifarVariant:
    name: str
    folder: str
    train_files: tuple[str, ...]
    test_file: str
    label_key: str
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    torchvision_class: str


# Per-channel statistics of the training sets (pixel values in [0, 1]).
CIFAR10 = CifarVariant(
    "cifar10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test_batch", "labels", 10,
    (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), "CIFAR10",
)
CIFAR100 = CifarVariant(
    "cifar100", "cifar-100-python", ("train",), "test", "fine_labels", 100,
    (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), "CIFAR100",
)

# Everything a CIFAR batch pickle legitimately references. Python 2 era files name numpy's
# module ``numpy.core.multiarray``; files written by numpy 2 name it ``numpy._core.multiarray``;
# bytes pickled by Python 3 at protocol 2 go through ``_codecs.encode``.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"unexpected global {module}.{name}")
        return super().find_class(module, name)


def read_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 of one CIFAR pickle file."""
    try:
        with open(path, "rb") as f:
            # latin1 turns Python 2 byte strings into str keys and lets numpy rebuild its arrays.
            raw = _SafeUnpickler(f, encoding="latin1").load()
        batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in raw.items()}
        data = np.asarray(batch["data"], dtype=np.uint8)
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, KeyError, TypeError,
            ValueError) as e:
        raise UserError(f"{path} is not a readable CIFAR batch file ({e!r})") from None
    n = len(labels)
    if data.shape != (n, 3 * 32 * 32) or (n and not 0 <= labels.min() <= labels.max()
                                          < num_classes):
        raise UserError(f"{path} is not a valid CIFAR batch: data shape {data.shape}, "
                        f"{n} labels, label range must be [0, {num_classes})")
    return data.reshape(n, *SHAPE), labels


def normalise(images: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 (x / 255 - mean) / std per channel."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return images.to(torch.float32).div_(255.0).sub_(m).div_(s)


@dataclass(frozen=True)
class PadCropFlip:
    """Random crop of the original size from the image zero-padded by `padding` pixels, then a
    horizontal flip with probability 1/2: torchvision's ``RandomCrop(size, padding)`` +
    ``RandomHorizontalFlip()`` done on a whole normalised batch at once. `fill` is the
    normalised value of a black pixel per channel, so padding matches padding the raw image with
    zeros. Draws, in order, the row offsets, the column offsets and the flips, all from
    `generator`."""

    padding: int
    fill: tuple[float, ...]

    def draw(self, batch_size: int, generator: torch.Generator):
        """Row offsets, column offsets and flips of a batch, in that order, on the CPU."""
        span = 2 * self.padding + 1
        oy = torch.randint(0, span, (batch_size,), generator=generator)
        ox = torch.randint(0, span, (batch_size,), generator=generator)
        flip = torch.randint(0, 2, (batch_size,), generator=generator).bool()
        return oy, ox, flip

    def advance(self, batch_size: int, generator: torch.Generator) -> None:
        """Consume the draws of a skipped batch (resume mid-epoch without loading it)."""
        self.draw(batch_size, generator)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b, c, h, w = x.shape
        p = self.padding
        oy, ox, flip = self.draw(b, generator)
        fill = torch.tensor(self.fill, dtype=x.dtype, device=x.device).view(1, c, 1, 1)
        padded = fill.expand(b, c, h + 2 * p, w + 2 * p).clone()
        padded[:, :, p : p + h, p : p + w] = x
        rows = oy[:, None] + torch.arange(h)
        cols = ox[:, None] + torch.arange(w)
        # Flipping the crop is reading its columns right to left.
        cols = torch.where(flip[:, None], cols.flip(1), cols)
        dev = x.device
        bi = torch.arange(b, device=dev).view(b, 1, 1, 1)
        ci = torch.arange(c, device=dev).view(1, c, 1, 1)
        return padded[bi, ci, rows.to(dev).view(b, 1, h, 1), cols.to(dev).view(b, 1, 1, w)]


def pad_crop_flip(mean, std, padding: int = PADDING) -> PadCropFlip:
    return PadCropFlip(padding, tuple(-m / s for m, s in zip(mean, std, strict=True)))


def missing_message(variant: CifarVariant, folder: Path, missing: list[str]) -> str:
    looked = f"{folder} (no such folder)" if not folder.is_dir() else (
        f"{folder} (missing {', '.join(missing)})")
    return (f"{variant.name} not found: looked in {looked}; get it with python -c \"import "
            f"torchvision; torchvision.datasets.{variant.torchvision_class}('{folder.parent}', "
            f"download=True)\" (on a machine with network, then copy {variant.folder}/ here), "
            f"or point --data-root / SPARSEBENCH_DATA at a folder that holds {variant.folder}/")


def check_variant(variant: CifarVariant, cfg: DataConfig, root: Path) -> None:
    """Every batch file present and readable (UserError saying where we looked), without
    reading the data: what a grid checks before it starts."""
    folder = Path(root) / variant.folder
    names = (*variant.train_files, variant.test_file)
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise DataNotFound(missing_message(variant, folder, missing))
    for name in names:
        try:
            with open(folder / name, "rb") as f:
                f.read(1)
        except OSError as e:
            raise UserError(f"{folder / name} is not readable ({e.strerror})") from None


def load_variant(variant: CifarVariant, cfg: DataConfig, root: Path) -> DataBundle:
    check_variant(variant, cfg, root)
    folder = Path(root) / variant.folder
    parts = [read_batch(folder / n, variant.label_key, variant.num_classes)
             for n in variant.train_files]
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    if cfg.train_subset:
        # Copies, so the whole set's pixels are released.
        x_train, y_train = x_train[: cfg.train_subset].copy(), y_train[: cfg.train_subset].copy()
    x_test, y_test = read_batch(folder / variant.test_file, variant.label_key,
                                variant.num_classes)

    def stored(x: np.ndarray, y: np.ndarray) -> Uint8Images:
        return Uint8Images.from_normalise(torch.from_numpy(x), torch.from_numpy(y),
                                          lambda u: normalise(u, variant.mean, variant.std))

    train, test = stored(x_train, y_train), stored(x_test, y_test)
    transform = pad_crop_flip(variant.mean, variant.std) if cfg.augment else None
    return DataBundle(train, test, SHAPE, variant.num_classes, transform)


def check_cifar10(cfg: DataConfig, root: Path) -> None:
    check_variant(CIFAR10, cfg, root)


def check_cifar100(cfg: DataConfig, root: Path) -> None:
    check_variant(CIFAR100, cfg, root)


def load_cifar10(cfg: DataConfig, root: Path) -> DataBundle:
    return load_variant(CIFAR10, cfg, root)


def load_cifar100(cfg: DataConfig, root: Path) -> DataBundle:
    return load_variant(CIFAR100, cfg, root)
