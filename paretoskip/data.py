"""Datasets, held in memory, split into stratified, seeded train / validation / test parts.

Every loader reads a local copy; nothing is downloaded and nothing is read at import time.

Example:
    >>> from paretoskip.data import load_dataset
    >>> data = load_dataset("digits", seed=0)
    >>> len(data.train), len(data.val), len(data.test)
    (1079, 359, 359)
    >>> data.train.x.shape[1:]
    torch.Size([1, 8, 8])

Indices (``Split.indices`` and the saved split file) point into the *source* of a dataset:
its official training part followed by its official test part, when it has one (so a
Fashion-MNIST test index ``i`` is row ``i - 60000`` of ``t10k-images``).  Images are scaled
to [0, 1] and then normalised with the per-channel mean and standard deviation of the train
part only.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import pickle
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ConfigError, DataNotFoundError

__all__ = [
    "DATASETS",
    "DEFAULT_ROOTS",
    "Split",
    "DatasetSplits",
    "load_dataset",
    "read_split",
]

logger = logging.getLogger(__name__)

DATASETS: tuple[str, ...] = ("digits", "fashion-mnist", "cifar10", "cifar100", "imagefolder")

#: Where a dataset is looked for when ``root`` is not given.
DEFAULT_ROOTS: dict[str, tuple[str, ...]] = {
    "fashion-mnist": ("/usr/share/datasets/fashion-mnist",),
    "cifar10": ("data",),
    "cifar100": ("data",),
}

_SPLIT_FORMAT = "paretoskip-split"
_SPLIT_VERSION = 1
_FINGERPRINT_VERSION = b"paretoskip-data/1\0"

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


@dataclass(frozen=True, eq=False)
class Split:
    """One part of a dataset, held in memory.

    Attributes:
        x: float32 ``N×C×H×W`` images, already normalised (train mean/std).
        y: int64 ``N`` labels.
        indices: int64 indices of these examples in the dataset's source arrays.
    """

    x: torch.Tensor
    y: torch.Tensor
    indices: np.ndarray

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True, eq=False)
class DatasetSplits:
    """A dataset split into train, validation and test parts.

    ``fingerprint`` is the sha256 of the examples used, their labels, the three index
    lists, the seed and the normalisation: a cached result computed on one
    ``DatasetSplits`` is valid for another exactly when their fingerprints are equal.
    """

    name: str
    root: str | None
    num_classes: int
    in_channels: int
    input_size: int
    seed: int
    train: Split
    val: Split
    test: Split
    fingerprint: str
    classes: tuple[str, ...] = ()
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    has_official_test: bool = False
    load_args: dict[str, Any] = field(default_factory=dict)
    #: pixel value of full intensity in the source files (16 for digits, 255 otherwise): a
    #: device feeds the model ``(pixel / scale - mean) / std``
    scale: float = 255.0

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary (for checkpoints, study databases and front files)."""
        return {
            "name": self.name,
            "root": self.root,
            "seed": self.seed,
            "sizes": {"train": len(self.train), "val": len(self.val), "test": len(self.test)},
            "fingerprint": self.fingerprint,
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "input_size": self.input_size,
            "classes": list(self.classes),
            "mean": list(self.mean),
            "std": list(self.std),
            "scale": self.scale,
            "normalisation": "(pixel / scale - mean) / std, per channel",
            "official_test": self.has_official_test,
            "load_args": dict(self.load_args),
        }

    def save_split(self, path: str | os.PathLike) -> None:
        """Write the seed and the three index lists as JSON (read back by :func:`read_split`).

        ``load_dataset(name, root, split=path)`` rebuilds exactly these parts.
        """
        doc = {
            "format": _SPLIT_FORMAT,
            "version": _SPLIT_VERSION,
            "name": self.name,
            "seed": self.seed,
            "fingerprint": self.fingerprint,
            "sizes": {"train": len(self.train), "val": len(self.val), "test": len(self.test)},
            "train": [int(i) for i in self.train.indices],
            "val": [int(i) for i in self.val.indices],
            "test": [int(i) for i in self.test.indices],
        }
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(doc, separators=(",", ":")) + "\n")
        os.replace(tmp, path)


