"""Shared machinery for banks of K alternative transformations (private).

Everything that more than one bijector needs lives here, once:

* LU parameterisation (Glow-style): composing `W = P L U`, its inverse, the
  log-determinant, and the well-conditioned random-orthogonal initialisation.
* `choice` handling: validation (dtype, shape, range) and broadcasting of the
  input batch against the choice batch.
* Applying a bank of per-location matrices (`bank_matmul`) or elementwise
  scales (`bank_scale`) in the three forms described in `docs/DESIGN.md`:
  batch form (`choice=None`, batch shape `[K]`), per-sample choice
  (`selection='sample'`) and per-location choice (`selection='location'`).
* Reducing a per-alternative, per-location log-det table with a choice.

Conventions: an event is `[Hp, Wp, d]` (the patch tensor); `L = Hp * Wp`.
Per-location parameters carry `(Hp, Wp)` right after the leading `K` axis.
"""

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tensorflow_probability.python.internal import parameter_properties

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
    raise ValueError(
        f"`selection` must be one of {SELECTIONS}, got {selection!r}.")
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
        f"{_fmt(expected)}), got shape {x.shape}.")
  got = x.shape[-event_rank:].as_list()
  for g, e in zip(got, expected):
    if g is not None and e is not None and g != e:
      raise ValueError(
          f"{name}: {what} event shape must be {_fmt(expected)}, got "
          f"{got} (full shape {x.shape}).")


def _fmt(shape):
  return "[" + ", ".join("?" if s is None else str(s) for s in shape) + "]"


def maybe_assert_finite(x, validate_args, name, what="input"):
  if not validate_args:
    return x
  return tf.debugging.assert_all_finite(
      x, message=f"{name}: {what} contains NaN or Inf.")


# ----------------------------------------------------------------------------
# LU parameterisation.
# ----------------------------------------------------------------------------


def lu_factors(lower_upper):
  """Unit-lower `L` and upper `U` (diagonal `exp(diag(lower_upper))`)."""
  diag = tf.linalg.diag_part(lower_upper)
  lower = tf.linalg.set_diag(
      tf.linalg.band_part(lower_upper, -1, 0), tf.ones_like(diag))
  upper = tf.linalg.set_diag(
      tf.linalg.band_part(lower_upper, 0, -1), tf.exp(diag))
  return lower, upper


def _gather_last_axes(params, perm, axis_from_end):
  """Gathers `params` along axis -2 (rows) or -1 (cols) with batched `perm`."""
  rank = params.shape.rank
  return tf.gather(params, perm, axis=rank - axis_from_end,
                   batch_dims=perm.shape.rank - 1)


def lu_matrix(lower_upper, permutation):
  """`W = P L U` with `(P v)_i = v[perm[i]]`, batched over leading dims."""
  lower, upper = lu_factors(lower_upper)
  return _gather_last_axes(tf.linalg.matmul(lower, upper), permutation, 2)


def lu_matrix_inverse(lower_upper, permutation):
  """`W^{-1} = U^{-1} L^{-1} P^T` via two triangular solves (no `inv`)."""
  lower, upper = lu_factors(lower_upper)
  eye = tf.eye(tf.shape(lower_upper)[-1], batch_shape=tf.shape(lower_upper)[:-2],
               dtype=lower_upper.dtype)
  lu_inv = tf.linalg.triangular_solve(
      upper, tf.linalg.triangular_solve(lower, eye, lower=True), lower=False)
  # (A P^T)[:, j] = A[:, perm[j]].
  return _gather_last_axes(lu_inv, permutation, 1)


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


