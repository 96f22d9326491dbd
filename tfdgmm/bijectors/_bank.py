"""Shared machinery for banks of K alternative transformations (private).

Everything that more than one bijector needs lives here, once:

* LU parameterisation (Glow-style): composing `W = P L U`, its inverse, the
  log-determinant, and the well-conditioned random-orthogonal initialisation.
* `choice` handling: validation (dtype, shape, range) and broadcasting of the
  input batch against the choice batch.
* Applying a bank of per-location linear maps (`bank_linear` with a
  `MatmulOp` or `LUSolveOp`) or elementwise
  scales (`bank_scale`) in the three forms described in `docs/DESIGN.md`:
  batch form (`choice=None`, batch shape `[K]`), per-sample choice
  (`selection='sample'`) and per-location choice (`selection='location'`).
* Reducing a per-alternative, per-location log-det table with a choice.

Conventions: an event is `[Hp, Wp, d]` (the patch tensor); `L = Hp * Wp`.
Per-location parameters carry `(Hp, Wp)` right after the leading `K` axis.

The public base class of every transform, `BankBijector`, is in `tfdgmm.bijectors.base`.
"""

import contextlib
import os

import numpy as np
import tensorflow as tf

try:  # no public API tells whether a trace is XLA-compiled
    from tensorflow.python.ops import control_flow_util
except ImportError:  # pragma: no cover
    control_flow_util = None
from tensorflow_probability.python.internal import parameter_properties

from tfdgmm.scoped import ScopedValues

SELECTIONS = ("sample", "location")


# ----------------------------------------------------------------------------
# Small shape utilities.
# ----------------------------------------------------------------------------


def shape_list(x):
    """Static dims where known, scalar dynamic dims elsewhere (a Python list)."""
    static = x.shape.as_list()
    dynamic = tf.shape(x)
    return [s if s is not None else dynamic[i] for i, s in enumerate(static)]


def concat_shape(*parts):
    """Concatenates shape lists; a Python list if all static, else a Tensor."""
    out = []
    for p in parts:
        if isinstance(p, tf.TensorShape):
            p = p.as_list()
        if tf.is_tensor(p):
            static = tf.get_static_value(p)
            p = list(static) if static is not None else p
        if tf.is_tensor(p):
            out.append(tf.cast(p, tf.int32))
        else:
            out.extend([d if tf.is_tensor(d) else int(d) for d in p])
    if all(not tf.is_tensor(o) for o in out):
        return out
    return tf.concat([tf.reshape(tf.cast(o, tf.int32), [-1]) for o in out], 0)


def check_selection(selection):
    if selection not in SELECTIONS:
        raise ValueError(f"`selection` must be one of {SELECTIONS}, got {selection!r}.")
    return selection


def check_event(x, event_rank, expected, name, what="input"):
    """Static check that `x` has rank >= event_rank and the expected event dims.

    `expected` lists the required trailing dims (None = any).
    """
    rank = x.shape.rank
    if rank is None:
        return
    if rank < event_rank:
        raise ValueError(
            f"{name}: {what} must have rank >= {event_rank} (event shape "
            f"{_fmt(expected)}), got shape {x.shape}."
        )
    got = x.shape[-event_rank:].as_list()
    for g, e in zip(got, expected):
        if g is not None and e is not None and g != e:
            raise ValueError(
                f"{name}: {what} event shape must be {_fmt(expected)}, got "
                f"{got} (full shape {x.shape})."
            )


def _fmt(shape):
    return "[" + ", ".join("?" if s is None else str(s) for s in shape) + "]"


def maybe_assert_finite(x, validate_args, name, what="input"):
    if not validate_args:
        return x
    return tf.debugging.assert_all_finite(x, message=f"{name}: {what} contains NaN or Inf.")


# ----------------------------------------------------------------------------
# LU parameterisation.
# ----------------------------------------------------------------------------


