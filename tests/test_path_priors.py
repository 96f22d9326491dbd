"""tfdgmm.path_priors: the table prior and the gating prior (exact densities, sampling)."""

import math

import numpy as np
import tensorflow as tf
from small_models import HC, IMAGE, SMALL_CONFIGS, data, make, perturb  # noqa: F401

import tfdgmm
from tfdgmm import path_priors


def test_table_prior_log_prob_and_conditionals():
    model = make(SMALL_CONFIGS["shared_bd"], prior="table")
    table = model.path_prior.table
    table.assign(tf.random.normal(table.shape, dtype=table.dtype))
    x = data(model)
    np.testing.assert_allclose(model.log_prob(x), model.as_mixture().log_prob(x), rtol=1e-9)
    paths = model.enumerate_paths()
    logp = tf.nn.log_softmax(table).numpy()
    np.testing.assert_allclose(model.path_log_prob(paths), logp, rtol=1e-12)
    # conditional over layer 1 (3 alternatives) with the others fixed = a slice of the table
    sizes = [k for k, _ in model.layer_specs]
    strides = [int(np.prod(sizes[j + 1 :])) for j in range(len(sizes))]
    cond = model.path_prior.conditional_log_probs(1, paths).numpy()
    for p in [0, 3, 5]:
        idx = [
            sum((k if j == 1 else int(z[p])) * st for j, (z, st) in enumerate(zip(paths, strides)))
            for k in range(3)
        ]
        np.testing.assert_allclose(cond[p], logp[idx], rtol=1e-12)


def make_gated(layers, prior, seed=0):
    model = tfdgmm.DeepGMM.from_config(
        {
            "image_shape": IMAGE,
            "patch_size": 2,
            "layers": layers,
            "path_prior": prior,
            "seed": seed,
        },
        dtype=tf.float64,
    )
    rng = np.random.default_rng(seed)
    for v in model.trainable_variables:
        v.assign_add(0.3 * rng.standard_normal(v.shape))
    return model


LAYERS = [
    {"type": "block_diagonal", "alternatives": 2, "selection": "location"},
    HC,
    {"type": "block_diagonal", "alternatives": 3},
]


def test_gating_exact_log_prob_is_logsumexp_of_joints():
    model = make_gated(LAYERS, {"kind": "gating", "hidden": 8})
    assert isinstance(model.path_prior, path_priors.GatingPathPrior)
    x = model.sample(5, seed=tf.constant([1, 2]))
    paths = model.enumerate_paths()
    num = paths[0].shape[0]
    xs = tf.repeat(x, num, axis=0)
    ps = tuple(tf.tile(z, [5] + [1] * (z.shape.rank - 1)) for z in paths)
    joint = tf.reshape(model.joint_log_prob(xs, ps), [5, num])
    np.testing.assert_allclose(model.log_prob(x), tf.reduce_logsumexp(joint, 1), rtol=1e-10)


def test_gated_model_density_integrates_to_one():
    # p(x) = sum_p prod_i p(z_i | h_{i+1}) N(h_n) |det|: a density because sampling is top-down.
    # Importance sampling over a 4-dimensional event: E_q[p(x) / q(x)] = 1.
    model = tfdgmm.DeepGMM.from_config(
        {
            "image_shape": [2, 2, 1],
            "patch_size": 2,
            "path_prior": {"kind": "gating", "hidden": 4},
            "layers": [
                {"type": "block_diagonal", "alternatives": 2},
                {"type": "diagonal", "alternatives": 3},
            ],
        },
        dtype=tf.float64,
    )
    rng = np.random.default_rng(0)
    for v in model.trainable_variables:
        v.assign_add(0.5 * rng.standard_normal(v.shape))
    n, scale = 400000, 4.0
    q = rng.standard_normal((n, 2, 2, 1)) * scale
    log_q = -0.5 * np.sum(q**2, axis=(1, 2, 3)) / scale**2 - 4 * (
        math.log(scale) + 0.5 * math.log(2 * math.pi)
    )
    w = np.exp(model.log_prob(q).numpy() - log_q)
    assert abs(w.mean() - 1.0) < 5 * w.std() / math.sqrt(n) + 1e-3, (w.mean(), w.std())


def test_gating_sampling_follows_the_networks():
    model = make_gated(
        [{"type": "block_diagonal", "alternatives": 3}], {"kind": "gating", "hidden": 4}
    )
    net = model.path_prior.networks[0]
    net["w2"].assign(tf.zeros_like(net["w2"]))  # logits = b2 whatever the partial sample
    net["b2"].assign(tf.constant([0.0, 2.0, -1.0], tf.float64))
    _, path = model.sample_with_path(20000, seed=tf.constant([5, 5]))
    freq = np.bincount(path[0].numpy(), minlength=3) / 20000
    p = tf.nn.softmax(net["b2"]).numpy()
    assert np.all(np.abs(freq - p) < 5 * np.sqrt(p * (1 - p) / 20000))
    a = model.sample(4, seed=tf.constant([9, 9]))
    np.testing.assert_array_equal(a, model.sample(4, seed=tf.constant([9, 9])))
