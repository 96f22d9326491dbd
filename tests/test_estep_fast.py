"""Issue 15: choice ops without `tf.dynamic_partition` (XLA), blocks composed once per search,
and the thresholded ranked search (monotone, exact where it claims to be)."""

import numpy as np
import pytest
import tensorflow as tf

import tfdgmm
from tfdgmm import path_search
from tfdgmm.bijectors import BlockDiagonal, Dense, HalfConvolution, choice_ops, precomposed

EVENT = [2, 2, 12]
HC = {"type": "half_convolution", "kernel_size": 3}
MODELS = {
    # shared blocks chosen per sample, then per-location choices with a choice layer above
    "mixed": [
        {"type": "block_diagonal", "alternatives": 2, "selection": "sample"},
        HC,
        {"type": "block_diagonal", "alternatives": 2, "selection": "location"},
        HC,
        {"type": "diagonal", "alternatives": 2, "selection": "location"},
    ],
    "unshared": [
        HC,
        {"type": "block_diagonal", "alternatives": 3, "selection": "location"},
        HC,
        {"type": "block_diagonal", "alternatives": 2, "selection": "location"},
        HC,
    ],
}
BANKS = {
    "bd-perloc-sample": lambda: BlockDiagonal.new(
        12, 3, (2, 2), "sample", seed=2, dtype=tf.float64
    ),
    "bd-shared-sample": lambda: BlockDiagonal.new(12, 3, None, "sample", seed=1, dtype=tf.float64),
    "bd-shared-location": lambda: BlockDiagonal.new(
        12, 3, None, "location", seed=3, dtype=tf.float64
    ),
    "bd-perloc-location": lambda: BlockDiagonal.new(
        12, 2, (2, 2), "location", seed=4, dtype=tf.float64
    ),
    "hc-sample": lambda: HalfConvolution.new(
        12, 3, 2, "second", "sample", seed=8, init_stddev=0.3, dtype=tf.float64
    ),
    "dense": lambda: Dense.new(EVENT, 2, seed=11, dtype=tf.float64),
}


def _perturb(variables, seed, scale):
    rng = np.random.default_rng(seed)
    for v in variables:
        v.assign_add(scale * rng.standard_normal(v.shape).astype(v.dtype.as_numpy_dtype))


def bank(name):
    b = BANKS[name]()
    _perturb(b.trainable_variables, 0, 0.05 if name == "dense" else 0.3)
    return b


def bank_inputs(b, n=6):
    rng = np.random.default_rng(0)
    shape = (n,) + ((2, 2) if b.selection == "location" else ())
    c = np.arange(int(np.prod(shape))) % b.num_alternatives  # every alternative is used
    rng.shuffle(c)
    x = tf.constant(rng.standard_normal((n, *EVENT)))
    return x, tf.constant(c.reshape(shape), tf.int32)


def make(name, seed=0):
    model = tfdgmm.DeepGMM.from_config(
        {"image_shape": [4, 4, 3], "patch_size": 2, "layers": MODELS[name], "seed": seed},
        dtype=tf.float64,
    )
    _perturb(model.trainable_variables, seed + 100, 0.3)
    return model


def data(model, n, seed=7):
    return model.sample(n, seed=tf.constant([seed, 1]))


def _apply_all(b, x, c):
    return (
        b.forward(x, choice=c),
        b.inverse(x, choice=c),
        b.forward_log_det_jacobian(x, event_ndims=3, choice=c),
        b.inverse_log_det_jacobian(x, event_ndims=3, choice=c),
    )


@pytest.mark.parametrize("name", sorted(BANKS))
def test_select_choice_ops_equal_partition(name):
    b = bank(name)
    x, c = bank_inputs(b)
    with choice_ops("partition"):
        ref = _apply_all(b, x, c)
    with choice_ops("select"):
        got = _apply_all(b, x, c)
    for r, g in zip(ref, got):
        np.testing.assert_allclose(g, r, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["bd-perloc-sample", "bd-shared-location", "hc-sample", "dense"])
def test_choice_ops_compile_with_xla_and_equal_eager(name):
    b = bank(name)
    x, c = bank_inputs(b)
    ref = _apply_all(b, x, c)
    got = tf.function(lambda x, c: _apply_all(b, x, c), jit_compile=True)(x, c)
    for r, g in zip(ref, got):
        np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-10)


def test_choice_ops_refuse_unknown_modes():
    with pytest.raises(ValueError, match="choice ops must be one of"):
        with choice_ops("sorted"):
            pass


