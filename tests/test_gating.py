"""Gating networks: exact densities, sampling, the E-step with a conditional prior, and fitting."""

import math

import numpy as np
import pytest
import tensorflow as tf

import tfdgmm
from tfdgmm import path_priors, path_search
from tfdgmm.training.gating import fit_gating, with_gating

IMAGE = [4, 4, 3]
HC = {"type": "half_convolution", "kernel_size": 3}


def make(layers, prior, seed=0):
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
    model = make(LAYERS, {"kind": "gating", "hidden": 8})
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


def test_gating_search_never_lowers_objective_and_bounds_hold():
    model = make(LAYERS, {"kind": "gating", "hidden": 8}, seed=1)
    x = model.sample(16, seed=tf.constant([3, 2]))
    h0 = model.patchify(x)
    for method in ["auto", "brute_force", "linearized"]:
        path = path_search.random_path(model, 16, tf.constant([1, 2]))
        prev = path_search.objective(model, h0, path).numpy()
        for p in range(2):
            path = path_search.coordinate_ascent_pass(
                model, h0, path, method, seed=tf.constant([p, 1])
            )
            cur = path_search.objective(model, h0, path).numpy()
            assert np.all(cur >= prev - 1e-9), (method, (cur - prev).min())
            prev = cur
    top_only = make(
        [HC, {"type": "block_diagonal", "alternatives": 2, "selection": "location"}],
        {"kind": "gating", "hidden": 4},
    )
    with pytest.raises(ValueError, match="gating networks do not"):
        path_search.coordinate_ascent_pass(
            top_only, h0, path_search.random_path(top_only, 16, tf.constant([1, 1])), "gram"
        )
    path, lower = model.best_path(x, restarts=2, seed=tf.constant([4, 4]))
    exact = model.log_prob(x).numpy()
    upper = model.log_prob_upper_bound(x, restarts=2, seed=tf.constant([4, 4])).numpy()
    assert np.all(lower.numpy() <= exact + 1e-9)
    assert np.all(exact <= upper + 1e-9)


def test_gating_sampling_follows_the_networks():
    model = make([{"type": "block_diagonal", "alternatives": 3}], {"kind": "gating", "hidden": 4})
    net = model.path_prior.networks[0]
    net["w2"].assign(tf.zeros_like(net["w2"]))  # logits = b2 whatever the partial sample
    net["b2"].assign(tf.constant([0.0, 2.0, -1.0], tf.float64))
    _, path = model.sample_with_path(20000, seed=tf.constant([5, 5]))
    freq = np.bincount(path[0].numpy(), minlength=3) / 20000
    p = tf.nn.softmax(net["b2"]).numpy()
    assert np.all(np.abs(freq - p) < 5 * np.sqrt(p * (1 - p) / 20000))
    a = model.sample(4, seed=tf.constant([9, 9]))
    np.testing.assert_array_equal(a, model.sample(4, seed=tf.constant([9, 9])))


def test_gating_raises_the_lower_bound_when_the_best_path_depends_on_the_sample():
    # Two layers with 2 alternatives each; data use only the paths (0, 0) and (1, 1). The top
    # layer's shift tells which one, so a gating network on the partial sample can predict the
    # bottom choice, while a uniform prior pays log 4 per image.
    layers = [
        {"type": "block_diagonal", "alternatives": 2},
        {"type": "diagonal", "alternatives": 2, "per_location": False},
    ]
    truth = make(layers, "table", seed=2)
    top = truth.layers[1]
    top.shift.assign(tf.constant([[3.0] * 12, [-3.0] * 12], tf.float64))
    truth.path_prior.table.assign(tf.math.log(tf.constant([0.5, 1e-9, 1e-9, 0.5], tf.float64)))
    x, _ = truth.sample_with_path(600, seed=tf.constant([1, 1]))
    uniform = tfdgmm.DeepGMM(truth.layers, IMAGE, 2, path_prior="uniform")
    path, lower_uniform = uniform.best_path(x, restarts=2, seed=tf.constant([2, 2]))
    gated = with_gating(uniform, hidden=8, seed=0)
    untrained = gated.joint_log_prob(x, path).numpy().mean()
    np.testing.assert_allclose(untrained, lower_uniform.numpy().mean(), rtol=1e-9)
    result = fit_gating(gated, x, path, steps=300, batch_size=100, learning_rate=1e-2)
    assert result["nats_after"] < result["nats_before"] - 0.5 * math.log(2)
    _, lower_gated = gated.best_path(x, init=path, restarts=1, seed=tf.constant([3, 3]))
    gain = lower_gated.numpy().mean() - lower_uniform.numpy().mean()
    # ideal gain: log 2 (bottom choice predicted; the top layer sees z and stays ~uniform)
    assert gain > 0.5 * math.log(2), gain
