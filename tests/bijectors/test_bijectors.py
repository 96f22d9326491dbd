"""One parametrized loop over every bijector and option (zuko style).

Event: a 4x4x3 image with 2x2 patches, i.e. the patch tensor [2, 2, 12].
Jacobian checks run in float64.
"""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tfdgmm import testing
from tfdgmm.bijectors import BlockDiagonal, Dense, Diagonal, HalfConvolution, Patchify

tfd = tfp.distributions

EVENT = [2, 2, 12]
N = 6

CASES = {
    "bd-shared-sample-k3": lambda dt: BlockDiagonal.new(12, 3, None, "sample", seed=1, dtype=dt),
    "bd-perloc-sample-k3": lambda dt: BlockDiagonal.new(12, 3, (2, 2), "sample", seed=2, dtype=dt),
    "bd-shared-location-k3": lambda dt: BlockDiagonal.new(
        12, 3, None, "location", seed=3, dtype=dt
    ),
    "bd-perloc-location-k2": lambda dt: BlockDiagonal.new(
        12, 2, (2, 2), "location", seed=4, dtype=dt
    ),
    "bd-perloc-k1": lambda dt: BlockDiagonal.new(12, 1, (2, 2), seed=5, dtype=dt),
    "diag-shared-sample-k2": lambda dt: Diagonal.new(
        12, 2, None, "sample", seed=6, init_stddev=0.3, dtype=dt
    ),
    "diag-perloc-location-k3": lambda dt: Diagonal.new(
        12, 3, (2, 2), "location", seed=7, init_stddev=0.3, dtype=dt
    ),
    "hc-second-sample-k2-3x3": lambda dt: HalfConvolution.new(
        12, 3, 2, "second", "sample", seed=8, init_stddev=0.3, dtype=dt
    ),
    "hc-first-location-k3-3x3": lambda dt: HalfConvolution.new(
        12, 3, 3, "first", "location", seed=9, init_stddev=0.3, dtype=dt
    ),
    "hc-second-k1-5x5": lambda dt: HalfConvolution.new(
        12, 5, 1, "second", seed=10, init_stddev=0.3, dtype=dt
    ),
    "dense-k2": lambda dt: Dense.new(EVENT, 2, seed=11, dtype=dt),
}


def _perturb(b, seed=0, scale=0.3):
    """Moves trainable parameters away from their (special) initial values."""
    rng = np.random.default_rng(seed)
    for v in b.trainable_variables:
        v.assign_add(scale * rng.standard_normal(v.shape).astype(v.dtype.as_numpy_dtype))
    return b


def build(name, dtype=tf.float64):
    # Dense: a 48x48 LU with O(0.3) entries is badly conditioned; keep it sane.
    return _perturb(CASES[name](dtype), scale=0.05 if name.startswith("dense") else 0.3)


def make_choice(b, batch=(N,), seed=0):
    rng = np.random.default_rng(seed)
    k = b.num_alternatives
    shape = tuple(batch) + ((2, 2) if b.selection == "location" else ())
    c = np.arange(int(np.prod(shape))) % k  # every alternative is used
    rng.shuffle(c)
    return tf.constant(c.reshape(shape), tf.int32)


def make_x(batch=(N,), dtype=tf.float64, seed=0):
    rng = np.random.default_rng(seed)
    return tf.constant(rng.standard_normal(tuple(batch) + tuple(EVENT)), dtype)


NAMES = sorted(CASES)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("form", ["choice", "batch"])
def test_round_trip(name, form):
    b = build(name)
    if form == "choice":
        x, kw = make_x(), dict(choice=make_choice(b))
    else:
        x, kw = make_x((N, b.num_alternatives)), {}
    e1, e2 = testing.round_trip_errors(b, x, **kw)
    assert e1 < 1e-10 and e2 < 1e-10, (e1, e2)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("form", ["choice", "batch"])
def test_log_det_matches_autodiff(name, form):
    b = build(name)
    if form == "choice":
        x, kw = make_x(), dict(choice=make_choice(b))
    else:
        x, kw = make_x((N, b.num_alternatives)), {}
    expected = testing.assert_log_det_matches_autodiff(b, x, 3, **kw)
    if not name.startswith("hc"):
        # Non-trivial log-dets: the test would catch a missing or wrong ldj.
        assert np.max(np.abs(expected.numpy())) > 1e-3
        if b.num_alternatives > 1:
            assert np.std(expected.numpy()) > 1e-3