def lu_factors(lower_upper):
    """Unit-lower `L` and upper `U` (diagonal `exp(diag(lower_upper))`)."""
    diag = tf.linalg.diag_part(lower_upper)
    lower = tf.linalg.set_diag(tf.linalg.band_part(lower_upper, -1, 0), tf.ones_like(diag))
    upper = tf.linalg.set_diag(tf.linalg.band_part(lower_upper, 0, -1), tf.exp(diag))
    return lower, upper


def _gather_last_axes(params, perm, axis_from_end):
    """Gathers `params` along axis -2 (rows) or -1 (cols) with batched `perm`."""
    rank = params.shape.rank
    return tf.gather(params, perm, axis=rank - axis_from_end, batch_dims=perm.shape.rank - 1)


def lu_matrix(lower_upper, permutation):
    """`W = P L U` with `(P v)_i = v[perm[i]]`, batched over leading dims."""
    lower, upper = lu_factors(lower_upper)
    return _gather_last_axes(tf.linalg.matmul(lower, upper), permutation, 2)


def lu_matrix_inverse(lower_upper, permutation):
    """`W^{-1} = U^{-1} L^{-1} P^T` via two triangular solves (no `inv`)."""
    lower, upper = lu_factors(lower_upper)
    eye = tf.eye(
        tf.shape(lower_upper)[-1], batch_shape=tf.shape(lower_upper)[:-2], dtype=lower_upper.dtype
    )
    lu_inv = tf.linalg.triangular_solve(
        upper, tf.linalg.triangular_solve(lower, eye, lower=True), lower=False
    )
    # (A P^T)[:, j] = A[:, perm[j]].
    return _gather_last_axes(lu_inv, permutation, 1)


def _lu_density_params(lower_upper, permutation, shift):
    """`(W^T, -W shift)` for GEMMs on rows (`x @ W^T = (W x)^T`)."""
    w = lu_matrix(lower_upper, permutation)
    bias = None if shift is None else -tf.linalg.matvec(w, shift)
    return tf.linalg.matrix_transpose(w), bias


def _lu_sampling_params(lower_upper, permutation):
    """`(L, U, perm^{-1})` for `W^{-1} v = U^{-1} L^{-1} P^{-1} v`."""
    lower, upper = lu_factors(lower_upper)
    return lower, upper, tf.argsort(permutation, axis=-1)


def _lu_inverse_params(lower_upper, permutation):
    """`W^{-T}` (for GEMMs on rows), by two triangular solves per matrix."""
    return tf.linalg.matrix_transpose(lu_matrix_inverse(lower_upper, permutation))


# Parameter preparation has static shapes and is batch independent: compile
# it with XLA (fuses the masking/exp/gather around the small batched matmul;
# measured ~2-3x faster than plain TF ops for K * L = 256 blocks of 48x48).
# Set TFDGMM_NO_XLA=1 to disable.
_USE_XLA = os.environ.get("TFDGMM_NO_XLA", "0") in ("", "0")
lu_density_params = tf.function(_lu_density_params, jit_compile=_USE_XLA, autograph=False)
lu_sampling_params = tf.function(_lu_sampling_params, jit_compile=_USE_XLA, autograph=False)
lu_inverse_params = tf.function(_lu_inverse_params, jit_compile=_USE_XLA, autograph=False)


def lu_log_det(lower_upper):
    """`log|det W| = sum diag(lower_upper)` (last axis summed)."""
    return tf.reduce_sum(tf.linalg.diag_part(lower_upper), axis=-1)


