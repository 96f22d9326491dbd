"""`Diagonal`: elementwise scale and shift on a patch tensor, `K` alternatives."""

import tensorflow as tf
from tensorflow_probability.python.internal import dtype_util, tensor_util

from tfdgmm.bijectors import _bank, registry
from tfdgmm.bijectors._bank import SELECTIONS
from tfdgmm.bijectors.base import BankBijector

__all__ = ["Diagonal"]


@registry.register
class Diagonal(BankBijector):
    r"""Elementwise affine layer (block size 1), with `K` alternatives.

    The special case of `BlockDiagonal` with `1 x 1` blocks (van den Oord &
    Dambre, 2015, Sec. 2.1, "Diagonal matrices"). On a patch tensor event
    `[Hp, Wp, D]`:

    ```none
    inverse:  z = (x - shift_k) * exp(-log_scale_k)
    forward:  x = z * exp(log_scale_k) + shift_k
    ildj   =  -sum_{h, w, i} log_scale_k[h, w, i]
    ```

    Parameters `[K, D]` are shared by all locations; `[K, Hp, Wp, D]` are per
    location. `choice` works as in `BlockDiagonal`: `None` -> batch of `K`
    bijectors (`batch_shape == [K]`); `selection='sample'` -> one alternative
    per sample (`choice` has the input's batch shape); `selection='location'`
    -> one per sample and location (`choice` is `batch + [Hp, Wp]`).

    #### Examples

    ```python
    from tfdgmm.bijectors import Diagonal
    diag = Diagonal.new(channels=12, num_alternatives=2,
                        selection='location', seed=0)
    x = tf.random.normal([5, 2, 2, 12])
    c = tf.zeros([5, 2, 2], tf.int32)
    z = diag.inverse(x, choice=c)
    ildj = diag.inverse_log_det_jacobian(x, choice=c)   # [5]
    ```

    #### References

    [1]: Aaron van den Oord and Joni Dambre. Locally-connected transformations
         for deep GMMs. ICML Deep Learning Workshop, 2015.
    """

    TYPE = "diagonal"
    CONFIG_KEYS = ("alternatives", "selection", "per_location")

    @classmethod
    def normalize_spec(cls, spec, previous):
        """Defaults: 1 alternative, `'sample'` selection, `per_location` True."""
        del previous
        selection = spec.get("selection", "sample")
        if selection not in SELECTIONS:
            raise ValueError(f"selection must be 'sample' or 'location'; got {selection!r}")
        return {
            "alternatives": int(spec.get("alternatives", 1)),
            "selection": selection,
            "per_location": bool(spec.get("per_location", True)),
        }

    @classmethod
    def from_spec(cls, spec, patch_shape, seed, dtype, name):
        """A new bank for a normalised spec (see `BankBijector.from_spec`)."""
        hp, wp, d = patch_shape
        return cls.new(
            d,
            spatial_shape=(hp, wp) if spec["per_location"] else None,
            selection=spec["selection"],
            num_alternatives=spec["alternatives"],
            seed=seed,
            dtype=dtype,
            name=name,
        )

    def __init__(
        self, log_scale, shift=None, selection="sample", validate_args=False, name="diagonal"
    ):
        """Creates the bijector.

        Args:
          log_scale: float `[K, D]` or `[K, Hp, Wp, D]`.
          shift: optional float, same shape as `log_scale`. Default: zero.
          selection: 'sample' or 'location'.
          validate_args: Python `bool`; check parameters, inputs and `choice`.
          name: Python `str` name.
        """
        parameters = dict(locals())
        with tf.name_scope(name) as name:
            dtype = dtype_util.common_dtype([log_scale, shift], dtype_hint=tf.float32)
            self._log_scale = tensor_util.convert_nonref_to_tensor(
                log_scale, dtype=dtype, name="log_scale"
            )
            self._shift = (
                None
                if shift is None
                else tensor_util.convert_nonref_to_tensor(shift, dtype=dtype, name="shift")
            )
            self._selection = _bank.check_selection(selection)
            shape = self._log_scale.shape
            if shape.rank not in (2, 4) or not shape.is_fully_defined():
                raise ValueError(
                    f"{name}: `log_scale` must have static shape [K, D] or "
                    f"[K, Hp, Wp, D], got {shape}."
                )
            if self._shift is not None and self._shift.shape != shape:
                raise ValueError(
                    f"{name}: `shift` must have the shape of `log_scale` "
                    f"{shape}, got {self._shift.shape}."
                )
            self._num_alternatives = int(shape[0])
            self._channels = int(shape[-1])
            self._spatial_shape = tuple(shape[1:3].as_list()) if shape.rank == 4 else None
            super().__init__(
                forward_min_event_ndims=3,
                is_constant_jacobian=True,
                validate_args=validate_args,
                parameters=parameters,
                dtype=dtype,
                name=name,
            )

    @classmethod
    def new(
        cls,
        channels,
        num_alternatives=1,
        spatial_shape=None,
        selection="sample",
        seed=None,
        init_stddev=0.05,
        dtype=tf.float32,
        validate_args=False,
        name="diagonal",
    ):
        """Creates trainable `tf.Variable`s near the identity.

        With `K = 1` the layer starts as the identity; with `K > 1` the
        alternatives get independent `N(0, init_stddev^2)` perturbations of
        `log_scale` and `shift` to break their symmetry.

        Args:
          channels: `D`.
          num_alternatives: `K`.
          spatial_shape: `None` (shared by locations) or `(Hp, Wp)`.
          selection: 'sample' or 'location'.
          seed: int or None.
          init_stddev: perturbation scale for `K > 1`.
          dtype, validate_args, name: as in the constructor.
        """
        lead = (int(num_alternatives),) + (
            tuple(int(s) for s in spatial_shape) if spatial_shape is not None else ()
        )
        shape = lead + (int(channels),)
        rng = _bank.seed_stream(seed)
        std = init_stddev if num_alternatives > 1 else 0.0
        np_dtype = tf.as_dtype(dtype).as_numpy_dtype
        log_scale = (std * rng.standard_normal(shape)).astype(np_dtype)
        shift = (std * rng.standard_normal(shape)).astype(np_dtype)
        return cls(
            log_scale=tf.Variable(log_scale, name="log_scale"),
            shift=tf.Variable(shift, name="shift"),
            selection=selection,
            validate_args=validate_args,
            name=name,
        )

    @classmethod
    def _parameter_properties(cls, dtype):
        rank = _bank.param_event_ndims(lambda self: 1 + (2 if self._spatial_shape else 0), 3)
        return dict(log_scale=_bank.properties(rank), shift=_bank.properties(rank))

    @property
    def log_scale(self):
        return self._log_scale

    @property
    def shift(self):
        return self._shift

    @property
    def channels(self):
        return self._channels

    @property
    def spatial_shape(self):
        return self._spatial_shape

    def inverse_log_det_table(self, event_shape=None):
        """Per-alternative, per-location ildj terms `[K, Hp, Wp]`."""
        t = -tf.reduce_sum(tf.convert_to_tensor(self._log_scale), axis=-1)
        if self._spatial_shape is not None:
            return t
        hp, wp = self._default_event_spatial(event_shape)
        return tf.broadcast_to(t[:, None, None], [self._num_alternatives, hp, wp])

    def _check_input(self, x, what):
        sp = self._spatial_shape or (None, None)
        _bank.check_event(x, 3, [sp[0], sp[1], self._channels], self.name, what)
        return _bank.maybe_assert_finite(x, self.validate_args, self.name, what)

    def _params(self):
        ls = tf.convert_to_tensor(self._log_scale)
        shift = tf.zeros_like(ls) if self._shift is None else tf.convert_to_tensor(self._shift)
        return ls, shift

    def _inverse(self, y, choice=None):
        y = self._check_input(y, "input to inverse")
        choice = self._choice(choice, y)
        ls, shift = self._params()
        inv_scale = tf.exp(-ls)
        return _bank.bank_scale(
            y, inv_scale, -shift * inv_scale, choice, self._selection, self.name
        )

    def _forward(self, x, choice=None):
        x = self._check_input(x, "input to forward")
        choice = self._choice(choice, x)
        ls, shift = self._params()
        return _bank.bank_scale(x, tf.exp(ls), shift, choice, self._selection, self.name)

    def _ildj(self, x, choice):
        _bank.check_event(x, 3, [None, None, self._channels], self.name)
        choice = self._choice(choice, x)
        table = self.inverse_log_det_table(_bank.shape_list(x)[-3:])
        return _bank.reduce_table(table, choice, self._selection, x)

    def _inverse_log_det_jacobian(self, y, choice=None):
        return self._ildj(y, choice)

    def _forward_log_det_jacobian(self, x, choice=None):
        return -self._ildj(x, choice)

    def _parameter_control_dependencies(self, is_init):
        if not self.validate_args:
            return []
        assertions = []
        for p, n in ((self._log_scale, "log_scale"), (self._shift, "shift")):
            if p is not None and is_init != tensor_util.is_ref(p):
                assertions.append(
                    tf.debugging.assert_all_finite(
                        p, message=f"{self.name}: `{n}` contains NaN or Inf."
                    )
                )
        return assertions