def prepare_choice(choice, num_alternatives, selection, spatial_shape,
                   validate_args, name):
  """Validates `choice`; returns an int32 Tensor (or None).

  Static problems (dtype, shape, known out-of-range values) raise at once;
  dynamic ones are asserted when `validate_args`.
  """
  if choice is None:
    return None
  k = num_alternatives
  choice = tf.convert_to_tensor(choice, dtype_hint=tf.int32, name="choice")
  if not choice.dtype.is_integer:
    raise TypeError(f"{name}: `choice` must be an integer tensor, got dtype "
                    f"{choice.dtype.name}.")
  if selection == "location" and choice.shape.rank is not None:
    hp, wp = spatial_shape
    got = choice.shape.as_list()
    if (len(got) < 2 or (got[-2] is not None and hp is not None and got[-2] != hp)
        or (got[-1] is not None and wp is not None and got[-1] != wp)):
      raise ValueError(
          f"{name}: with selection='location', `choice` must have shape "
          f"batch + [Hp, Wp] = batch + {_fmt([hp, wp])}, got {choice.shape}.")
  static = tf.get_static_value(choice)
  if static is not None and np.size(static):
    lo, hi = int(np.min(static)), int(np.max(static))
    if lo < 0 or hi >= k:
      raise ValueError(
          f"{name}: `choice` out of range: values must be in [0, {k}) "
          f"(num_alternatives={k}), got min {lo}, max {hi}.")
  choice = tf.cast(choice, tf.int32)
  if validate_args and static is None:
    msg = (f"{name}: `choice` out of range: values must be in [0, {k}) "
           f"(num_alternatives={k}).")
    asserts = [tf.debugging.assert_non_negative(choice, message=msg),
               tf.debugging.assert_less(choice, tf.constant(k, tf.int32),
                                        message=msg)]
    with tf.control_dependencies(asserts):
      choice = tf.identity(choice)
  return choice


def broadcast_with_choice(x, choice, event_rank, selection):
  """Broadcasts `x` and `choice` to a common batch; flattens the batch.

  Returns `(x_flat [N, *event], choice_flat [N] or [N, Hp, Wp], out_batch)`.
  """
  x_batch = x.shape[:-event_rank]
  c_batch = choice.shape if selection == "sample" else choice.shape[:-2]
  if (x_batch.is_fully_defined() and c_batch.is_fully_defined()):
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


def batch_form_layout(x, event_rank, num_alternatives):
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
    lead = shape_list(x)[:b.rank - 1] if b.rank else []
    return ("expand", tf.reshape(x, concat_shape([-1], event)),
            concat_shape(lead, [k]))
  if b.rank is not None and b[-1] == k:
    return ("aligned", tf.reshape(x, concat_shape([-1, k], event)),
            shape_list(x)[:b.rank])
  xs = tf.shape(x)[:-event_rank]
  out_batch = tf.broadcast_dynamic_shape(xs, tf.constant([k], tf.int32))
  x = tf.broadcast_to(x, concat_shape(out_batch, event))
  return "aligned", tf.reshape(x, concat_shape([-1, k], event)), out_batch


def partition_apply(x, choice, num_alternatives, fn):
  """`y[i] = fn(k, x[i])` for `k = choice[i]`: one call of `fn` per group.

  Uses `tf.dynamic_partition` / `tf.dynamic_stitch` so that each alternative
  is applied to its own samples with one dense op (no per-sample copies of
  parameters).
  """
  k = num_alternatives
  if k == 1:
    return fn(0, x)
  parts = tf.dynamic_partition(x, choice, k)
  idx = tf.dynamic_partition(tf.range(tf.shape(x)[0]), choice, k)
  return tf.dynamic_stitch(idx, [fn(j, parts[j]) for j in range(k)])


# ----------------------------------------------------------------------------
# Bank of per-location matrices: y = M_c x + b_c at each location.
# ----------------------------------------------------------------------------


def bank_matmul(x, mats, bias, choice, selection):
  """Applies `y[..., h, w, :] = M[c, (h, w)] @ x[..., h, w, :] + b[c, (h, w)]`.

  Args:
    x: `[..., Hp, Wp, d]`.
    mats: `[K, d, d]` (same matrix at every location) or `[K, Hp, Wp, d, d]`.
    bias: `None` or `[K, d]` / `[K, Hp, Wp, d]` (matching `mats`).
    choice: `None` (batch form), `[...]` int32 (selection 'sample') or
      `[..., Hp, Wp]` (selection 'location'), already validated.
    selection: 'sample' or 'location'.

  Returns:
    `y` with batch shape `broadcast(batch(x), [K])` (choice None) or
    `broadcast(batch(x), batch(choice))`.
  """
  k = int(mats.shape[0])
  d = int(mats.shape[-1])
  per_loc = mats.shape.rank == 5
  hp, wp = shape_list(x)[-3:-1]
  if per_loc:
    mats = tf.reshape(mats, [k, -1, d, d])          # [K, L, d, d]
    if bias is not None:
      bias = tf.reshape(bias, [k, -1, d])           # [K, L, d]
  mats_t = tf.linalg.matrix_transpose(mats)          # x @ mats_t == M x

  if choice is None:
    mode, xr, out_batch = batch_form_layout(x, 3, k)
    if mode == "expand":
      y = _expand_matmul(xr, mats_t, per_loc, k, d, hp * wp)  # [M,K,L,d]
    else:
      y = _aligned_matmul(xr, mats_t, per_loc, k, d, hp * wp)
    if bias is not None:
      y = y + (bias if per_loc else bias[:, None, :])
    return tf.reshape(y, concat_shape(out_batch, [hp, wp, d]))

  xf, cf, out_batch = broadcast_with_choice(x, choice, 3, selection)
  if selection == "sample":
    y = _sample_matmul(xf, cf, mats_t, bias, per_loc, k, d, hp * wp)
  else:
    y = _location_matmul(xf, cf, mats_t, bias, per_loc, k, d, hp * wp)
  return tf.reshape(y, concat_shape(out_batch, [hp, wp, d]))


