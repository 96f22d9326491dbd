import os
import pickle

import numpy as np
import pytest

from tfdgmm.data import DataError, DataNotFoundError, formats, load_cifar10


def _assert_same(splits, fake, validation_size):
    n_train = len(fake.train_images) - validation_size
    np.testing.assert_array_equal(splits.train.images, fake.train_images[:n_train])
    np.testing.assert_array_equal(splits.train.labels, fake.train_labels[:n_train])
    np.testing.assert_array_equal(splits.validation.images, fake.train_images[n_train:])
    np.testing.assert_array_equal(splits.validation.labels, fake.train_labels[n_train:])
    np.testing.assert_array_equal(splits.test.images, fake.test_images)
    np.testing.assert_array_equal(splits.test.labels, fake.test_labels)
    for _, split in splits.items():
        assert split.images.dtype == np.uint8 and split.labels.dtype == np.int64


@pytest.mark.parametrize("kind", ["npz_dir", "binary_dir", "python_dir"])
def test_directory_formats_give_identical_data(fake_cifar, kind):
    splits = load_cifar10(getattr(fake_cifar, kind)(), validation_size=6)
    _assert_same(splits, fake_cifar, 6)


def test_python_batches_written_by_python3_default_protocol(fake_cifar):
    splits = load_cifar10(
        fake_cifar.python_dir(protocol=pickle.HIGHEST_PROTOCOL), validation_size=6
    )
    _assert_same(splits, fake_cifar, 6)


def test_extracted_archive_layout_is_found(fake_cifar):
    fake_cifar.binary_dir("cifar-10-batches-bin")
    splits = load_cifar10(fake_cifar.root, validation_size=6)
    _assert_same(splits, fake_cifar, 6)


def test_single_npz_has_no_test_split(fake_cifar):
    path = fake_cifar.npz_file()
    splits = load_cifar10(path, validation_size=6)
    assert splits.test is None
    assert any("no official test split" in note for note in splits.notes)
    assert "no test split" in splits.describe()
    np.testing.assert_array_equal(splits.train.images, fake_cifar.train_images[:24])
    np.testing.assert_array_equal(splits.validation.images, fake_cifar.train_images[24:])
    assert [name for name, _ in splits.items()] == ["train", "validation"]


def test_npz_directory_without_test_file(fake_cifar):
    d = fake_cifar.npz_dir()
    os.remove(os.path.join(d, "test.npz"))
    splits = load_cifar10(d, validation_size=6)
    assert splits.test is None and any("no test set" in n for n in splits.notes)


def test_npz_without_labels_gets_minus_one(tmp_path, fake_cifar):
    path = str(tmp_path / "images_only.npz")
    np.savez(path, images=fake_cifar.train_images)
    splits = load_cifar10(path, validation_size=6)
    assert (splits.train.labels == -1).all()


# ---------------------------------------------------------------- malformed inputs


def test_missing_path(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"nope.*no such file or directory"):
        load_cifar10(str(tmp_path / "nope"))


def test_empty_directory(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"no CIFAR-10 data found"):
        load_cifar10(str(tmp_path))