def random_orthogonal_lu(batch_shape, size, seed=None):
    """LU parameters (float64 numpy) of random orthogonal matrices.

    Draws Haar-random orthogonal `Q` (QR of a Gaussian with the sign fix), then
    flips column signs `S` so that the LU factorisation `Q S = P L (U S)` has a
    positive diagonal; returns `(lower_upper, permutation)` in the convention of
    `lu_matrix` (so `lu_matrix(*random_orthogonal_lu(...))` is orthogonal).
    """
    rng = np.random.default_rng(seed)
    batch_shape = tuple(int(b) for b in batch_shape)
    g = rng.standard_normal(batch_shape + (size, size))
    q, r = np.linalg.qr(g)
    q = q * np.sign(np.diagonal(r, axis1=-2, axis2=-1))[..., None, :]
    lu, p = tf.linalg.lu(tf.constant(q, tf.float64))  # q[p] = L U
    lu = lu.numpy()
    perm = np.argsort(p.numpy(), axis=-1)  # inverse permutation of p
    diag = np.diagonal(lu, axis1=-2, axis2=-1)
    sign = np.sign(diag)
    lower = np.tril(lu, -1)
    upper = np.triu(lu, 1) * sign[..., None, :]
    lower_upper = lower + upper
    idx = np.arange(size)
    lower_upper[..., idx, idx] = np.log(np.abs(diag))
    return lower_upper, perm.astype(np.int32)


def seed_stream(seed):
    """A numpy Generator from an int seed / None (fresh entropy)."""
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------
# `choice` handling.
# ----------------------------------------------------------------------------


def prepare_choice(choice, num_alternatives, selection, spatial_shape, validate_args, name):
    """Validates `choice`; returns an int32 Tensor (or None).

    Static problems (dtype, shape, known out-of-range values) raise at once;
    dynamic ones are asserted when `validate_args`.
    """
    if choice is None:
        return None
    k = num_alternatives
    choice = tf.convert_to_tensor(choice, dtype_hint=tf.int32, name="choice")
    if not choice.dtype.is_integer:
        raise TypeError(
            f"{name}: `choice` must be an integer tensor, got dtype {choice.dtype.name}."
        )
    if selection == "location" and choice.shape.rank is not None:
        hp, wp = spatial_shape
        got = choice.shape.as_list()
        if (
            len(got) < 2
            or (got[-2] is not None and hp is not None and got[-2] != hp)
            or (got[-1] is not None and wp is not None and got[-1] != wp)
        ):
            raise ValueError(
                f"{name}: with selection='location', `choice` must have shape "
                f"batch + [Hp, Wp] = batch + {_fmt([hp, wp])}, got {choice.shape}."
            )
    static = tf.get_static_value(choice)
    if static is not None and np.size(static):
        lo, hi = int(np.min(static)), int(np.max(static))
        if lo < 0 or hi >= k:
            raise ValueError(
                f"{name}: `choice` out of range: values must be in [0, {k}) "
                f"(num_alternatives={k}), got min {lo}, max {hi}."
            )
    choice = tf.cast(choice, tf.int32)
    if validate_args and static is None:
        msg = f"{name}: `choice` out of range: values must be in [0, {k}) (num_alternatives={k})."
        asserts = [
            tf.debugging.assert_non_negative(choice, message=msg),
            tf.debugging.assert_less(choice, tf.constant(k, tf.int32), message=msg),
        ]
        with tf.control_dependencies(asserts):
            choice = tf.identity(choice)
    return choice


def broadcast_with_choice(x, choice, event_rank, selection):
    """Broadcasts `x` and `choice` to a common batch; flattens the batch.

    Returns `(x_flat [N, *event], choice_flat [N] or [N, Hp, Wp], out_batch)`.
    """
    x_batch = x.shape[:-event_rank]
    c_batch = choice.shape if selection == "sample" else choice.shape[:-2]
    if x_batch.is_fully_defined() and c_batch.is_fully_defined():
        out_batch = tf.broadcast_static_shape(x_batch, c_batch).as_list()
    else:
        xs = tf.shape(x)[:-event_rank]
        cs = tf.shape(choice) if selection == "sample" else tf.shape(choice)[:-2]
        out_batch = tf.broadcast_dynamic_shape(xs, cs)
    event = shape_list(x)[-event_rank:]
    if not (isinstance(out_batch, list) and x_batch.as_list() == out_batch):
        x = tf.broadcast_to(x, concat_shape(out_batch, event))
    c_event = [] if selection == "sample" else shape_list(choice)[-2:]
    if not (isinstance(out_batch, list) and c_batch.as_list() == out_batch):
        choice = tf.broadcast_to(choice, concat_shape(out_batch, c_event))
    x_flat = tf.reshape(x, concat_shape([-1], event))
    c_flat = tf.reshape(choice, concat_shape([-1], c_event))
    return x_flat, c_flat, out_batch


