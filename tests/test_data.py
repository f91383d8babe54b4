"""Dataset loading and splitting (paretoskip.data)."""

from __future__ import annotations

import gzip
import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from paretoskip.data import DATASETS, load_dataset, read_split
from paretoskip.errors import ConfigError, DataNotFoundError

# --------------------------------------------------------------------------- helpers


def _write_idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", s) for s in array.shape)
    data = header + array.tobytes()
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def _fashion_arrays(n_train: int = 60, n_test: int = 20, seed: int = 0):
    rng = np.random.default_rng(seed)
    x_train = rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    x_test = rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8)
    y_train = np.arange(n_train) % 10
    y_test = np.arange(n_test) % 10
    return x_train, y_train, x_test, y_test


def _write_fashion(directory: Path, arrays=None, compress: bool = True) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    x_train, y_train, x_test, y_test = arrays if arrays is not None else _fashion_arrays()
    _write_idx(directory / "train-images-idx3-ubyte", x_train, compress)
    _write_idx(directory / "train-labels-idx1-ubyte", y_train, compress)
    _write_idx(directory / "t10k-images-idx3-ubyte", x_test, compress)
    _write_idx(directory / "t10k-labels-idx1-ubyte", y_test, compress)


def _write_cifar10(root: Path, per_batch: int = 10, n_test: int = 20) -> Path:
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(1, 6):
        batch = {
            "batch_label": f"training batch {i} of 5",
            "labels": [int(j % 10) for j in range(per_batch)],
            "data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            "filenames": [f"img{i}_{j}.png" for j in range(per_batch)],
        }
        with open(d / f"data_batch_{i}", "wb") as f:
            pickle.dump(batch, f, protocol=2)
    test = {
        "labels": [int(j % 10) for j in range(n_test)],
        "data": rng.integers(0, 256, (n_test, 3072), dtype=np.uint8),
    }
    with open(d / "test_batch", "wb") as f:
        pickle.dump(test, f, protocol=2)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump(
            {"label_names": [f"class{k}" for k in range(10)], "num_vis": 3072}, f, protocol=2
        )
    return d


def _write_cifar100(root: Path, n_train: int = 40, n_test: int = 20) -> Path:
    d = root / "cifar-100-python"
    d.mkdir(parents=True)
    rng = np.random.default_rng(2)
    for fname, n in (("train", n_train), ("test", n_test)):
        obj = {
            "fine_labels": [int(j % 5) for j in range(n)],
            "coarse_labels": [0] * n,
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        }
        with open(d / fname, "wb") as f:
            pickle.dump(obj, f, protocol=2)
    with open(d / "meta", "wb") as f:
        pickle.dump(
            {"fine_label_names": [f"fine{k}" for k in range(100)], "coarse_label_names": ["c"]}, f
        )
    return d


def _write_imagefolder(root: Path, classes=("ant", "bee", "cat"), per_class: int = 10) -> Path:
    from PIL import Image

    rng = np.random.default_rng(3)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            h, w = 20 + i, 24
            if i % 3 == 0:  # a greyscale image, converted to RGB by the loader
                img = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), mode="L")
            else:
                img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), mode="RGB")
            img.save(root / c / f"{i}.{'jpg' if i % 2 else 'png'}")
    return root


def _proportions(y: torch.Tensor, k: int) -> np.ndarray:
    return np.bincount(y.numpy(), minlength=k) / len(y)


# --------------------------------------------------------------------------- digits / splits


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def test_digits_shapes_and_normalisation(digits):
    assert digits.num_classes == 10 and digits.in_channels == 1 and digits.input_size == 8
    assert digits.train.x.dtype == torch.float32 and digits.train.y.dtype == torch.int64
    assert tuple(digits.train.x.shape[1:]) == (1, 8, 8)
    assert len(digits.train) + len(digits.val) + len(digits.test) == 1797
    assert len(digits.val) == len(digits.test) == round(0.2 * 1797)
    assert abs(float(digits.train.x.mean())) < 1e-3
    assert abs(float(digits.train.x.std()) - 1.0) < 1e-2
    assert digits.root is None