def test_precomposed_blocks_equal_per_call_composition():
    model = make("unshared", seed=1)
    x = data(model, 8)
    path = path_search.random_path(model, 8, tf.constant([1, 2]))
    ref = model.joint_log_prob(x, path)
    with precomposed(model.layers):
        got = model.joint_log_prob(x, path)
        # inside a traced function the eager values are not used: composed again there
        traced = tf.function(lambda x: model.joint_log_prob(x, path))(x)
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    np.testing.assert_allclose(traced, ref, rtol=1e-12)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_sample_best_path_and_bounds_compile_with_xla_and_equal_eager(name):
    # Seeds known when the function is traced (XLA's Philox stream for a seed fed at run time
    # differs from TensorFlow's kernels: other draws from the same distribution).
    model = make(name, seed=3)
    x_ref, p_ref = model.sample_with_path(5, seed=tf.constant([3, 4]))
    x_jit, p_jit = tf.function(
        lambda: model.sample_with_path(5, seed=tf.constant([3, 4])), jit_compile=True
    )()
    np.testing.assert_allclose(x_jit, x_ref, rtol=1e-10, atol=1e-10)
    for a, b in zip(p_jit, p_ref):
        np.testing.assert_array_equal(a, b)

    x = data(model, 8)

    def search(x):
        path, score = model.best_path(x, restarts=1, seed=tf.constant([5, 6]))
        warm, warm_score = model.best_path(x, init=path, restarts=0, seed=tf.constant([7, 8]))
        upper = model.log_prob_upper_bound(x, path=warm)
        # adaptive extra passes from a random start (under XLA: every row, masked)
        start = path_search.random_path(model, 8, tf.constant([2, 9]))
        extra, extra_score = model.best_path(
            x, init=start, restarts=0, seed=tf.constant([1, 8]), extra_passes=2
        )
        return path, score, warm, warm_score, upper, extra, extra_score

    ref = search(x)
    got = tf.function(search, jit_compile=True)(x)
    for r, g in zip(ref, got):
        if isinstance(r, tuple):
            for a, b in zip(g, r):
                np.testing.assert_array_equal(a, b)
        else:
            np.testing.assert_allclose(g, r, rtol=1e-10)


def _pass(model, h0, path, **options):
    return path_search.coordinate_ascent_pass(
        model, h0, path, "ranked", seed=tf.constant([1, 2]), location_options=options
    )


def test_threshold_without_a_threshold_is_the_ranked_pass():
    # threshold -inf visits every datapoint's `top` best-ranked locations: the ranked pass
    model = make("mixed", seed=2)
    x = data(model, 16, seed=4)
    h0 = model._patchify.forward(x)
    start = path_search.random_path(model, 16, tf.constant([7, 7]))
    ref = _pass(model, h0, start, top=3)
    for compact in (True, False):
        got = _pass(model, h0, start, top=3, threshold=-np.inf, compact=compact)
        for a, b in zip(got, ref):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("compact", [True, False])
def test_thresholded_passes_never_lower_the_objective(compact):
    model = make("mixed", seed=4)
    x = data(model, 24, seed=3)
    h0 = model._patchify.forward(x)
    path = path_search.random_path(model, 24, tf.constant([1, 2]))
    prev = path_search.objective(model, h0, path).numpy()
    for _ in range(3):
        path = _pass(model, h0, path, threshold=0.0, compact=compact)
        cur = path_search.objective(model, h0, path).numpy()
        assert np.all(cur >= prev - 1e-9), (cur - prev).min()
        prev = cur


def test_fewer_alternatives_per_visit():
    # layer 1 of "unshared" is a ranked layer with K = 3 (a choice layer above it)
    model = make("unshared", seed=7)
    x = data(model, 24, seed=5)
    h0 = model._patchify.forward(x)
    start = path_search.random_path(model, 24, tf.constant([5, 1]))
    # all K - 1 others, taken in predicted order: the same steps as the default pass
    ref = _pass(model, h0, start, threshold=0.0)
    for compact in (True, False):
        got = _pass(model, h0, start, threshold=0.0, alternatives=2, compact=compact)
        for a, b in zip(got, ref):
            np.testing.assert_array_equal(a, b)
    # one alternative per visit: never lowers the objective, and it does move
    path, prev = start, path_search.objective(model, h0, start).numpy()
    first = prev
    for _ in range(3):
        path = _pass(model, h0, path, threshold=0.0, alternatives=1)
        cur = path_search.objective(model, h0, path).numpy()
        assert np.all(cur >= prev - 1e-9), (cur - prev).min()
        prev = cur
    assert prev.mean() > first.mean() + 1.0
    with pytest.raises(ValueError, match="alternatives must be at least 1"):
        _pass(model, h0, start, threshold=0.0, alternatives=0)


