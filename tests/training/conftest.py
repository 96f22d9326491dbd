"""Fixtures for the training tests: a small known deep GMM and data drawn from it."""

import numpy as np
import pytest
import tensorflow as tf

import tfdgmm

HC = {"type": "half_convolution", "kernel_size": 3}

# 4x4x3 images, 2x2 patches: a 2 x 2 x 12 patch tensor; 2 shared BD layers of 2 alternatives
# (4 paths, so exact log-likelihoods are cheap).
SYNTHETIC_ARCH = {
    "image_shape": [4, 4, 3],
    "patch_size": 2,
    "layers": [
        HC,
        {"type": "block_diagonal", "alternatives": 2},
        HC,
        {"type": "block_diagonal", "alternatives": 2},
    ],
}


def _make_model(arch=SYNTHETIC_ARCH, seed=0):
    return tfdgmm.DeepGMM.from_config(dict(arch, seed=seed))


@pytest.fixture(scope="session")
def make_model():
    """`make_model(arch=SYNTHETIC_ARCH, seed=0)`: a freshly initialised model."""
    return _make_model


def generating_model(arch=SYNTHETIC_ARCH, seed=11, scale=0.1):
    """A known deep GMM: the initial model moved at random so that its alternatives differ."""
    model = _make_model(arch, seed)
    rng = np.random.default_rng(5)
    for v in model.trainable_variables:
        v.assign_add(scale * rng.standard_normal(v.shape).astype(v.dtype.as_numpy_dtype))
    return model


@pytest.fixture(scope="session")
def synthetic():
    """`(generating model, train images [1000], validation images [300])`."""
    model = generating_model()
    x = model.sample(1300, seed=tf.constant([3, 4])).numpy()
    return model, x[:1000], x[1000:]
