import numpy as np
import pytest

from tfdgmm.data import dequantize, load_cifar10, quantize, reference_noise


def test_reference_noise_is_a_window_of_one_numpy_stream():
    full = np.random.default_rng(0).random((12, 32, 32, 3))
    np.testing.assert_array_equal(reference_noise(0, 0, 12), full)
    np.testing.assert_array_equal(reference_noise(0, 5, 4), full[5:9])
    assert not np.array_equal(reference_noise(1, 0, 2), full[:2])


def test_splits_use_the_reference_layout(fake_cifar):
    """train file then test file, one default_rng(seed) stream (the README's convention)."""
    splits = load_cifar10(fake_cifar.npz_dir(), validation_size=6)
    rng = np.random.default_rng(0)
    u_train = rng.random(fake_cifar.train_images.shape)
    u_test = rng.random(fake_cifar.test_images.shape)
    expect_train = (fake_cifar.train_images + u_train) / 128 - 1
    expect_test = (fake_cifar.test_images + u_test) / 128 - 1
    np.testing.assert_array_equal(splits.train.dequantized(0, np.float64), expect_train[:24])
    np.testing.assert_array_equal(splits.validation.dequantized(0, np.float64), expect_train[24:])
    np.testing.assert_array_equal(splits.test.dequantized(0, np.float64), expect_test)
    # disjoint parts of the stream: independent per split
    assert not np.array_equal(splits.train.noise(0, 0, 6), splits.validation.noise(0))


def test_range_and_reproducibility(fake_cifar):
    split = load_cifar10(fake_cifar.npz_dir(), validation_size=6).train
    a, b = split.dequantized(7), split.dequantized(7)
    assert a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, split.dequantized(8))
    assert a.min() >= -1 and a.max() < 1
    np.testing.assert_array_equal(quantize(a), split.images)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_values_stay_in_their_bin_even_for_noise_just_below_one(dtype):
    pixels = np.arange(256, dtype=np.uint8)
    low = dequantize(pixels, np.zeros(256), dtype=dtype)
    high = dequantize(pixels, np.full(256, np.nextafter(1.0, 0.0)), dtype=dtype)
    assert low.dtype == dtype and low[0] == -1.0 and high.max() < 1.0
    np.testing.assert_array_equal(low, pixels / 128.0 - 1.0)
    np.testing.assert_array_equal(quantize(high), pixels)
    assert (high < (pixels + 1.0) / 128.0 - 1.0).all()


def test_mean_is_bin_centre():
    pixels = np.arange(256, dtype=np.uint8)
    images = np.tile(pixels, (4000, 1))
    u = np.random.default_rng(0).random(images.shape)
    x = dequantize(images, u, dtype=np.float64)
    expected = (pixels + 0.5) / 128 - 1
    # std of the mean of 4000 U[0,1)/128 draws: 1/(128 sqrt(12 * 4000)) ~ 3.6e-5
    np.testing.assert_allclose(x.mean(axis=0), expected, atol=2e-4)
    np.testing.assert_allclose(dequantize(pixels, 0.5, np.float64), expected)


def test_reference_noise_rejects_negative():
    with pytest.raises(ValueError, match="must be >= 0"):
        reference_noise(0, -1, 2)
