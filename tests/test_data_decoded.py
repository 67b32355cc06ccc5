"""Tiny-ImageNet decoded once into a verified uint8 cache (bench/data/decoded.py), on small
JPEG files written in Tiny-ImageNet's real layout: the cache equals decoding pixel for pixel, is
reused, is set aside and decoded again when damaged, decoded again when the files change, and a
run trained from it ends bit-identical to one that decodes the files every epoch."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import TensorDataset

from bench.config import (
    DataConfig,
    MethodConfig,
    ModelConfig,
    RunConfig,
    SparsityConfig,
    TrainConfig,
)
from bench.data import decoded, load_dataset
from bench.data.base import epoch_generator, iterate_batches
from bench.data.imagefolder import subset, tiny_files
from bench.errors import UserError
from bench.train import Trainer, make_method

WNIDS = ("n01443537", "n01629819", "n01641577")


def noise_jpeg(path: Path, seed: int, mode: str = "RGB", size=(64, 64)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(
        path, format="JPEG", quality=85)


def write_tiny(root: Path, per_class: int = 4) -> None:
    """train/<wnid>/images/*.JPEG (+ the boxes file), val/images + val_annotations.txt,
    wnids.txt; noise images (JPEG decoding matters), one greyscale image in each split."""
    base = root / "tiny-imagenet-200"
    for k, wnid in enumerate(WNIDS):
        for i in range(per_class):
            noise_jpeg(base / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", 10 * k + i,
                       mode="L" if (k, i) == (1, 2) else "RGB")
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text(f"{wnid}_0.JPEG\t0\t0\t63\t63\n")
    rows = []
    for j, k in enumerate((2, 0, 1, 1, 2, 0)):
        noise_jpeg(base / "val" / "images" / f"val_{j}.JPEG", 100 + j,
                   mode="L" if j == 3 else "RGB")
        rows.append(f"val_{j}.JPEG\t{WNIDS[k]}\t0\t0\t63\t63\n")
    (base / "val" / "val_annotations.txt").write_text("".join(rows))
    (base / "wnids.txt").write_text("\n".join(WNIDS) + "\n")


def cache_file(root: Path) -> Path:
    return root / "cache" / "tinyimagenet-uint8.pt"


def assert_same_images(cached: TensorDataset, files) -> None:
    assert len(cached) == len(files)
    for i in range(len(files)):
        image, label = files[i]
        assert torch.equal(cached[i][0], image), i  # bit for bit, not close
        assert int(cached[i][1]) == label


def test_cache_equals_decoding_each_file_pixel_for_pixel(tmp_path):
    write_tiny(tmp_path)
    b = load_dataset(DataConfig(name="tinyimagenet"), tmp_path)
    assert isinstance(b.train, TensorDataset) and b.in_memory
    assert (len(b.train), len(b.test), b.num_classes, b.input_shape) == (12, 6, 3, (3, 64, 64))
    ref = tiny_files(tmp_path)
    assert_same_images(b.train, ref.train)
    assert_same_images(b.test, ref.test)
    # The cache holds exactly what PIL decodes (a greyscale JPEG as three equal channels).
    raw = torch.load(cache_file(tmp_path), weights_only=True)
    for i, (path, label) in enumerate(ref.train.samples):
        with Image.open(path) as img:
            want = torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1)
        assert torch.equal(raw["x"][i], want) and int(raw["y"][i]) == label
    grey = raw["x"][6]  # train/n01629819 image 2
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[0], grey[2])
    assert raw["y_test"].tolist() == [2, 0, 1, 1, 2, 0]


def test_workers_decode_the_same_arrays(tmp_path):
    write_tiny(tmp_path)
    paths = [str(p) for p in sorted((tmp_path / "tiny-imagenet-200").rglob("*.JPEG"))]
    assert len(paths) == 18
    assert torch.equal(decoded.decode(paths, (64, 64), workers=0),
                       decoded.decode(paths, (64, 64), workers=2))


def test_second_load_reads_the_cache_without_decoding(tmp_path, monkeypatch):
    write_tiny(tmp_path)
    first = load_dataset(DataConfig(name="tinyimagenet"), tmp_path)
    stamp = cache_file(tmp_path).stat().st_mtime_ns

    def no_decoding(*_args, **_kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(decoded, "decode", no_decoding)
    again = load_dataset(DataConfig(name="tinyimagenet"), tmp_path)
    assert cache_file(tmp_path).stat().st_mtime_ns == stamp
    for a, b in ((first.train, again.train), (first.test, again.test)):
        assert all(torch.equal(s, t) for s, t in zip(a.tensors, b.tensors, strict=True))
    # train_subset picks from the cached arrays the images it picks from the files.
    sub = load_dataset(DataConfig(name="tinyimagenet", train_subset=5), tmp_path)
    ref = tiny_files(tmp_path)
    kept = subset(ref.train.samples, 5)
    assert len(sub.train) == 5 and len(kept) == 5
    for i, sample in enumerate(kept):
        j = ref.train.samples.index(sample)
        assert torch.equal(sub.train.tensors[0][i], first.train.tensors[0][j])
        assert int(sub.train.tensors[1][i]) == sample[1]


@pytest.mark.parametrize("damage", ["truncated", "flipped byte", "not a torch file"])
def test_damaged_cache_is_set_aside_and_decoded_again(tmp_path, capsys, damage):
    write_tiny(tmp_path)
    good = load_dataset(DataConfig(name="tinyimagenet"), tmp_path)
    path = cache_file(tmp_path)
    blob = bytearray(path.read_bytes())
    if damage == "truncated":
        blob = blob[: len(blob) // 2]
    elif damage == "flipped byte":
        # Inside the image array (the zip stores tensors uncompressed): only the checksum sees it.
        at = blob.index(bytes(torch.load(path, weights_only=True)["x"][3, 1, 7, :16].tolist()))
        blob[at + 5] ^= 0xFF
    else:
        blob = b"hello"
    path.write_bytes(bytes(blob))
    capsys.readouterr()
    again = load_dataset(DataConfig(name="tinyimagenet"), tmp_path)
    err = capsys.readouterr().err
    reason = {"truncated": "cannot be read", "flipped byte": "does not match its checksum",
              "not a torch file": "cannot be read"}[damage]
    assert f"{path}: data cache {reason}" in err and "set aside as tinyimagenet-uint8.pt.corrupt" \
        in err
    assert (path.parent / "tinyimagenet-uint8.pt.corrupt").read_bytes() == bytes(blob)
    assert all(torch.equal(s, t) for s, t in zip(good.train.tensors, again.train.tensors,
                                                  strict=True))
    rewritten = torch.load(path, weights_only=True)
    assert decoded.cache_problem(rewritten, rewritten["source"], (3, 64, 64)) is None


def test_changed_files_make_the_cache_stale(tmp_path, capsys):
    write_tiny(tmp_path)
    before = load_dataset(DataConfig(name="tinyimagenet"), tmp_path)
    changed = tmp_path / "tiny-imagenet-200" / "val" / "images" / "val_4.JPEG"
    noise_jpeg(changed, 999)
    os.utime(changed, ns=(1, 1))
    after = load_dataset(DataConfig(name="tinyimagenet"), tmp_path)
    assert "decoded from other files than those now in the dataset" in capsys.readouterr().err
    assert not torch.equal(before.test.tensors[0][4], after.test.tensors[0][4])
    assert torch.equal(before.test.tensors[0][:4], after.test.tensors[0][:4])
    assert_same_images(after.test, tiny_files(tmp_path).test)
    assert not list(cache_file(tmp_path).parent.glob("*.corrupt*"))  # stale is not damaged


def test_wrong_size_image_is_one_clear_error(tmp_path):
    write_tiny(tmp_path)
    odd = tmp_path / "tiny-imagenet-200" / "train" / WNIDS[0] / "images" / f"{WNIDS[0]}_1.JPEG"
    noise_jpeg(odd, 5, size=(60, 64))
    with pytest.raises(UserError) as e:
        load_dataset(DataConfig(name="tinyimagenet"), tmp_path)
    assert str(e.value) == (f"{odd} is 60x64, not 64x64; every image of this dataset must be a "
                            "64x64 image")
    assert not cache_file(tmp_path).exists()


def test_unwritable_cache_folder_decodes_in_memory(tmp_path, capsys):
    write_tiny(tmp_path)
    (tmp_path / "cache").write_text("a file where the cache folder would be")
    b = load_dataset(DataConfig(name="tinyimagenet"), tmp_path)
    assert "decoding the images in memory for this run" in capsys.readouterr().err
    assert_same_images(b.train, tiny_files(tmp_path).train)
    assert (tmp_path / "cache").read_text() == "a file where the cache folder would be"


def test_augmented_batches_from_the_cache_equal_those_from_the_files(tmp_path):
    write_tiny(tmp_path)
    cached = load_dataset(DataConfig(name="tinyimagenet", augment=True), tmp_path)
    files = tiny_files(tmp_path, augment=True)
    assert cached.batch_transform == files.batch_transform

    def epoch(bundle):
        return list(iterate_batches(bundle.train, 5, epoch_generator(3, 1),
                                    bundle.batch_transform, workers=0))

    a, b = epoch(cached), epoch(files)
    assert [len(y) for _, y in a] == [5, 5, 2]
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_a_run_from_the_cache_equals_a_run_decoding_the_files(tmp_path, monkeypatch):
    """The whole training run (augmented batches, masks, evaluation) from the in-memory cache
    ends bit-identical to the same run reading the JPEG files through DataLoader workers."""
    monkeypatch.setenv("SPARSEBENCH_DATA_WORKERS", "0")
    write_tiny(tmp_path / "data")
    cfg = RunConfig(
        data=DataConfig(name="tinyimagenet", augment=True), model=ModelConfig("lenet300_100"),
        method=MethodConfig("static"),
        train=TrainConfig(epochs=2, batch_size=5, optimizer="sgd", lr=0.05, eval_batch_size=4),
        sparsity=SparsityConfig(target=0.5))
    runs = {}
    for name, data in (("cache", load_dataset(cfg.data, tmp_path / "data")),
                       ("files", tiny_files(tmp_path / "data", augment=True))):
        out = Trainer(make_method(cfg), tmp_path / name, data=data).run()
        runs[name] = out
    a, b = runs["cache"], runs["files"]
    assert a.history == b.history and a.final == b.final and a.train_flops == b.train_flops
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert len(a.history) == 2 and a.history[-1]["step"] == 6


def test_cache_checksum_is_the_one_caches_were_written_with():
    """The checksum hashes the arrays' buffers in place (no 1.2 GB copy of Tiny-ImageNet's):
    the same SHA-256 as of their bytes, so caches written before still verify."""
    g = torch.Generator().manual_seed(0)
    tensors = {"x": torch.randint(0, 256, (5, 3, 4, 4), dtype=torch.uint8, generator=g),
               "y": torch.arange(5), "x_test": torch.zeros(0, 3, 4, 4, dtype=torch.uint8),
               "y_test": torch.zeros(0, dtype=torch.long)}
    want = hashlib.sha256()
    for key in decoded.KEYS:
        t = tensors[key]
        want.update(f"{key}{tuple(t.shape)}{t.dtype}".encode())
        want.update(t.numpy().tobytes())
    assert decoded.data_digest(tensors) == want.hexdigest()