def _cat_alternatives(mats_t, per_loc, k, d):
  """`[K, (L,) d, d]` -> `[(L,) d, K * d]` so one GEMM serves all K."""
  if per_loc:
    return tf.reshape(tf.transpose(mats_t, [1, 2, 0, 3]), [-1, d, k * d])
  return tf.reshape(tf.transpose(mats_t, [1, 0, 2]), [d, k * d])


def _expand_matmul(x, mats_t, per_loc, k, d, l):
  """x `[M, Hp, Wp, d]` -> `[M, K, L, d]`: one (batched) GEMM for all K."""
  w = _cat_alternatives(mats_t, per_loc, k, d)
  if per_loc:
    m = tf.shape(x)[0]
    xl = tf.transpose(tf.reshape(x, [m, l, d]), [1, 0, 2])
    y = tf.matmul(xl, w)                             # [L, M, K d]
    y = tf.reshape(y, [l, m, k, d])
    return tf.transpose(y, [1, 2, 0, 3])
  m = tf.shape(x)[0]
  y = tf.matmul(tf.reshape(x, [-1, d]), w)           # [M L, K d]
  y = tf.reshape(y, [m, l, k, d])
  return y if k == 1 else tf.transpose(y, [0, 2, 1, 3])


def _aligned_matmul(x, mats_t, per_loc, k, d, l):
  """x `[M, K, Hp, Wp, d]` -> `[M, K, L, d]` with alternative k on slot k."""
  m = tf.shape(x)[0]
  if per_loc:
    xl = tf.transpose(tf.reshape(x, [m, k, l, d]), [1, 2, 0, 3])  # [K,L,M,d]
    y = tf.matmul(xl, mats_t)
    return tf.transpose(y, [2, 0, 1, 3])
  xk = tf.reshape(tf.transpose(tf.reshape(x, [m, k, l * d]), [1, 0, 2]),
                  [k, m * l, d])                                   # [K,M L,d]
  y = tf.matmul(xk, mats_t)
  return tf.transpose(tf.reshape(y, [k, m, l, d]), [1, 0, 2, 3])


def _sample_matmul(x, c, mats_t, bias, per_loc, k, d, l):
  """x `[N, Hp, Wp, d]`, c `[N]`: partition samples, one GEMM per group."""
  n = tf.shape(x)[0]

  def apply(j, xj):
    nj = tf.shape(xj)[0]
    if per_loc:
      xl = tf.transpose(xj, [1, 0, 2])                              # [L,nj,d]
      y = tf.transpose(tf.matmul(xl, mats_t[j]), [1, 0, 2])       # [nj,L,d]
    else:
      y = tf.reshape(tf.matmul(tf.reshape(xj, [nj * l, d]), mats_t[j]),
                     [nj, l, d])
    if bias is not None:
      y = y + bias[j]
    return y

  y = partition_apply(tf.reshape(x, [n, l, d]), c, k, apply)
  return y


