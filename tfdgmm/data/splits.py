"""The paper's split protocol and the single entry point `load_cifar10`."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator

import numpy as np

from tfdgmm.data import formats
from tfdgmm.data.dequantize import dequantize, reference_noise
from tfdgmm.data.errors import DataError, DataNotFoundError
from tfdgmm.data.tfds_source import load_tfds

logger = logging.getLogger(__name__)

OFFICIAL_TRAIN_SIZE = 50_000
OFFICIAL_TEST_SIZE = 10_000
PROTOCOL_VALIDATION_SIZE = 10_000  # the last 10,000 training images (official batch 5)
_CHUNK = 4096


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
    """One split: uint8 images in source order, with what is needed to dequantize them.

    `noise_start` is the position of `images[0]` in the fixed-noise stream (see
    `tfdgmm.data.dequantize`); image `i` of the split is stream image `noise_start + i`.
    `file_offset` is the position of `images[0]` in its source file (train or test file).
    """

    name: str
    images: np.ndarray  # uint8 [N, 32, 32, 3] (any [N, H, W, C] works below the loaders)
    labels: np.ndarray  # int64 [N] (-1 = unknown)
    source: str
    file_offset: int = 0
    noise_start: int = 0

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_dims(self) -> int:
        return int(np.prod(self.images.shape[1:]))

    def noise(self, seed: int = 0, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Fixed (reference-layout) float64 noise for images `start:stop` of this split."""
        start, stop, _ = slice(start, stop).indices(len(self))
        return reference_noise(
            seed, self.noise_start + start, max(stop - start, 0), self.images.shape[1:]
        )

    def dequantized(
        self, seed: int | None = 0, dtype=np.float32, start: int = 0, stop: int | None = None
    ) -> np.ndarray:
        """Images `start:stop` dequantized with the fixed noise of `seed` onto [-1, 1).

        `seed=None` uses bin midpoints (`(pixel + 0.5) / 128 - 1`) instead of noise.
        """
        start, stop, _ = slice(start, stop).indices(len(self))
        stop = max(stop, start)
        out = np.empty((stop - start,) + self.images.shape[1:], dtype=dtype)
        for lo in range(start, stop, _CHUNK):  # chunks keep the float64 temporaries small
            hi = min(lo + _CHUNK, stop)
            noise = 0.5 if seed is None else self.noise(seed, lo, hi)
            out[lo - start : hi - start] = dequantize(self.images[lo:hi], noise, dtype=dtype)
        return out

    def iter_dequantized(
        self, seed: int | None = 0, chunk_size: int = 2048, dtype=np.float64
    ) -> Iterator[np.ndarray]:
        """The same values as `dequantized`, in chunks of `chunk_size` images."""
        for start in range(0, len(self), chunk_size):
            yield self.dequantized(seed, dtype, start, start + chunk_size)


@dataclasses.dataclass(frozen=True, eq=False)
class Splits:
    """`train`, `validation` and `test` (`None` when the source has no test set)."""

    train: Split
    validation: Split
    test: Split | None
    source: str
    notes: tuple[str, ...] = ()

    def items(self):
        """`(name, split)` pairs of the splits that exist: train, validation, test."""
        return [(s.name, s) for s in (self.train, self.validation, self.test) if s is not None]

    def __iter__(self):
        return iter((self.train, self.validation, self.test))

    def describe(self) -> str:
        sizes = ", ".join(f"{name} {len(s):,}" for name, s in self.items())
        text = f"{self.source}: {sizes}" + ("" if self.test is not None else ", no test split")
        return "\n".join([text] + [f"  note: {n}" for n in self.notes])


def _read_directory(path: str):
    """Return `(train, test_or_None, description)` from a directory in a supported format."""
    entries = set(os.listdir(path))
    if "train.npz" in entries:
        train = formats.read_npz(os.path.join(path, "train.npz"))
        test_path = os.path.join(path, "test.npz")
        test = formats.read_npz(test_path) if "test.npz" in entries else None
        return train, test, "npz directory"
    for suffix, reader, kind in (
        (".bin", formats.read_binary_batch, "CIFAR-10 binary batches"),
        ("", formats.read_python_batch, "CIFAR-10 python batches"),
    ):
        if any(n + suffix in entries for n in formats.TRAIN_BATCHES):
            train = formats.read_batches(path, formats.TRAIN_BATCHES, suffix, reader)
            test_name = formats.TEST_BATCH + suffix
            test = reader(os.path.join(path, test_name)) if test_name in entries else None
            return train, test, kind
    for sub in ("cifar-10-batches-bin", "cifar-10-batches-py"):  # an extracted official archive
        if sub in entries and os.path.isdir(os.path.join(path, sub)):
            return _read_directory(os.path.join(path, sub))
    shown = sorted(entries)[:10]
    raise DataNotFoundError(
        f"{path}: no CIFAR-10 data found in this directory (found {shown}"
        f"{' ...' if len(entries) > 10 else ''}); expected train.npz (+ test.npz), "
        "data_batch_1.bin ... data_batch_5.bin (+ test_batch.bin), or the python batches "
        "data_batch_1 ... data_batch_5 (+ test_batch)"
    )