def test_splits_disjoint_and_stratified(digits):
    parts = [digits.train.indices, digits.val.indices, digits.test.indices]
    everything = np.concatenate(parts)
    assert len(np.unique(everything)) == len(everything) == 1797
    p_train = _proportions(digits.train.y, 10)
    for part in (digits.val, digits.test):
        assert np.max(np.abs(_proportions(part.y, 10) - p_train)) < 0.01
    # the stored labels are the source's labels at those indices
    from sklearn.datasets import load_digits

    target = load_digits().target
    assert np.array_equal(target[digits.test.indices], digits.test.y.numpy())


def test_split_deterministic_and_seeded(digits):
    again = load_dataset("digits", seed=0)
    for a, b in ((digits.train, again.train), (digits.val, again.val), (digits.test, again.test)):
        assert np.array_equal(a.indices, b.indices)
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert again.fingerprint == digits.fingerprint
    other = load_dataset("digits", seed=1)
    assert not np.array_equal(other.test.indices, digits.test.indices)
    assert other.fingerprint != digits.fingerprint


def test_sizes_as_counts_and_limit():
    d = load_dataset("digits", val_size=100, test_size=200, seed=3)
    assert (len(d.train), len(d.val), len(d.test)) == (1497, 100, 200)
    small = load_dataset("digits", limit=500, seed=3)
    assert len(small.train) + len(small.val) + len(small.test) == 500
    assert len(small.test) == 100
    assert np.max(np.abs(_proportions(small.train.y, 10) - 0.1)) < 0.02
    assert small.fingerprint != d.fingerprint


def test_bad_arguments():
    with pytest.raises(ConfigError) as err:
        load_dataset("mnist-ish")
    for name in DATASETS:
        assert name in str(err.value)
    with pytest.raises(ConfigError):
        load_dataset("digits", val_size=1.5)
    with pytest.raises(ConfigError):
        load_dataset("digits", val_size=0.5, test_size=0.5)
    with pytest.raises(ConfigError):
        load_dataset("digits", seed=-1)
    with pytest.raises(ConfigError):
        load_dataset("digits", limit=0)


def test_resize_input_size():
    d = load_dataset("digits", input_size=16, limit=200)
    assert d.input_size == 16 and tuple(d.train.x.shape[1:]) == (1, 16, 16)


def test_describe_is_json(digits):
    desc = json.loads(json.dumps(digits.describe()))
    assert desc["name"] == "digits" and desc["seed"] == 0
    assert desc["sizes"] == {
        "train": len(digits.train),
        "val": len(digits.val),
        "test": len(digits.test),
    }
    assert desc["fingerprint"] == digits.fingerprint
    assert (desc["num_classes"], desc["in_channels"], desc["input_size"]) == (10, 1, 8)


def test_save_split_round_trip(digits, tmp_path):
    path = tmp_path / "split.json"
    digits.save_split(path)
    doc = read_split(path)
    assert doc["seed"] == 0
    for key, part in (("train", digits.train), ("val", digits.val), ("test", digits.test)):
        assert np.array_equal(doc[key], part.indices)
    # plain JSON with the seed and three index lists
    raw = json.loads(path.read_text())
    assert raw["seed"] == 0 and isinstance(raw["train"], list)
    # reloading from the file gives the same parts, whatever seed is passed
    again = load_dataset("digits", split=path, seed=5)
    assert again.seed == 0 and again.fingerprint == digits.fingerprint
    assert torch.equal(again.val.x, digits.val.x)


def test_split_file_overlap_rejected(digits, tmp_path):
    path = tmp_path / "split.json"
    digits.save_split(path)
    raw = json.loads(path.read_text())
    raw["val"].append(raw["train"][0])
    path.write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match="overlap"):
        load_dataset("digits", split=path)


