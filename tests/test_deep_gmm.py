"""DeepGMM: exact densities against dense TFP mixtures, bounds, E-step, sampling, gradients."""

import itertools
import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from small_models import HC, IMAGE, SMALL_CONFIGS, data, make, perturb  # noqa: F401

import tfdgmm

tfd = tfp.distributions


def mvn_tril_mixture(model):
    """The same mixture written by hand with MultivariateNormalTriL components."""
    paths = model.enumerate_paths()
    beta, omega = model.component_params(paths)
    cov = tf.matmul(omega, omega, transpose_b=True)
    return tfd.MixtureSameFamily(
        tfd.Categorical(logits=model.path_prior.log_prob(paths)),
        tfd.MultivariateNormalTriL(loc=beta, scale_tril=tf.linalg.cholesky(cov)),
    )


@pytest.mark.parametrize("name", sorted(SMALL_CONFIGS))
@pytest.mark.parametrize("prior", ["uniform", "factorized"])
def test_exact_log_prob_matches_dense_mixtures(name, prior):
    model = make(SMALL_CONFIGS[name], prior=prior)
    if prior == "factorized":
        for v in model.path_prior.trainable_variables:
            v.assign(tf.random.normal(v.shape, dtype=v.dtype))
    x = data(model)
    lp = model.log_prob(x).numpy()
    np.testing.assert_allclose(lp, model.as_mixture().log_prob(x).numpy(), rtol=1e-9, atol=1e-7)
    flat = tf.reshape(x, [x.shape[0], -1])
    # the Cholesky of Omega Omega^T squares the condition number: float64 agrees to ~1e-7
    np.testing.assert_allclose(
        lp, mvn_tril_mixture(model).log_prob(flat).numpy(), rtol=1e-6, atol=1e-6
    )


def test_single_path_model_is_the_closed_form_gaussian():
    model = make([HC, {"type": "block_diagonal"}, HC, {"type": "diagonal"}, {"type": "dense"}])
    assert model.num_paths == 1
    path = tuple(tf.zeros([1], tf.int32) for _ in model.layers)
    beta, omega = (t.numpy()[0] for t in model.component_params(path))
    x = data(model, n=5).numpy().reshape(5, -1)
    # N(x; beta, Omega Omega^T) written with Omega (Sigma's condition number is cond(Omega)^2)
    white = np.linalg.solve(omega, (x - beta).T).T
    _, logdet_omega = np.linalg.slogdet(omega)
    d = x.shape[1]
    expected = -0.5 * np.sum(white**2, axis=1) - logdet_omega - 0.5 * d * math.log(2 * math.pi)
    # cond(Omega) ~ 4e7 here, so float64 solves agree to ~cond * eps ~ 1e-9
    np.testing.assert_allclose(model.log_prob(x.reshape(5, *IMAGE)), expected, rtol=1e-8)
    # all three evaluations of a single-path model agree
    np.testing.assert_allclose(
        model.log_prob_lower_bound(x.reshape(5, *IMAGE)), expected, rtol=1e-8
    )
    np.testing.assert_allclose(
        model.log_prob_upper_bound(x.reshape(5, *IMAGE)), expected, rtol=1e-8
    )


def brute_force_best(model, x):
    paths = model.enumerate_paths()
    num = paths[0].shape[0]
    n = x.shape[0]
    xs = tf.repeat(x, num, axis=0)
    ps = tuple(tf.tile(z, [n] + [1] * (z.shape.rank - 1)) for z in paths)
    joint = tf.reshape(model.joint_log_prob(xs, ps), [n, num]).numpy()
    return joint.max(axis=1), joint.argmax(axis=1)


@pytest.mark.parametrize("name", sorted(SMALL_CONFIGS))
def test_bounds_sandwich_exact_and_search_finds_best_path(name):
    model = make(SMALL_CONFIGS[name], seed=3)
    x = data(model, n=16, seed=11)
    exact = model.log_prob(x).numpy()
    path, score = model.best_path(x, restarts=2, seed=tf.constant([5, 6]))
    lower = model.log_prob_lower_bound(x, path=path).numpy()
    upper = model.log_prob_upper_bound(x, path=path).numpy()
    np.testing.assert_allclose(score, lower, rtol=1e-10)
    assert np.all(lower <= exact + 1e-9)
    assert np.all(exact <= upper + 1e-9)
    np.testing.assert_allclose(upper - lower, model.log_num_paths, rtol=1e-10)
    best, _ = brute_force_best(model, x)
    assert np.all(score <= best + 1e-8)
    found = np.isclose(score, best, rtol=0, atol=1e-6)
    assert found.mean() >= 0.75, (found.mean(), best - score)


