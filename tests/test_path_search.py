"""tfdgmm.path_search: the E-step schemes against brute-force coordinate ascent; passes never
lower the objective (also with a gating prior)."""

import numpy as np
import pytest
import tensorflow as tf
from small_models import HC, IMAGE, SMALL_CONFIGS, data, make, perturb  # noqa: F401

import tfdgmm
from tfdgmm import path_search


def test_passes_never_lower_the_objective():
    model = make(SMALL_CONFIGS["mixed"], seed=4)
    x = data(model, n=32, seed=3)
    h0 = model.patchify(x)
    for method in ["brute_force", "ranked", "linearized"]:
        path = path_search.random_path(model, 32, tf.constant([1, 2]))
        prev = path_search.objective(model, h0, path).numpy()
        for p in range(3):
            path = path_search.coordinate_ascent_pass(
                model, h0, path, method, seed=tf.constant([p, 9])
            )
            cur = path_search.objective(model, h0, path).numpy()
            assert np.all(cur >= prev - 1e-9), (method, p, (cur - prev).min())
            prev = cur


def test_gram_search_equals_brute_force_coordinate_ascent():
    # per-location layer with only fixed layers above: the Gram scheme is exact
    model = make(
        [
            HC,
            {"type": "block_diagonal", "alternatives": 3, "selection": "location"},
            HC,
            {"type": "diagonal"},
        ],
        seed=5,
    )
    x = data(model, n=24, seed=5)
    h0 = model.patchify(x)
    start = path_search.random_path(model, 24, tf.constant([3, 3]))
    gram = path_search.coordinate_ascent_pass(model, h0, start, "gram")
    brute = path_search.coordinate_ascent_pass(model, h0, start, "brute_force")
    for a, b in zip(gram, brute):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="single alternative"):
        # (two layers with choices above the first: no exact Gram)
        bad = make([LOCAL_TOP_MODELS["stacked"][k] for k in (1, 2, 2)])
        path_search.coordinate_ascent_pass(
            bad,
            bad.patchify(data(bad)),
            path_search.random_path(bad, 6, tf.constant([1, 1])),
            "gram",
        )


LOCAL_TOP_MODELS = {
    # Table 3's "intermediate HC" shape: the middle per-location layer under half-convolutions
    # and one per-location top layer
    "hc_between": [
        HC,
        {"type": "block_diagonal", "alternatives": 3, "selection": "location"},
        HC,
        HC,
        {"type": "block_diagonal", "alternatives": 2, "selection": "location"},
    ],
    # "bottom HC only": per-location layers stacked directly, a fixed local layer on top
    "stacked": [
        HC,
        {"type": "block_diagonal", "alternatives": 2, "selection": "location"},
        {"type": "block_diagonal", "alternatives": 3, "selection": "location"},
        {"type": "diagonal"},
    ],
}


@pytest.mark.parametrize("name", sorted(LOCAL_TOP_MODELS))
def test_gram_search_with_one_local_choice_layer_above_equals_brute_force(name):
    # one per-location layer above: the per-datapoint Gram comes from per-alternative tables,
    # and the scheme is exact coordinate ascent (every layer of the pass, not just the top one)
    model = make(LOCAL_TOP_MODELS[name], seed=7)
    x = data(model, n=24, seed=2)
    h0 = model.patchify(x)
    start = path_search.random_path(model, 24, tf.constant([5, 3]))
    assert path_search._local_top_layer(model, 1) is not None
    gram = path_search.coordinate_ascent_pass(model, h0, start, "gram")
    auto = path_search.coordinate_ascent_pass(model, h0, start, "auto")
    brute = path_search.coordinate_ascent_pass(model, h0, start, "brute_force")
    changed = 0
    for a, b, c, s0 in zip(gram, brute, auto, start):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(c, b)
        changed += int(np.sum(np.asarray(a) != np.asarray(s0)))
    assert changed > 0  # the pass did move choices, so the equality says something
    # two choice layers above: no exact tables; 'auto' ranks, 'gram' refuses
    deep = make(LOCAL_TOP_MODELS["stacked"][:3] + LOCAL_TOP_MODELS["stacked"][2:3], seed=1)
    assert path_search._local_top_layer(deep, 1) is None
    with pytest.raises(ValueError, match="exactly one to have a choice"):
        path_search.coordinate_ascent_pass(
            deep,
            deep.patchify(data(deep, n=4)),
            path_search.random_path(deep, 4, tf.constant([1, 1])),
            "gram",
        )


def test_local_gram_step_under_xla_equals_eager():
    # under XLA every row takes the update of `w` (no compaction): same choices
    model = make(LOCAL_TOP_MODELS["hc_between"], seed=3)
    h0 = model.patchify(data(model, n=16, seed=6))
    start = path_search.random_path(model, 16, tf.constant([2, 8]))

    def search(h0):
        return path_search.coordinate_ascent_pass(model, h0, start, "gram")

    eager = search(h0)
    xla = tf.function(search, jit_compile=True)(h0)
    assert any(np.any(np.asarray(a) != np.asarray(s0)) for a, s0 in zip(eager, start))
    for a, b in zip(xla, eager):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("method", ["ranked", "linearized"])
def test_approximate_location_search_close_to_brute_force(method):
    model = make(SMALL_CONFIGS["mixed"], seed=6)
    x = data(model, n=64, seed=8)
    _, approx = model.best_path(x, restarts=2, seed=tf.constant([1, 1]), location_method=method)
    _, brute = model.best_path(
        x, restarts=2, seed=tf.constant([1, 1]), location_method="brute_force"
    )
    best, _ = brute_force_best(model, x)
    gap = (best - approx.numpy()).mean()
    gap_brute = (best - brute.numpy()).mean()
    # at most a little worse than exact coordinate ascent on average (nats per image)
    assert gap <= gap_brute + 1.0, (gap, gap_brute)


def test_ranked_search_with_every_location_matches_brute_force_quality():
    # with top = L the ranked scheme is exact coordinate ascent in a data-dependent order
    model = make(SMALL_CONFIGS["mixed"], seed=2)
    x = data(model, n=32, seed=4)
    h0 = model.patchify(x)
    start = path_search.random_path(model, 32, tf.constant([7, 7]))
    ranked = path_search.objective(
        model,
        h0,
        path_search.coordinate_ascent_pass(model, h0, start, "ranked", location_options={"top": 4}),
    )
    brute = path_search.objective(
        model, h0, path_search.coordinate_ascent_pass(model, h0, start, "brute_force")
    )
    assert abs(float(tf.reduce_mean(ranked - brute))) < 0.05 * float(
        tf.reduce_mean(tf.abs(brute - path_search.objective(model, h0, start)))
    )


def make_gated(layers, prior, seed=0):
    """A model as tests/test_path_priors.py builds gated ones (no exact_limit, own seed)."""
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


def test_gating_search_never_lowers_objective_and_bounds_hold():
    model = make_gated(LAYERS, {"kind": "gating", "hidden": 8}, seed=1)
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
    top_only = make_gated(
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


def brute_force_best(model, x):
    paths = model.enumerate_paths()
    num = paths[0].shape[0]
    n = x.shape[0]
    xs = tf.repeat(x, num, axis=0)
    ps = tuple(tf.tile(z, [n] + [1] * (z.shape.rank - 1)) for z in paths)
    joint = tf.reshape(model.joint_log_prob(xs, ps), [n, num]).numpy()
    return joint.max(axis=1), joint.argmax(axis=1)
