"""Image dataset loaders on small files written in the real on-disk formats: CIFAR python
pickles (written the way Python 2 wrote them), MNIST IDX (plain and gzipped), ImageNet and
Tiny-ImageNet folder layouts with real PNG/JPEG files."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.config import DataConfig
from bench.data import DATASETS, load_dataset
from bench.data.base import epoch_generator, iterate_batches
from bench.data.cifar import CIFAR10, CIFAR100, PadCropFlip, pad_crop_flip
from bench.data.imagefolder import IMAGENET_MEAN, IMAGENET_STD, TINY_MEAN, TINY_STD
from bench.data.mnist import MEAN as MNIST_MEAN
from bench.data.mnist import STD as MNIST_STD
from bench.errors import UserError

# ---------------------------------------------------------------- CIFAR


class _Py2StylePickler(pickle._Pickler):
    """Writes bytes as Python 2 ``str`` opcodes (SHORT_BINSTRING / BINSTRING), as cPickle did for
    the CIFAR release, instead of Python 3's ``_codecs.encode`` calls."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def py2_pickle(obj) -> bytes:
    import io

    buf = io.BytesIO()
    _Py2StylePickler(buf, protocol=2).dump(obj)
    # numpy of the Python 2 era lived in numpy.core.
    return buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def cifar_batch(rng: np.random.Generator, n: int, num_classes: int, label_keys: tuple[str, ...]):
    images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, num_classes, n)
    batch = {b"batch_label": b"a batch", b"data": images.reshape(n, 3072),
             b"filenames": [f"img_{i}.png".encode() for i in range(n)]}
    for k in label_keys:
        batch[k.encode()] = [int(v) for v in rng.integers(0, num_classes, n)]
    batch[label_keys[0].encode()] = [int(v) for v in labels]
    return batch, images, labels


def write_cifar10(root: Path, n: int = 20, seed: int = 0):
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    xs, ys = [], []
    for name in (*CIFAR10.train_files, CIFAR10.test_file):
        batch, x, y = cifar_batch(rng, n, 10, ("labels",))
        (folder / name).write_bytes(py2_pickle(batch))
        xs.append(x)
        ys.append(y)
    (folder / "batches.meta").write_bytes(py2_pickle(
        {b"label_names": [f"c{i}".encode() for i in range(10)], b"num_vis": 3072}))
    return np.concatenate(xs[:5]), np.concatenate(ys[:5]), xs[5], ys[5]


def write_cifar100(root: Path, n: int = 30, seed: int = 1):
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    out = []
    for name in ("train", "test"):
        batch, x, y = cifar_batch(rng, n, 100, ("fine_labels", "coarse_labels"))
        (folder / name).write_bytes(py2_pickle(batch))
        out += [x, y]
    (folder / "meta").write_bytes(py2_pickle({b"fine_label_names": [b"x"] * 100}))
    return out


def normalised(x: np.ndarray, mean, std) -> torch.Tensor:
    m = np.asarray(mean).reshape(1, -1, 1, 1)
    s = np.asarray(std).reshape(1, -1, 1, 1)
    return torch.from_numpy((x / 255.0 - m) / s).float()


def test_cifar10_reads_py2_pickles_exactly(tmp_path):
    x_tr, y_tr, x_te, y_te = write_cifar10(tmp_path)
    b = load_dataset(DataConfig(name="cifar10"), tmp_path)
    assert (b.input_shape, b.num_classes, b.batch_transform) == ((3, 32, 32), 10, None)
    # Held as the file's uint8 pixels; items and batches are normalised float32.
    assert torch.equal(b.train.tensors[0], torch.from_numpy(x_tr))
    assert torch.equal(b.test.tensors[0], torch.from_numpy(x_te))
    xt, yt = b.train[:]
    assert xt.shape == (100, 3, 32, 32) and xt.dtype == torch.float32
    assert torch.equal(yt, torch.from_numpy(y_tr))
    torch.testing.assert_close(xt, normalised(x_tr, CIFAR10.mean, CIFAR10.std), atol=1e-5, rtol=0)
    xe, ye = b.test[:]
    assert torch.equal(ye, torch.from_numpy(y_te))
    torch.testing.assert_close(xe, normalised(x_te, CIFAR10.mean, CIFAR10.std), atol=1e-5, rtol=0)
    # A black pixel, channel 0: (0 - 0.4914) / 0.2470.
    assert xt.min().item() == pytest.approx(min(-m / s for m, s in zip(CIFAR10.mean, CIFAR10.std,
                                                                       strict=True)), abs=1e-5)


