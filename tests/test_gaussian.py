import math
import os
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tfdgmm import gaussian
from tfdgmm.data import Split, Splits, load_cifar10
from tfdgmm.units import bits_per_dim_to_nats, nats_to_bits_per_dim

tfd = tfp.distributions


def _numpy_log_density(x, mean, cov):
    """Direct Gaussian log-density, no scipy: via slogdet and solve."""
    d = mean.size
    diff = x - mean
    _, logdet = np.linalg.slogdet(cov)
    maha = np.einsum("ni,ni->n", diff, np.linalg.solve(cov, diff.T).T)
    return -0.5 * (maha + logdet + d * math.log(2 * math.pi))


@pytest.fixture
def data():
    rng = np.random.default_rng(5)
    a = rng.standard_normal((6, 6))
    return rng.standard_normal((500, 6)) @ a + rng.standard_normal(6)


def test_fit_equals_closed_form(data):
    dist = gaussian.fit_full_covariance_gaussian(data, chunk_size=64)
    assert isinstance(dist, tfd.MultivariateNormalTriL) and dist.dtype == tf.float64
    mean, cov = data.mean(axis=0), np.cov(data, rowvar=False, bias=True)
    np.testing.assert_allclose(dist.loc.numpy(), mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dist.covariance().numpy(), cov, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(
        dist.scale.to_dense().numpy(), np.linalg.cholesky(cov), rtol=1e-9, atol=1e-12
    )


def test_fit_from_iterable_of_chunks_and_images(data):
    whole = gaussian.fit_full_covariance_gaussian(data)
    chunks = gaussian.fit_full_covariance_gaussian(iter([data[:7], data[7:300], data[300:]]))
    np.testing.assert_allclose(
        chunks.covariance().numpy(), whole.covariance().numpy(), rtol=1e-10, atol=1e-13
    )
    images = data.reshape(500, 1, 2, 3)  # flattened to the event [6]
    assert gaussian.fit_full_covariance_gaussian(images).event_shape == [6]


def test_log_likelihood_matches_numpy_and_full_covariance(data):
    dist = gaussian.fit_full_covariance_gaussian(data)
    x = data[:50] + 0.3
    mean, cov = data.mean(axis=0), np.cov(data, rowvar=False, bias=True)
    expected = _numpy_log_density(x, mean, cov)
    np.testing.assert_allclose(gaussian.log_prob(dist, x), expected, rtol=1e-10)
    np.testing.assert_allclose(dist.log_prob(x).numpy(), expected, rtol=1e-10)
    full = tfd.MultivariateNormalFullCovariance(loc=mean, covariance_matrix=cov)
    np.testing.assert_allclose(gaussian.log_prob(full, x), expected, rtol=1e-10)  # generic path
    assert gaussian.mean_log_prob(dist, x, chunk_size=7) == pytest.approx(
        expected.mean(), rel=1e-12
    )


def test_training_likelihood_closed_form(data):
    dist = gaussian.fit_full_covariance_gaussian(data)
    direct = gaussian.mean_log_prob(dist, data)
    assert gaussian.ml_training_log_likelihood(dist) == pytest.approx(direct, rel=1e-12)


def test_degenerate_covariance_is_a_clear_error():
    x = np.random.default_rng(0).standard_normal((3, 5))  # fewer points than dimensions
    with pytest.raises(ValueError, match=r"3 points in 5 dimensions is not positive definite"):
        gaussian.fit_full_covariance_gaussian(x)
    assert gaussian.fit_full_covariance_gaussian(x, jitter=1e-3).event_shape == [5]


def test_num_parameters():
    counts = gaussian.num_parameters(3072)
    assert counts["paper"] == 4_717_056
    assert counts["total"] == 3072 + 3072 * 3073 // 2


def test_units():
    assert nats_to_bits_per_dim(0.0) == pytest.approx(7.0)
    ll = 7000.0
    assert nats_to_bits_per_dim(ll) == pytest.approx(7 - ll / (3072 * math.log(2)))
    assert bits_per_dim_to_nats(nats_to_bits_per_dim(ll)) == pytest.approx(ll)
    np.testing.assert_allclose(
        bits_per_dim_to_nats(nats_to_bits_per_dim(np.array([1.0, 2.0]))), [1.0, 2.0]
    )
    # on the pixel scale (bin width 1) bits/dim is just -LL / (D ln 2)
    assert nats_to_bits_per_dim(-100.0, num_dims=10, bin_width=1.0) == pytest.approx(
        100 / (10 * math.log(2))
    )
    # a uniform density on [-1, 1]^D (LL = -D ln 2) costs exactly 8 bits per dimension
    assert nats_to_bits_per_dim(-3072 * math.log(2)) == pytest.approx(8.0)


def _tiny_splits(rng, n_train=400, n_val=60, n_test=40, shape=(4, 4, 3)):
    """Small images whose pixels share a per-image offset, so they are strongly correlated."""
    n = n_train + n_val + n_test
    base = rng.integers(0, 200, (n, 1, 1, 1))
    images = np.clip(base + rng.integers(0, 56, (n,) + shape), 0, 255).astype(np.uint8)
    labels = np.zeros(n, np.int64)
    train = Split("train", images[:n_train], labels[:n_train], "mem", 0, 0)
    val = Split(
        "validation", images[n_train : n_train + n_val], labels[:n_val], "mem", n_train, n_train
    )
    test = Split("test", images[n_train + n_val :], labels[:n_test], "mem", 0, n_train + n_val)
    return Splits(train, val, test, "mem")


@pytest.mark.parametrize("direct_train", [False, True])
def test_run_gaussian_baseline_matches_numpy(direct_train):
    """The whole baseline (noise, fit, evaluation, units) against plain numpy float64."""
    splits = _tiny_splits(np.random.default_rng(1))
    result = gaussian.run_gaussian_baseline(
        splits, noise_seed=0, chunk_size=64, direct_train=direct_train
    )
    assert list(result["splits"]) == ["train", "validation", "test"]
    assert result["num_dims"] == 48 and result["noise_seed"] == 0
    # the README's layout: one default_rng(0) stream over the training file, then the test file
    u = np.random.default_rng(0).random((500, 4, 4, 3))
    images = np.concatenate([s.images for s in splits])
    x_all = ((images + u) / 128 - 1).reshape(500, 48)
    x_train = x_all[:400]
    mean, cov = x_train.mean(0), np.cov(x_train, rowvar=False, bias=True)
    for name, x in [("train", x_train), ("validation", x_all[400:460]), ("test", x_all[460:])]:
        ll = _numpy_log_density(x, mean, cov).mean()
        got = result["splits"][name]
        assert got["nats"] == pytest.approx(ll, rel=1e-10, abs=1e-9), name
        assert got["bits_per_dim"] == pytest.approx(nats_to_bits_per_dim(ll, num_dims=48))
        assert got["num_images"] == len(x)


def test_run_gaussian_baseline_without_test_split():
    s = _tiny_splits(np.random.default_rng(2))
    result = gaussian.run_gaussian_baseline(Splits(s.train, s.validation, None, "mem"))
    assert list(result["splits"]) == ["train", "validation"]


README_NATS = {"train": 7222.9, "validation": 6995.5, "test": 7000.4}


@pytest.mark.slow
def test_baseline_reproduces_readme_figures(shared_data_dir):
    """Full protocol on cifar10-jpeg75 with noise seed 0 (about 30 s on 2 idle cores)."""
    start = time.perf_counter()
    splits = load_cifar10(os.path.join(shared_data_dir, "cifar10-jpeg75"))
    result = gaussian.run_gaussian_baseline(splits, noise_seed=0)
    for name, expected in README_NATS.items():
        assert result["splits"][name]["nats"] == pytest.approx(expected, abs=1.0), name
    print(
        {k: round(v["nats"], 2) for k, v in result["splits"].items()},
        f"{time.perf_counter() - start:.1f} s",
    )