def read_split(path: str | os.PathLike) -> dict[str, Any]:
    """Read a split file written by :meth:`DatasetSplits.save_split`.

    Returns the JSON document with ``train``/``val``/``test`` as int64 numpy arrays.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise DataNotFoundError(f"split file {str(path)!r} does not exist") from exc
    except (OSError, ValueError) as exc:
        raise ConfigError(f"split file {str(path)!r} is not readable JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != _SPLIT_FORMAT:
        raise ConfigError(f"{str(path)!r} is not a paretoskip split file")
    for key in ("train", "val", "test"):
        try:
            doc[key] = np.asarray(doc[key], dtype=np.int64).reshape(-1)
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(
                f"split file {str(path)!r}: bad or missing {key!r} index list"
            ) from exc
    if not isinstance(doc.get("seed"), int):
        raise ConfigError(f"split file {str(path)!r}: missing integer 'seed'")
    return doc


# --------------------------------------------------------------------------- sources


@dataclass
class _Source:
    """Raw arrays of a dataset: official train part first, then the official test part."""

    x: np.ndarray  # uint8 N×C×H×W
    y: np.ndarray  # int64 N
    n_train: int  # rows [0, n_train) are the official train part, the rest the official test
    classes: tuple[str, ...]
    scale: float  # pixel value of full intensity (16 for digits, 255 otherwise)
    root: str | None

    @property
    def has_official_test(self) -> bool:
        return self.n_train < len(self.y)


def _load_digits() -> _Source:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = np.asarray(bunch.images, dtype=np.float64).round().astype(np.uint8)[:, None]
    y = np.asarray(bunch.target, dtype=np.int64)
    return _Source(x, y, len(y), tuple(str(c) for c in bunch.target_names), 16.0, None)


def _read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (gzip-compressed or not) of unsigned bytes."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            data = path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataNotFoundError(
            f"{str(path)!r} cannot be read ({type(exc).__name__}: {exc}): the file is truncated "
            "or corrupted; reinstall it (e.g. `apt-get install --reinstall "
            "dataset-fashion-mnist`) or point root= at a good copy"
        ) from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in (0x08, 0x09):
        raise DataNotFoundError(f"{str(path)!r} is not an IDX file of bytes (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    count = int(np.prod(shape)) if shape else 0
    if len(data) - header != count:
        raise DataNotFoundError(
            f"{str(path)!r} is truncated or corrupted: header says {shape} "
            f"({count} bytes) but it holds {len(data) - header}"
        )
    dtype = np.uint8 if data[2] == 0x08 else np.int8
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def _find_idx(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    return None


def _load_fashion_mnist(root: str | os.PathLike | None) -> _Source:
    bases = (
        [Path(root).expanduser()]
        if root is not None
        else [Path(r) for r in DEFAULT_ROOTS["fashion-mnist"]]
    )
    looked: list[str] = []
    stems = {
        "x_train": "train-images-idx3-ubyte",
        "y_train": "train-labels-idx1-ubyte",
        "x_test": "t10k-images-idx3-ubyte",
        "y_test": "t10k-labels-idx1-ubyte",
    }
    for base in bases:
        for directory in (base, base / "FashionMNIST" / "raw"):
            looked.append(str(directory))
            files = {k: _find_idx(directory, s) for k, s in stems.items()}
            if all(files.values()):
                arrays = {k: _read_idx(p) for k, p in files.items()}  # type: ignore[arg-type]
                x = np.concatenate([arrays["x_train"], arrays["x_test"]])[:, None]
                y = np.concatenate([arrays["y_train"], arrays["y_test"]]).astype(np.int64)
                if x.ndim != 4 or len(x) != len(y):
                    raise DataNotFoundError(
                        f"Fashion-MNIST files in {str(directory)!r} do not match each other"
                    )
                return _Source(
                    np.ascontiguousarray(x, dtype=np.uint8),
                    y,
                    len(arrays["y_train"]),
                    FASHION_MNIST_CLASSES,
                    255.0,
                    str(directory),
                )
    raise DataNotFoundError(
        "Fashion-MNIST not found: looked for {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] in "
        + ", ".join(repr(p) for p in looked)
        + ". Install it with `apt-get install dataset-fashion-mnist` (files in "
        "/usr/share/datasets/fashion-mnist), or pass root= a directory holding the four IDX "
        "files (torchvision's layout root/FashionMNIST/raw/ is accepted too)."
    )


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles only what a CIFAR batch holds: dicts, lists, strings, bytes, numbers and
    numpy arrays.  Any other global (a function, a class) is refused, so a crafted file cannot
    run code; still, load only data you trust."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing {module}.{name}: a CIFAR batch holds only arrays, lists and strings"
            )
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            obj = _CifarUnpickler(f, encoding="latin1").load()
    except Exception as exc:  # noqa: BLE001 - any failure means an unusable file
        raise DataNotFoundError(f"{str(path)!r} is not a readable CIFAR pickle: {exc}") from exc
    if not isinstance(obj, dict):
        raise DataNotFoundError(f"{str(path)!r} is not a CIFAR batch (not a dict)")
    return obj


def _cifar_arrays(
    batch: dict[str, Any], label_key: str, path: Path
) -> tuple[np.ndarray, np.ndarray]:
    try:
        data = np.asarray(batch["data"], dtype=np.uint8)
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except KeyError as exc:
        raise DataNotFoundError(f"{str(path)!r} has no {exc.args[0]!r} entry") from exc
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise DataNotFoundError(f"{str(path)!r}: 'data' is not N×3072 matching the labels")
    return data.reshape(-1, 3, 32, 32), labels


def _load_cifar(name: str, root: str | os.PathLike | None) -> _Source:
    if name == "cifar10":
        sub, train_files, test_files = (
            "cifar-10-batches-py",
            [f"data_batch_{i}" for i in range(1, 6)],
            ["test_batch"],
        )
        meta_file, label_key, names_key = "batches.meta", "labels", "label_names"
        url_name, n_classes = "CIFAR-10 python version (cifar-10-python.tar.gz)", 10
    else:
        sub, train_files, test_files = "cifar-100-python", ["train"], ["test"]
        meta_file, label_key, names_key = "meta", "fine_labels", "fine_label_names"
        url_name, n_classes = "CIFAR-100 python version (cifar-100-python.tar.gz)", 100
    bases = (
        [Path(root).expanduser()] if root is not None else [Path(r) for r in DEFAULT_ROOTS[name]]
    )
    looked: list[str] = []
    for base in bases:
        for directory in (base / sub, base):
            looked.append(str(directory))
            if not all((directory / f).is_file() for f in train_files + test_files):
                continue
            xs, ys = [], []
            for f in train_files + test_files:
                x, y = _cifar_arrays(_unpickle(directory / f), label_key, directory / f)
                xs.append(x)
                ys.append(y)
            n_train = sum(len(y) for y in ys[: len(train_files)])
            classes: tuple[str, ...] = tuple(str(i) for i in range(n_classes))
            if (directory / meta_file).is_file():
                names = _unpickle(directory / meta_file).get(names_key)
                if names is not None and len(names) == n_classes:
                    classes = tuple(str(c) for c in names)
            return _Source(
                np.ascontiguousarray(np.concatenate(xs)),
                np.concatenate(ys),
                n_train,
                classes,
                255.0,
                str(directory),
            )
    files = ", ".join(train_files + test_files)
    raise DataNotFoundError(
        f"{name} not found: looked for {files} in "
        + ", ".join(repr(p) for p in looked)
        + f". Download the {url_name} from https://www.cs.toronto.edu/~kriz/cifar.html, "
        f"extract it and pass root= the directory that contains {sub}/ (or {sub}/ itself)."
    )


def _load_imagefolder(root: str | os.PathLike | None, input_size: int) -> _Source:
    if root is None:
        raise DataNotFoundError(
            "imagefolder needs root=: a directory with one sub-directory of images (png, jpg, ...) per class"
        )
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    directory = Path(root).expanduser()
    if not directory.is_dir():
        raise DataNotFoundError(
            f"image folder not found: looked at {str(directory)!r}; it should hold one "
            "sub-directory of images (png, jpg, ...) per class"
        )
    transform = v2.Compose([v2.PILToTensor(), v2.Resize((input_size, input_size), antialias=True)])
    try:
        ds = ImageFolder(str(directory), transform=transform)
    except FileNotFoundError as exc:
        raise DataNotFoundError(
            f"no images found in {str(directory)!r} ({exc}); it should hold one sub-directory "
            "of images (png, jpg, ...) per class"
        ) from exc
    xs = np.empty((len(ds), 3, input_size, input_size), dtype=np.uint8)
    ys = np.empty(len(ds), dtype=np.int64)
    for i in range(len(ds)):
        try:
            img, label = ds[i]
        except Exception as exc:  # noqa: BLE001 - any failure is an unreadable image
            raise DataNotFoundError(f"cannot read image {ds.samples[i][0]!r}: {exc}") from exc
        xs[i] = img.numpy()
        ys[i] = label
    return _Source(xs, ys, len(ys), tuple(ds.classes), 255.0, str(directory))


# --------------------------------------------------------------------------- splitting


def _count(size: int | float, n: int, what: str) -> int:
    """A fraction of ``n`` or an absolute count, as a count."""
    if isinstance(size, bool) or not isinstance(size, (int, float, np.integer, np.floating)):
        raise ConfigError(f"{what}={size!r} must be a fraction in [0, 1) or a count")
    if isinstance(size, (float, np.floating)):
        if not 0.0 <= size < 1.0:
            raise ConfigError(f"{what}={size} as a fraction must be in [0, 1)")
        return int(round(float(size) * n))
    if not 0 <= size < n:
        raise ConfigError(f"{what}={size} as a count must be in [0, {n})")
    return int(size)


def _stratified_take(
    idx: np.ndarray, y: np.ndarray, n: int, seed: int, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """Take ``n`` of ``idx`` (stratified by ``y[idx]``, seeded); return (taken, rest), sorted."""
    empty = np.empty(0, dtype=np.int64)
    if n <= 0:
        return empty, np.sort(idx)
    if n >= len(idx):
        return np.sort(idx), empty
    from sklearn.model_selection import train_test_split

    try:
        taken, rest = train_test_split(idx, train_size=n, stratify=y[idx], random_state=seed)
    except ValueError as exc:
        raise ConfigError(
            f"cannot draw a stratified {what} of {n} from {len(idx)} examples "
            f"({len(np.unique(y[idx]))} classes): {exc}"
        ) from exc
    return np.sort(taken).astype(np.int64), np.sort(rest).astype(np.int64)


def _make_split(
    src: _Source,
    seed: int,
    val_size: int | float,
    test_size: int | float,
    limit: int | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y = src.y
    n_total = len(y)
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
            raise ConfigError(f"limit={limit!r} must be a positive integer")
        limit = min(int(limit), n_total)
    if src.has_official_test:
        pool = np.arange(src.n_train, dtype=np.int64)
        test = np.arange(src.n_train, n_total, dtype=np.int64)
        if limit is not None and limit < n_total:
            n_test = int(round(limit * len(test) / n_total))
            pool, _ = _stratified_take(pool, y, limit - n_test, seed, "subsample (limit)")
            test, _ = _stratified_take(test, y, n_test, seed, "test subsample (limit)")
        n_val = _count(val_size, len(pool), "val_size")
        val, train = _stratified_take(pool, y, n_val, seed, "validation part")
    else:
        pool = np.arange(n_total, dtype=np.int64)
        if limit is not None and limit < n_total:
            pool, _ = _stratified_take(pool, y, limit, seed, "subsample (limit)")
        n_test = _count(test_size, len(pool), "test_size")
        n_val = _count(val_size, len(pool), "val_size")
        if n_test + n_val >= len(pool):
            raise ConfigError(
                f"val_size={val_size} and test_size={test_size} leave no training examples out of {len(pool)}"
            )
        test, rest = _stratified_take(pool, y, n_test, seed, "test part")
        val, train = _stratified_take(rest, y, n_val, seed, "validation part")
    return train, val, test


def _split_from_file(
    path: str | os.PathLike, src: _Source
) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    doc = read_split(path)
    parts = [doc["train"], doc["val"], doc["test"]]
    everything = np.concatenate(parts)
    if len(everything) and (everything.min() < 0 or everything.max() >= len(src.y)):
        raise ConfigError(
            f"split file {str(path)!r} has indices outside [0, {len(src.y)}) of this dataset"
        )
    if len(np.unique(everything)) != len(everything):
        raise ConfigError(f"split file {str(path)!r}: the train, val and test index lists overlap")
    return doc["seed"], *(np.sort(p) for p in parts)


# --------------------------------------------------------------------------- public


def _jsonable_number(v: Any) -> Any:
    if isinstance(v, (np.integer, np.floating)):
        return v.item()
    return v


def load_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    val_size: int | float = 0.2,
    test_size: int | float = 0.2,
    input_size: int | None = None,
    limit: int | None = None,
    split: str | os.PathLike | None = None,
) -> DatasetSplits:
    """Load a dataset and split it into stratified, seeded train / validation / test parts.

    Args:
        name: one of :data:`DATASETS`.
        root: where the files are (``digits`` needs none; ``fashion-mnist`` defaults to
            ``/usr/share/datasets/fashion-mnist``; see :data:`DEFAULT_ROOTS`).
        seed: the seed of every random choice of the split.
        val_size: fraction or count of the validation part, carved from the official train
            part when the dataset has an official test set (Fashion-MNIST, CIFAR), else from
            the whole set.
        test_size: fraction or count of the test part of the whole set; ignored when the
            dataset has an official test set, which is the test part.
        input_size: images are resized to ``input_size``×``input_size`` (bilinear,
            antialiased); default the native size (32 for ``imagefolder``).
        limit: use at most this many examples (stratified, seeded subsample; with an official
            test set the cap is shared between its train and test parts by their sizes).
        split: a file written by :meth:`DatasetSplits.save_split`: reuse its seed and
            indices instead of drawing new ones (``seed``, ``val_size``, ``test_size`` and
            ``limit`` are then ignored).

    Raises:
        ConfigError: unknown name or bad sizes.
        DataNotFoundError: the files are not there (the message says where it looked and
            how to get them).
    """
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise ConfigError(f"seed={seed!r} must be an integer in [0, 2**32)")
    seed = int(seed)
    if input_size is not None and (
        isinstance(input_size, bool)
        or not isinstance(input_size, (int, np.integer))
        or input_size < 1
    ):
        raise ConfigError(f"input_size={input_size!r} must be a positive integer")

    if name == "digits":
        src = _load_digits()
    elif name == "fashion-mnist":
        src = _load_fashion_mnist(root)
    elif name in ("cifar10", "cifar100"):
        src = _load_cifar(name, root)
    else:
        src = _load_imagefolder(root, int(input_size or 32))

    if split is not None:
        seed, train_idx, val_idx, test_idx = _split_from_file(split, src)
    else:
        train_idx, val_idx, test_idx = _make_split(src, seed, val_size, test_size, limit)
    if len(train_idx) == 0:
        raise ConfigError(f"{name}: the train part is empty")

    in_channels, native = src.x.shape[1], src.x.shape[2]
    size = int(input_size) if input_size is not None else native
    raw = {"train": src.x[train_idx], "val": src.x[val_idx], "test": src.x[test_idx]}

    def to_float(a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(a)).to(torch.float32).div_(src.scale)
        if t.shape[-1] != size or t.shape[-2] != size:
            t = F.interpolate(
                t, size=(size, size), mode="bilinear", align_corners=False, antialias=True
            )
        return t

    xs = {k: to_float(v) for k, v in raw.items()}
    mean64 = xs["train"].mean(dim=(0, 2, 3), dtype=torch.float64)
    std64 = (
        (xs["train"].to(torch.float64) - mean64[None, :, None, None])
        .pow(2)
        .mean(dim=(0, 2, 3))
        .sqrt()
    )
    std64 = torch.where(std64 > 1e-12, std64, torch.ones_like(std64))
    # Round so that the fingerprint does not depend on the last bits of a float sum.
    mean = tuple(float(f"{m:.6g}") for m in mean64.tolist())
    std = tuple(float(f"{s:.6g}") for s in std64.tolist())
    m_t = torch.tensor(mean, dtype=torch.float32)[None, :, None, None]
    s_t = torch.tensor(std, dtype=torch.float32)[None, :, None, None]
    indices = {"train": train_idx, "val": val_idx, "test": test_idx}
    parts = {
        k: Split(
            x=xs[k].sub_(m_t).div_(s_t),
            y=torch.from_numpy(src.y[indices[k]].astype(np.int64)),
            indices=indices[k].astype(np.int64),
        )
        for k in ("train", "val", "test")
    }

    num_classes = len(src.classes) if src.classes else int(src.y.max()) + 1
    h = hashlib.sha256(_FINGERPRINT_VERSION)
    header = {
        "name": name,
        "seed": seed,
        "num_classes": num_classes,
        "in_channels": int(in_channels),
        "input_size": size,
        "classes": list(src.classes),
        "scale": src.scale,
        "normalisation": "per-channel mean/std of the train part",
        "mean": list(mean),
        "std": list(std),
        "source": {"shape": list(src.x.shape), "official_train": src.n_train},
    }
    h.update(json.dumps(header, sort_keys=True).encode())
    for k in ("train", "val", "test"):
        h.update(f"\0{k}:{len(indices[k])}\0".encode())
        h.update(np.ascontiguousarray(indices[k], dtype="<i8").tobytes())
        h.update(np.ascontiguousarray(src.y[indices[k]], dtype="<i8").tobytes())
        h.update(np.ascontiguousarray(raw[k]).tobytes())

    result = DatasetSplits(
        name=name,
        root=src.root,
        num_classes=num_classes,
        in_channels=int(in_channels),
        input_size=size,
        seed=seed,
        train=parts["train"],
        val=parts["val"],
        test=parts["test"],
        fingerprint=h.hexdigest(),
        classes=src.classes,
        mean=mean,
        std=std,
        has_official_test=src.has_official_test,
        scale=float(src.scale),
        load_args={
            "val_size": _jsonable_number(val_size),
            "test_size": _jsonable_number(test_size),
            "input_size": None if input_size is None else int(input_size),
            "limit": None if limit is None else int(limit),
            "split": None if split is None else str(split),
        },
    )
    logger.info(
        "loaded %s from %s: train %d, val %d, test %d (seed %d, fingerprint %s)",
        name,
        src.root or "sklearn",
        len(result.train),
        len(result.val),
        len(result.test),
        seed,
        result.fingerprint[:12],
    )
    return result