def test_cifar100_uses_fine_labels_and_subset(tmp_path):
    x_tr, y_tr, x_te, y_te = write_cifar100(tmp_path)
    b = load_dataset(DataConfig(name="cifar100", train_subset=7), tmp_path)
    assert (b.input_shape, b.num_classes, b.train_size, len(b.test)) == ((3, 32, 32), 100, 7, 30)
    assert torch.equal(b.train.tensors[1], torch.from_numpy(y_tr[:7]))
    assert torch.equal(b.test.tensors[1], torch.from_numpy(y_te))
    assert torch.equal(b.train.tensors[0], torch.from_numpy(x_tr[:7]))
    torch.testing.assert_close(b.train[:][0], normalised(x_tr[:7], CIFAR100.mean,
                                                              CIFAR100.std), atol=1e-5, rtol=0)


def test_cifar_reads_python3_pickles_too(tmp_path):
    """Files re-pickled by Python 3 (bytes keys via _codecs.encode, numpy._core) also load."""
    rng = np.random.default_rng(5)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    labels = []
    for name in (*CIFAR10.train_files, CIFAR10.test_file):
        batch, _, y = cifar_batch(rng, 4, 10, ("labels",))
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        labels.append(y)
    b = load_dataset(DataConfig(name="cifar10"), tmp_path)
    assert torch.equal(b.train.tensors[1], torch.from_numpy(np.concatenate(labels[:5])))


class _Evil:
    def __reduce__(self):
        return (Path.touch, (Path("/nonexistent-dir/pwned"),))


