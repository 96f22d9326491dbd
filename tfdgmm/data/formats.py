"""Readers for local copies of CIFAR-10; each returns `(images, labels)`.

`images` is uint8 `[N, 32, 32, 3]` (HWC), `labels` int64 `[N]` (-1 when a `.npz` has no
labels). Formats:

* `.npz` with `images` (uint8 `[N, 32, 32, 3]`) and optionally `labels` (`[N]`);
* the official binary format: `data_batch_1.bin` ... `data_batch_5.bin`, `test_batch.bin`,
  3073-byte records (1 label byte, then 1024 R, 1024 G, 1024 B bytes, row-major);
* the official python format: `data_batch_1` ... `data_batch_5`, `test_batch`, pickled dicts
  with `b'data'` (uint8 `[n, 3072]`, channel-major as above) and `b'labels'`. They are read
  with a restricted unpickler that only rebuilds numpy arrays, so a hostile pickle cannot run code.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile

import numpy as np

from tfdgmm.data.errors import DataError, DataNotFoundError

IMAGE_SHAPE = (32, 32, 3)
NUM_PIXELS = 32 * 32 * 3  # 3072
RECORD_BYTES = 1 + NUM_PIXELS  # 3073
NUM_CLASSES = 10
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"


def check_images(images, labels, where: str):
    """Validate and normalise `(images, labels)` read from `where`; return them.

    Raises `DataError` naming `where` on a wrong dtype or shape or a label mismatch.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise DataError(
            f"{where}: images have dtype {images.dtype}, expected uint8 pixel values 0..255 "
            "(raw CIFAR-10 pixels, not already scaled or dequantized)"
        )
    if images.ndim != 4 or tuple(images.shape[1:]) != IMAGE_SHAPE:
        raise DataError(
            f"{where}: images have shape {tuple(images.shape)}, expected [N, 32, 32, 3] (HWC)"
        )
    if images.shape[0] == 0:
        raise DataError(f"{where}: holds no images")
    if labels is None:
        labels = np.full(images.shape[0], -1, dtype=np.int64)
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(
            f"{where}: labels have shape {tuple(labels.shape)}, expected [{images.shape[0]}] "
            "(one label per image)"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{where}: labels have dtype {labels.dtype}, expected integers")
    return images, labels.astype(np.int64)


def read_npz(path: str):
    """Read `images` (and `labels` if present) from one `.npz` file."""
    if not os.path.isfile(path):
        raise DataNotFoundError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = list(npz.files)
            if "images" not in keys:
                raise DataError(
                    f"{path}: no 'images' array in the .npz (found keys {keys}); expected "
                    "'images' uint8 [N, 32, 32, 3] and 'labels' [N]"
                )
            images = npz["images"]
            labels = npz["labels"] if "labels" in keys else None
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile) as e:
        raise DataError(f"{path}: cannot read as a .npz file ({type(e).__name__}: {e})") from e
    return check_images(images, labels, path)


def _chw_rows_to_hwc(rows: np.ndarray) -> np.ndarray:
    """`[n, 3072]` channel-major rows (the official layout) -> `[n, 32, 32, 3]`."""
    return np.ascontiguousarray(rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def _check_labels_range(labels: np.ndarray, path: str):
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DataError(
            f"{path}: labels out of range [{labels.min()}, {labels.max()}], expected 0..9 "
            "(is this CIFAR-10 and not CIFAR-100?)"
        )


def read_binary_batch(path: str):
    """Read one official binary batch file (`*.bin`, 3073-byte records)."""
    if not os.path.isfile(path):
        raise DataNotFoundError(f"{path}: no such file")
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % RECORD_BYTES:
        raise DataError(
            f"{path}: size {raw.size} bytes is not a positive multiple of the {RECORD_BYTES}-byte "
            "CIFAR-10 record (1 label byte + 3072 pixel bytes): corrupt or not CIFAR-10 binary"
        )
    records = raw.reshape(-1, RECORD_BYTES)
    labels = records[:, 0].astype(np.int64)
    _check_labels_range(labels, path)
    return check_images(_chw_rows_to_hwc(records[:, 1:]), labels, path)


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and nothing else (no arbitrary code)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_python_batch(path: str):
    """Read one official python-format batch (a pickled dict with `b'data'`, `b'labels'`)."""
    if not os.path.isfile(path):
        raise DataNotFoundError(f"{path}: no such file")
    try:
        with open(path, "rb") as f:
            batch = _ArrayOnlyUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
    except Exception as e:  # pickle raises many types on garbage input
        raise DataError(
            f"{path}: cannot read as a CIFAR-10 python batch ({type(e).__name__}: {e})"
        ) from e
    if not isinstance(batch, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(batch).__name__}")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    missing = [k for k in ("data", "labels") if k not in batch]
    if missing:
        raise DataError(
            f"{path}: missing key(s) {missing} in the python batch (found {sorted(batch)})"
        )
    data = np.asarray(batch["data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != NUM_PIXELS:
        raise DataError(
            f"{path}: b'data' has dtype {data.dtype} and shape {tuple(data.shape)}, "
            f"expected uint8 [n, {NUM_PIXELS}]"
        )
    labels = np.asarray(batch["labels"])
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{path}: b'labels' must be a list of integers (got dtype {labels.dtype}, "
            f"shape {tuple(labels.shape)})"
        )
    labels = labels.astype(np.int64)
    _check_labels_range(labels, path)
    return check_images(_chw_rows_to_hwc(data), labels, path)


def read_batches(directory: str, names, suffix: str, reader):
    """Concatenate the batches `names` (in order) of one format found in `directory`."""
    paths = [os.path.join(directory, n + suffix) for n in names]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise DataNotFoundError(f"{directory}: missing batch file(s) {missing}")
    parts = [reader(p) for p in paths]
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