def batch_form_error(name, k, batch_shape):
    return (
        f"{name}: called without `choice`, a bank of {k} alternatives is a batch of {k} "
        f"bijectors (batch shape [{k}]), and the input's batch shape {batch_shape} does "
        f"not broadcast against [{k}]. Pass `choice=` (one alternative per sample, or per "
        f"sample and location) or use `bank.with_choice(choice)`; for all alternatives at "
        f"once give the input a batch axis of size 1 or {k} last, e.g. x[..., None, :, :, :]."
    )


def batch_form_layout(x, event_rank, num_alternatives, name="bank"):
    """Lays out `x` for the batch form (`choice=None`, batch shape `[K]`).

    Returns `(mode, x_r, out_batch)`:
    * mode 'expand': `x_r` is `[M, *event]`, output will be `[M, K, *event]`
      (input batch is empty or ends in 1: every alternative sees the same x);
    * mode 'aligned': `x_r` is `[M, K, *event]` (input batch ends in K, or is
      broadcast to do so when that is only known at run time).
    `out_batch` is the output batch shape (list or Tensor).
    """
    k = num_alternatives
    b = x.shape[:-event_rank]
    event = shape_list(x)[-event_rank:]
    if b.rank is not None and (b.rank == 0 or b[-1] == 1):
        lead = shape_list(x)[: b.rank - 1] if b.rank else []
        return ("expand", tf.reshape(x, concat_shape([-1], event)), concat_shape(lead, [k]))
    if b.rank is not None and b[-1] == k:
        return ("aligned", tf.reshape(x, concat_shape([-1, k], event)), shape_list(x)[: b.rank])
    if k > 1 and b.rank is not None and b[-1] is not None:
        raise ValueError(batch_form_error(name, k, b.as_list()))
    xs = tf.shape(x)[:-event_rank]
    if k > 1:
        last = tf.concat([[1], xs], 0)[-1]  # (an empty batch broadcasts)
        check = tf.debugging.Assert(
            tf.logical_or(tf.equal(last, 1), tf.equal(last, k)),
            [batch_form_error(name, k, "(see below)"), "input batch shape:", xs],
        )
        with tf.control_dependencies([check]):
            xs = tf.identity(xs)
    out_batch = tf.broadcast_dynamic_shape(xs, tf.constant([k], tf.int32))
    x = tf.broadcast_to(x, concat_shape(out_batch, event))
    return "aligned", tf.reshape(x, concat_shape([-1, k], event)), out_batch


CHOICE_OPS = ("auto", "partition", "select")
_choice_ops = [os.environ.get("TFDGMM_CHOICE_OPS", "auto")]


@contextlib.contextmanager
def choice_ops(mode):
    """Within the block, how a choice picks alternatives (see `partition_apply`):
    `'partition'` (`tf.dynamic_partition`, one dense op per alternative on its own rows),
    `'select'` (every alternative on all rows, then a gather: `K` times the flops, but static
    shapes, so XLA compiles it) or `'auto'` (`'select'` inside an XLA-compiled function,
    `'partition'` elsewhere; the default, also set by `TFDGMM_CHOICE_OPS`)."""
    if mode not in CHOICE_OPS:
        raise ValueError(f"choice ops must be one of {CHOICE_OPS}; got {mode!r}")
    _choice_ops.append(mode)
    try:
        yield
    finally:
        _choice_ops.pop()


