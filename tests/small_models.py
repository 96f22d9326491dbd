"""Small deep GMMs shared by the tests of `deep_gmm`, `path_search`, `path_priors` (float64,
perturbed off their initial values, 4x4x3 images)."""

import numpy as np
import tensorflow as tf

import tfdgmm

IMAGE = [4, 4, 3]  # patch 2 -> patch tensor [2, 2, 12]


HC = {"type": "half_convolution", "kernel_size": 3}


SMALL_CONFIGS = {
    "shared_bd": [
        HC,
        {"type": "block_diagonal", "alternatives": 3},
        HC,
        {"type": "block_diagonal", "alternatives": 2},
    ],
    "unshared_bd": [HC, {"type": "block_diagonal", "alternatives": 2, "selection": "location"}, HC],
    "diag_dense_hc": [
        {"type": "diagonal", "alternatives": 2},
        HC,
        {"type": "dense", "alternatives": 2},
        {"type": "half_convolution", "kernel_size": 3, "alternatives": 2},
    ],
    "mixed": [
        {
            "type": "block_diagonal",
            "alternatives": 2,
            "selection": "location",
            "per_location": True,
        },
        HC,
        {"type": "diagonal", "alternatives": 2, "selection": "location"},
    ],
}


def make(layers, prior="uniform", seed=0, **kw):
    model = tfdgmm.DeepGMM.from_config(
        {
            "image_shape": IMAGE,
            "patch_size": 2,
            "layers": layers,
            "path_prior": prior,
            "exact_limit": 1 << 12,
            "seed": seed,
        },
        dtype=tf.float64,
        **kw,
    )
    perturb(model, seed)
    return model


def perturb(model, seed):
    """Move every trainable variable off its initial value so that all terms are exercised."""
    rng = np.random.default_rng(seed + 100)
    for v in model.trainable_variables:
        v.assign_add(0.3 * rng.standard_normal(v.shape))


def data(model, n=6, seed=7):
    return model.sample(n, seed=tf.constant([seed, 1]))
