"""`Dense`: a full invertible matrix on the flattened event (the 2014 layer)."""

import numpy as np
import tensorflow as tf
from tensorflow_probability.python.internal import dtype_util, tensor_util

from tfdgmm.bijectors import _bank, registry
from tfdgmm.bijectors.base import BankBijector

__all__ = ["Dense"]


@registry.register
class Dense(BankBijector):
    r"""Full-matrix affine layer on the flattened event, with `K` alternatives.

    The layer of the original deep GMM (van den Oord & Schrauwen, 2014): the
    baseline that local connectivity is measured against. With `n` the number
    of elements of the event (`event_ndims` trailing dims, flattened row-major):

    ```none
    inverse:  z = W_k (x - shift_k),   W = P L U   (on flattened x)
    forward:  x = W_k^{-1} z + shift_k
    ildj   =  sum_i lower_upper_k[i, i]   (= log|det W_k|)
    ```

    LU form as in `BlockDiagonal`. `W` is never composed: `inverse` applies
    the factors to the data (`U x`, then `L`, then the permutation; two GEMMs
    of `N x n x n`), `forward` uses two triangular solves. Composing `W` would
    cost `2 n^3` flops per call (58 GFLOP for a 32x32x3 image).

    `choice`: `None` gives a batch of `K` bijectors (`batch_shape == [K]`);
    otherwise one alternative per sample (`selection` is always 'sample';
    `choice` has the input's batch shape).

    #### Examples

    ```python
    from tfdgmm.bijectors import Dense
    dense = Dense.new(event_shape=[2, 2, 12], num_alternatives=2, seed=0)
    x = tf.random.normal([5, 2, 2, 12])
    z = dense.inverse(x, choice=[0, 1, 1, 0, 1])
    ```

    #### References

    [1]: Aaron van den Oord and Benjamin Schrauwen. Factoring variations in
         natural images with deep Gaussian mixture models. NeurIPS, 2014.
    [2]: Diederik P. Kingma and Prafulla Dhariwal. Glow: Generative flow with
         invertible 1x1 convolutions. NeurIPS, 2018.
    """

    TYPE = "dense"
    CONFIG_KEYS = ("alternatives",)

    @classmethod
    def from_spec(cls, spec, patch_shape, seed, dtype, name):
        """A new bank for a normalised spec (see `BankBijector.from_spec`)."""
        return cls.new(
            tuple(patch_shape),
            num_alternatives=spec["alternatives"],
            seed=seed,
            dtype=dtype,
            name=name,
        )

    def __init__(
        self, lower_upper, permutation, shift=None, event_ndims=3, validate_args=False, name="dense"
    ):
        """Creates the bijector from LU parameters.

        Args:
          lower_upper: float `[K, n, n]`.
          permutation: int32 `[K, n]`, `(P v)_i = v[perm[i]]`.
          shift: optional float `[K, n]` (on the flattened event). Default zero.
          event_ndims: number of trailing input dims flattened into the `n`
            vector (3 for a patch tensor `[Hp, Wp, D]`).
          validate_args: Python `bool`.
          name: Python `str` name.
        """
        parameters = dict(locals())
        with tf.name_scope(name) as name:
            dtype = dtype_util.common_dtype([lower_upper, shift], dtype_hint=tf.float32)
            self._lower_upper = tensor_util.convert_nonref_to_tensor(
                lower_upper, dtype=dtype, name="lower_upper"
            )
            self._permutation = tensor_util.convert_nonref_to_tensor(
                permutation, dtype_hint=tf.int32, name="permutation"
            )
            self._shift = (
                None
                if shift is None
                else tensor_util.convert_nonref_to_tensor(shift, dtype=dtype, name="shift")
            )
            shape = self._lower_upper.shape
            if shape.rank != 3 or not shape.is_fully_defined() or shape[-1] != shape[-2]:
                raise ValueError(
                    f"{name}: `lower_upper` must have static shape [K, n, n], got {shape}."
                )
            if self._permutation.shape != shape[:-1]:
                raise ValueError(
                    f"{name}: `permutation` must have shape "
                    f"{shape[:-1]}, got {self._permutation.shape}."
                )
            if self._shift is not None and self._shift.shape != shape[:-1]:
                raise ValueError(
                    f"{name}: `shift` must have shape {shape[:-1]}, got {self._shift.shape}."
                )
            self._num_alternatives = int(shape[0])
            self._size = int(shape[-1])
            self._event_ndims = int(event_ndims)
            self._selection = "sample"
            super().__init__(
                forward_min_event_ndims=self._event_ndims,
                is_constant_jacobian=True,
                validate_args=validate_args,
                parameters=parameters,
                dtype=dtype,
                name=name,
            )

    @classmethod
    def new(
        cls,
        event_shape,
        num_alternatives=1,
        seed=None,
        dtype=tf.float32,
        validate_args=False,
        name="dense",
    ):
        """Random-orthogonal initialisation (see `BlockDiagonal.new`).

        Args:
          event_shape: the event shape (e.g. `[Hp, Wp, D]`) or an int `n`.
          num_alternatives: `K`.
          seed, dtype, validate_args, name: as for `BlockDiagonal.new`.
        """
        event_shape = (
            [int(event_shape)] if np.ndim(event_shape) == 0 else [int(s) for s in event_shape]
        )
        n = int(np.prod(event_shape))
        k = int(num_alternatives)
        lower_upper, perm = _bank.random_orthogonal_lu((k,), n, seed)
        return cls(
            lower_upper=tf.Variable(
                lower_upper.astype(tf.as_dtype(dtype).as_numpy_dtype), name="lower_upper"
            ),
            permutation=tf.Variable(perm, trainable=False, name="permutation"),
            shift=tf.Variable(tf.zeros([k, n], dtype), name="shift"),
            event_ndims=len(event_shape),
            validate_args=validate_args,
            name=name,
        )

    @classmethod
    def _parameter_properties(cls, dtype):
        def rank(extra):
            def fn(self, x_event_ndims=None):
                more = 0 if x_event_ndims is None else x_event_ndims - self._event_ndims
                return extra + more

            return fn

        return dict(
            lower_upper=_bank.properties(rank(2)),
            permutation=_bank.properties(rank(1), integer=True),
            shift=_bank.properties(rank(1)),
        )

    @property
    def lower_upper(self):
        return self._lower_upper

    @property
    def permutation(self):
        return self._permutation

    @property
    def shift(self):
        return self._shift

    @property
    def size(self):
        """`n`, the flattened event size."""
        return self._size

    def matrix(self):
        """`W = P L U`, `[K, n, n]` (composed; for tests and export only)."""
        return _bank.lu_matrix(
            tf.convert_to_tensor(self._lower_upper), tf.convert_to_tensor(self._permutation)
        )

    def inverse_log_det_table(self, event_shape):
        """`[K] + event_shape[:-1]`: `log|det W_k|` at the first location, zeros
        elsewhere (so that summing over locations is exact)."""
        event_shape = list(event_shape)
        ld = _bank.lu_log_det(tf.convert_to_tensor(self._lower_upper))
        spatial = event_shape[:-1]
        size = int(np.prod(spatial)) if spatial else 1
        t = tf.concat([ld[:, None], tf.zeros([self._num_alternatives, size - 1], ld.dtype)], axis=1)
        return tf.reshape(t, [self._num_alternatives] + spatial)

    # -- implementation ---------------------------------------------------------

    def _flatten_event(self, x, what):
        nd = self._event_ndims
        rank = x.shape.rank
        if rank is not None and rank < nd:
            raise ValueError(f"{self.name}: {what} must have rank >= {nd}, got shape {x.shape}.")
        ev = x.shape[-nd:]
        if ev.is_fully_defined() and ev.num_elements() != self._size:
            raise ValueError(
                f"{self.name}: {what} event {ev} has "
                f"{ev.num_elements()} elements, expected {self._size}."
            )
        x = _bank.maybe_assert_finite(x, self.validate_args, self.name, what)
        full = _bank.shape_list(x)
        return (tf.reshape(x, _bank.concat_shape(full[:-nd], [self._size])), full[-nd:])

    def _factors(self):
        lu = tf.convert_to_tensor(self._lower_upper)
        lower, upper = _bank.lu_factors(lu)
        perm = tf.convert_to_tensor(self._permutation)
        shift = None if self._shift is None else tf.convert_to_tensor(self._shift)
        return lower, upper, perm, shift

    def _apply(self, x, choice, inverse):
        """Core on flattened x `[..., n]` (rows)."""
        lower, upper, perm, shift = self._factors()
        k = self._num_alternatives

        def density(j, v):  # v [m, n] -> W_j (v - shift_j)
            if shift is not None:
                v = v - shift[j]
            v = tf.matmul(v, upper[j], transpose_b=True)  # U v
            v = tf.matmul(v, lower[j], transpose_b=True)  # L U v
            return tf.gather(v, perm[j], axis=-1)  # P L U v

        def sampling(j, v):  # v [m, n] -> W_j^{-1} v + shift_j
            inv_perm = tf.math.invert_permutation(perm[j])
            v = tf.transpose(tf.gather(v, inv_perm, axis=-1))  # P^{-1} v, [n, m]
            v = tf.linalg.triangular_solve(lower[j], v, lower=True)
            v = tf.transpose(tf.linalg.triangular_solve(upper[j], v, lower=False))
            return v if shift is None else v + shift[j]

        fn = density if inverse else sampling
        if choice is None:
            mode, xr, out_batch = _bank.batch_form_layout(x, 1, k, self.name)
            if mode == "expand" and k == 1:
                y = fn(0, xr)[:, None]
            else:
                if mode == "expand":
                    xr = tf.broadcast_to(xr[:, None], [tf.shape(xr)[0], k, self._size])
                y = tf.stack([fn(j, xr[:, j]) for j in range(k)], axis=1)
            return tf.reshape(y, _bank.concat_shape(out_batch, [self._size]))
        xf, cf, out_batch = _bank.broadcast_with_choice(x, choice, 1, "sample")
        y = _bank.partition_apply(xf, cf, k, fn)
        return tf.reshape(y, _bank.concat_shape(out_batch, [self._size]))

    def _transform(self, x, choice, inverse):
        what = "input to inverse" if inverse else "input to forward"
        xf, event = self._flatten_event(x, what)
        choice = _bank.prepare_choice(
            choice, self._num_alternatives, "sample", None, self.validate_args, self.name
        )
        y = self._apply(xf, choice, inverse)
        return tf.reshape(y, _bank.concat_shape(_bank.shape_list(y)[:-1], event))

    def _forward(self, x, choice=None):
        return self._transform(x, choice, inverse=False)

    def _inverse(self, y, choice=None):
        return self._transform(y, choice, inverse=True)

    def _ildj(self, x, choice):
        xf, _ = self._flatten_event(x, "input")
        choice = _bank.prepare_choice(
            choice, self._num_alternatives, "sample", None, self.validate_args, self.name
        )
        ld = _bank.lu_log_det(tf.convert_to_tensor(self._lower_upper))
        if choice is None:
            return ld
        out = tf.broadcast_dynamic_shape(tf.shape(xf)[:-1], tf.shape(choice))
        return tf.broadcast_to(tf.gather(ld, choice), out)

    def _inverse_log_det_jacobian(self, y, choice=None):
        return self._ildj(y, choice)

    def _forward_log_det_jacobian(self, x, choice=None):
        return -self._ildj(x, choice)

    def _parameter_control_dependencies(self, is_init):
        if not self.validate_args:
            return []
        assertions = []
        if is_init != tensor_util.is_ref(self._lower_upper):
            assertions.append(
                tf.debugging.assert_all_finite(
                    self._lower_upper, message=f"{self.name}: `lower_upper` contains NaN or Inf."
                )
            )
        if is_init != tensor_util.is_ref(self._permutation):
            perm = tf.convert_to_tensor(self._permutation)
            assertions.append(
                tf.debugging.assert_equal(
                    tf.sort(perm, axis=-1),
                    tf.broadcast_to(tf.range(self._size, dtype=perm.dtype), tf.shape(perm)),
                    message=f"{self.name}: `permutation` is not a permutation of "
                    f"range({self._size}).",
                )
            )
        return assertions