def test_log_prob_refuses_too_many_paths_and_points_to_bounds():
    cfg = {
        "image_shape": [32, 32, 3],
        "patch_size": 4,
        "layers": [{"type": "half_convolution", "kernel_size": 5, "repeat": 3}]
        + [
            {"type": "block_diagonal", "alternatives": 4, "selection": "location"},
            {"type": "half_convolution", "kernel_size": 5, "repeat": 3},
        ]
        * 3,
    }
    model = tfdgmm.DeepGMM.from_config(cfg)
    assert model.num_paths == 4 ** (64 * 3)
    np.testing.assert_allclose(model.log_num_paths, 64 * 3 * math.log(4))
    assert len(model.layers) == 15  # 3 HC + 3 x (BD + 3 HC)
    x = tf.zeros([2, 32, 32, 3])
    with pytest.raises(ValueError, match="log_prob_lower_bound"):
        model.log_prob(x)
    lower = model.log_prob_lower_bound(x, restarts=1, restart_passes=1, seed=tf.constant([1, 2]))
    assert lower.shape == [2] and np.all(np.isfinite(lower))


def test_bad_inputs_have_clear_errors():
    model = make(SMALL_CONFIGS["shared_bd"], validate_args=True)
    with pytest.raises(ValueError, match="expected images"):
        model.log_prob(tf.zeros([2, 4, 5, 3], tf.float64))
    with pytest.raises(ValueError, match="not divisible by the patch size"):
        tfdgmm.DeepGMM.from_config(
            {"image_shape": [5, 4, 3], "patch_size": 2, "layers": [{"type": "diagonal"}]}
        )
    with pytest.raises(tf.errors.InvalidArgumentError, match="NaN"):
        model.log_prob(tf.fill([1, *IMAGE], tf.constant(np.nan, tf.float64)))
    with pytest.raises(ValueError, match="one choice tensor per layer"):
        model.joint_log_prob(tf.zeros([1, *IMAGE], tf.float64), (tf.zeros([1], tf.int32),))
    with pytest.raises(ValueError, match="unknown type"):
        tfdgmm.DeepGMM.from_config(
            {"image_shape": IMAGE, "patch_size": 2, "layers": [{"type": "conv"}]}
        )


def test_sampling_is_reproducible_and_matches_moments():
    model = make([{"type": "block_diagonal", "alternatives": 1}])  # one Gaussian
    a = model.sample(3, seed=tf.constant([4, 2]))
    b = model.sample(3, seed=tf.constant([4, 2]))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, model.sample(3, seed=tf.constant([4, 3])))
    n = 20000
    x = model.sample(n, seed=tf.constant([1, 1])).numpy().reshape(n, -1)
    beta, omega = (
        t.numpy()[0]
        for t in model.component_params(tuple(tf.zeros([1], tf.int32) for _ in model.layers))
    )
    cov = omega @ omega.T
    sd = np.sqrt(np.diag(cov))
    # mean: standard error sd/sqrt(n); 5 sigma
    assert np.all(np.abs(x.mean(0) - beta) < 5 * sd / math.sqrt(n))
    # covariance: var of a sample covariance entry ~ (s_ii s_jj + s_ij^2)/n; 5 sigma
    emp = np.cov(x, rowvar=False)
    tol = 5 * np.sqrt((np.outer(sd**2, sd**2) + cov**2) / n)
    assert np.all(np.abs(emp - cov) < tol)


def test_mixture_samples_follow_path_prior():
    model = make(SMALL_CONFIGS["shared_bd"], prior="factorized")
    logits = model.path_prior.logits[1]
    logits.assign(tf.constant([[0.0, 0.0, 2.0]], tf.float64)[0])
    _, path = model.sample_with_path(20000, seed=tf.constant([3, 3]))
    freq = np.bincount(path[1].numpy(), minlength=3) / 20000
    p = tf.nn.softmax(logits).numpy()
    assert np.all(np.abs(freq - p) < 5 * np.sqrt(p * (1 - p) / 20000))


