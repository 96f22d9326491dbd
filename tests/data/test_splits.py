import os

import numpy as np
import pytest

from tfdgmm.data import DataError, Split, load_cifar10


def test_protocol_order_validation_is_the_end_of_the_training_file(fake_cifar):
    splits = load_cifar10(fake_cifar.npz_dir(), validation_size=6)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (24, 6, 8)
    np.testing.assert_array_equal(splits.train.images, fake_cifar.train_images[:24])
    np.testing.assert_array_equal(splits.validation.images, fake_cifar.train_images[24:])
    assert (splits.train.file_offset, splits.validation.file_offset, splits.test.file_offset) == (
        0,
        24,
        0,
    )
    # fixed-noise stream: training file, then the test file
    assert (splits.train.noise_start, splits.validation.noise_start, splits.test.noise_start) == (
        0,
        24,
        30,
    )
    assert any("not the protocol's" in n for n in splits.notes)


def test_limits_take_prefixes_of_the_protocol_splits(fake_cifar):
    d = fake_cifar.npz_dir()
    full = load_cifar10(d, validation_size=6)
    small = load_cifar10(d, validation_size=6, train_limit=5, validation_limit=2, test_limit=3)
    assert (len(small.train), len(small.validation), len(small.test)) == (5, 2, 3)
    for (_, s), (_, f) in zip(small.items(), full.items()):
        np.testing.assert_array_equal(s.images, f.images[: len(s)])
        assert s.noise_start == f.noise_start
        # the kept images carry the same fixed noise as in the full run
        np.testing.assert_array_equal(s.dequantized(0), f.dequantized(0)[: len(s)])


def test_limit_larger_than_split(fake_cifar):
    with pytest.raises(DataError, match=r"train_limit=25 but the split has only 24 images"):
        load_cifar10(fake_cifar.npz_dir(), validation_size=6, train_limit=25)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(train_limit=0),
        dict(validation_size=0),
        dict(test_limit=1.5),
        dict(validation_size=True),
    ],
)
def test_bad_limits(fake_cifar, kwargs):
    kwargs.setdefault("validation_size", 6)
    with pytest.raises(ValueError, match=r"must be a positive integer"):
        load_cifar10(fake_cifar.npz_dir(), **kwargs)


def test_split_dequantized_slices_and_chunks_agree(fake_cifar):
    split = load_cifar10(fake_cifar.npz_dir(), validation_size=6).train
    whole = split.dequantized(3, np.float64)
    np.testing.assert_array_equal(split.dequantized(3, np.float64, 4, 9), whole[4:9])
    np.testing.assert_array_equal(
        np.concatenate(list(split.iter_dequantized(3, chunk_size=7))), whole
    )
    assert split.num_dims == 3072 and len(split) == 24


def test_real_data_protocol_and_official_order(shared_data_dir):
    """jpeg75 is in official order: its labels agree with the exact subset's `index`."""
    splits = load_cifar10(os.path.join(shared_data_dir, "cifar10-jpeg75"))
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (40000, 10000, 10000)
    assert splits.notes == ()
    exact = np.load(os.path.join(shared_data_dir, "cifar10-exact-subset", "train.npz"))
    index = exact["index"]
    all_labels = np.concatenate([splits.train.labels, splits.validation.labels])
    np.testing.assert_array_equal(all_labels[index], exact["labels"])
    # batch 5 (official positions 40000..49999) is the validation split
    in_val = index >= 40000
    np.testing.assert_array_equal(
        splits.validation.labels[index[in_val] - 40000], exact["labels"][in_val]
    )
    # JPEG copy: close to, not equal to, the exact pixels
    diff = np.abs(
        np.concatenate([splits.train.images, splits.validation.images])[index].astype(np.int16)
        - exact["images"]
    )
    assert 0 < diff.mean() < 10


def test_exact_subset_file_needs_smaller_validation(shared_data_dir):
    path = os.path.join(shared_data_dir, "cifar10-exact-subset", "train.npz")
    with pytest.raises(DataError, match=r"holds 5,085 images, fewer than the protocol needs"):
        load_cifar10(path)
    splits = load_cifar10(path, validation_size=1017)
    assert (len(splits.train), len(splits.validation), splits.test) == (4068, 1017, None)
    assert isinstance(splits.train, Split)