def test_cifar_refuses_pickles_with_code_and_corrupt_files(tmp_path):
    write_cifar10(tmp_path, n=2)
    target = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    target.write_bytes(pickle.dumps({"data": _Evil(), "labels": [0]}, protocol=2))
    with pytest.raises(UserError, match="data_batch_2 is not a readable CIFAR batch"):
        load_dataset(DataConfig(name="cifar10"), tmp_path)
    target.write_bytes(b"\x80\x02}q")  # truncated
    with pytest.raises(UserError, match="data_batch_2"):
        load_dataset(DataConfig(name="cifar10"), tmp_path)
    target.write_bytes(py2_pickle({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(UserError, match=r"not a valid CIFAR batch: data shape \(2, 100\)"):
        load_dataset(DataConfig(name="cifar10"), tmp_path)


def test_cifar_missing_is_one_clear_line(tmp_path):
    for name in ("cifar10", "cifar100"):
        with pytest.raises(UserError) as e:
            load_dataset(DataConfig(name=name), tmp_path)
        msg = str(e.value)
        folder = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
        assert "\n" not in msg and str(tmp_path / folder) in msg
        assert "download=True" in msg and "--data-root" in msg and "SPARSEBENCH_DATA" in msg
    write_cifar10(tmp_path, n=2)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(UserError, match=r"cifar-10-batches-py \(missing data_batch_3\)"):
        load_dataset(DataConfig(name="cifar10"), tmp_path)


def crop_candidates(img: torch.Tensor, fill: torch.Tensor, pad: int) -> list[torch.Tensor]:
    c, h, w = img.shape
    padded = fill.view(c, 1, 1).expand(c, h + 2 * pad, w + 2 * pad).clone()
    padded[:, pad : pad + h, pad : pad + w] = img
    out = []
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[:, dy : dy + h, dx : dx + w]
            out += [crop, crop.flip(2)]
    return out


def test_cifar_augmentation_is_a_padded_crop_and_flip_from_the_generator(tmp_path):
    write_cifar10(tmp_path, n=12)
    b = load_dataset(DataConfig(name="cifar10", augment=True), tmp_path)
    t = b.batch_transform
    assert isinstance(t, PadCropFlip) and t.padding == 4
    x = b.train[:48][0]
    out = t(x, torch.Generator().manual_seed(3))
    assert out.shape == x.shape
    fill = torch.tensor(t.fill)
    torch.testing.assert_close(fill, -torch.tensor(CIFAR10.mean) / torch.tensor(CIFAR10.std))
    # Brute force: each output is exactly one of the 81 crops x 2 flips of its own image.
    which = []
    for i in range(len(x)):
        hits = [k for k, cand in enumerate(crop_candidates(x[i], fill, 4))
                if torch.equal(cand, out[i])]
        assert len(hits) == 1
        which.append(hits[0])
    assert len({k % 2 for k in which}) == 2 and len({k // 2 for k in which}) > 10
    assert torch.equal(out, t(x, torch.Generator().manual_seed(3)))
    assert not torch.equal(out, t(x, torch.Generator().manual_seed(4)))
    # The input batch is not modified in place.
    assert torch.equal(x, b.train[:48][0])


def test_augmented_epochs_are_reproducible(tmp_path):
    write_cifar10(tmp_path, n=10)
    b = load_dataset(DataConfig(name="cifar10", augment=True), tmp_path)

    def epoch(seed, e):
        return [x for x, _ in iterate_batches(b.train, 16, epoch_generator(seed, e),
                                              b.batch_transform)]

    first, again, other = epoch(1, 0), epoch(1, 0), epoch(1, 1)
    assert all(torch.equal(p, q) for p, q in zip(first, again, strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(first, other, strict=True))


# ---------------------------------------------------------------- MNIST


def idx_bytes(array: np.ndarray) -> bytes:
    return bytes((0, 0, 8, array.ndim)) + struct.pack(f">{array.ndim}I", *array.shape) + \
        array.astype(np.uint8).tobytes()


def write_mnist(root: Path, gz: bool, n_train: int = 50, n_test: int = 20):
    rng = np.random.default_rng(7)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test).astype(np.uint8),
    }
    for name, a in arrays.items():
        if gz:
            (raw / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(a)))
        else:
            (raw / name).write_bytes(idx_bytes(a))
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_reads_idx_exactly(tmp_path, gz):
    a = write_mnist(tmp_path, gz)
    b = load_dataset(DataConfig(name="mnist"), tmp_path)
    assert (b.input_shape, b.num_classes, b.batch_transform) == ((1, 28, 28), 10, None)
    assert torch.equal(b.train.tensors[0], torch.from_numpy(a["train-images-idx3-ubyte"][:, None]))
    x, y = b.train[:]
    assert x.shape == (50, 1, 28, 28) and x.dtype == torch.float32
    assert torch.equal(y, torch.from_numpy(a["train-labels-idx1-ubyte"].astype(np.int64)))
    expected = (a["train-images-idx3-ubyte"][:, None] / 255.0 - 0.1307) / 0.3081
    torch.testing.assert_close(x, torch.from_numpy(expected).float(), atol=1e-5, rtol=0)
    assert (MNIST_MEAN, MNIST_STD) == (0.1307, 0.3081)
    assert torch.equal(b.test.tensors[1],
                       torch.from_numpy(a["t10k-labels-idx1-ubyte"].astype(np.int64)))
    sub = load_dataset(DataConfig(name="mnist", train_subset=5), tmp_path)
    assert torch.equal(sub.train[:][0], x[:5]) and len(sub.test) == 20


def test_mnist_errors(tmp_path):
    with pytest.raises(UserError) as e:
        load_dataset(DataConfig(name="mnist"), tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "MNIST" / "raw") in msg
    assert "t10k-labels-idx1-ubyte" in msg and "torchvision.datasets.MNIST" in msg
    assert "--data-root" in msg and "SPARSEBENCH_DATA" in msg
    write_mnist(tmp_path, gz=False)
    with pytest.raises(UserError, match="no train-time augmentation"):
        load_dataset(DataConfig(name="mnist", augment=True), tmp_path)
    labels = tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    good = labels.read_bytes()
    labels.write_bytes(good[:-1])
    with pytest.raises(UserError, match="train-labels-idx1-ubyte has 57 bytes"):
        load_dataset(DataConfig(name="mnist"), tmp_path)
    labels.write_bytes(b"\x00\x00\x0d\x01" + good[4:])  # float32 type code
    with pytest.raises(UserError, match="not an IDX file of 1-d unsigned bytes"):
        load_dataset(DataConfig(name="mnist"), tmp_path)


# ---------------------------------------------------------------- ImageNet / Tiny-ImageNet

WNIDS = ("n01440764", "n01443537", "n01484850")
COLOURS = ((200, 30, 90), (10, 240, 120), (128, 64, 250))


def solid(path: Path, colour, size=(40, 30), mode="RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("L", size, colour[0]) if mode == "L" else Image.new("RGB", size, colour)
    if path.suffix == ".JPEG":
        img.save(path, format="JPEG", quality=100)
    else:
        img.save(path)


def expected_pixel(colour, mean, std) -> torch.Tensor:
    return (torch.tensor(colour) / 255.0 - torch.tensor(mean)) / torch.tensor(std)


def colour_class(x: torch.Tensor, mean, std, atol: float) -> int:
    """Which class colour a (3, H, W) normalised image is (every pixel must agree)."""
    hits = [k for k, c in enumerate(COLOURS)
            if torch.allclose(x, expected_pixel(c, mean, std).view(3, 1, 1).expand_as(x),
                              atol=atol, rtol=0)]
    assert len(hits) == 1
    return hits[0]


def write_imagenet(root: Path) -> None:
    base = root / "imagenet"
    for k, (wnid, colour) in enumerate(zip(WNIDS, COLOURS, strict=True)):
        for i in range(2):
            solid(base / "train" / wnid / f"{wnid}_{i}.png", colour, size=(40 + 10 * i, 30))
        (base / "train" / wnid / "notes.txt").write_text("not an image")
        if k < 2:  # a val set may lack a class; labels still follow the train folders
            solid(base / "val" / wnid / f"ILSVRC2012_val_{k}.png", colour, size=(300, 260))
    solid(base / "train" / WNIDS[2] / "extra.JPEG", COLOURS[2], size=(64, 64))


def test_imagenet_folders_labels_and_eval_transform(tmp_path):
    write_imagenet(tmp_path)
    b = load_dataset(DataConfig(name="imagenet"), tmp_path)
    assert (b.input_shape, b.num_classes, b.batch_transform) == ((3, 224, 224), 3, None)
    assert (len(b.train), len(b.test)) == (7, 2)
    assert b.train.targets == [0, 0, 1, 1, 2, 2, 2]
    assert b.test.targets == [0, 1]
    for ds, atol in ((b.train, 1e-5), (b.test, 1e-5)):
        for i in range(len(ds)):
            x, y = ds[i]
            assert x.shape == (3, 224, 224)
            # The JPEG is lossy: a solid colour decodes to within a couple of levels.
            tol = 3 / 255 / min(IMAGENET_STD) if ds.samples[i][0].endswith("JPEG") else atol
            assert colour_class(x, IMAGENET_MEAN, IMAGENET_STD, tol) == y
    sub = load_dataset(DataConfig(name="imagenet", train_subset=3), tmp_path)
    assert len(sub.train) == 3 and set(sub.train.samples) <= set(b.train.samples)
    assert sub.train.samples == load_dataset(DataConfig(name="imagenet", train_subset=3),
                                             tmp_path).train.samples


def test_imagenet_augmentation_draws_from_the_global_rng(tmp_path):
    base = tmp_path / "imagenet"
    rng = np.random.default_rng(0)
    for wnid in WNIDS[:2]:
        for split in ("train", "val"):
            (base / split / wnid).mkdir(parents=True)
            Image.fromarray(rng.integers(0, 256, (50, 60, 3), dtype=np.uint8)).save(
                base / split / wnid / "a.png")
    b = load_dataset(DataConfig(name="imagenet", augment=True), tmp_path)
    torch.manual_seed(0)
    first = b.train[0][0]
    torch.manual_seed(0)
    assert torch.equal(first, b.train[0][0]) and first.shape == (3, 224, 224)
    torch.manual_seed(1)
    assert not torch.equal(first, b.train[0][0])
    assert torch.equal(b.test[0][0], b.test[0][0])  # eval transform is deterministic


def test_imagenet_errors(tmp_path):
    with pytest.raises(UserError) as e:
        load_dataset(DataConfig(name="imagenet"), tmp_path)
    msg = str(e.value)
    assert "\n" not in msg
    assert str(tmp_path / "imagenet" / "train") in msg and str(tmp_path / "imagenet" / "val") in msg
    assert "image-net.org" in msg and "--data-root" in msg and "SPARSEBENCH_DATA" in msg
    write_imagenet(tmp_path)
    solid(tmp_path / "imagenet" / "val" / "n99999999" / "x.png", (0, 0, 0))
    with pytest.raises(UserError, match="n99999999 has no counterpart in the train folder"):
        load_dataset(DataConfig(name="imagenet"), tmp_path)


def write_tiny(root: Path, per_class: int = 3) -> list[int]:
    base = root / "tiny-imagenet-200"
    rows, val_labels = [], []
    for wnid, colour in zip(WNIDS, COLOURS, strict=True):
        for i in range(per_class):
            solid(base / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", colour, size=(64, 64))
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text(f"{wnid}_0.JPEG\t0\t0\t63\t63\n")
    # Val images interleave classes, as in the real annotations file.
    for j, k in enumerate((2, 0, 1, 1, 2)):
        solid(base / "val" / "images" / f"val_{j}.JPEG", COLOURS[k], size=(64, 64))
        rows.append(f"val_{j}.JPEG\t{WNIDS[k]}\t3\t5\t60\t61\n")
        val_labels.append(k)
    solid(base / "val" / "images" / "val_5.JPEG", COLOURS[0], size=(64, 64), mode="L")
    rows.append(f"val_5.JPEG\t{WNIDS[0]}\t0\t0\t63\t63\n")
    (base / "val" / "val_annotations.txt").write_text("".join(rows))
    (base / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    return [*val_labels, 0]


def test_tinyimagenet_layout_and_labels(tmp_path):
    val_labels = write_tiny(tmp_path)
    b = load_dataset(DataConfig(name="tinyimagenet"), tmp_path)
    assert (b.input_shape, b.num_classes, b.batch_transform) == ((3, 64, 64), 3, None)
    assert (len(b.train), len(b.test)) == (9, 6)
    assert b.train.tensors[1].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert b.test.tensors[1].tolist() == val_labels
    tol = 3 / 255 / min(TINY_STD)  # JPEG
    for ds in (b.train, b.test):
        for i in range(len(ds) - (ds is b.test)):
            x, y = ds[i]
            assert x.shape == (3, 64, 64) and colour_class(x, TINY_MEAN, TINY_STD, tol) == y
    grey, _ = b.test[5]  # a greyscale JPEG becomes three equal channels
    raw = grey * torch.tensor(TINY_STD).view(3, 1, 1) + torch.tensor(TINY_MEAN).view(3, 1, 1)
    torch.testing.assert_close(raw[0], raw[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(raw[0], raw[2], atol=1e-5, rtol=0)


def test_tinyimagenet_augmented_batches_are_deterministic(tmp_path):
    write_tiny(tmp_path)
    b = load_dataset(DataConfig(name="tinyimagenet", augment=True), tmp_path)
    assert b.batch_transform == pad_crop_flip(TINY_MEAN, TINY_STD, 4)

    def epoch(seed):
        return list(iterate_batches(b.train, 4, epoch_generator(seed, 0), b.batch_transform))

    first, again, other = epoch(0), epoch(0), epoch(9)
    assert [x.shape for x, _ in first] == [(4, 3, 64, 64), (4, 3, 64, 64), (1, 3, 64, 64)]
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1])
               for p, q in zip(first, again, strict=True))
    assert not all(torch.equal(p[0], q[0]) for p, q in zip(first, other, strict=True))
    assert sorted(torch.cat([y for _, y in first]).tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_tinyimagenet_errors(tmp_path):
    with pytest.raises(UserError) as e:
        load_dataset(DataConfig(name="tinyimagenet"), tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "tiny-imagenet-200" / "train") in msg
    assert "tiny-imagenet-200.zip" in msg and "--data-root" in msg and "SPARSEBENCH_DATA" in msg
    write_tiny(tmp_path)
    ann = tmp_path / "tiny-imagenet-200" / "val" / "val_annotations.txt"
    ann.write_text(ann.read_text() + "val_9.JPEG\tn01440764\t0\t0\t1\t1\n")
    with pytest.raises(UserError, match="line 7 names an unknown class or a missing image"):
        load_dataset(DataConfig(name="tinyimagenet"), tmp_path)


def test_registry_lists_the_image_datasets():
    assert {"cifar10", "cifar100", "mnist", "imagenet", "tinyimagenet"} <= set(DATASETS)


def test_pad_crop_flip_fill_is_a_black_pixel():
    t = pad_crop_flip((0.5,), (0.25,), padding=2)
    x = torch.full((64, 1, 4, 4), 7.0)
    out = t(x, torch.Generator().manual_seed(0))
    # Values are either the image's or the black pixel's (0 - 0.5) / 0.25 = -2, and most
    # crops (all but offset 2, 2) show some padding.
    assert set(out.unique().tolist()) == {-2.0, 7.0}
    assert int((out == -2.0).flatten(1).any(1).sum()) > 40
