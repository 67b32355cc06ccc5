"""Dataset registry: name -> loader(DataConfig, root) -> DataBundle.

The data root is ``--data-root`` or ``$SPARSEBENCH_DATA`` (default ``~/.cache/sparsebench``).
A dataset that is not on disk raises a UserError saying where we looked and how to get it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.config import DataConfig
from bench.data import cifar, imagefolder, mnist, mnist1d, synthetic
from bench.data.base import DataBundle


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    load: Callable[[DataConfig, Path], DataBundle]
    description: str
    # Cheap presence check (files there and readable, settings usable) without loading: run for
    # every dataset of a grid before anything starts. None: nothing to check.
    check: Callable[[DataConfig, Path], object] | None = None


DATASETS: dict[str, DatasetSpec] = {
    s.name: s
    for s in (
        DatasetSpec("mnist1d", mnist1d.load, "MNIST-1D, generated offline (4000/1000 by default)",
                    mnist1d.check),
        DatasetSpec("synthetic", synthetic.load, "synthetic 3x32x32 images, 10 classes (tests)"),
        DatasetSpec("cifar10", cifar.load_cifar10, "CIFAR-10, 3x32x32, 10 classes",
                    cifar.check_cifar10),
        DatasetSpec("cifar100", cifar.load_cifar100, "CIFAR-100, 3x32x32, 100 fine classes",
                    cifar.check_cifar100),
        DatasetSpec("mnist", mnist.load, "MNIST, 1x28x28, 10 classes (IDX files)", mnist.check),
        DatasetSpec("imagenet", imagefolder.load_imagenet, "ImageNet-1k, 3x224x224 (ImageFolder)",
                    imagefolder.check_imagenet),
        DatasetSpec("tinyimagenet", imagefolder.load_tinyimagenet,
                    "Tiny-ImageNet-200, 3x64x64, 200 classes", imagefolder.check_tinyimagenet),
    )
}


def default_data_root() -> Path:
    env = os.environ.get("SPARSEBENCH_DATA")
    return Path(env) if env else Path.home() / ".cache" / "sparsebench"


def get_dataset_spec(name: str) -> DatasetSpec:
    """The registered spec, built-in or another package's (bench/plugins.py); UserError for an
    unknown name."""
    from bench.plugins import lookup

    return lookup(name, DATASETS, "sparsebench.datasets", DatasetSpec, "dataset")


def check_dataset(cfg: DataConfig, root: Path | None = None) -> None:
    """UserError when the data of `cfg` is missing, unreadable or unusable, without loading."""
    spec = get_dataset_spec(cfg.name)
    if spec.check is not None:
        spec.check(cfg, Path(root) if root else default_data_root())


def load_dataset(cfg: DataConfig, root: Path | None = None) -> DataBundle:
    return get_dataset_spec(cfg.name).load(cfg, Path(root) if root else default_data_root())