# --------------------------------------------------------------------------- Fashion-MNIST


@pytest.mark.parametrize("layout", ["flat", "torchvision", "uncompressed"])
def test_fashion_mnist_layouts(tmp_path, layout):
    if layout == "flat":
        _write_fashion(tmp_path)
        expected_dir = tmp_path
    elif layout == "torchvision":
        expected_dir = tmp_path / "FashionMNIST" / "raw"
        _write_fashion(expected_dir)
    else:
        expected_dir = tmp_path / "FashionMNIST" / "raw"
        _write_fashion(expected_dir, compress=False)
    d = load_dataset("fashion-mnist", tmp_path, val_size=0.25)
    x_train, y_train, x_test, y_test = _fashion_arrays()
    assert d.root == str(expected_dir)
    assert (d.num_classes, d.in_channels, d.input_size) == (10, 1, 28)
    assert d.classes[0] == "T-shirt/top"
    assert (len(d.train), len(d.val), len(d.test)) == (45, 15, 20)
    # official test part = the whole t10k file, indices after the 60 training rows
    assert np.array_equal(d.test.indices, np.arange(60, 80))
    assert np.array_equal(d.test.y.numpy(), y_test)
    assert set(d.train.indices) | set(d.val.indices) == set(range(60))
    # normalised with the train part's statistics
    raw_train = x_train[d.train.indices].astype(np.float64) / 255
    assert d.mean[0] == pytest.approx(raw_train.mean(), rel=1e-4)
    expected = (x_test[3].astype(np.float32) / 255 - d.mean[0]) / d.std[0]
    assert np.allclose(d.test.x[3, 0].numpy(), expected, atol=1e-5)


