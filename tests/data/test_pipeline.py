import numpy as np
import pytest
import tensorflow as tf

from tfdgmm.data import load_cifar10, make_dataset, quantize


@pytest.fixture
def splits(fake_cifar):
    return load_cifar10(fake_cifar.npz_dir(), validation_size=6)


def _collect(ds):
    xs, idx = [], []
    for x, i in ds:
        xs.append(x.numpy())
        idx.append(i.numpy())
    return xs, idx


def test_each_datapoint_once_per_epoch_with_matching_index(splits):
    split = splits.train  # 24 images
    ds = make_dataset(split, batch_size=5, seed=3, repeat=3)
    assert ds.element_spec[0].dtype == tf.float32 and ds.element_spec[1].dtype == tf.int64
    xs, idx = _collect(ds)
    sizes = [len(i) for i in idx]
    assert sizes == [5, 5, 5, 5, 4] * 3  # batches never straddle epochs
    epochs = [np.concatenate(idx[k * 5 : (k + 1) * 5]) for k in range(3)]
    for e in epochs:
        np.testing.assert_array_equal(np.sort(e), np.arange(24))
    assert not np.array_equal(epochs[0], epochs[1])  # reshuffled every epoch
    fixed = split.dequantized(0)
    for x, i in zip(xs, idx):
        np.testing.assert_array_equal(x, fixed[i])  # the index looks up the datapoint


def test_deterministic_for_a_seed(splits):
    a = _collect(make_dataset(splits.train, 4, seed=1, repeat=2, dequantize="epoch"))
    tf.random.set_seed(999)  # global seed must not matter
    b = _collect(make_dataset(splits.train, 4, seed=1, repeat=2, dequantize="epoch"))
    for u, v in zip(a[0] + a[1], b[0] + b[1]):
        np.testing.assert_array_equal(u, v)
    c = _collect(make_dataset(splits.train, 4, seed=2, repeat=2))
    assert not all(np.array_equal(u, v) for u, v in zip(a[1], c[1]))


def test_no_shuffle_is_index_order_and_drop_remainder(splits):
    _, idx = _collect(make_dataset(splits.train, 5, shuffle=False, drop_remainder=True))
    np.testing.assert_array_equal(np.concatenate(idx), np.arange(20))


def test_epoch_noise_is_redrawn_and_in_range(splits):
    xs, idx = _collect(
        make_dataset(splits.validation, 6, shuffle=False, repeat=2, dequantize="epoch")
    )
    assert len(xs) == 2
    assert not np.array_equal(xs[0], xs[1])
    pixels = splits.validation.images
    for x in xs:
        assert x.min() >= -1 and x.max() < 1
        # same pixel bin: floor((x + 1) * 128) recovers the pixel
        np.testing.assert_array_equal(quantize(x), pixels)


def test_epoch_noise_differs_between_splits(splits):
    """Splits draw from different keys even for the same batch number and epoch."""
    xa = next(iter(make_dataset(splits.train, 6, shuffle=False, dequantize="epoch")))[0].numpy()
    xb = next(iter(make_dataset(splits.validation, 6, shuffle=False, dequantize="epoch")))[
        0
    ].numpy()
    ua = (xa + 1) * 128 - splits.train.images[:6]
    ub = (xb + 1) * 128 - splits.validation.images[:6]
    assert not np.allclose(ua, ub)


def test_midpoint_and_without_index(splits):
    ds = make_dataset(splits.test, 8, shuffle=False, dequantize="midpoint", with_index=False)
    x = next(iter(ds)).numpy()
    np.testing.assert_allclose(x, (splits.test.images + 0.5) / 128 - 1, rtol=0, atol=1e-7)


def test_fixed_noise_uses_noise_seed(splits):
    x0 = next(iter(make_dataset(splits.test, 8, shuffle=False)))[0].numpy()
    x1 = next(iter(make_dataset(splits.test, 8, shuffle=False, noise_seed=1)))[0].numpy()
    np.testing.assert_array_equal(x0, splits.test.dequantized(0))
    np.testing.assert_array_equal(x1, splits.test.dequantized(1))


def test_raw_array_input(fake_cifar):
    ds = make_dataset(fake_cifar.test_images, 3, shuffle=False)
    xs, idx = _collect(ds)
    np.testing.assert_array_equal(np.concatenate(idx), np.arange(8))
    expected = (fake_cifar.test_images + np.random.default_rng(0).random((8, 32, 32, 3))) / 128 - 1
    np.testing.assert_allclose(np.concatenate(xs), expected, atol=1e-7)


def test_repeat_forever(splits):
    ds = make_dataset(splits.test, 8, repeat=True)
    _, idx = _collect(ds.take(5))
    assert len(idx) == 5


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(dequantize="sometimes"), "dequantize must be one of"),
        (dict(batch_size=0), "batch_size must be a positive integer"),
        (dict(repeat=0), "repeat must be"),
        (dict(batch_size=30, drop_remainder=True), r"24 images give no batch of 30"),
    ],
)
def test_bad_arguments(splits, kwargs, match):
    kwargs.setdefault("batch_size", 4)
    with pytest.raises(ValueError, match=match):
        make_dataset(splits.train, **kwargs)


def test_bad_array(fake_cifar):
    with pytest.raises(ValueError, match=r"uint8 \[N, H, W, C\]"):
        make_dataset(fake_cifar.test_images.astype(np.float32), 4)


@pytest.mark.parametrize("mode", ["fixed", "epoch"])
def test_other_image_shapes(mode):
    images = np.random.default_rng(0).integers(0, 256, (10, 4, 4, 1), dtype=np.uint8)
    xs, idx = _collect(make_dataset(images, 4, dequantize=mode))
    x, i = np.concatenate(xs), np.concatenate(idx)
    assert x.shape == (10, 4, 4, 1)
    np.testing.assert_array_equal(quantize(x), images[i])
