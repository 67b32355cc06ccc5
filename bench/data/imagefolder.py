"""ImageNet and Tiny-ImageNet read from image files in folders (ImageFolder layouts):

* ``<root>/imagenet/train/<wnid>/*.JPEG`` and ``<root>/imagenet/val/<wnid>/*.JPEG`` (the layout
  ``torchvision.datasets.ImageNet`` unpacks the ILSVRC2012 tars into). Classes are the train
  folders, sorted (as ImageFolder numbers them); 1000 on the real set.
* ``<root>/tiny-imagenet-200/train/<wnid>/images/*.JPEG``, with the labelled validation set
  ``val/images/*.JPEG`` + ``val/val_annotations.txt`` used as the test set (the official test
  images have no labels). 200 classes.

Transforms are torchvision's standard ones. ImageNet: train ``RandomResizedCrop(224)`` +
``RandomHorizontalFlip``; eval ``Resize(256)`` + ``CenterCrop(224)``. With ``augment = false``
the train set gets the eval transform. These per-image transforms draw from torch's global
RNG; ``bench.data.base.iterate_batches`` seeds it for each sample from (run seed, epoch, sample
index) inside the DataLoader worker that decodes it, so an augmented image does not depend on
the number of workers, and a resumed run sees the same images as an uninterrupted one.

Tiny-ImageNet images are all 64x64: they are decoded once into a verified uint8 cache under the
data root (``bench.data.decoded``) and then held in memory as uint8 like CIFAR
(``bench.data.stored``), and its augmentation (random crop 64 with 4-pixel padding + horizontal
flip, as in ``alecwangcq/GraSP utils/data_utils.py``) runs as a batch transform drawing from the
batch generator, on the training device: reproducible without the global RNG.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from bench.config import DataConfig
from bench.data.base import DataBundle
from bench.data.cifar import normalise, pad_crop_flip
from bench.data.decoded import load_decoded
from bench.data.stored import Uint8Images, lookup_table
from bench.errors import DataNotFound, UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Tiny-ImageNet statistics from alecwangcq/GraSP utils/data_utils.py, the peer whose
# Tiny-ImageNet numbers we compare with (other code often uses std (0.2302, 0.2265, 0.2262)).
TINY_MEAN, TINY_STD = (0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821)
SUBSET_SEED = 0  # which images train_subset keeps: a fixed random choice across all classes


class ImageFiles(Dataset):
    """(path, class index) pairs read with PIL as RGB and passed through `transform`."""

    def __init__(self, samples: list[tuple[str, int]], transform) -> None:
        self.samples = samples
        self.transform = transform

    @property
    def targets(self) -> list[int]:
        return [t for _, t in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, target = self.samples[index]
        with Image.open(path) as img:
            rgb = img.convert("RGB")
        return self.transform(rgb), target


def is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def class_folders(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def image_files(folder: Path) -> list[str]:
    """Every image below `folder` (recursively, as ImageFolder does), in a fixed order."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        found.extend(os.path.join(dirpath, f) for f in sorted(filenames) if is_image(f))
    return found


def folder_samples(split_dir: Path, class_to_idx: dict[str, int],
                   dataset: str) -> list[tuple[str, int]]:
    samples = []
    for wnid in class_folders(split_dir):
        if wnid not in class_to_idx:
            raise UserError(f"{dataset}: class folder {split_dir / wnid} has no counterpart in "
                            f"the train folder")
        files = image_files(split_dir / wnid)
        if not files:
            raise UserError(f"{dataset}: class folder {split_dir / wnid} holds no images")
        samples.extend((f, class_to_idx[wnid]) for f in files)
    return samples


def train_classes(train_dir: Path, dataset: str) -> dict[str, int]:
    classes = class_folders(train_dir)
    if not classes:
        raise UserError(f"{dataset}: {train_dir} has no class folders")
    return {wnid: i for i, wnid in enumerate(classes)}


def subset(samples: list[tuple[str, int]], n: int) -> list[tuple[str, int]]:
    """`n` samples chosen at random with a fixed seed: the files are sorted by class, so a
    prefix would hold only the first classes."""
    return [samples[i] for i in subset_indices(len(samples), n)]


def subset_indices(total: int, n: int) -> list[int]:
    """The sorted indices ``subset`` keeps of `total` samples (all of them when `n` is 0)."""
    if not n or n >= total:
        return list(range(total))
    keep = torch.randperm(total, generator=torch.Generator().manual_seed(SUBSET_SEED))[:n]
    return keep.sort().values.tolist()


def imagenet_transforms(augment: bool):
    """(train, test) transforms. torchvision is imported here, not at module level: it costs
    seconds, and every CLI command imports the dataset registry."""
    from torchvision import transforms as T

    tail = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    test = T.Compose([T.Resize(256), T.CenterCrop(224), *tail])
    train = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), *tail]) if augment \
        else test
    return train, test