def test_gradients_reach_chosen_parameters_only():
    model = make(
        [
            {"type": "block_diagonal", "alternatives": 3},
            {"type": "block_diagonal", "alternatives": 2, "selection": "location"},
            {"type": "half_convolution", "kernel_size": 3, "alternatives": 2},
        ],
        prior="factorized",
    )
    x = data(model, n=4)
    path = (tf.constant([0, 0, 2, 0]), tf.zeros([4, 2, 2], tf.int32), tf.constant([1, 1, 1, 1]))
    with tf.GradientTape() as tape:
        loss = -tf.reduce_mean(model.joint_log_prob(x, path))
    used = [{0, 2}, {0}, {1}]  # alternatives each layer's path uses
    layer_vars = [layer.trainable_variables for layer in model.layers]
    prior_vars = model.path_prior.trainable_variables
    grads = tape.gradient(loss, [layer_vars, prior_vars])
    for i, (variables, gs) in enumerate(zip(layer_vars, grads[0])):
        assert variables, f"layer {i} has no trainable variables"
        for v, g in zip(variables, gs):
            g = np.zeros(v.shape) if g is None else tf.convert_to_tensor(g).numpy()
            per_alt = np.abs(g).reshape(g.shape[0], -1).sum(1)
            for k, s in enumerate(per_alt):
                assert (s > 0) == (k in used[i]), (i, v.name, k, s)
    # the factorized prior's logits of the layers with a choice get gradients
    assert all(np.abs(g).sum() > 0 for g in grads[1])


def test_tf_function_and_checkpoint_round_trip(tmp_path):
    model = make(SMALL_CONFIGS["unshared_bd"])
    x = data(model, n=5)

    @tf.function(input_signature=[tf.TensorSpec([None, *IMAGE], tf.float64)])
    def lower(x):
        return model.best_path(x, restarts=1, seed=tf.constant([1, 2]))[1]

    expected = model.log_prob(x).numpy()
    got = lower(x).numpy()
    assert got.shape == (5,) and np.all(got <= expected + 1e-9)
    ckpt = tf.train.Checkpoint(model=model)
    path = ckpt.save(str(tmp_path / "ckpt"))
    clone = make(SMALL_CONFIGS["unshared_bd"], seed=99)
    assert not np.allclose(clone.log_prob(x), expected)
    tf.train.Checkpoint(model=clone).restore(path).assert_existing_objects_matched()
    np.testing.assert_allclose(clone.log_prob(x), expected, rtol=1e-12)


def test_tfp_citizen_properties():
    model = make(SMALL_CONFIGS["shared_bd"])
    assert model.event_shape == IMAGE
    assert model.batch_shape == []
    assert model.dtype == tf.float64
    assert len(model.trainable_variables) > 0
    assert model.num_paths == 6
    x = model.sample([2, 3], seed=tf.constant([1, 1]))
    assert x.shape == [2, 3, *IMAGE]
    assert model.log_prob(x).shape == [2, 3]
    assert list(itertools.chain(*[p.shape for p in model.enumerate_paths()])) == [6, 6, 6, 6]


# ---------------------------------------------------------------- issue 16: TFP user checks


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf_function"])
def test_validate_args_accepts_valid_paths_and_rejects_out_of_range(graph):
    """`validate_args=True` used to rebind a path to the assert's return value (None / an
    Operation), so every method taking a path failed and the range check never ran."""
    plain = make(SMALL_CONFIGS["mixed"])
    model = make(SMALL_CONFIGS["mixed"], validate_args=True)
    x = data(model, n=3)
    path, _ = plain.best_path(x, seed=[1, 2])

    def run(fn, *args):
        return (tf.function(fn, autograph=False) if graph else fn)(*args)

    expect = plain.joint_log_prob(x, path)
    np.testing.assert_allclose(run(model.joint_log_prob, x, path), expect, rtol=1e-10)
    np.testing.assert_allclose(run(model.log_prob_lower_bound, x, path), expect, rtol=1e-10)
    np.testing.assert_allclose(
        run(model.component_log_prob, x, path), plain.component_log_prob(x, path), rtol=1e-10
    )
    np.testing.assert_allclose(run(model.latent, x, path), plain.latent(x, path), rtol=1e-10)
    p2, s2 = run(lambda x, *p: model.best_path(x, init=p, seed=[3, 4]), x, *path)
    assert s2.shape == [3] and np.all(s2.numpy() >= expect.numpy() - 1e-8)

    bad = list(path)
    bad[0] = tf.fill(tf.shape(path[0]), 2)  # layer 0 has 2 alternatives
    if graph:  # a run-time value: caught by the assertion in the graph
        fn = tf.function(
            lambda x, z: model.joint_log_prob(x, (z,) + tuple(path[1:])), autograph=False
        )
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"path entry 0.*\[0, 2\)"):
            fn(x, bad[0])
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"path entry 0.*negative"):
            fn(x, -tf.ones_like(path[0]))
    else:
        with pytest.raises(
            (ValueError, tf.errors.InvalidArgumentError), match=r"path entry 0.*\[0, 2\)"
        ):
            model.joint_log_prob(x, tuple(bad))
        with pytest.raises(
            (ValueError, tf.errors.InvalidArgumentError), match=r"path entry 0.*\[0, 2\)"
        ):
            model.latent(x, tuple(bad))