def _location_matmul(x, c, mats_t, bias, per_loc, k, d, l):
  """x `[N, Hp, Wp, d]`, c `[N, Hp, Wp]`."""
  n = tf.shape(x)[0]
  if not per_loc:
    # Flatten (sample, location) pairs; one GEMM per alternative.
    def apply(j, xj):
      y = tf.matmul(xj, mats_t[j])
      return y if bias is None else y + bias[j]
    return partition_apply(tf.reshape(x, [n * l, d]), tf.reshape(c, [-1]), k,
                           apply)
  # Per-location parameters and per-location choice: the pairs of one
  # alternative use different matrices, so compute all K with one batched
  # GEMM over locations ([L, N, d] x [L, d, K d]) and pick per location.
  xl = tf.transpose(tf.reshape(x, [n, l, d]), [1, 0, 2])            # [L,N,d]
  ct = tf.transpose(tf.reshape(c, [n, l]))                           # [L,N]
  if k == 1:
    y = tf.matmul(xl, mats_t[0])
    if bias is not None:
      y = y + bias[0][:, None, :]
  else:
    w = _cat_alternatives(mats_t, True, k, d)
    y_all = tf.reshape(tf.matmul(xl, w), [l, n, k, d])
    y = tf.gather(y_all, ct, axis=2, batch_dims=2)                   # [L,N,d]
    if bias is not None:
      y = y + tf.gather(tf.transpose(bias, [1, 0, 2]), ct, axis=1,
                        batch_dims=1)
  return tf.transpose(y, [1, 0, 2])


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
    p = tf.gather(params, choice)                   # choice + [(Hp, Wp,) D]
    return p if per_loc else p[..., None, None, :]
  # location: choice [..., Hp, Wp]
  if not per_loc:
    return tf.gather(params, choice)                # [..., Hp, Wp, D]
  k = int(params.shape[0])
  hp, wp, dd = shape_list(params)[1:]
  flat = tf.reshape(params, [-1, dd])               # [K * L, D]
  loc = tf.reshape(tf.range(hp * wp), [hp, wp])
  return tf.gather(flat, choice * (hp * wp) + loc) if k > 1 else \
      tf.broadcast_to(params[0], concat_shape(shape_list(choice), [dd]))


def bank_scale(x, scale, bias, choice, selection):
  """`y = scale[c] * x + bias[c]` (params `[K, (Hp, Wp,) D]`)."""
  if choice is None:
    if scale.shape.rank == 2:
      scale, bias = scale[:, None, None, :], bias[:, None, None, :]
    # TFP batch broadcasting: x [..., Hp, Wp, D] against [K, Hp|1, Wp|1, D].
    mode, xr, out_batch = batch_form_layout(x, 3, int(scale.shape[0]))
    if mode == "expand":
      y = xr[:, None] * scale + bias
    else:
      y = xr * scale + bias
    return tf.reshape(y, concat_shape(out_batch, shape_list(x)[-3:]))
  xf, cf, out_batch = broadcast_with_choice(x, choice, 3, selection)
  y = xf * select_params(scale, cf, selection, xf) + select_params(
      bias, cf, selection, xf)
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
    if x.shape[:-event_rank].is_fully_defined() and choice.shape.is_fully_defined() \
        and x.shape[:-event_rank] == choice.shape:
      return v
    return tf.broadcast_to(v, out)
  k = int(table.shape[0])
  flat = tf.reshape(table, [-1])
  hp, wp = shape_list(table)[1:]
  loc = tf.reshape(tf.range(hp * wp), [hp, wp])
  per = tf.gather(flat, choice * (hp * wp) + loc) if k > 1 else \
      tf.broadcast_to(table[0], tf.shape(choice))
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
        default_constraining_bijector_fn=(
            parameter_properties.BIJECTOR_NOT_IMPLEMENTED))
  return parameter_properties.ParameterProperties(event_ndims=event_ndims_fn)


class BankBijector(tfp.bijectors.Bijector):
  """Base class: a bank of `K` alternatives selected by a `choice` keyword."""

  @property
  def num_alternatives(self):
    """Python int `K`, the number of alternatives (batch shape `[K]`)."""
    return self._num_alternatives

  @property
  def selection(self):
    """'sample' (shared blocks) or 'location' (unshared blocks)."""
    return self._selection

  def _choice(self, choice, x):
    spatial = x.shape[-3:-1].as_list() if x.shape.rank is not None else [None, None]
    return prepare_choice(choice, self._num_alternatives, self._selection,
                          spatial, self.validate_args, self.name)

  def _default_event_spatial(self, event_shape):
    if event_shape is None:
      raise ValueError(f"{self.name}: `event_shape` is required (the "
                       "parameters are shared by all locations).")
    if isinstance(event_shape, tf.TensorShape):
      event_shape = event_shape.as_list()
    event_shape = list(event_shape)
    return event_shape[-3], event_shape[-2]
