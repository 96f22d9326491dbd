"""Bijector-specific checks: dense-operator equivalences, locality, errors, init."""

import numpy as np
import pytest
import tensorflow as tf

from tfdgmm import testing
from tfdgmm.bijectors import BlockDiagonal, Dense, Diagonal, HalfConvolution, Patchify, _bank

EVENT = [2, 2, 12]


def _x(batch=(4,), dtype=tf.float64, seed=0):
    return tf.constant(
        np.random.default_rng(seed).standard_normal(tuple(batch) + tuple(EVENT)), dtype
    )


def _perturb(b, scale=0.3, seed=0):
    rng = np.random.default_rng(seed)
    for v in b.trainable_variables:
        v.assign_add(scale * rng.standard_normal(v.shape))
    return b


# ----------------------------------------------------------------------------
# Equivalence with explicit dense operators.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("spatial", [None, (2, 2)])
def test_block_diagonal_equals_linear_operator_block_diag(spatial):
    b = _perturb(BlockDiagonal.new(12, 2, spatial, seed=0, dtype=tf.float64))
    w = b.matrix()  # [K, (2, 2,) 12, 12]
    shift = tf.convert_to_tensor(b.shift)
    for k in range(2):
        if spatial is None:
            blocks = [w[k]] * 4
            s = tf.tile(shift[k], [4])
        else:
            blocks = [w[k, h, v] for h in range(2) for v in range(2)]
            s = tf.reshape(shift[k], [-1])
        op = tf.linalg.LinearOperatorBlockDiag(
            [tf.linalg.LinearOperatorFullMatrix(m) for m in blocks]
        )
        a, c = testing.dense_matrix(lambda v, k=k: b.inverse(v[:, None])[:, k], EVENT)
        np.testing.assert_allclose(a.numpy(), op.to_dense().numpy(), atol=1e-12)
        np.testing.assert_allclose(c.numpy(), -op.matvec(s).numpy(), atol=1e-12)
        # The dense matrix of forward is the inverse of the operator.
        af, cf = testing.dense_matrix(lambda v, k=k: b.forward(v[:, None])[:, k], EVENT)
        np.testing.assert_allclose(af.numpy(), op.inverse().to_dense().numpy(), atol=1e-10)
        np.testing.assert_allclose(cf.numpy(), s.numpy(), atol=1e-12)
        # log|det| of the big operator is the ildj.
        np.testing.assert_allclose(
            b.inverse_log_det_jacobian(_x()[:, None])[k].numpy(),
            op.log_abs_determinant().numpy(),
            rtol=1e-12,
        )


@pytest.mark.parametrize("update", ["second", "first"])
@pytest.mark.parametrize("ksize", [3, 5])
def test_half_convolution_equals_block_triangular_matrix(update, ksize):
    b = HalfConvolution.new(12, ksize, 1, update, seed=3, init_stddev=0.5, dtype=tf.float64)
    w = tf.convert_to_tensor(b.kernel)[0].numpy()  # [kh, kw, 6, 6]
    hp, wp, d = EVENT
    cond = list(range(6)) if update == "second" else list(range(6, 12))
    upd = list(range(6, 12)) if update == "second" else list(range(6))
    idx = lambda h, v, ch: (h * wp + v) * d + ch  # noqa: E731
    n = hp * wp * d
    m = np.eye(n)
    p = ksize // 2
    for h in range(hp):
        for v in range(wp):
            for dh in range(ksize):
                for dv in range(ksize):
                    hh, vv = h + dh - p, v + dv - p
                    if 0 <= hh < hp and 0 <= vv < wp:  # 'SAME' zero padding of x_a only
                        for i, ci in enumerate(cond):
                            for o, co in enumerate(upd):
                                m[idx(h, v, co), idx(hh, vv, ci)] += w[dh, dv, i, o]
    a, c = testing.dense_matrix(b.forward, EVENT)
    np.testing.assert_allclose(a.numpy(), m, atol=1e-12)
    np.testing.assert_allclose(c.numpy(), 0.0, atol=0)
    # Block-triangular with identity diagonal blocks: order (cond, upd).
    order = [idx(h, v, ch) for ch in cond for h in range(hp) for v in range(wp)] + [
        idx(h, v, ch) for ch in upd for h in range(hp) for v in range(wp)
    ]
    mp = m[np.ix_(order, order)]
    half = n // 2
    np.testing.assert_array_equal(mp[:half, half:], 0.0)
    np.testing.assert_array_equal(mp[:half, :half], np.eye(half))
    np.testing.assert_array_equal(mp[half:, half:], np.eye(half))
    assert np.abs(mp[half:, :half]).max() > 0.1
    ai, _ = testing.dense_matrix(b.inverse, EVENT)
    np.testing.assert_allclose(ai.numpy() @ m, np.eye(n), atol=1e-10)


