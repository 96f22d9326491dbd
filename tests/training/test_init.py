"""Data-dependent initialisation: the first block-diagonal layer whitens the data."""

import numpy as np
import pytest
import tensorflow as tf

import tfdgmm
from tfdgmm.bijectors import Patchify
from tfdgmm.training.init import initialize_from_data, whitening_lu

HC = {"type": "half_convolution", "kernel_size": 3}


def test_whitening_lu_is_the_zca_whitening_in_the_bijector_convention():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 6, 6))
    cov = a @ np.swapaxes(a, -1, -2) + 0.1 * np.eye(6)
    lower_upper, perm = whitening_lu(cov, ridge=0.0)
    bd = tfdgmm.bijectors.BlockDiagonal(lower_upper, perm)
    w = bd.matrix().numpy()
    # a whitening: W cov W^T = I; and ZCA up to row signs: |W| = |cov^{-1/2}|
    np.testing.assert_allclose(
        w @ cov @ np.swapaxes(w, -1, -2), np.broadcast_to(np.eye(6), cov.shape), atol=1e-8
    )
    evals, evecs = np.linalg.eigh(cov)
    zca = np.einsum("...ij,...j,...kj->...ik", evecs, evals**-0.5, evecs)
    np.testing.assert_allclose(np.abs(w), np.abs(zca), atol=1e-8)


@pytest.mark.parametrize(
    "bd",
    [
        {"type": "block_diagonal", "alternatives": 1},
        {"type": "block_diagonal", "alternatives": 3},
        {"type": "block_diagonal", "alternatives": 2, "selection": "location"},
        {
            "type": "block_diagonal",
            "alternatives": 2,
            "selection": "location",
            "per_location": True,
        },
    ],
)
def test_init_whitens_and_raises_the_bound(synthetic, bd):
    _, x, _ = synthetic
    model = tfdgmm.DeepGMM.from_config(
        {"image_shape": [4, 4, 3], "patch_size": 2, "layers": [HC, bd, HC]}, dtype=tf.float64
    )
    x = tf.constant(x, tf.float64)
    before = float(tf.reduce_mean(model.best_path(x, seed=[1, 2])[1]))
    assert initialize_from_data(model, x.numpy()) == 1
    after = float(tf.reduce_mean(model.best_path(x, seed=[1, 2])[1]))
    assert after > before + 5.0
    if bd["alternatives"] == 1:  # exactly white at the layer's output
        h = model.layers[0].inverse(Patchify(2).forward(x))
        z = tf.reshape(model.layers[1].inverse(h), [-1, 4, 12]).numpy()
        for loc in range(4):
            c = z[:, loc].T @ z[:, loc] / len(z)
            np.testing.assert_allclose(c, np.eye(12), atol=1e-5)
            np.testing.assert_allclose(z[:, loc].mean(0), 0.0, atol=1e-6)


@pytest.mark.parametrize("alternatives", [1, 2])
def test_init_of_a_dense_layer(synthetic, alternatives):
    """The 2014 layer: one alternative starts as the full-covariance Gaussian of the data."""
    _, x, _ = synthetic
    model = tfdgmm.DeepGMM.from_config(
        {
            "image_shape": [4, 4, 3],
            "patch_size": 2,
            "layers": [{"type": "dense", "alternatives": alternatives}],
        },
        dtype=tf.float64,
    )
    x = tf.constant(x, tf.float64)
    before = float(tf.reduce_mean(model.best_path(x, seed=[1, 2])[1]))
    assert initialize_from_data(model, x.numpy(), ridge=0.0) == 0
    after = float(tf.reduce_mean(model.best_path(x, seed=[1, 2])[1]))
    assert after > before + 5.0
    if alternatives == 1:
        expected = _gaussian_log_lik(x.numpy().reshape(len(x), -1))
        np.testing.assert_allclose(model.log_prob(x).numpy(), expected, rtol=1e-9, atol=1e-7)


def _gaussian_log_lik(units):
    """Closed form: log-likelihood of each row of `units [n, d]` under the maximum-likelihood
    Gaussian fitted on them."""
    c = units - units.mean(0)
    cov = c.T @ c / len(units)
    _, logdet = np.linalg.slogdet(cov)
    maha = np.einsum("ni,ij,nj->n", c, np.linalg.inv(cov), c)
    return -0.5 * (maha + logdet + units.shape[1] * np.log(2 * np.pi))


def _per_location_gaussian_log_lik(x, patch_size):
    """Closed form: the maximum-likelihood Gaussian of every patch location, fitted on `x`."""
    p = Patchify(patch_size).forward(tf.constant(x, tf.float64)).numpy()
    n, hp, wp, d = p.shape
    return sum(_gaussian_log_lik(loc) for loc in p.reshape(n, hp * wp, d).transpose(1, 0, 2))


def test_init_with_identity_below_starts_as_the_per_location_gaussian(synthetic):
    """[HC, HC, BD]: the half-convolutions below become the identity, so the model starts as
    exactly the maximum-likelihood per-location Gaussian of the data (closed form)."""
    _, x, _ = synthetic
    model = tfdgmm.DeepGMM.from_config(
        {"image_shape": [4, 4, 3], "patch_size": 2, "layers": [HC, HC, {"type": "block_diagonal"}]},
        dtype=tf.float64,
    )
    assert initialize_from_data(model, x, ridge=0.0) == 2
    for layer in model.layers[:2]:
        np.testing.assert_array_equal(layer.kernel.numpy(), 0.0)
    lb = model.log_prob_lower_bound(tf.constant(x, tf.float64)).numpy()
    np.testing.assert_allclose(lb, _per_location_gaussian_log_lik(x, 2), rtol=1e-9, atol=1e-7)


@pytest.mark.parametrize("identity_below", [True, False])
def test_init_zeroes_only_single_alternative_half_convolutions_below(synthetic, identity_below):
    """[HC, HC (2 alternatives), BD, HC]: only the first is zeroed (with identity_below); the
    two-alternative one (identical alternatives could not be told apart) and the one above
    keep their kernels."""
    _, x, _ = synthetic
    model = tfdgmm.DeepGMM.from_config(
        {
            "image_shape": [4, 4, 3],
            "patch_size": 2,
            "layers": [HC, dict(HC, alternatives=2), {"type": "block_diagonal"}, HC],
        },
        dtype=tf.float64,
    )
    before = [model.layers[i].kernel.numpy() for i in (0, 1, 3)]
    assert all(np.abs(k).max() > 0 for k in before)
    assert initialize_from_data(model, x, identity_below=identity_below) == 2
    after = [model.layers[i].kernel.numpy() for i in (0, 1, 3)]
    np.testing.assert_array_equal(after[0], 0.0 * before[0] if identity_below else before[0])
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_array_equal(after[2], before[2])
