"""Decoded image sets held as uint8 pixels and normalised per batch (bench/data/stored.py) give
the model exactly what the float32 sets held before gave it: every batch bit for bit, for
several epochs, with and without augmentation, resumed mid-epoch, cut into ranks' shards, and a
short training run's weights. The float path is rebuilt here from the same uint8 pixels and the
loaders' own normalisation (what the loaders held before), and the batches of main before the
change are pinned by SHA-256."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import TensorDataset

from bench import distributed
from bench.config import (
    DataConfig,
    MethodConfig,
    ModelConfig,
    RunConfig,
    SparsityConfig,
    TrainConfig,
)
from bench.data import cifar, load_dataset, mnist
from bench.data.base import DataBundle, epoch_generator
from bench.data.imagefolder import IMAGENET_MEAN, IMAGENET_STD, TINY_MEAN, TINY_STD
from bench.data.stored import Uint8Images, lookup_table
from bench.train import Trainer, make_method
from tests.test_data_decoded import WNIDS
from tests.test_data_decoded import write_tiny as write_tiny_jpegs
from tests.test_data_images import write_cifar10, write_mnist

# How each loader normalised its whole set when it held float32 (bench/data/cifar.py,
# imagefolder.py and mnist.py before the change did exactly this on the uint8 pixels).
FLOAT_PATHS = {
    "cifar10": lambda x: cifar.normalise(x, cifar.CIFAR10.mean, cifar.CIFAR10.std),
    "cifar100": lambda x: cifar.normalise(x, cifar.CIFAR100.mean, cifar.CIFAR100.std),
    "tinyimagenet": lambda x: cifar.normalise(x, TINY_MEAN, TINY_STD),
    "imagenet-stats": lambda x: cifar.normalise(x, IMAGENET_MEAN, IMAGENET_STD),
    "mnist": mnist.normalise,
}


def bits(x: torch.Tensor) -> torch.Tensor:
    """float32 as its bit patterns: equal bits, not merely equal values (-0.0 vs 0.0, NaN)."""
    assert x.dtype == torch.float32
    return x.contiguous().view(torch.int32)


def assert_bitwise(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape and a.stride() == b.stride()
    assert torch.equal(bits(a), bits(b))


def float_bundle(b: DataBundle, name: str) -> DataBundle:
    """The bundle as the loaders returned it before: the whole set normalised once, float32."""
    def held(ds: Uint8Images) -> TensorDataset:
        assert isinstance(ds, Uint8Images) and ds.tensors[0].dtype == torch.uint8
        return TensorDataset(FLOAT_PATHS[name](ds.tensors[0]), ds.tensors[1])
    return DataBundle(held(b.train), held(b.test), b.input_shape, b.num_classes,
                      b.batch_transform)


@pytest.mark.parametrize("name", sorted(FLOAT_PATHS))
def test_lookup_gives_the_bits_of_normalising_every_pixel_value(name):
    channels = 1 if name == "mnist" else 3
    # Every value in every channel, in rows of 257 so that each value sits in every position
    # of a vector lane (and some in the scalar tail).
    every = (torch.arange(4 * channels * 3 * 257) % 256).to(torch.uint8)
    every = every.view(4, channels, 3, 257)
    noise = torch.randint(0, 256, (37, channels, 33, 31), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(0))
    table = lookup_table(FLOAT_PATHS[name], channels)
    for x in (every, noise):
        ds = Uint8Images(x, torch.zeros(len(x), dtype=torch.long), table)
        assert_bitwise(ds.batch(x), FLOAT_PATHS[name](x))
        assert_bitwise(ds[3][0], FLOAT_PATHS[name](x)[3])
        assert_bitwise(ds[1:4][0], FLOAT_PATHS[name](x)[1:4])


def test_a_table_from_a_function_that_is_not_a_per_pixel_float32_map_is_refused():
    with pytest.raises(ValueError, match="not float32"):
        lookup_table(lambda x: x.double(), 3)
    with pytest.raises(ValueError, match=r"need uint8 \(N, C, H, W\) images"):
        Uint8Images(torch.zeros(2, 3, 4, 4), torch.zeros(2), torch.zeros(3, 256))


class NoAdvance:
    """A batch transform without ``advance``: skipped batches are augmented and dropped."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __call__(self, x, generator):
        return self.inner(x, generator)


def write(root: Path, name: str) -> None:
    {"cifar10": lambda: write_cifar10(root, n=11),
     "tinyimagenet": lambda: write_tiny_jpegs(root, per_class=6),
     "mnist": lambda: write_mnist(root, gz=False, n_train=38, n_test=9)}[name]()


@pytest.mark.parametrize("name", ["cifar10", "tinyimagenet", "mnist"])
def test_every_batch_equals_the_float_path_bit_for_bit(tmp_path, name):
    """Several epochs, with and without augmentation, from the start and resumed mid-epoch
    (with a transform that advances and one that cannot), whole and as each rank's shard, and
    the test split: every batch bit-identical to the float32 set's, and labels equal."""
    write(tmp_path, name)
    augments = (False,) if name == "mnist" else (False, True)
    checked = 0
    for augment in augments:
        new = load_dataset(DataConfig(name=name, augment=augment), tmp_path)
        old = float_bundle(new, name)
        assert new.in_memory and new.train.tensors[0].dtype == torch.uint8
        transforms = [None] if not augment else [new.batch_transform,
                                                  NoAdvance(new.batch_transform)]
        for epoch in range(3):
            for transform in transforms:
                for start in (0, 2):
                    for shard in (None, *(distributed.Rank(r, 2, r) for r in range(2))):
                        def batches(bundle, transform=transform, start=start, shard=shard,
                                    epoch=epoch):
                            return list(bundle.batches("train", 4, epoch_generator(5, epoch),
                                                       transform, start=start, shard=shard))
                        a, b = batches(new), batches(old)
                        assert len(a) == len(b) > 0
                        for (xa, ya), (xb, yb) in zip(a, b, strict=True):
                            assert_bitwise(xa, xb)
                            assert torch.equal(ya, yb)
                            checked += 1
        for (xa, ya), (xb, yb) in zip(new.batches("test", 4, None), old.batches("test", 4, None),
                                      strict=True):
            assert_bitwise(xa, xb)
            assert torch.equal(ya, yb)
    assert checked > 100