def in_xla_context():
    """True while tracing a function compiled with `jit_compile=True` (or inside one)."""
    if control_flow_util is None:  # (TensorFlow moved its internals: assume plain TF)
        return False
    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def use_select():
    """Whether choices are applied by `'select'` (static shapes) here; see `choice_ops`."""
    mode = _choice_ops[-1]
    if mode == "auto":
        return in_xla_context()
    return mode == "select"


def partition_apply(x, choice, num_alternatives, fn):
    """`y[i] = fn(k, x[i])` for `k = choice[i]`: one call of `fn` per group.

    Uses `tf.dynamic_partition` / `tf.dynamic_stitch` so that each alternative
    is applied to its own samples with one dense op (no per-sample copies of
    parameters). Under XLA (or `choice_ops('select')`), whose shapes must be static, every
    alternative is applied to all rows and each row's result is gathered instead.
    """
    k = num_alternatives
    if k == 1:
        return fn(0, x)
    if use_select():
        ys = tf.stack([fn(j, x) for j in range(k)], axis=1)  # [N, K, ...]
        return tf.gather(ys, choice, axis=1, batch_dims=1)
    parts = tf.dynamic_partition(x, choice, k)
    idx = tf.dynamic_partition(tf.range(tf.shape(x)[0]), choice, k)
    return tf.dynamic_stitch(idx, [fn(j, parts[j]) for j in range(k)])


# ----------------------------------------------------------------------------
# Parameters composed once for many calls (e.g. a whole E-step).
# ----------------------------------------------------------------------------

_precomposed = ScopedValues()  # {(id(bijector), kind): value} per `precomposed` block


@contextlib.contextmanager
def precomposed(bijectors):
    """Within the block, the bijectors' batch-independent parameter work (e.g. `W = P L U`
    for every block) is done once, here, and reused by every call, instead of once per call.

    Parameters must not change inside the block (an E-step: they do not). Only bijectors
    with a `_precompose()` method take part; the values are used only in the graph (or
    eager context) that made them and in functions nested in it (`tf.while_loop` bodies).
    """
    cache = {}
    for b in bijectors:
        prep = getattr(b, "_precompose", None)
        if prep is not None and not _holds(b):  # (an enclosing block's values are reused)
            for kind, value in prep().items():
                cache[(id(b), kind)] = value
    with _precomposed.scope(cache):
        yield


def _lookup(bijector, kind):
    return _precomposed.lookup((id(bijector), kind))


def _holds(bijector):
    return any(
        key[0] == id(bijector) and _lookup(bijector, key[1]) is not None
        for key in _precomposed.keys()
    )


def cached(bijector, kind, make):
    """The precomposed value `kind` of `bijector` if a `precomposed` block holds it, else
    `make()`."""
    value = _lookup(bijector, kind)
    return make() if value is None else value


# ----------------------------------------------------------------------------
# Bank of per-location linear maps: y = A_c x + b_c at each location.
# ----------------------------------------------------------------------------


class MatmulOp:
    """`K` banks of `d x d` matrices applied as GEMMs, location-major.

    `mats_t` is `[K, Lg, d, d]` holding `A^T` (so rows `x @ A^T = (A x)^T`);
    `Lg` is `L` (per-location parameters) or 1 (shared by all locations).
    All methods take rows `xl [Lg | K, Lg, n, d]`.
    """

    def __init__(self, mats_t):
        self.mats_t = mats_t
        self.k = int(mats_t.shape[0])
        self.d = int(mats_t.shape[-1])

    def one(self, j, xl):  # [Lg, n, d] -> [Lg, n, d]
        return tf.matmul(xl, self.mats_t[j])

    def aligned(self, xl):  # [K, Lg, n, d] -> same
        return tf.matmul(xl, self.mats_t)

    def all(self, xl):  # [Lg, n, d] -> [K, Lg, n, d]
        k, d = self.k, self.d
        if k == 1:
            return tf.matmul(xl, self.mats_t[0])[None]
        # One GEMM per location for all K: [Lg, n, d] x [Lg, d, K d].
        w = tf.reshape(tf.transpose(self.mats_t, [1, 2, 0, 3]), [-1, d, k * d])
        y = tf.matmul(xl, w)
        y = tf.reshape(y, tf.concat([tf.shape(y)[:2], [k, d]], 0))
        return tf.transpose(y, [2, 0, 1, 3])