def test_dense_equals_its_matrix():
    b = _perturb(Dense.new(EVENT, 2, seed=1, dtype=tf.float64), 0.05)
    w = b.matrix().numpy()
    shift = tf.convert_to_tensor(b.shift).numpy()
    x = _x()
    c = tf.constant([0, 1, 1, 0])
    xf = tf.reshape(x, [4, -1]).numpy()
    want = np.stack([w[k] @ (xf[i] - shift[k]) for i, k in enumerate(c.numpy())])
    got = tf.reshape(b.inverse(x, choice=c), [4, -1]).numpy()
    np.testing.assert_allclose(got, want, atol=1e-10)
    want_f = np.stack([np.linalg.solve(w[k], xf[i]) + shift[k] for i, k in enumerate(c.numpy())])
    got_f = tf.reshape(b.forward(testing.fresh(x), choice=c), [4, -1]).numpy()
    np.testing.assert_allclose(got_f, want_f, atol=1e-10)
    np.testing.assert_allclose(
        b.inverse_log_det_jacobian(x, choice=c).numpy(),
        [np.linalg.slogdet(w[k])[1] for k in c.numpy()],
        rtol=1e-10,
    )
    table = b.inverse_log_det_table(EVENT).numpy()
    assert table.shape == (2, 2, 2)
    np.testing.assert_array_equal(table.reshape(2, -1)[:, 1:], 0.0)


# ----------------------------------------------------------------------------
# Locality of the unshared (per-location) choice.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: BlockDiagonal.new(12, 3, None, "location", seed=0, dtype=tf.float64),
        lambda: BlockDiagonal.new(12, 3, (2, 2), "location", seed=0, dtype=tf.float64),
        lambda: _perturb(Diagonal.new(12, 3, (2, 2), "location", seed=0, dtype=tf.float64)),
        lambda: HalfConvolution.new(
            12, 3, 3, "second", "location", seed=0, init_stddev=0.5, dtype=tf.float64
        ),
    ],
    ids=["bd-shared", "bd-perloc", "diag", "hc"],
)
@pytest.mark.parametrize("method", ["forward", "inverse"])
def test_unshared_choice_changes_only_that_location(make, method):
    b = make()
    x = _x()
    c = tf.zeros([4, 2, 2], tf.int32)
    base = getattr(b, method)(testing.fresh(x), choice=c)
    c2 = tf.tensor_scatter_nd_update(c, [[1, 0, 1]], [2])
    out = getattr(b, method)(testing.fresh(x), choice=c2)
    diff = np.abs((out - base).numpy()).max(axis=-1)  # [4, 2, 2]
    assert diff[1, 0, 1] > 1e-3
    diff[1, 0, 1] = 0.0
    # Elsewhere: unchanged up to GEMM blocking round-off (partition sizes change).
    np.testing.assert_allclose(diff, 0.0, atol=1e-13)


# ----------------------------------------------------------------------------
# Errors name the problem.
# ----------------------------------------------------------------------------


def test_error_wrong_rank():
    b = BlockDiagonal.new(12, 2)
    with pytest.raises(ValueError, match="rank >= 3"):
        b.inverse(tf.zeros([4, 12]))
    with pytest.raises(ValueError, match="rank >= 3"):
        Patchify(2).forward(tf.zeros([4, 4]))
    with pytest.raises(ValueError, match="rank >= 3"):
        Dense.new(EVENT).inverse(tf.zeros([2, 12]))


def test_error_wrong_event_shape():
    with pytest.raises(ValueError, match=r"event shape must be \[2, 2, 12\]"):
        BlockDiagonal.new(12, 2, (2, 2)).inverse(tf.zeros([4, 3, 2, 12]))
    with pytest.raises(ValueError, match=r"event shape must be \[\?, \?, 12\]"):
        Diagonal.new(12).forward(tf.zeros([4, 2, 2, 10]))
    with pytest.raises(ValueError, match="expected 48"):
        Dense.new(EVENT).inverse(tf.zeros([4, 2, 2, 10]))


