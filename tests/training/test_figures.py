"""Figures: sample grids and the first layers' filters (paper figures 5 and 6)."""

import os

import numpy as np
import tensorflow as tf

import tfdgmm
from tfdgmm.training import figures

ARCH = {"image_shape": [8, 8, 3], "patch_size": 2,
        "layers": [{"type": "half_convolution", "kernel_size": 3},
                   {"type": "block_diagonal", "alternatives": 3, "selection": "location"},
                   {"type": "half_convolution", "kernel_size": 3}]}


def test_filters_are_the_pixel_images_of_latent_features():
    model = tfdgmm.DeepGMM.from_config(ARCH, dtype=tf.float64)
    filters, info = figures.first_layer_filters(model, max_features=5)
    assert info["layer"] == 1 and info["location"] == [2, 2]
    assert filters.shape == (3, 5, 8, 8, 3)
    # filter = (forward of the layers below the BD's output) applied to a unit vector: check one
    # against the dense generative matrix of layers 0..1 for alternative 2
    d = 12
    feature = info["features"][2][0]
    h = np.zeros((1, 4, 4, d))
    h[0, 2, 2, feature] = 1.0
    zero = np.zeros_like(h)
    choice = tf.fill([1, 4, 4], 2)

    def down(v):
        v = model.layers[1].forward(tf.constant(v), choice=choice)
        return tfdgmm.bijectors.Patchify(2).inverse(model.layers[0].forward(v)).numpy()

    np.testing.assert_allclose(filters[2, 0], (down(h) - down(zero))[0], atol=1e-12)
    norms = np.sqrt((filters[0] ** 2).reshape(5, -1).sum(-1))
    assert np.all(np.diff(norms) <= 1e-12)  # sorted by decreasing norm


def test_pngs_are_written(tmp_path):
    model = tfdgmm.DeepGMM.from_config(ARCH)
    x = figures.save_samples(model, str(tmp_path / "s.png"), n=6, seed=3, cols=3)
    assert x.shape == (6, 8, 8, 3)
    info = figures.save_filters(model, str(tmp_path / "f.png"), max_features=4)
    assert info["layer"] == 1
    for name in ("s.png", "f.png"):
        with open(tmp_path / name, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        assert os.path.getsize(tmp_path / name) > 500