class LUSolveOp:
    """`K` banks of `W^{-1}` for `W = P L U`, applied by triangular solves.

    `W^{-1} v = U^{-1} L^{-1} P^{-1} v`: a gather and two batched
    `triangular_solve`s on the data (the same flops as one matmul), so no
    inverse matrix is formed. `lower`, `upper` are `[K, Lg, d, d]`,
    `inv_perm` `[K, Lg, d]`.
    """

    def __init__(self, lower, upper, inv_perm):
        self.lower, self.upper, self.inv_perm = lower, upper, inv_perm
        self.k = int(lower.shape[0])
        self.d = int(lower.shape[-1])

    def _solve(self, xl, lower, upper, inv_perm):
        nb = inv_perm.shape.rank - 1
        perm = list(range(nb)) + [nb + 1, nb]
        xt = tf.transpose(xl, perm)  # [..., Lg, d, n]
        xt = tf.gather(xt, inv_perm, axis=nb, batch_dims=nb)  # P^{-1} v
        xt = tf.linalg.triangular_solve(lower, xt, lower=True)
        xt = tf.linalg.triangular_solve(upper, xt, lower=False)
        return tf.transpose(xt, perm)

    def one(self, j, xl):
        return self._solve(xl, self.lower[j], self.upper[j], self.inv_perm[j])

    def aligned(self, xl):
        return self._solve(xl, self.lower, self.upper, self.inv_perm)

    def all(self, xl):
        if self.k == 1:
            return self.one(0, xl)[None]
        xl = tf.broadcast_to(xl[None], tf.concat([[self.k], tf.shape(xl)], 0))
        return self.aligned(xl)