def test_error_indivisible():
    with pytest.raises(ValueError, match="height 5 is not divisible by patch_size 2"):
        Patchify(2).forward(tf.zeros([1, 5, 4, 3]))
    with pytest.raises(ValueError, match="width 3 is not divisible by patch_size 2"):
        Patchify(2).forward(tf.zeros([1, 4, 3, 3]))
    with pytest.raises(ValueError, match="depth 6 is not divisible"):
        Patchify(2).inverse(tf.zeros([1, 2, 2, 6]))
    f = tf.function(
        lambda x: Patchify(2).forward(x), input_signature=[tf.TensorSpec([None, None, None, 3])]
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match="not divisible by patch_size 2"):
        f(tf.zeros([1, 5, 4, 3]))


@pytest.mark.parametrize(
    "make",
    [
        lambda: BlockDiagonal.new(12, 3, validate_args=True),
        lambda: Diagonal.new(12, 3, validate_args=True),
        lambda: HalfConvolution.new(12, 3, 3, validate_args=True),
        lambda: Dense.new(EVENT, 3, validate_args=True),
    ],
    ids=["bd", "diag", "hc", "dense"],
)
def test_error_choice_out_of_range(make):
    b = make()
    x = tf.zeros([2] + EVENT)
    with pytest.raises(ValueError, match=r"`choice` out of range: values must be in \[0, 3\)"):
        b.inverse(x, choice=[0, 3])
    with pytest.raises(ValueError, match=r"out of range.*got min -1"):
        b.inverse_log_det_jacobian(x, choice=[-1, 0])
    f = tf.function(
        lambda x, c: b.inverse(x, choice=c),
        input_signature=[tf.TensorSpec([None] + EVENT), tf.TensorSpec([None], tf.int32)],
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"`choice` out of range"):
        f(x, tf.constant([0, 7]))
    with pytest.raises(TypeError, match="integer"):
        b.inverse(x, choice=[0.5, 1.0])


def test_error_location_choice_shape():
    b = BlockDiagonal.new(12, 3, selection="location")
    with pytest.raises(ValueError, match=r"batch \+ \[Hp, Wp\]"):
        b.inverse(tf.zeros([2] + EVENT), choice=tf.zeros([2], tf.int32))


@pytest.mark.parametrize(
    "make",
    [
        lambda: BlockDiagonal.new(12, 2, validate_args=True),
        lambda: Diagonal.new(12, 2, validate_args=True),
        lambda: HalfConvolution.new(12, 3, 2, validate_args=True),
        lambda: Dense.new(EVENT, 2, validate_args=True),
        lambda: Patchify(2, validate_args=True),
    ],
    ids=["bd", "diag", "hc", "dense", "patchify"],
)
@pytest.mark.parametrize("method", ["forward", "inverse"])
def test_error_nan_with_validate_args(make, method):
    b = make()
    x = np.zeros([2] + EVENT, np.float32)
    x[1, 0, 1, 3] = np.nan
    kw = {} if isinstance(b, Patchify) else dict(choice=[0, 1])
    with pytest.raises(tf.errors.InvalidArgumentError, match="contains NaN or Inf"):
        getattr(b, method)(tf.constant(x), **kw)


def test_error_bad_parameters():
    lu, perm = _bank.random_orthogonal_lu((2,), 4, seed=0)
    bad = perm.copy()
    bad[1, 0] = bad[1, 1]
    with pytest.raises(tf.errors.InvalidArgumentError, match="not a permutation"):
        BlockDiagonal(lu, bad, validate_args=True)
    with pytest.raises(ValueError, match="`permutation` must have shape"):
        BlockDiagonal(lu, perm[:, :3])
    with pytest.raises(ValueError, match="square"):
        BlockDiagonal(lu[:, :3], perm)
    with pytest.raises(ValueError, match="selection"):
        BlockDiagonal(lu, perm, selection="pixel")
    with pytest.raises(ValueError, match="update"):
        HalfConvolution(tf.zeros([1, 3, 3, 2, 2]), update="third")


# ----------------------------------------------------------------------------
# Initialisation and parameterisation.
# ----------------------------------------------------------------------------