def write_tiny_pngs(root: Path, per_class: int = 5) -> None:
    """Tiny-ImageNet's layout with lossless noise images (PNG decodes the same everywhere,
    JPEG decoders may differ in the last level), so batches can be pinned by digest."""
    base = root / "tiny-imagenet-200"
    rng = np.random.default_rng(11)
    for wnid in WNIDS:
        for i in range(per_class):
            path = base / "train" / wnid / "images" / f"{wnid}_{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    rows = []
    (base / "val" / "images").mkdir(parents=True)
    for j, k in enumerate((2, 0, 1, 1)):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
            base / "val" / "images" / f"val_{j}.png")
        rows.append(f"val_{j}.png\t{WNIDS[k]}\t0\t0\t63\t63\n")
    (base / "val" / "val_annotations.txt").write_text("".join(rows))


def batches_digest(bundle: DataBundle, augment: bool, batch: int) -> str:
    """SHA-256 of three epochs' train batches (seed 7) and the test batches, images and labels."""
    h = hashlib.sha256()
    for epoch in range(3):
        for x, y in bundle.batches("train", batch, epoch_generator(7, epoch),
                                   bundle.batch_transform if augment else None, workers=0):
            h.update(x.contiguous().numpy().tobytes())
            h.update(y.numpy().tobytes())
    for x, y in bundle.batches("test", 8, None, workers=0):
        h.update(x.contiguous().numpy().tobytes())
        h.update(y.numpy().tobytes())
    return h.hexdigest()


# Computed on main at bfb9198, before the sets were held as uint8 (float32 sets).
PINNED = {
    ("cifar10", False): "582804353a5679b524109f4d6df6ac000d3f18dd3070864d5427adaff9e44b8d",
    ("cifar10", True): "b9b119e621257d9c48d90a7efba20212bb511143bf03fc81b0dc489b618f4e3e",
    ("tinyimagenet", False): "7474828f75d3112174bdd73bcff8ee5abc5679f17ec8fa506ba22f43b6dd768c",
    ("tinyimagenet", True): "2f3f503c3e65e05bc3542bd1fa5cded3f7c62a8690cb05f4dcb992163d3943a1",
}


def test_batches_match_those_pinned_before_the_change(tmp_path):
    write_cifar10(tmp_path, n=20)
    write_tiny_pngs(tmp_path)
    for (name, augment), want in PINNED.items():
        bundle = load_dataset(DataConfig(name=name, augment=augment), tmp_path)
        assert batches_digest(bundle, augment, 16 if name == "cifar10" else 4) == want


def test_a_training_run_ends_with_the_weights_of_the_float_path(tmp_path):
    """Augmented CIFAR-10 batches, masks, evaluation: the run from the uint8 set ends
    bit-identical (history, weights, FLOPs) to the same run from the float32 set."""
    write_cifar10(tmp_path / "data", n=11)
    cfg = RunConfig(
        data=DataConfig(name="cifar10", augment=True), model=ModelConfig("lenet300_100"),
        method=MethodConfig("static"),
        train=TrainConfig(epochs=2, batch_size=8, optimizer="sgd", lr=0.05, eval_batch_size=6),
        sparsity=SparsityConfig(target=0.5))
    new = load_dataset(cfg.data, tmp_path / "data")
    runs = {name: Trainer(make_method(cfg), tmp_path / name, data=data).run()
            for name, data in (("uint8", new), ("float", float_bundle(new, "cifar10")))}
    a, b = runs["uint8"], runs["float"]
    assert a.history == b.history and a.final == b.final and a.train_flops == b.train_flops
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert len(a.history) == 2 and a.history[-1]["step"] == 14  # 55 examples, batch 8


def test_sets_hold_a_quarter_of_the_float_bytes_and_stay_uint8_when_moved(tmp_path):
    write_cifar10(tmp_path, n=11)
    b = load_dataset(DataConfig(name="cifar10", train_subset=30), tmp_path)
    x, y = b.train.tensors
    assert (x.dtype, x.nbytes, x.is_contiguous()) == (torch.uint8, 30 * 3 * 32 * 32, True)
    # train_subset copies: the other training images are not kept alive behind a view.
    assert x.untyped_storage().nbytes() == 30 * 3 * 32 * 32
    assert len(b.test) == 11 and b.test.tensors[0].dtype == torch.uint8
    moved = b.to(torch.device("meta"))
    for ds in (moved.train, moved.test):
        assert isinstance(ds, Uint8Images) and ds.tensors[0].dtype == torch.uint8
        assert ds.tensors[0].device.type == ds.table.device.type == "meta"
    assert b.to(torch.device("cpu")).train is b.train  # already there: not copied