def bank_linear(x, op, bias, choice, selection, name="bank"):
    """Applies `y[..., h, w, :] = A[c, (h, w)] x[..., h, w, :] + b[c, (h, w)]`.

    Args:
      x: `[..., Hp, Wp, d]`.
      op: a `MatmulOp` or `LUSolveOp` with `Lg = Hp * Wp` or 1.
      bias: `None` or `[K, Lg, d]`.
      choice: `None` (batch form), `[...]` int32 (selection 'sample') or
        `[..., Hp, Wp]` (selection 'location'), already validated.
      selection: 'sample' or 'location'.

    Returns:
      `y` with batch shape `broadcast(batch(x), [K])` (choice None) or
      `broadcast(batch(x), batch(choice))`.

    Layout: locations-major rows (`[Lg, n, d]`) so that every alternative and
    location is one GEMM (or solve) over all its samples; per-sample choice
    partitions the samples by alternative (`tf.dynamic_partition`, one op per
    alternative, `tf.dynamic_stitch`); per-location choice with shared blocks
    partitions (sample, location) pairs; per-location choice with per-location
    blocks computes all `K` in one batched GEMM and picks per location.
    """
    k, d = op.k, op.d
    lg = int(op.mats_t.shape[1]) if isinstance(op, MatmulOp) else int(op.lower.shape[1])
    per_loc = lg > 1
    hp, wp = shape_list(x)[-3:-1]
    l = hp * wp

    def rows_of(xs):  # [n, L, d] -> [Lg, n', d]
        if per_loc:
            return tf.transpose(xs, [1, 0, 2])
        return tf.reshape(xs, [1, -1, d])

    if choice is None:
        mode, xr, out_batch = batch_form_layout(x, 3, k, name)
        m = tf.shape(xr)[0]
        if mode == "expand":
            y = op.all(rows_of(tf.reshape(xr, [m, l, d])))  # [K, Lg, n', d]
            y = tf.reshape(y, [k, -1, m, d] if per_loc else [k, m, l, d])
            y = tf.transpose(y, [2, 0, 1, 3] if per_loc else [1, 0, 2, 3])
        else:
            if per_loc:
                xl = tf.transpose(tf.reshape(xr, [m, k, l, d]), [1, 2, 0, 3])
                y = tf.transpose(op.aligned(xl), [2, 0, 1, 3])
            else:
                xl = tf.reshape(
                    tf.transpose(tf.reshape(xr, [m, k, l * d]), [1, 0, 2]), [k, 1, m * l, d]
                )
                y = tf.transpose(tf.reshape(op.aligned(xl), [k, m, l, d]), [1, 0, 2, 3])
        if bias is not None:
            y = y + bias  # [K, Lg, d]
        return tf.reshape(y, concat_shape(out_batch, [hp, wp, d]))

    xf, cf, out_batch = broadcast_with_choice(x, choice, 3, selection)
    n = tf.shape(xf)[0]
    if selection == "sample":

        def apply(j, xj):  # [n_j, L, d]
            nj = tf.shape(xj)[0]
            y = op.one(j, rows_of(xj))
            y = tf.transpose(y, [1, 0, 2]) if per_loc else tf.reshape(y, [nj, l, d])
            return y if bias is None else y + bias[j]

        y = partition_apply(tf.reshape(xf, [n, l, d]), cf, k, apply)
    elif not per_loc:

        def apply(j, xj):  # [m_j, d]
            y = tf.squeeze(op.one(j, xj[None]), 0)  # (a squeeze's gradient is a reshape)
            return y if bias is None else y + bias[j, 0]

        y = partition_apply(tf.reshape(xf, [n * l, d]), tf.reshape(cf, [-1]), k, apply)
    else:
        xl = tf.transpose(tf.reshape(xf, [n, l, d]), [1, 0, 2])  # [L, N, d]
        ct = tf.transpose(tf.reshape(cf, [n, l]))  # [L, N]
        y = op.all(xl)  # [K,L,N,d]
        if k > 1:
            y = tf.gather(tf.transpose(y, [1, 2, 0, 3]), ct, axis=2, batch_dims=2)
            if bias is not None:
                y = y + tf.gather(tf.transpose(bias, [1, 0, 2]), ct, axis=1, batch_dims=1)
        else:
            y = y[0] if bias is None else y[0] + bias[0][:, None, :]
        y = tf.transpose(y, [1, 0, 2])
    return tf.reshape(y, concat_shape(out_batch, [hp, wp, d]))


# ----------------------------------------------------------------------------
# Bank of elementwise scales: y = s_c * x + b_c.
# ----------------------------------------------------------------------------


def select_params(params, choice, selection, x, event_rank=3):
    """Gathers per-alternative params `[K, (Hp, Wp,) D]` for a choice.

    Returns params broadcastable against `x` (batch shape = broadcast of x's
    and choice's batch), i.e. `[..., (Hp, Wp,) D]` or `[..., Hp, Wp, D]`.
    """
    per_loc = params.shape.rank == 4
    if selection == "sample":
        p = tf.gather(params, choice)  # choice + [(Hp, Wp,) D]
        return p if per_loc else p[..., None, None, :]
    # location: choice [..., Hp, Wp]
    if not per_loc:
        return tf.gather(params, choice)  # [..., Hp, Wp, D]
    k = int(params.shape[0])
    hp, wp, dd = shape_list(params)[1:]
    flat = tf.reshape(params, [-1, dd])  # [K * L, D]
    loc = tf.reshape(tf.range(hp * wp), [hp, wp])
    return (
        tf.gather(flat, choice * (hp * wp) + loc)
        if k > 1
        else tf.broadcast_to(params[0], concat_shape(shape_list(choice), [dd]))
    )