def test_not_an_npz_file(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("hello")
    with pytest.raises(DataError, match=r"data\.txt: not a \.npz file"):
        load_cifar10(str(path))


def test_corrupt_npz(tmp_path):
    path = tmp_path / "train.npz"
    path.write_bytes(b"PK\x03\x04 this is not really a zip file")
    with pytest.raises(DataError, match=r"train\.npz: cannot read as a \.npz file"):
        load_cifar10(str(path))


def test_npz_missing_images_key(tmp_path):
    path = str(tmp_path / "x.npz")
    np.savez(path, pixels=np.zeros((3, 32, 32, 3), np.uint8))
    with pytest.raises(DataError, match=r"x\.npz: no 'images' array.*'pixels'"):
        load_cifar10(path)


def test_npz_wrong_dtype(tmp_path):
    path = str(tmp_path / "x.npz")
    np.savez(path, images=np.zeros((3, 32, 32, 3), np.float32), labels=np.zeros(3))
    with pytest.raises(DataError, match=r"x\.npz: images have dtype float32, expected uint8"):
        load_cifar10(path)


def test_npz_wrong_shape(tmp_path):
    path = str(tmp_path / "x.npz")
    np.savez(path, images=np.zeros((3, 3, 32, 32), np.uint8), labels=np.zeros(3, np.uint8))
    with pytest.raises(DataError, match=r"x\.npz: images have shape \(3, 3, 32, 32\)"):
        load_cifar10(path)


def test_npz_label_count_mismatch(tmp_path):
    path = str(tmp_path / "x.npz")
    np.savez(path, images=np.zeros((3, 32, 32, 3), np.uint8), labels=np.zeros(4, np.uint8))
    with pytest.raises(DataError, match=r"x\.npz: labels have shape \(4,\), expected \[3\]"):
        load_cifar10(path)


def test_npz_refuses_pickled_objects(tmp_path):
    path = str(tmp_path / "x.npz")
    np.savez(path, images=np.array([object()] * 3, dtype=object))
    with pytest.raises(DataError, match=r"x\.npz: cannot read"):
        load_cifar10(path)


def test_binary_truncated(fake_cifar):
    d = fake_cifar.binary_dir()
    path = os.path.join(d, "data_batch_3.bin")
    with open(path, "r+b") as f:
        f.truncate(2 * formats.RECORD_BYTES - 5)
    with pytest.raises(
        DataError,
        match=r"data_batch_3\.bin: size 6141 bytes is not a positive "
        r"multiple of the 3073-byte",
    ):
        load_cifar10(d, validation_size=6)


def test_binary_missing_batch(fake_cifar):
    d = fake_cifar.binary_dir()
    os.remove(os.path.join(d, "data_batch_4.bin"))
    with pytest.raises(DataNotFoundError, match=r"missing batch file\(s\).*data_batch_4\.bin"):
        load_cifar10(d, validation_size=6)


def test_binary_labels_out_of_range(tmp_path, fake_cifar):
    d = fake_cifar.binary_dir()
    raw = np.fromfile(os.path.join(d, "test_batch.bin"), np.uint8).reshape(-1, 3073)
    raw[0, 0] = 57
    raw.tofile(os.path.join(d, "test_batch.bin"))
    with pytest.raises(DataError, match=r"test_batch\.bin: labels out of range"):
        load_cifar10(d, validation_size=6)


def test_python_batch_garbage(fake_cifar):
    d = fake_cifar.python_dir()
    with open(os.path.join(d, "data_batch_2"), "wb") as f:
        f.write(b"\x00garbage")
    with pytest.raises(DataError, match=r"data_batch_2: cannot read as a CIFAR-10 python batch"):
        load_cifar10(d, validation_size=6)


def test_python_batch_missing_key(fake_cifar):
    d = fake_cifar.python_dir()
    with open(os.path.join(d, "data_batch_1"), "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8)}, f)
    with pytest.raises(DataError, match=r"data_batch_1: missing key\(s\) \['labels'\]"):
        load_cifar10(d, validation_size=6)


def test_python_batch_wrong_shape(fake_cifar):
    d = fake_cifar.python_dir()
    with open(os.path.join(d, "data_batch_1"), "wb") as f:
        pickle.dump({b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(
        DataError,
        match=r"data_batch_1: b'data' has dtype uint8 and shape "
        r"\(2, 1024\), expected uint8 \[n, 3072\]",
    ):
        load_cifar10(d, validation_size=6)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_python_batch_pickle_cannot_run_code(fake_cifar):
    d = fake_cifar.python_dir()
    with open(os.path.join(d, "data_batch_1"), "wb") as f:
        pickle.dump({b"data": _Evil(), b"labels": []}, f)
    with pytest.raises(DataError, match=r"refusing to load"):
        load_cifar10(d, validation_size=6)


def test_too_few_images_for_the_protocol(fake_cifar):
    path = fake_cifar.npz_file()
    with pytest.raises(
        DataError,
        match=r"train\.npz: the training file holds 30 images, fewer "
        r"than the protocol needs",
    ):
        load_cifar10(path)  # default validation_size = 10,000