def test_lu_convention_and_orthogonal_init():
    b = BlockDiagonal.new(12, 3, (2, 2), seed=0, dtype=tf.float64)
    w = b.matrix().numpy().reshape(-1, 12, 12)
    for m in w:
        np.testing.assert_allclose(m @ m.T, np.eye(12), atol=1e-12)
    assert np.abs(w[0] - w[1]).max() > 0.1  # alternatives differ
    # log|det| = sum diag(lower_upper) = 0 for orthogonal; U diag positive.
    np.testing.assert_allclose(_bank.lu_log_det(b.lower_upper).numpy(), 0.0, atol=1e-12)
    # Convention (P v)_i = v[perm[i]]: W = P L U.
    lu = b.lower_upper.numpy()[0, 0, 0]
    perm = b.permutation.numpy()[0, 0, 0]
    low = np.tril(lu, -1) + np.eye(12)
    up = np.triu(lu, 1) + np.diag(np.exp(np.diag(lu)))
    np.testing.assert_allclose((low @ up)[perm], w[0], atol=1e-12)
    # Trainable: lower_upper and shift; permutation is a non-trainable variable.
    assert {v.name.split(":")[0] for v in b.trainable_variables} == {"lower_upper", "shift"}
    assert any("permutation" in v.name for v in b.variables)


def test_forward_uses_exact_inverse_matrix():
    b = _perturb(BlockDiagonal.new(12, 2, (2, 2), seed=0, dtype=tf.float64))
    w = b.matrix().numpy()
    w_inv = _bank.lu_matrix_inverse(b.lower_upper, b.permutation).numpy()
    np.testing.assert_allclose(
        np.einsum("...ij,...jk->...ik", w, w_inv), np.broadcast_to(np.eye(12), w.shape), atol=1e-10
    )


def test_batch_slicing():
    b = BlockDiagonal.new(12, 3, (2, 2), seed=0, dtype=tf.float64)
    b1 = b[1:2]  # slices keep the K axis (integer indexing would drop it)
    assert b1.num_alternatives == 1 and b1.experimental_batch_shape() == [1]
    x = _x()
    np.testing.assert_allclose(
        b1.inverse(x).numpy(), b.inverse(x, choice=tf.ones([4], tf.int32)).numpy(), atol=1e-12
    )
    assert b[::2].num_alternatives == 2


# ----------------------------------------------------------------------------
# Patchify.
# ----------------------------------------------------------------------------


def test_patchify_space_to_depth_and_shapes():
    p = Patchify(2)
    im = tf.random.normal([2, 3, 4, 6, 3])
    h = p.forward(im)
    assert h.shape == [2, 3, 2, 3, 12]
    np.testing.assert_array_equal(
        tf.reshape(h, [6, 2, 3, 12]).numpy(),
        tf.nn.space_to_depth(tf.reshape(im, [6, 4, 6, 3]), 2).numpy(),
    )
    np.testing.assert_array_equal(p.inverse(testing.fresh(h)).numpy(), im.numpy())
    assert p.forward_event_shape([4, 6, 3]) == [2, 3, 12]
    assert p.inverse_event_shape([2, 3, 12]) == [4, 6, 3]
    np.testing.assert_array_equal(p.forward_event_shape_tensor([4, 6, 3]).numpy(), [2, 3, 12])
    f = tf.function(
        lambda x: p.inverse(p.forward(x)), input_signature=[tf.TensorSpec([None, None, 4, 6, 3])]
    )
    np.testing.assert_array_equal(f(im).numpy(), im.numpy())


@pytest.mark.parametrize("selection", ["sample", "location"])
def test_forward_routes_agree(selection):
    """Per-location blocks: forward by explicit inverses (many samples per
    alternative) and by triangular solves on the data (few) agree."""
    b = _perturb(BlockDiagonal.new(12, 2, (2, 2), selection, seed=0, dtype=tf.float64))
    x = _x((40,))
    shape = [40] if selection == "sample" else [40, 2, 2]
    c = tf.constant(np.random.default_rng(0).integers(0, 2, shape), tf.int32)
    big = b.forward(x, choice=c)  # 20 per alternative >= d
    small = b.forward(x[:3], choice=c[:3])  # < d per alternative
    np.testing.assert_allclose(big[:3].numpy(), small.numpy(), atol=1e-12)
    np.testing.assert_allclose(
        b.inverse(testing.fresh(big), choice=c).numpy(), x.numpy(), atol=1e-12
    )