def bank_scale(x, scale, bias, choice, selection, name="bank"):
    """`y = scale[c] * x + bias[c]` (params `[K, (Hp, Wp,) D]`)."""
    if choice is None:
        if scale.shape.rank == 2:
            scale, bias = scale[:, None, None, :], bias[:, None, None, :]
        # TFP batch broadcasting: x [..., Hp, Wp, D] against [K, Hp|1, Wp|1, D].
        mode, xr, out_batch = batch_form_layout(x, 3, int(scale.shape[0]), name)
        if mode == "expand":
            y = xr[:, None] * scale + bias
        else:
            y = xr * scale + bias
        return tf.reshape(y, concat_shape(out_batch, shape_list(x)[-3:]))
    xf, cf, out_batch = broadcast_with_choice(x, choice, 3, selection)
    y = xf * select_params(scale, cf, selection, xf) + select_params(bias, cf, selection, xf)
    return tf.reshape(y, concat_shape(out_batch, shape_list(x)[-3:]))


# ----------------------------------------------------------------------------
# Log-det tables.
# ----------------------------------------------------------------------------


def reduce_table(table, choice, selection, x, event_rank=3):
    """Sums a per-alternative, per-location table `[K, Hp, Wp]` for a choice.

    * `choice=None` -> `[K]` (batch form);
    * 'sample' -> `table.sum((1, 2))[choice]` with the broadcast batch shape;
    * 'location' -> `sum_{h,w} table[choice[..., h, w], h, w]`.
    """
    if choice is None:
        return tf.reduce_sum(table, axis=[-2, -1])
    if selection == "sample":
        x_batch = tf.shape(x)[:-event_rank]
        out = tf.broadcast_dynamic_shape(x_batch, tf.shape(choice))
        totals = tf.reduce_sum(table, axis=[-2, -1])
        v = tf.gather(totals, choice)
        if (
            x.shape[:-event_rank].is_fully_defined()
            and choice.shape.is_fully_defined()
            and x.shape[:-event_rank] == choice.shape
        ):
            return v
        return tf.broadcast_to(v, out)
    k = int(table.shape[0])
    flat = tf.reshape(table, [-1])
    hp, wp = shape_list(table)[1:]
    loc = tf.reshape(tf.range(hp * wp), [hp, wp])
    per = (
        tf.gather(flat, choice * (hp * wp) + loc)
        if k > 1
        else tf.broadcast_to(table[0], tf.shape(choice))
    )
    v = tf.reduce_sum(per, axis=[-2, -1])
    x_batch = tf.shape(x)[:-event_rank]
    out = tf.broadcast_dynamic_shape(x_batch, tf.shape(choice)[:-2])
    return tf.broadcast_to(v, out)


# ----------------------------------------------------------------------------
# Common base class.
# ----------------------------------------------------------------------------


def param_event_ndims(param_rank_at_min, min_event_ndims):
    """A callable `event_ndims(self, x_event_ndims)` for `_parameter_properties`.

    `param_rank_at_min(self)` is the rank of one alternative's parameter when
    transforming an event of rank `min_event_ndims`; the leading `K` axis is the
    batch. Extra event dims (x_event_ndims > min) fold K into the event.
    """

    def fn(self, x_event_ndims=None):
        extra = 0 if x_event_ndims is None else x_event_ndims - min_event_ndims
        return param_rank_at_min(self) + extra

    return fn


def properties(event_ndims_fn, integer=False):
    if integer:
        return parameter_properties.ParameterProperties(
            event_ndims=event_ndims_fn,
            default_constraining_bijector_fn=(parameter_properties.BIJECTOR_NOT_IMPLEMENTED),
        )
    return parameter_properties.ParameterProperties(event_ndims=event_ndims_fn)
