"""`tfdgmm.local_paths`: the exact best path and the exact log-likelihood of models whose
choices are independent across locations, against enumeration of every path."""

import numpy as np
import pytest
import tensorflow as tf

from tests.small_models import HC, SMALL_CONFIGS, data, make
from tfdgmm import local_paths

# every choice in a top stack of local layers, per location: 16 x 16 x 16 = 4,096 paths
LOCAL = [
    HC,
    {"type": "block_diagonal", "alternatives": 2, "selection": "location"},
    {"type": "block_diagonal", "alternatives": 2, "selection": "location", "per_location": True},
    {"type": "diagonal", "alternatives": 2, "selection": "location"},
]


def enumerated_joints(model, x, use_prior=True):
    """`[N, P]`: the objective of every path (the reference)."""
    paths = model.enumerate_paths()
    n, p = int(x.shape[0]), int(paths[0].shape[0])
    h0 = tf.repeat(model.patchify(x), p, axis=0)  # row n * P + p: image n on path p
    path = tuple(tf.tile(z, [n] + [1] * (z.shape.rank - 1)) for z in paths)
    return tf.reshape(model.joint_from_patches(h0, path, use_prior), [n, p]).numpy()


@pytest.mark.parametrize("prior", ["uniform", "factorized"])
def test_best_local_path_is_the_enumerated_maximum(prior):
    model = make(LOCAL, prior=prior, seed=3)
    if prior == "factorized":  # a non-uniform prior, different per location
        rng = np.random.default_rng(0)
        for v in model.path_prior.trainable_variables:
            v.assign(rng.standard_normal(v.shape))
    x = data(model, n=5)
    assert local_paths.local_stack(model) == local_paths.LocalStack(start=1, combinations=8)
    joints = enumerated_joints(model, x)
    path, joint = local_paths.best_local_path(model, model.patchify(x))
    np.testing.assert_allclose(joint, joints.max(axis=1), rtol=0, atol=1e-9)
    # the returned path has the returned objective
    np.testing.assert_allclose(model.joint_log_prob(x, path), joint, rtol=0, atol=1e-9)
    # and the search takes it: 'auto' and 'enumerate' return it, coordinate ascent is not above
    for method in ("auto", "enumerate"):
        found, score = model.best_path(x, seed=tf.constant([1, 2]), location_method=method)
        np.testing.assert_allclose(score, joint, rtol=0, atol=1e-9)
    _, ascent = model.best_path(x, seed=tf.constant([1, 2]), location_method="brute_force")
    assert np.all(ascent.numpy() <= joint.numpy() + 1e-9)


def test_best_local_path_without_the_prior():
    model = make(LOCAL, prior="factorized", seed=4)
    rng = np.random.default_rng(1)
    for v in model.path_prior.trainable_variables:
        v.assign(3.0 * rng.standard_normal(v.shape))
    x = data(model, n=4)
    joints = enumerated_joints(model, x, use_prior=False)
    _, joint = local_paths.best_local_path(model, model.patchify(x), use_prior=False)
    np.testing.assert_allclose(joint, joints.max(axis=1), rtol=0, atol=1e-9)


@pytest.mark.parametrize("prior", ["uniform", "factorized"])
def test_local_log_prob_equals_enumeration(prior):
    model = make(LOCAL, prior=prior, seed=5)
    if prior == "factorized":
        rng = np.random.default_rng(2)
        for v in model.path_prior.trainable_variables:
            v.assign(rng.standard_normal(v.shape))
    x = data(model, n=5)
    enumerated = model.log_prob(x)  # 4,096 paths <= exact_limit: enumeration
    np.testing.assert_allclose(
        local_paths.local_log_prob(model, model.patchify(x)), enumerated, rtol=0, atol=1e-9
    )
    # a model over its exact_limit in paths, within it per location: log_prob factorises
    small = make(LOCAL, prior=prior, seed=5, exact_limit=16)
    for a, b in zip(small.variables, model.variables):
        a.assign(b)
    assert small.num_paths > small.exact_limit and small.has_exact_log_prob
    np.testing.assert_allclose(small.log_prob(x), enumerated, rtol=0, atol=1e-9)
    # and beyond the per-location limit too, it refuses
    tiny = make(LOCAL, prior=prior, seed=5, exact_limit=4)
    assert not tiny.has_exact_log_prob
    with pytest.raises(ValueError, match="exact enumeration is infeasible"):
        tiny.log_prob(x)


@pytest.mark.parametrize("name", ["unshared_bd", "mixed", "shared_bd"])
def test_models_whose_choices_interact_are_refused(name):
    model = make(SMALL_CONFIGS[name], seed=0)
    assert local_paths.local_stack(model) is None
    x = data(model, n=2)
    with pytest.raises(ValueError, match="not independent across locations"):
        model.best_path(x, seed=tf.constant([1, 2]), location_method="enumerate")


def test_gating_prior_is_refused_unless_left_out():
    model = make(LOCAL, prior="gating", seed=0)
    assert local_paths.local_stack(model) is None
    assert local_paths.local_stack(model, use_prior=False) is not None


def test_chunked_and_xla_equal_one_batch(monkeypatch):
    model = make(LOCAL, seed=6)
    x = data(model, n=7)
    h0 = model.patchify(x)
    path, joint = local_paths.best_local_path(model, h0)
    lp = local_paths.local_log_prob(model, h0)
    # a budget of 2 datapoints per chunk (7 rows: 4 chunks, the last padded)
    per_row = 3 * 8 * 4 * 12 * 8
    monkeypatch.setattr(local_paths, "_MEMORY_BUDGET", 2 * per_row)
    chunked = tf.function(lambda h: local_paths.best_local_path(model, h))
    xla = tf.function(lambda h: local_paths.best_local_path(model, h), jit_compile=True)
    for fn in (chunked, xla):
        p2, j2 = fn(tf.identity(h0))
        np.testing.assert_allclose(j2, joint, rtol=0, atol=1e-9)
        for a, b in zip(p2, path):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(local_paths.local_log_prob(model, h0), lp, rtol=0, atol=1e-9)
