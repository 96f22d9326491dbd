"""CIFAR-10 through tensorflow-datasets (`tfds.load`), in the official order.

TFDS stores examples in a hashed order; CIFAR-10's `id` feature (`"train_00042"`) gives each
example's position in the official files, so the examples are sorted back by it. The protocol's
"last 10,000 training images = official batch 5" depends on this order.
"""

from __future__ import annotations

import re
import socket

import numpy as np

from tfdgmm.data.errors import DataUnavailableError
from tfdgmm.data.formats import check_images

_ID = re.compile(r"^(?:train|test)_(\d+)$")

NO_DOWNLOAD_HINT = (
    "This machine may not be able to download it (no network). Pass a local copy instead with "
    "--data PATH (Python: load_cifar10(PATH)), PATH a directory holding train.npz + test.npz "
    "(e.g. ../shared/data/cifar10-jpeg75), the official CIFAR-10 binary or python batches, or "
    "a single .npz with 'images' and 'labels'."
)


#: Where tensorflow-datasets downloads a dataset from (checked before a download is tried).
DOWNLOAD_HOSTS = {"cifar10": ("www.cs.toronto.edu", 443)}
#: Seconds to wait for the download host before giving up (tfds itself retries for minutes).
REACHABILITY_TIMEOUT = 5.0


def host_reachable(address, timeout=REACHABILITY_TIMEOUT) -> bool:
    """Whether a TCP connection to `(host, port)` opens within `timeout` seconds."""
    try:
        with socket.create_connection(address, timeout=timeout):
            return True
    except OSError:
        return False


def _not_prepared(err) -> bool:
    """tfds' error when a dataset is not downloaded and prepared in its data_dir."""
    text = str(err)
    return (
        isinstance(err, AssertionError)
        or "download_and_prepare" in text
        or "could not find data" in text
    )


def official_order(ids) -> np.ndarray | None:
    """Permutation that sorts examples by their CIFAR `id` (`train_00042` -> 42).

    Returns `None` when some id does not have that form (e.g. `tfds.testing.mock_data`).
    """
    positions = []
    for raw in ids:
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        m = _ID.match(text)
        if m is None:
            return None
        positions.append(int(m.group(1)))
    positions = np.asarray(positions, dtype=np.int64)
    if len(np.unique(positions)) != len(positions):
        return None
    return np.argsort(positions, kind="stable")


def _to_numpy(dataset, name: str, split: str):
    import tensorflow_datasets as tfds

    images, labels, ids = [], [], []
    # Note: tfds.load(batch_size=-1) crashes on mock data in tfds 4.9.10; batching ourselves works.
    for batch in tfds.as_numpy(dataset.batch(4096)):
        images.append(batch["image"])
        labels.append(batch["label"])
        ids.append(batch["id"] if "id" in batch else np.array([], dtype=object))
    where = f"tfds:{name} split {split!r}"
    if not images:
        raise DataUnavailableError(f"{where}: tensorflow-datasets returned no examples")
    images, labels = check_images(np.concatenate(images), np.concatenate(labels), where)
    return images, labels, np.concatenate(ids)


def load_tfds(name: str = "cifar10", data_dir: str | None = None, download: bool = True):
    """Return `{'train': (images, labels), 'test': (images, labels)}` and a list of notes.

    Raises `DataUnavailableError` (suggesting `--data PATH`) when tfds cannot provide
    the data, e.g. because it cannot be downloaded.
    """
    where = f"tfds:{name}" + (f" (data_dir={data_dir})" if data_dir else "")
    try:
        import tensorflow_datasets as tfds

        def load(download):
            return tfds.load(
                name,
                split=["train", "test"],
                data_dir=data_dir,
                download=download,
                shuffle_files=False,
            )

        try:  # prepared already: no network needed
            datasets = load(False)
        except Exception as first:  # noqa: BLE001
            if not (download and _not_prepared(first)):
                raise
            # Not downloaded yet. Offline, tfds would retry the download for minutes: check
            # the download host first and fail fast.
            host = DOWNLOAD_HOSTS.get(name.split("/")[0].split(":")[0])
            if host is not None and not host_reachable(host):
                raise DataUnavailableError(
                    f"{where}: not downloaded yet, and the download host {host[0]} cannot be "
                    f"reached within {REACHABILITY_TIMEOUT:g} s. {NO_DOWNLOAD_HINT}"
                ) from first
            datasets = load(True)
    except DataUnavailableError:
        raise
    except Exception as e:  # tfds raises many types (network, missing optional modules, ...)
        raise DataUnavailableError(
            f"{where}: tensorflow-datasets could not load the dataset "
            f"({type(e).__name__}: {e}). {NO_DOWNLOAD_HINT}"
        ) from e
    out, notes = {}, []
    for split, dataset in zip(("train", "test"), datasets):
        images, labels, ids = _to_numpy(dataset, name, split)
        order = official_order(ids) if len(ids) == len(images) else None
        if order is None:
            notes.append(
                f"tfds:{name} {split}: example ids are not of the form '{split}_NNNNN'; "
                "kept the order tfds returned (may differ from the official order)"
            )
        else:
            images, labels = images[order], labels[order]
        out[split] = (images, labels)
    return out, notes
