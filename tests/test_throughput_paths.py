"""The throughput benchmark's GPU-decoding input pipeline and results table, run on the CPU
(tests/benchmarks/throughput.py; the benchmark itself only times them): the CUDA code paths
with device=cpu, checked against PIL and torchvision's own transforms value for value."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.io import read_file

from bench.config import DataConfig
from bench.data import load_dataset
from bench.data.imagefolder import IMAGENET_MEAN, IMAGENET_STD
from tests.benchmarks import throughput as tp

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    root = tmp_path_factory.mktemp("jpegs")
    tp.write_jpegs(root, 5, classes=2)
    return load_dataset(DataConfig(name="imagenet"), root).train.samples


def pil_rgb(path: str) -> torch.Tensor:
    with Image.open(path) as img:
        return torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1)


def normalised(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x.float() / 255.0 - mean) / std


def test_written_files_are_imagenet_sized_in_the_imagefolder_layout(jpegs):
    assert [label for _, label in jpegs] == [0, 0, 0, 1, 1]
    assert [p.rsplit("/", 1)[1] for p, _ in jpegs] == ["0.JPEG", "2.JPEG", "4.JPEG", "1.JPEG",
                                                       "3.JPEG"]
    assert all(pil_rgb(p).shape == (3, 375, 500) for p, _ in jpegs)


def test_decode_on_the_device_equals_pil(jpegs):
    images = tp.decode([read_file(p) for p, _ in jpegs], CPU)
    for (path, _), image in zip(jpegs, images, strict=True):
        assert image.dtype == torch.uint8 and torch.equal(image, pil_rgb(path))


def test_crop_flip_normalise_values(jpegs):
    images = tp.decode([read_file(p) for p, _ in jpegs[:2]], CPU)
    # A 224x224 box at size 224 is a plain crop; the second image flipped.
    x = tp.crop_flip_normalise(images, [(10, 20, 224, 224), (0, 276, 224, 224)], [False, True],
                               224)
    assert x.shape == (2, 3, 224, 224) and x.dtype == torch.float32
    torch.testing.assert_close(x[0], normalised(images[0][:, 10:234, 20:244]), rtol=0,
                               atol=1e-6)
    torch.testing.assert_close(x[1], normalised(images[1][:, :224, 276:].flip(-1)), rtol=0,
                               atol=1e-6)
    # A resized box: that box resized as torchvision's (v1, float) transform does, bilinear
    # and antialiased, to within the rounding of the uint8 kernel (5 of 255 levels).
    y = tp.crop_flip_normalise(images[:1], [(5, 7, 300, 400)], [False], 224)
    ref = T.functional.resized_crop(images[0].float(), 5, 7, 300, 400, [224, 224],
                                    antialias=True)
    torch.testing.assert_close(y[0], normalised(ref), rtol=0, atol=5 / 255 / min(IMAGENET_STD))
    other = T.functional.resized_crop(images[0].float(), 6, 7, 300, 400, [224, 224],
                                      antialias=True)
    assert (y[0] - normalised(other)).abs().max() > 5 / 255 / min(IMAGENET_STD)


def test_random_boxes_are_torchvisions_draws():
    shapes = [(375, 500), (500, 333), (64, 64), (10, 1000), (1000, 10)] * 4
    boxes, flips = tp.random_boxes(shapes, torch.Generator().manual_seed(7))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        want, want_flips = [], []
        for h, w in shapes:
            want.append(T.RandomResizedCrop.get_params(torch.empty(3, h, w), [0.08, 1.0],
                                                       [3 / 4, 4 / 3]))
            want_flips.append(bool(torch.rand(1) < 0.5))
    assert boxes == [tuple(b) for b in want] and flips == want_flips
    # The extreme shapes take the central fallback: 10 x 13 and 13 x 10 boxes.
    assert boxes[3] == (0, 493, 10, 13) and boxes[4] == (493, 0, 13, 10)
    assert 0 < sum(flips) < len(flips)


def test_gpu_jpeg_batches_with_a_cpu_device(jpegs):
    """The pipeline the benchmark runs on CUDA, on the CPU: the epoch's order, boxes and
    flips all come from the generator, in that order."""
    batches = list(tp.gpu_jpeg_batches(jpegs, 2, "cpu", torch.Generator().manual_seed(3),
                                       workers=0, size=64))
    assert [tuple(x.shape) for x, _ in batches] == [(2, 3, 64, 64), (2, 3, 64, 64),
                                                    (1, 3, 64, 64)]
    g = torch.Generator().manual_seed(3)
    order = torch.randperm(5, generator=g).tolist()
    for k, (x, y) in enumerate(batches):
        items = [jpegs[i] for i in order[2 * k: 2 * k + 2]]
        assert y.tolist() == [label for _, label in items]
        images = [pil_rgb(p) for p, _ in items]
        boxes, flips = tp.random_boxes([(375, 500)] * len(items), g)
        assert torch.equal(x, tp.crop_flip_normalise(images, boxes, flips, 64))


def test_table_rows_and_ratios():
    results = {("cpu", "m", "plain"): 1000.0, ("cpu", "m", "dense"): 960.0,
               ("cpu", "m", "set"): 800.0, ("cuda", "w", "dense"): 3000.0,
               ("cuda", "w", "plain-dataloader"): 1500.0,
               ("cuda", "r", "harness-jpeg"): 2500.0, ("cuda", "r", "pipeline-cpu-decode"): 1234.4}
    lines = tp.table(results, [("cpu", "m"), ("cuda", "w"), ("cuda", "r")], ["dense", "set"])
    assert lines == [
        "| device | model | variant | images/s | ratio | target |",
        "|---|---|---|---:|---:|---|",
        "| cpu | m | plain | 1000 |  |  |",
        "| cpu | m | harness dense | 960 | 0.960x plain | >= 0.95x plain |",
        "| cpu | m | set | 800 | 1.200x dense step | <= 1.05x dense step (GPU) |",
        "| cuda | w | harness dense | 3000 |  |  |",
        "| cuda | w | plain-dataloader | 1500 | dense 2.00x this | dense >= 1.5x this |",
        "| cuda | r | harness-jpeg | 2500 |  | >= 3000 (one H200, 16 cores) |",
        "| cuda | r | pipeline-cpu-decode | 1234 |  |  |",
    ]