@pytest.mark.parametrize("name", NAMES)
def test_choice_forms_agree_with_batch_form(name):
    b = build(name)
    k = b.num_alternatives
    x = make_x()
    c = make_choice(b)
    for method in ("forward", "inverse"):
        all_k = getattr(b, method)(testing.fresh(x[:, None]))  # [N, K, 2, 2, 12]
        assert all_k.shape == [N, k] + EVENT
        got = getattr(b, method)(testing.fresh(x), choice=c)
        if b.selection == "sample":
            want = tf.gather(all_k, c, axis=1, batch_dims=1)
        else:
            want = tf.squeeze(
                tf.gather(tf.transpose(all_k, [0, 2, 3, 1, 4]), c[..., None], axis=3, batch_dims=3),
                3,
            )
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-12, atol=1e-12)
    ildj_k = b.inverse_log_det_jacobian(x[:, None])  # [K]
    assert ildj_k.shape == [k]
    ildj = b.inverse_log_det_jacobian(testing.fresh(x), choice=c)
    table = b.inverse_log_det_table(EVENT)  # [K, Hp, Wp]
    assert table.shape == [k, 2, 2]
    np.testing.assert_allclose(tf.reduce_sum(table, [1, 2]).numpy(), ildj_k.numpy(), rtol=1e-12)
    if b.selection == "sample":
        want = tf.gather(ildj_k, c)
    else:
        t, cc = table.numpy(), c.numpy()
        want = np.array(
            [sum(t[cc[i, h, w], h, w] for h in range(2) for w in range(2)) for i in range(N)]
        )
    np.testing.assert_allclose(ildj.numpy(), np.asarray(want), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_mixture_equals_mvn_tril_mixture(name):
    """MixtureSameFamily over the batch form == the same mixture of full MVNs."""
    b = build(name)
    k = b.num_alternatives
    n = int(np.prod(EVENT))
    base = tfd.Independent(tfd.Normal(tf.zeros(EVENT, tf.float64), tf.constant(1.0, tf.float64)), 3)
    comps = tfd.TransformedDistribution(base, b)
    assert comps.batch_shape == [k] and comps.event_shape == EVENT
    logits = tf.constant(np.linspace(-1.0, 1.0, k), tf.float64)
    mix = tfd.MixtureSameFamily(tfd.Categorical(logits=logits), comps)
    # Reference: x = A_k z + m_k, A_k = dense matrix of forward for alternative k.
    mats, locs = [], []
    for j in range(k):
        fwd = lambda v, j=j: b.forward(v[:, None])[:, j]
        a, m = testing.dense_matrix(fwd, EVENT)
        mats.append(a)
        locs.append(m)
    a = tf.stack(mats)
    ref = tfd.MixtureSameFamily(
        tfd.Categorical(logits=logits),
        tfd.MultivariateNormalTriL(
            loc=tf.stack(locs), scale_tril=tf.linalg.cholesky(a @ tf.linalg.matrix_transpose(a))
        ),
    )
    x = make_x(seed=5)
    got = mix.log_prob(x)
    want = ref.log_prob(tf.reshape(x, [N, n]))
    assert got.shape == [N]
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-10)
    # and per component:
    np.testing.assert_allclose(
        comps.log_prob(x[:, None]).numpy(),
        ref.components_distribution.log_prob(tf.reshape(x, [N, 1, n])).numpy(),
        rtol=1e-10,
    )


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
def test_tf_function_dynamic_batch(name, dtype):
    b = CASES[name](dtype)
    c_shape = [None, 2, 2] if b.selection == "location" else [None]

    @tf.function(
        input_signature=[tf.TensorSpec([None] + EVENT, dtype), tf.TensorSpec(c_shape, tf.int32)]
    )
    def f(x, c):
        z = b.inverse(x, choice=c)
        return z, b.inverse_log_det_jacobian(x, choice=c), b.forward(z, choice=c)

    @tf.function(input_signature=[tf.TensorSpec([None, 1] + EVENT, dtype)])
    def g(x):
        return b.inverse(x), b.inverse_log_det_jacobian(x, event_ndims=3)

    for n in (1, 5):
        x = make_x((n,), dtype)
        c = make_choice(b, (n,))
        z, ildj, xr = f(x, c)
        assert z.dtype == dtype and z.shape == [n] + EVENT and ildj.shape == [n]
        tol = 1e-4 if dtype == tf.float32 else 1e-10
        np.testing.assert_allclose(xr.numpy(), x.numpy(), atol=tol)
        np.testing.assert_allclose(z.numpy(), b.inverse(x, choice=c).numpy(), atol=tol)
        zb, ildjb = g(x[:, None])
        assert zb.shape == [n, b.num_alternatives] + EVENT and ildjb.shape == [b.num_alternatives]


@pytest.mark.parametrize("name", NAMES)
def test_extra_leading_batch_dims(name):
    b = build(name)
    x = make_x((2, 3))
    c = make_choice(b, (2, 3))
    z = b.inverse(x, choice=c)
    flat = b.inverse(tf.reshape(x, [6] + EVENT), choice=tf.reshape(c, [6] + c.shape[2:]))
    np.testing.assert_allclose(z.numpy(), tf.reshape(flat, [2, 3] + EVENT).numpy(), atol=1e-12)
    ildj = b.inverse_log_det_jacobian(x, choice=c)
    assert ildj.shape == [2, 3]
    zb = b.inverse(x[:, :, None])
    assert zb.shape == [2, 3, b.num_alternatives] + EVENT


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_trainable_variable(name):
    b = build(name)
    x = make_x()
    c = make_choice(b)
    for kw in (dict(choice=c), {}):
        xin = x if kw else x[:, None]
        with tf.GradientTape() as tape:
            z = b.inverse(testing.fresh(xin), **kw)
            xs = b.forward(testing.fresh(xin), **kw)
            loss = (
                tf.reduce_sum(z**2)
                + tf.reduce_sum(xs**2)
                + tf.reduce_sum(b.inverse_log_det_jacobian(xin, event_ndims=3, **kw))
            )
        variables = b.trainable_variables
        assert variables, "no trainable variables found"
        grads = tape.gradient(loss, variables)
        for v, gr in zip(variables, grads):
            assert gr is not None, v.name
            assert float(tf.reduce_max(tf.abs(gr))) > 0, v.name


def test_patchify_in_the_loop():
    p = Patchify(2)
    im = tf.constant(np.random.default_rng(0).standard_normal([3, 4, 4, 3]))
    e1, e2 = testing.round_trip_errors(p, im, y=p.forward(im))
    assert e1 == 0 and e2 == 0
    np.testing.assert_array_equal(p.forward(im).numpy(), tf.nn.space_to_depth(im, 2).numpy())
    testing.assert_log_det_matches_autodiff(p, im, 3)
