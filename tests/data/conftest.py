"""Fixtures for the data tests: a tiny fake CIFAR-10 written in every supported format."""

import os
import pickle

import numpy as np
import pytest

BATCH = 6  # images per fake training batch (5 batches -> 30 training images)
NUM_TEST = 8


def chw_rows(images):
    """[n, 32, 32, 3] -> [n, 3072] channel-major rows (the official CIFAR-10 layout)."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def write_binary(path, images, labels):
    records = np.concatenate([labels.astype(np.uint8)[:, None], chw_rows(images)], axis=1)
    records.astype(np.uint8).tofile(path)


def write_python(path, images, labels, protocol=2):
    batch = {
        b"batch_label": b"fake",
        b"labels": [int(v) for v in labels],
        b"data": chw_rows(images),
        b"filenames": [b"x.png"] * len(labels),
    }
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=protocol)


class FakeCifar:
    def __init__(self, root, seed=0):
        rng = np.random.default_rng(seed)
        self.root = root
        self.train_images = rng.integers(0, 256, (5 * BATCH, 32, 32, 3), dtype=np.uint8)
        self.train_labels = rng.integers(0, 10, 5 * BATCH).astype(np.int64)
        self.test_images = rng.integers(0, 256, (NUM_TEST, 32, 32, 3), dtype=np.uint8)
        self.test_labels = rng.integers(0, 10, NUM_TEST).astype(np.int64)

    def _batches(self):
        for i in range(5):
            sl = slice(i * BATCH, (i + 1) * BATCH)
            yield f"data_batch_{i + 1}", self.train_images[sl], self.train_labels[sl]
        yield "test_batch", self.test_images, self.test_labels

    def npz_dir(self, name="npz"):
        d = os.path.join(self.root, name)
        os.makedirs(d, exist_ok=True)
        np.savez(
            os.path.join(d, "train.npz"),
            images=self.train_images,
            labels=self.train_labels.astype(np.uint8),
        )
        np.savez_compressed(
            os.path.join(d, "test.npz"),
            images=self.test_images,
            labels=self.test_labels.astype(np.uint8),
        )
        return d

    def npz_file(self, name="train.npz"):
        path = os.path.join(self.root, name)
        np.savez(path, images=self.train_images, labels=self.train_labels)
        return path

    def binary_dir(self, name="bin"):
        d = os.path.join(self.root, name)
        os.makedirs(d, exist_ok=True)
        for batch, images, labels in self._batches():
            write_binary(os.path.join(d, batch + ".bin"), images, labels)
        return d

    def python_dir(self, name="py", protocol=2):
        d = os.path.join(self.root, name)
        os.makedirs(d, exist_ok=True)
        for batch, images, labels in self._batches():
            write_python(os.path.join(d, batch), images, labels, protocol)
        return d


@pytest.fixture
def fake_cifar(tmp_path):
    return FakeCifar(str(tmp_path))