# ----------------------------------------------------------------------------
# A conditioned bank as a TFP object (issue 16).
# ----------------------------------------------------------------------------


def test_with_choice_follows_tfp_batch_rules():
    import tensorflow_probability as tfp

    tfd = tfp.distributions
    bd = _perturb(BlockDiagonal.new(12, 3, (2, 2), seed=0, dtype=tf.float64))
    base = tfd.Sample(tfd.Normal(tf.constant(0.0, tf.float64), 1.0), EVENT)
    c = tf.constant([0, 2, 1, 1, 0])
    td = tfd.TransformedDistribution(base, bd.with_choice(c))
    assert td.batch_shape == [5]
    assert td.batch_shape_tensor().numpy().tolist() == [5]
    x = _x((5,))
    lp = td.log_prob(x)
    assert lp.shape == [5]
    expect = base.log_prob(bd.inverse(x, choice=c)) + bd.inverse_log_det_jacobian(
        x, event_ndims=3, choice=c
    )
    np.testing.assert_allclose(lp.numpy(), expect.numpy(), rtol=1e-12)
    s = td.sample(4, seed=[1, 2])
    assert s.shape == [4, 5, *EVENT]
    assert td.log_prob(s).shape == [4, 5]
    # per-location choices: batch shape is the choice's without [Hp, Wp]
    bl = BlockDiagonal.new(12, 3, (2, 2), selection="location", seed=1, dtype=tf.float64)
    cl = tf.constant(np.random.default_rng(0).integers(0, 3, [5, 2, 2]), tf.int32)
    tl = tfd.TransformedDistribution(base, bl.with_choice(cl))
    assert tl.batch_shape == [5]
    assert tl.sample(3, seed=[3, 4]).shape == [3, 5, *EVENT]
    np.testing.assert_allclose(
        tl.log_prob(x).numpy(),
        (
            base.log_prob(bl.inverse(x, choice=cl))
            + bl.inverse_log_det_jacobian(x, event_ndims=3, choice=cl)
        ).numpy(),
        rtol=1e-12,
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda: BlockDiagonal.new(12, 3, (2, 2), seed=0, dtype=tf.float64),
        lambda: BlockDiagonal.new(12, 3, (2, 2), selection="location", seed=0, dtype=tf.float64),
        lambda: Diagonal.new(12, 3, seed=0, dtype=tf.float64),
        lambda: HalfConvolution.new(12, 3, num_alternatives=3, seed=0, dtype=tf.float64),
    ],
)
def test_integer_index_is_one_alternative(make):
    b = _perturb(make())
    x = _x((4,))
    one = b[2]
    assert one.experimental_batch_shape() == []
    choice = tf.fill([4, 2, 2] if b.selection == "location" else [4], 2)
    np.testing.assert_allclose(
        one.forward(x).numpy(), b.forward(x, choice=choice).numpy(), atol=1e-12
    )
    np.testing.assert_allclose(
        one.inverse_log_det_jacobian(x, event_ndims=3).numpy(),
        b.inverse_log_det_jacobian(x, event_ndims=3, choice=choice).numpy(),
        atol=1e-12,
    )
    with pytest.raises(IndexError, match="out of range for a bank of 3"):
        b[3]


def test_integer_index_of_shared_location_bank_says_why():
    b = Diagonal.new(12, 3, selection="location", seed=0)
    with pytest.raises(ValueError, match="with_choice"):
        b[0]


@pytest.mark.parametrize("graph", [False, True])
def test_batch_form_mismatch_names_choice(graph):
    for b in (
        BlockDiagonal.new(12, 4, seed=0),
        Diagonal.new(12, 4, seed=0),
        HalfConvolution.new(12, 3, num_alternatives=4, seed=0),
    ):
        x = tf.zeros([8, *EVENT])
        if graph:
            fn = tf.function(
                lambda x, b=b: b.inverse(x),
                input_signature=[tf.TensorSpec([None, *EVENT], tf.float32)],
            )
            with pytest.raises(tf.errors.InvalidArgumentError, match="without `choice`"):
                fn(x)
        else:
            with pytest.raises(
                ValueError,
                match=r"without `choice`.*batch shape \[8\] does not "
                r"broadcast against \[4\].*choice=",
            ):
                b.forward(x)
        # shapes that broadcast still give every alternative
        assert b.inverse(tf.zeros([8, 1, *EVENT])).shape == [8, 4, *EVENT]