def check_imagenet(cfg: DataConfig, root: Path) -> None:
    """The train and val folders present, train with class folders (UserError saying where we
    looked and how to get them), without listing the images."""
    base = Path(root) / "imagenet"
    train_dir, val_dir = base / "train", base / "val"
    missing = [str(d) for d in (train_dir, val_dir) if not d.is_dir()]
    if missing:
        raise DataNotFound(
            f"imagenet not found: looked for {' and '.join(missing)} (<wnid>/*.JPEG class "
            f"folders); put ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar and "
            f"ILSVRC2012_devkit_t12.tar.gz (from https://image-net.org/download-images) in {base} "
            f"and run python -c \"import torchvision as tv; [tv.datasets.ImageNet('{base}', "
            f"split=s) for s in ('train', 'val')]\" to unpack them, or point --data-root / "
            f"SPARSEBENCH_DATA at a folder that holds imagenet/")
    _readable_classes(train_dir, "imagenet")


def _readable_classes(train_dir: Path, dataset: str) -> None:
    try:
        train_classes(train_dir, dataset)
    except OSError as e:
        raise UserError(f"{dataset}: {train_dir} is not readable ({e.strerror})") from None


def load_imagenet(cfg: DataConfig, root: Path) -> DataBundle:
    check_imagenet(cfg, root)
    base = Path(root) / "imagenet"
    train_dir, val_dir = base / "train", base / "val"
    class_to_idx = train_classes(train_dir, "imagenet")
    train_tf, test_tf = imagenet_transforms(cfg.augment)
    train = ImageFiles(subset(folder_samples(train_dir, class_to_idx, "imagenet"),
                              cfg.train_subset), train_tf)
    test = ImageFiles(folder_samples(val_dir, class_to_idx, "imagenet"), test_tf)
    return DataBundle(train, test, (3, 224, 224), len(class_to_idx))


def tiny_val_samples(val_dir: Path, class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
    """val_annotations.txt: one line per image, tab-separated: file name, wnid, bounding box."""
    images = val_dir / "images"
    present = set(os.listdir(images))
    samples = []
    with open(val_dir / "val_annotations.txt") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < 2 or fields[1].strip() not in class_to_idx \
                    or fields[0] not in present:
                raise UserError(f"tinyimagenet: {val_dir / 'val_annotations.txt'} line {lineno} "
                                f"names an unknown class or a missing image: {line.strip()!r}")
            samples.append((str(images / fields[0]), class_to_idx[fields[1].strip()]))
    if not samples:
        raise UserError(f"tinyimagenet: {val_dir / 'val_annotations.txt'} lists no images")
    return samples


def check_tinyimagenet(cfg: DataConfig, root: Path) -> None:
    """The train folder and the labelled val set present (UserError saying where we looked and
    how to get them), without listing the images."""
    base = Path(root) / "tiny-imagenet-200"
    needed = (base / "train", base / "val" / "images", base / "val" / "val_annotations.txt")
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise DataNotFound(
            f"tinyimagenet not found: looked for {', '.join(missing)}; download "
            f"http://cs231n.stanford.edu/tiny-imagenet-200.zip and unzip it in {Path(root)}, or "
            f"point --data-root / SPARSEBENCH_DATA at a folder that holds tiny-imagenet-200/")
    _readable_classes(base / "train", "tinyimagenet")


def load_tinyimagenet(cfg: DataConfig, root: Path) -> DataBundle:
    """Decoded once into a verified uint8 cache (``bench.data.decoded``), then held in memory
    as uint8 (``bench.data.stored``), each batch normalised exactly as ``ToTensor()`` +
    ``Normalize(TINY_MEAN, TINY_STD)`` of each file would (the same float32 operations, bit for
    bit)."""
    check_tinyimagenet(cfg, root)
    base = Path(root) / "tiny-imagenet-200"
    class_to_idx = train_classes(base / "train", "tinyimagenet")
    train = folder_samples(base / "train", class_to_idx, "tinyimagenet")
    test = tiny_val_samples(base / "val", class_to_idx)
    arrays = load_decoded("tinyimagenet", root, base, train, test, (64, 64))
    keep = torch.tensor(subset_indices(len(train), cfg.train_subset), dtype=torch.long)
    x, y = arrays["x"], arrays["y"]
    if len(keep) < len(x):
        x, y = x[keep], y[keep]
    table = lookup_table(lambda u: normalise(u, TINY_MEAN, TINY_STD), 3)
    train_ds = Uint8Images(x, y, table)
    test_ds = Uint8Images(arrays["x_test"], arrays["y_test"], table)
    transform = pad_crop_flip(TINY_MEAN, TINY_STD) if cfg.augment else None
    return DataBundle(train_ds, test_ds, (3, 64, 64), len(class_to_idx), transform)


def tiny_files(root: Path, augment: bool = False) -> DataBundle:
    """Tiny-ImageNet read from its JPEG files by DataLoader workers on every pass (what
    ``load_tinyimagenet`` did before the cache): the reference the cached path is tested
    against, image for image and run for run."""
    from torchvision import transforms as T

    base = Path(root) / "tiny-imagenet-200"
    class_to_idx = train_classes(base / "train", "tinyimagenet")
    tf = T.Compose([T.ToTensor(), T.Normalize(TINY_MEAN, TINY_STD)])
    train = ImageFiles(folder_samples(base / "train", class_to_idx, "tinyimagenet"), tf)
    test = ImageFiles(tiny_val_samples(base / "val", class_to_idx), tf)
    transform = pad_crop_flip(TINY_MEAN, TINY_STD) if augment else None
    return DataBundle(train, test, (3, 64, 64), len(class_to_idx), transform)
