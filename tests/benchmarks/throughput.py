"""The pieces of the throughput benchmark (``test_throughput_bench.py``) that are not timing:
the plain PyTorch loops it compares against, ImageNet-sized JPEG files, the GPU-decoding input
pipeline (``torchvision.io.decode_jpeg`` on CUDA) and the results table. Device-generic, so the
default test run exercises the CUDA code paths on the CPU (``tests/test_throughput_paths.py``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from bench import accel
from bench.config import TrainConfig
from bench.data.imagefolder import IMAGENET_MEAN, IMAGENET_STD
from bench.models import build_model
from bench.recipe import make_optimizer

WARMUP_STEPS = 5


def rate(stamps: list[float], batch: int) -> float:
    """Images/s between the stamps after the warm-up (one stamp per finished step)."""
    timed = stamps[WARMUP_STEPS:]
    return batch * (len(timed) - 1) / (timed[-1] - timed[0])


def plain_throughput(model_name: str, shape: tuple[int, ...], classes: int, batch: int, n: int,
                     device: str, loader: Iterable | None = None) -> float:
    """Images/s of a bare loop (forward, backward, step) on the same model, optimizer, batch
    and precision as the harness: over `n` synthetic examples already on the device, shuffled
    (a gather per batch, as the harness's in-memory path does), or over `loader`'s batches
    (copied to the device) when given."""
    dev = torch.device(device)
    torch.manual_seed(0)
    model = accel.to_device(build_model(model_name, classes, shape), dev, shape)
    opt = make_optimizer(model, TrainConfig(optimizer="sgd", lr=0.05, weight_decay=5e-4), dev)
    precision = accel.resolve_precision("auto" if device == "cuda" else "fp32", dev)
    if loader is None:
        g = torch.Generator().manual_seed(0)
        x_all = torch.randn(n, *shape, generator=g).to(dev)
        y_all = torch.randint(classes, (n,), generator=g).to(dev)
        order = torch.randperm(n, generator=g).to(dev)
        batches: Iterable = ((x_all[idx], y_all[idx]) for idx in order.split(batch))
    else:
        batches = loader
    stamps = []
    for x, y in batches:
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        with accel.autocast(precision, dev):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
    return rate(stamps, batch)


def pipeline_throughput(batches: Iterable, device: str, skip: int = 1) -> float:
    """Images/s of an input pipeline alone (batches consumed, nothing trained), after `skip`
    batches of start-up (worker start, first decode)."""
    start, seen = None, 0
    for i, (x, _) in enumerate(batches):
        if device == "cuda":
            torch.cuda.synchronize()
        if i == skip:
            start, seen = time.perf_counter(), 0
        seen += len(x)
    return seen / (time.perf_counter() - start)


def write_jpegs(root: Path, n: int, classes: int = 8) -> None:
    """ImageNet-sized JPEGs (500x375, quality 90) in the ImageFolder layout bench.data reads:
    ``root/imagenet/{train,val}/<wnid>/<i>.JPEG``, image i in class ``i % classes``."""
    from PIL import Image

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)
    for i in range(n):
        for split in ("train", "val") if i < classes else ("train",):
            folder = root / "imagenet" / split / f"n{i % classes:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            img = np.roll(base, i * 7, axis=1)  # distinct images, JPEG-realistic content
            Image.fromarray(img).save(folder / f"{i}.JPEG", quality=90)


class JpegBytes(Dataset):
    """Item i: the undecoded bytes of file i (uint8, 1-d) and its label: all a worker does when
    the decoding happens on the GPU."""

    def __init__(self, samples: list[tuple[str, int]]) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from torchvision.io import read_file

        path, label = self.samples[i]
        return read_file(path), label


def decode(raw: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """JPEG bytes -> (3, H, W) uint8 RGB images on `device`, in one batched ``decode_jpeg``
    call (nvJPEG on CUDA, libjpeg-turbo on the CPU)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    return decode_jpeg(raw, mode=ImageReadMode.RGB, device=device)


def crop_flip_normalise(images: list[torch.Tensor], boxes: list[tuple[int, int, int, int]],
                        flips: list[bool], size: int) -> torch.Tensor:
    """uint8 images -> a normalised float32 batch (B, 3, size, size) on their device: per image
    the crop ``(top, left, height, width)`` of `boxes` resized to `size` (bilinear,
    antialiased, as torchvision's RandomResizedCrop), a horizontal flip where `flips` says, and
    ImageNet's normalisation."""
    from torchvision.transforms.v2 import functional as TF

    device = images[0].device
    out = torch.empty(len(images), 3, size, size, device=device, dtype=torch.float32)
    for i, (img, (top, left, h, w), flip) in enumerate(zip(images, boxes, flips, strict=True)):
        crop = TF.resized_crop(img, top, left, h, w, [size, size], antialias=True)
        out[i] = crop.flip(-1) if flip else crop
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    return out.div_(255.0).sub_(mean).div_(std)


def random_boxes(shapes: list[tuple[int, int]], generator: torch.Generator
                 ) -> tuple[list[tuple[int, int, int, int]], list[bool]]:
    """Per image of (height, width) `shapes`: a RandomResizedCrop box (top, left, height,
    width) for scale (0.08, 1) and ratio (3/4, 4/3), then a horizontal flip with probability
    1/2: torchvision's ``RandomResizedCrop.get_params`` (its ten tries, its central-crop
    fallback, the same draws in float32) and ``RandomHorizontalFlip``, drawing from
    `generator` instead of the global RNG."""
    log_ratio = torch.log(torch.tensor((3 / 4, 4 / 3)))
    boxes, flips = [], []
    for height, width in shapes:
        area = height * width
        box = None
        for _ in range(10):
            target = area * torch.empty(1).uniform_(0.08, 1.0, generator=generator).item()
            aspect = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1],
                                                       generator=generator)).item()
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (1,), generator=generator).item())
                left = int(torch.randint(0, width - w + 1, (1,), generator=generator).item())
                box = (top, left, h, w)
                break
        if box is None:  # the whole image, clamped to the ratios, centred
            w, h = width, height
            if width / height < 3 / 4:
                h = int(round(w / (3 / 4)))
            elif width / height > 4 / 3:
                w = int(round(h * (4 / 3)))
            box = ((height - h) // 2, (width - w) // 2, h, w)
        boxes.append(box)
        flips.append(bool(torch.rand(1, generator=generator) < 0.5))
    return boxes, flips


def gpu_jpeg_batches(samples: list[tuple[str, int]], batch: int, device: str,
                     generator: torch.Generator, workers: int,
                     size: int = 224) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of (images, labels) on `device`: workers only read file bytes, decoding and
    augmentation happen on `device` (``decode``, ``crop_flip_normalise``); order and crops
    drawn from `generator`."""
    order = torch.randperm(len(samples), generator=generator).tolist()
    loader = DataLoader(JpegBytes([samples[i] for i in order]), batch_size=batch,
                        num_workers=workers, collate_fn=lambda items: items,
                        prefetch_factor=4 if workers else None, persistent_workers=False)
    dev = torch.device(device)
    for items in loader:
        images = decode([r for r, _ in items], dev)
        boxes, flips = random_boxes([tuple(img.shape[-2:]) for img in images], generator)
        labels = torch.tensor([t for _, t in items], dtype=torch.long).to(dev, non_blocking=True)
        yield crop_flip_normalise(images, boxes, flips, size), labels


def table(results: dict[tuple[str, str, str], float],
          cases: list[tuple[str, str]], methods: Iterable[str]) -> list[str]:
    """A Markdown table of every measured throughput (images/s) and the ratio each target is
    stated in, one row per (device, model, variant) of `cases`, in order."""
    methods = set(methods)
    lines = ["| device | model | variant | images/s | ratio | target |",
             "|---|---|---|---:|---:|---|"]
    for device, model in cases:
        dense = results.get((device, model, "dense"))
        plain = results.get((device, model, "plain"))
        order = ["plain", "dense"] + sorted(
            v for (d, m, v) in results if (d, m) == (device, model) and v not in
            ("plain", "dense"))
        for variant in order:
            ips = results.get((device, model, variant))
            if ips is None:
                continue
            ratio, target = "", ""
            if variant == "dense" and plain:
                ratio, target = f"{ips / plain:.3f}x plain", ">= 0.95x plain"
            elif variant in methods and variant != "dense" and dense:
                ratio = f"{dense / ips:.3f}x dense step"
                target = "<= 1.05x dense step (GPU)"
            elif variant == "plain-dataloader" and dense:
                ratio, target = f"dense {dense / ips:.2f}x this", "dense >= 1.5x this"
            elif variant in ("harness-jpeg", "plain-gpu-decode"):
                target = ">= 3000 (one H200, 16 cores)"
            name = "harness dense" if variant == "dense" else variant
            lines.append(f"| {device} | {model} | {name} | {ips:.0f} | {ratio} | {target} |")
    return lines