def test_fashion_mnist_fingerprint_follows_data(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    arrays = _fashion_arrays()
    _write_fashion(a, arrays)
    changed = [arr.copy() for arr in arrays]
    changed[0][5, 10, 10] ^= 0xFF  # one pixel of one training image
    _write_fashion(b, changed)
    da = load_dataset("fashion-mnist", a)
    db = load_dataset("fashion-mnist", b)
    assert np.array_equal(da.train.indices, db.train.indices)
    assert da.fingerprint != db.fingerprint
    # the root itself is not part of the fingerprint
    c = tmp_path / "c"
    _write_fashion(c, arrays)
    assert load_dataset("fashion-mnist", c).fingerprint == da.fingerprint


def test_fashion_mnist_limit(tmp_path):
    _write_fashion(tmp_path, _fashion_arrays(200, 100))
    d = load_dataset("fashion-mnist", tmp_path, limit=150, val_size=0.2)
    assert len(d.test) == 50 and len(d.train) + len(d.val) == 100
    assert np.all(d.test.indices >= 200)
    assert np.max(np.abs(_proportions(d.test.y, 10) - 0.1)) < 1e-9


def test_fashion_mnist_not_found_lists_paths(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("fashion-mnist", missing)
    msg = str(err.value)
    assert str(missing) in msg
    assert str(missing / "FashionMNIST" / "raw") in msg
    assert "apt-get install dataset-fashion-mnist" in msg


def test_fashion_mnist_corrupt_file(tmp_path):
    _write_fashion(tmp_path)
    gz = tmp_path / "train-images-idx3-ubyte.gz"
    with gzip.open(gz, "rb") as f:
        data = f.read()
    with gzip.open(gz, "wb") as f:
        f.write(data[:-100])
    with pytest.raises(DataNotFoundError, match="truncated"):
        load_dataset("fashion-mnist", tmp_path)


@pytest.mark.slow
def test_real_fashion_mnist():
    root = Path("/usr/share/datasets/fashion-mnist")
    if not (root / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("dataset-fashion-mnist is not installed")
    d = load_dataset("fashion-mnist")
    assert (len(d.train), len(d.val), len(d.test)) == (48000, 12000, 10000)
    assert np.array_equal(np.bincount(d.test.y.numpy()), [1000] * 10)


# --------------------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("use_subdir", [False, True])
def test_cifar10(tmp_path, use_subdir):
    d_dir = _write_cifar10(tmp_path)
    d = load_dataset("cifar10", d_dir if use_subdir else tmp_path, val_size=10)
    assert d.root == str(d_dir)
    assert (d.num_classes, d.in_channels, d.input_size) == (10, 3, 32)
    assert d.classes[3] == "class3"
    assert (len(d.train), len(d.val), len(d.test)) == (40, 10, 20)
    assert np.array_equal(d.test.indices, np.arange(50, 70))
    assert tuple(d.train.x.shape[1:]) == (3, 32, 32)
    assert len(d.mean) == 3 and len(d.std) == 3
    # the R, G, B planes of the pickled rows land in the channels
    with open(d_dir / "test_batch", "rb") as f:
        raw = pickle.load(f)["data"][0].reshape(3, 32, 32).astype(np.float32) / 255
    mean = np.array(d.mean, dtype=np.float32)[:, None, None]
    std = np.array(d.std, dtype=np.float32)[:, None, None]
    assert np.allclose(d.test.x[0].numpy(), (raw - mean) / std, atol=1e-5)
    assert np.max(np.abs(_proportions(d.val.y, 10) - 0.1)) < 1e-9


def test_cifar100(tmp_path):
    _write_cifar100(tmp_path)
    d = load_dataset("cifar100", tmp_path, val_size=0.25)
    assert d.num_classes == 100 and d.classes[7] == "fine7"
    assert (len(d.train), len(d.val), len(d.test)) == (30, 10, 20)
    assert set(d.test.y.tolist()) == set(range(5))


def test_cifar_not_found(tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("cifar10", tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "cifar-10-batches-py") in msg and str(tmp_path) in msg
    assert "cifar" in msg.lower() and "python version" in msg


# --------------------------------------------------------------------------- ImageFolder


def test_imagefolder(tmp_path):
    root = _write_imagefolder(tmp_path / "imgs")
    d = load_dataset("imagefolder", root, input_size=16, val_size=6, test_size=6)
    assert d.classes == ("ant", "bee", "cat") and d.num_classes == 3
    assert (d.in_channels, d.input_size) == (3, 16)
    assert tuple(d.train.x.shape[1:]) == (3, 16, 16)
    assert (len(d.train), len(d.val), len(d.test)) == (18, 6, 6)
    assert np.array_equal(np.bincount(d.test.y.numpy()), [2, 2, 2])
    default = load_dataset("imagefolder", root)
    assert default.input_size == 32 and tuple(default.test.x.shape[1:]) == (3, 32, 32)


def test_imagefolder_not_found(tmp_path):
    with pytest.raises(DataNotFoundError, match=str(tmp_path / "none")):
        load_dataset("imagefolder", tmp_path / "none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFoundError):
        load_dataset("imagefolder", tmp_path / "empty")
    with pytest.raises(DataNotFoundError):
        load_dataset("imagefolder")


def test_fashion_mnist_corrupt_deflate_bytes(tmp_path):
    """Bad compressed bytes inside a valid gzip header: one clear error, not zlib's."""
    import zlib

    _write_fashion(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    blob = bytearray(path.read_bytes())
    for i in range(20, min(len(blob) - 8, 60)):
        blob[i] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(zlib.error), gzip.open(path) as f:
        f.read()  # the corruption reaches zlib itself, not only gzip's checks
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("fashion-mnist", tmp_path)
    assert "truncated or corrupted" in str(err.value) and "train-images" in str(err.value)


def test_cifar_pickle_with_code_is_refused(tmp_path):
    import os

    d = _write_cifar10(tmp_path)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(d / "data_batch_3", "wb") as f:
        pickle.dump({"data": Payload(), "labels": [0]}, f, protocol=2)
    with pytest.raises(DataNotFoundError, match="refusing"):
        load_dataset("cifar10", tmp_path)
    assert not marker.exists()
