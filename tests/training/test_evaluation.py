"""tfdgmm.training.evaluation: a thorough search (extra starts, warm rounds) never lowers the
bound and reaches the exact maximum from the best path; donors are the nearest images."""

import numpy as np
import pytest
import tensorflow as tf
from small_models import SMALL_CONFIGS, data, make

from tfdgmm.training import donor_starts, evaluate_bounds
from tfdgmm.training.evaluation import _pooled


def _exact_best(model, x):
    """Per image, the best joint over all paths and the path reaching it."""
    paths = model.enumerate_paths()
    num, n = int(paths[0].shape[0]), int(x.shape[0])
    xs = tf.repeat(x, num, axis=0)
    ps = tuple(tf.tile(z, [n] + [1] * (z.shape.rank - 1)) for z in paths)
    joint = tf.reshape(model.joint_log_prob(xs, ps), [n, num]).numpy()
    best = joint.argmax(axis=1)
    return joint.max(axis=1), tuple(tf.gather(z, best) for z in paths)


@pytest.fixture(scope="module")
def problem():
    # two per-location choice layers with a half-convolution between them: 2^4 * 2^4 paths,
    # and the linearized steps of a single start miss the best path of some images
    model = make(SMALL_CONFIGS["mixed"], seed=1)
    x = data(model, n=40, seed=3)
    best, best_path = _exact_best(model, x)
    return model, x, best, best_path


SEARCH = dict(batch_size=40, restarts=0, location_method="linearized", seed=5)


def test_rounds_never_lower_the_bound_and_stay_below_the_best_path(problem):
    model, x, best, _ = problem
    fresh = evaluate_bounds(model, x, **SEARCH)
    more = evaluate_bounds(model, x, rounds=6, round_tol=0.0, extra_passes=1, **SEARCH)
    trace = more["search"]["trace"]
    assert trace[0] == pytest.approx(fresh["lower_bound_nats"], abs=1e-9)  # (same fresh search)
    assert np.all(np.diff(trace) >= -1e-9), trace
    assert len(trace) <= 1 + 6 and more["search"]["starts"] == 0
    assert more["lower_bound_nats"] >= fresh["lower_bound_nats"] - 1e-9
    assert more["lower_bound_nats"] <= best.mean() + 1e-9  # a lower bound of the best path
    assert "search" not in fresh


def test_a_start_at_the_best_paths_gives_the_exact_maximum(problem):
    model, x, best, best_path = problem
    fresh = evaluate_bounds(model, x, **SEARCH)
    assert fresh["lower_bound_nats"] < best.mean() - 1e-3  # (the test has something to find)
    other = tuple(tf.reverse(z, [0]) for z in best_path)  # a poor start, kept only where better
    out = evaluate_bounds(model, x, starts=[other, best_path], **SEARCH)
    assert out["lower_bound_nats"] == pytest.approx(best.mean(), abs=1e-8)
    assert out["search"]["starts"] == 2 and len(out["search"]["trace"]) == 3
    # donors: each image's nearest donor is itself, whose path is the best one
    (start,) = [donor_starts(x, x, best_path, k=1)]
    out = evaluate_bounds(model, x, starts=start, **SEARCH)
    assert out["lower_bound_nats"] == pytest.approx(best.mean(), abs=1e-8)


def test_donor_starts_are_the_paths_of_the_nearest_donors():
    rng = np.random.default_rng(0)
    donors = rng.standard_normal([50, 32, 32, 3]).astype(np.float32)
    paths = (
        tf.constant(rng.integers(0, 4, [50]), tf.int32),
        tf.constant(rng.integers(0, 4, [50, 8, 8]), tf.int32),
    )
    x = donors[[7, 3, 41]] + 0.01 * rng.standard_normal([3, 32, 32, 3]).astype(np.float32)
    first, second = donor_starts(x, donors, paths, k=2, chunk=2)
    for got, want in zip(first, paths):
        np.testing.assert_array_equal(got.numpy(), tf.gather(want, [7, 3, 41]).numpy())
    # the second nearest by the pooled distance, computed directly
    a = x.reshape(3, 8, 4, 8, 4, 3).mean(axis=(2, 4)).reshape(3, -1)
    b = donors.reshape(50, 8, 4, 8, 4, 3).mean(axis=(2, 4)).reshape(50, -1)
    np.testing.assert_allclose(_pooled(tf.constant(donors)).numpy(), b, rtol=1e-5, atol=1e-6)
    order = np.argsort(((a[:, None] - b[None]) ** 2).sum(-1), axis=1)
    np.testing.assert_array_equal(order[:, 0], [7, 3, 41])
    for got, want in zip(second, paths):
        np.testing.assert_array_equal(got.numpy(), tf.gather(want, order[:, 1]).numpy())


def test_donor_starts_name_bad_input():
    x = np.zeros([2, 32, 32, 3], np.float32)
    paths = (tf.zeros([5], tf.int32),)
    with pytest.raises(ValueError, match="same H, W, C"):
        donor_starts(x, np.zeros([5, 16, 16, 3], np.float32), paths)
    with pytest.raises(ValueError, match="5 donor images but paths for"):
        donor_starts(x, np.zeros([5, 32, 32, 3], np.float32), (tf.zeros([4], tf.int32),))
    with pytest.raises(ValueError, match="k must be in"):
        donor_starts(x, np.zeros([5, 32, 32, 3], np.float32), paths, k=6)