@pytest.mark.parametrize("options", [{"bound": True}, {"bound": True, "patience": 2}])
def test_fast_search_never_returns_worse_than_its_warm_start(options):
    model = make("unshared", seed=5)
    x = data(model, 16, seed=9)
    h0 = model._patchify.forward(x)
    start = path_search.random_path(model, 16, tf.constant([4, 4]))
    warm, _ = model.best_path(x, restarts=1, seed=tf.constant([1, 2]))  # a searched path
    for init in (start, warm):
        _, score = model.best_path(
            x, init=init, restarts=0, seed=tf.constant([3, 3]), location_options=options
        )
        before = path_search.objective(model, h0, init).numpy()
        assert np.all(score.numpy() >= before - 1e-9), (score.numpy() - before).min()


def test_restarts_only_for_unsearched_datapoints():
    from tfdgmm.training.search import DatasetSearch

    model = make("unshared", seed=6)
    x = data(model, 12, seed=2)
    kw = {"batch_size": 6, "restarts": 1, "location_options": {"bound": True}}
    fast = DatasetSearch(model, x, restart_when="unsearched", name="fast", **kw)
    always = DatasetSearch(model, x, restart_when="always", name="always", **kw)
    warm_only = DatasetSearch(model, x, **{**kw, "restarts": 0}, name="warm")
    with pytest.raises(ValueError, match="restart_when"):
        DatasetSearch(model, x, restart_when="sometimes")
    # first E-step (never searched): the restarts run, as with 'always'
    fast.run(step=0)
    always.run(step=0)
    np.testing.assert_array_equal(fast.lower.numpy(), always.lower.numpy())
    # second E-step from the stored paths: no restart, as with restarts=0
    for s in (fast, warm_only):
        for v, p in zip(s.paths, always.paths):
            v.assign(p)
        s.lower.assign(always.lower)
        s.reset()
        s.run(step=1)
    np.testing.assert_array_equal(fast.lower.numpy(), warm_only.lower.numpy())
    for a, b in zip(fast.paths, warm_only.paths):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_extra_passes_search_on_where_the_last_pass_still_gained():
    model = make("unshared", seed=7)
    x = data(model, 24, seed=5)
    h0 = model._patchify.forward(x)
    start = path_search.random_path(model, 24, tf.constant([6, 1]))
    kw = {"init": start, "restarts": 0, "seed": tf.constant([2, 2])}
    one, one_score = model.best_path(x, **kw)
    # a gain threshold no pass reaches: the extra passes change nothing
    same, same_score = model.best_path(x, extra_passes=2, extra_pass_gain=np.inf, **kw)
    for a, b in zip(same, one):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(same_score, one_score, rtol=1e-12)
    # no threshold: every datapoint gets every pass, i.e. init_passes = 3 (same seeds)
    every, every_score = model.best_path(x, extra_passes=2, extra_pass_gain=-np.inf, **kw)
    three, three_score = path_search.best_path(
        model, x, init=start, restarts=0, init_passes=3, seed=tf.constant([2, 2])
    )
    for a, b in zip(every, three):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(every_score, three_score, rtol=1e-12)
    # in between: never below one pass, above it where a datapoint was searched again, and
    # the reported score is the path's objective
    mid, mid_score = model.best_path(x, extra_passes=2, extra_pass_gain=1.0, **kw)
    assert np.all(mid_score.numpy() >= one_score.numpy() - 1e-9)
    assert np.any(mid_score.numpy() > one_score.numpy() + 1e-6)
    np.testing.assert_allclose(mid_score, path_search.objective(model, h0, mid), rtol=1e-12)
    from tfdgmm.training import EMConfig

    with pytest.raises(ValueError, match="extra_passes"):
        EMConfig(estep_extra_passes=-1)


def test_a_search_stores_the_upper_bound_of_the_paths_it_found():
    # uniform prior: the upper bound is the found joint + log(num paths), not recomputed
    from tfdgmm.training.search import DatasetSearch

    model = make("unshared", seed=8)
    x = data(model, 12, seed=4)
    s = DatasetSearch(model, x, batch_size=6, extra_passes=1)
    s.run(step=0)
    path = s.path()
    np.testing.assert_allclose(
        s.upper.numpy(), model.log_prob_upper_bound(x, path=path).numpy(), rtol=1e-10
    )
    np.testing.assert_allclose(
        s.lower.numpy(), model.log_prob_lower_bound(x, path=path).numpy(), rtol=1e-10
    )