def _read_source(spec: str, tfds_data_dir, download):
    """Return `(train, test_or_None, source_text, notes)` for a spec."""
    if spec == "tfds" or spec.startswith("tfds:"):
        name = spec.partition(":")[2] or "cifar10"
        data, notes = load_tfds(name, data_dir=tfds_data_dir, download=download)
        return data["train"], data["test"], f"tfds:{name}", notes
    path = os.path.abspath(os.path.expanduser(spec))
    if os.path.isdir(path):
        train, test, kind = _read_directory(path)
        notes = (
            [] if test is not None else [f"{path}: no test set found ({kind}); Splits.test is None"]
        )
        return train, test, path, notes
    if os.path.isfile(path):
        if not path.endswith(".npz"):
            raise DataError(
                f"{path}: not a .npz file; pass a .npz, a directory (npz, binary or python "
                "CIFAR-10 batches) or 'tfds'"
            )
        notes = [
            f"{path}: a single .npz is treated as the training file; there is no official test "
            "split (Splits.test is None). Pass a directory holding train.npz + test.npz to get one."
        ]
        return formats.read_npz(path), None, path, notes
    raise DataNotFoundError(
        f"{path}: no such file or directory (data spec {spec!r}); use 'tfds' for "
        "tensorflow-datasets or a path to a local copy of CIFAR-10"
    )


def _limit(value, available: int, what: str, where: str) -> int:
    if value is None:
        return available
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{what} must be a positive integer or None, got {value!r}")
    if value > available:
        raise DataError(f"{where}: {what}={value:,} but the split has only {available:,} images")
    return int(value)


def load_cifar10(
    spec: str | os.PathLike = "tfds",
    *,
    validation_size: int = PROTOCOL_VALIDATION_SIZE,
    train_limit: int | None = None,
    validation_limit: int | None = None,
    test_limit: int | None = None,
    tfds_data_dir: str | None = None,
    download: bool = True,
) -> Splits:
    """Load CIFAR-10 and split it by the paper's protocol.

    Args:
      spec: `"tfds"` / `"tfds:cifar10"` (tensorflow-datasets; downloads when it can), a
        directory (`train.npz` + optional `test.npz`; official binary batches
        `data_batch_{1..5}.bin` + `test_batch.bin`; official python batches; or a directory
        holding an extracted `cifar-10-batches-bin`/`-py`), or one `.npz` file. A single
        `.npz` is the training file and there is **no test split** (`Splits.test is None`,
        recorded in `Splits.notes`); the same holds for a directory without a test file.
      validation_size: the **last** `validation_size` images of the training file are the
        validation split, all images before them the training split (protocol: 10,000 of
        50,000, so training = the first 40,000 and validation = official batch 5).
      train_limit, validation_limit, test_limit: keep only the first `k` images of that split
        (for small runs). The kept images are a prefix of the protocol split, so they carry the
        same fixed noise as in a full run.
      tfds_data_dir, download: passed to `tfds.load`.

    Returns:
      `Splits` with uint8 images in source order. Dequantize with
      `split.dequantized(seed)` or `tfdgmm.data.make_dataset`.

    Raises:
      DataNotFoundError: the path does not exist or holds no recognised data.
      DataError: a file is corrupt or malformed, or holds too few images for the splits.
      DataUnavailableError: tensorflow-datasets could not load (e.g. download) the data.
    """
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"spec must be 'tfds', 'tfds:NAME' or a path, got {type(spec).__name__}")
    spec = os.fspath(spec)
    if (
        isinstance(validation_size, bool)
        or not isinstance(validation_size, (int, np.integer))
        or validation_size < 1
    ):
        raise ValueError(f"validation_size must be a positive integer, got {validation_size!r}")
    (train_images, train_labels), test, source, notes = _read_source(spec, tfds_data_dir, download)
    notes = list(notes)

    n = len(train_images)
    if n <= validation_size:
        raise DataError(
            f"{source}: the training file holds {n:,} images, fewer than the protocol needs: "
            f"the last {validation_size:,} are held out for validation and at least one must "
            f"remain for training (the paper: {OFFICIAL_TRAIN_SIZE:,} = 40,000 train + "
            f"10,000 validation). For a smaller file pass a smaller validation_size."
        )
    if n != OFFICIAL_TRAIN_SIZE or validation_size != PROTOCOL_VALIDATION_SIZE:
        notes.append(
            f"{source}: {n:,} training-file images with validation_size={validation_size:,}: "
            f"splits are {n - validation_size:,} / {validation_size:,}, not the protocol's "
            "40,000 / 10,000"
        )
    n_train = n - validation_size
    k_train = _limit(train_limit, n_train, "train_limit", source)
    k_val = _limit(validation_limit, validation_size, "validation_limit", source)
    train = Split("train", train_images[:k_train], train_labels[:k_train], source, 0, 0)
    validation = Split(
        "validation",
        train_images[n_train : n_train + k_val],
        train_labels[n_train : n_train + k_val],
        source,
        n_train,
        n_train,
    )
    test_split = None
    if test is not None:
        k_test = _limit(test_limit, len(test[0]), "test_limit", source)
        test_split = Split("test", test[0][:k_test], test[1][:k_test], source, 0, n)
    elif test_limit is not None:
        notes.append(f"{source}: test_limit={test_limit} ignored: there is no test split")
    for note in notes:
        logger.warning("%s", note)
    return Splits(train, validation, test_split, source, tuple(notes))