def test_bad_seed_says_what_a_seed_is():
    model = make(SMALL_CONFIGS["shared_bd"])
    for seed in ([1, 2, 3], [1.5, 2.0], "abc"):
        with pytest.raises(ValueError, match=r"seed must be an int or an int32 \[2\] tensor"):
            model.sample(2, seed=seed)
    with pytest.raises(ValueError, match=r"seed must be an int or an int32 \[2\] tensor"):
        model.best_path(data(model, n=2), seed=[1, 2, 3])
    assert model.sample(2, seed=5).shape == [2, *IMAGE]
    assert model.sample(2, seed=tf.constant([1, 2])).shape == [2, *IMAGE]


def test_default_event_space_bijector_is_identity():
    model = make(SMALL_CONFIGS["shared_bd"])
    b = model.experimental_default_event_space_bijector()
    assert isinstance(b, tfp.bijectors.Identity)
    x = data(model, n=2)
    np.testing.assert_array_equal(b.forward(x), x)


@pytest.mark.parametrize("name", sorted(SMALL_CONFIGS))
@pytest.mark.parametrize("prior", ["uniform", "factorized"])
def test_closed_form_mean_and_covariance_match_the_mixture(name, prior):
    model = make(SMALL_CONFIGS[name], prior)
    if prior == "factorized":
        rng = np.random.default_rng(3)
        for v in model.path_prior.logits:
            v.assign(rng.standard_normal(v.shape))
    paths = model.enumerate_paths()
    beta, omega = (t.numpy() for t in model.component_params(paths))
    pi = tf.nn.softmax(model.path_prior.log_prob(paths)).numpy()
    mu = pi @ beta
    second = np.einsum(
        "p,pij->ij", pi, omega @ omega.transpose(0, 2, 1) + beta[:, :, None] * beta[:, None, :]
    )
    mean = model.mean()
    assert mean.shape == IMAGE
    np.testing.assert_allclose(mean.numpy().reshape(-1), mu, atol=1e-10)
    np.testing.assert_allclose(model.as_mixture().mean().numpy().reshape(-1), mu, atol=1e-10)
    cov = model.covariance().numpy()
    ref = second - np.outer(mu, mu)
    np.testing.assert_allclose(cov, ref, atol=1e-9 * np.abs(ref).max())
    np.testing.assert_allclose(model.stddev().numpy().reshape(-1), np.sqrt(np.diag(ref)), rtol=1e-8)


def test_mean_refuses_priors_without_a_closed_form():
    model = make(SMALL_CONFIGS["shared_bd"], "table")
    with pytest.raises(NotImplementedError, match="uniform and factorized"):
        model.mean()


@pytest.mark.parametrize("dtype", [np.uint8, np.int32])
def test_integer_images_are_refused_with_the_expected_range(dtype):
    model = make([{"type": "block_diagonal", "alternatives": 2}])
    pixels = np.full([2] + IMAGE, 128, dtype)
    calls = {
        "log_prob": lambda x: model.log_prob(x),
        "prob": lambda x: model.prob(x),
        "best_path": lambda x: model.best_path(x),
        "log_prob_lower_bound": lambda x: model.log_prob_lower_bound(x),
    }
    for name, call in calls.items():
        for x in (pixels, tf.constant(pixels)):
            with pytest.raises(
                ValueError,
                match=r"expected dequantised float images on "
                r"\[-1, 1\]",
            ) as err:
                call(x)
            assert "\n" not in str(err.value), name
    # floats on the data scale still work
    assert np.isfinite(model.log_prob(pixels.astype(np.float64) / 128 - 1).numpy()).all()


def test_sample_refuses_a_negative_count():
    model = make([{"type": "block_diagonal", "alternatives": 2}])
    assert model.sample(0, seed=[1, 2]).shape[0] == 0
    with pytest.raises(ValueError, match="number of samples must be >= 0; got -1"):
        model.sample(-1, seed=[1, 2])
