"""`HalfConvolution`: additive coupling by a convolution of the other half."""

import tensorflow as tf
from tensorflow_probability.python.internal import dtype_util, tensor_util

from tfdgmm.bijectors import _bank, registry
from tfdgmm.bijectors._bank import SELECTIONS
from tfdgmm.bijectors.base import BankBijector

__all__ = ["HalfConvolution"]

_UPDATES = ("first", "second")


@registry.register
class HalfConvolution(BankBijector):
    r"""Half-convolution (additive coupling) on a patch tensor, `K` alternatives.

    The channels of the patch tensor event `[Hp, Wp, D]` are split into a
    conditioning half `x_a` and an updated half `x_b`; the updated half is
    shifted by a convolution of the conditioning half (van den Oord & Dambre,
    2015, Sec. 2.2; Dinh et al., 2014):

    ```none
    forward:  x_b' = x_b + conv(x_a, w_k),   x_a' = x_a
    inverse:  x_b  = x_b' - conv(x_a', w_k)
    fldj = ildj = 0
    ```

    As a matrix on the flattened event this is block-triangular with identity
    diagonal blocks, hence volume preserving and exactly invertible. `conv` is
    a stride-1 cross-correlation (`tf.nn.conv2d`) with 'SAME' zero padding of
    `x_a` inside the convolution; the tensor itself is never padded or cropped.

    `update='second'` updates channels `[D_cond:]` from `[:D_cond]`;
    `update='first'` updates `[:D_upd]` from `[D_upd:]`. Alternate it between
    consecutive layers so that both halves get mixed.

    `kernel` has shape `[K, kh, kw, D_cond, D_upd]`. `choice=None` gives a batch
    of `K` bijectors; `selection='sample'` takes one kernel per sample;
    `selection='location'` takes, at every output location, the kernel named by
    `choice[..., h, w]`.

    #### Examples

    ```python
    from tfdgmm.bijectors import HalfConvolution
    hc0 = HalfConvolution.new(channels=12, kernel_size=5, update='second')
    hc1 = HalfConvolution.new(channels=12, kernel_size=5, update='first')
    x = tf.random.normal([5, 4, 4, 12])
    z = hc1.inverse(hc0.inverse(x))
    ```

    #### References

    [1]: Aaron van den Oord and Joni Dambre. Locally-connected transformations
         for deep GMMs. ICML Deep Learning Workshop, 2015.
    [2]: Laurent Dinh, David Krueger and Yoshua Bengio. NICE: Non-linear
         independent components estimation. 2014. https://arxiv.org/abs/1410.8516
    """

    TYPE = "half_convolution"
    CONFIG_KEYS = ("kernel_size", "alternatives", "selection", "update")

    @classmethod
    def normalize_spec(cls, spec, previous):
        """Defaults: kernel size 5, 1 alternative, `'sample'` selection, and `update`
        alternating `'second'`, `'first'`, ... over the model's half-convolutions."""
        selection = spec.get("selection", "sample")
        if selection not in SELECTIONS:
            raise ValueError(f"selection must be 'sample' or 'location'; got {selection!r}")
        half_convs = sum(1 for p in previous if p["type"] == cls.TYPE)
        return {
            "alternatives": int(spec.get("alternatives", 1)),
            "selection": selection,
            "kernel_size": int(spec.get("kernel_size", 5)),
            "update": spec.get("update", ("second", "first")[half_convs % 2]),
        }

    @classmethod
    def from_spec(cls, spec, patch_shape, seed, dtype, name):
        """A new bank for a normalised spec (see `BankBijector.from_spec`)."""
        return cls.new(
            patch_shape[-1],
            kernel_size=spec["kernel_size"],
            update=spec["update"],
            selection=spec["selection"],
            num_alternatives=spec["alternatives"],
            seed=seed,
            dtype=dtype,
            name=name,
        )

    def __init__(
        self,
        kernel,
        update="second",
        selection="sample",
        validate_args=False,
        name="half_convolution",
    ):
        """Creates the bijector.

        Args:
          kernel: float `[K, kh, kw, D_cond, D_upd]` (odd `kh`, `kw` keep the
            output centred; any size works).
          update: 'second' or 'first': which channel half is updated.
          selection: 'sample' or 'location'.
          validate_args: Python `bool`; check inputs and `choice`.
          name: Python `str` name.
        """
        parameters = dict(locals())
        with tf.name_scope(name) as name:
            dtype = dtype_util.common_dtype([kernel], dtype_hint=tf.float32)
            self._kernel = tensor_util.convert_nonref_to_tensor(kernel, dtype=dtype, name="kernel")
            if update not in _UPDATES:
                raise ValueError(f"{name}: `update` must be one of {_UPDATES}, got {update!r}.")
            self._update = update
            self._selection = _bank.check_selection(selection)
            shape = self._kernel.shape
            if shape.rank != 5 or not shape.is_fully_defined():
                raise ValueError(
                    f"{name}: `kernel` must have static shape "
                    f"[K, kh, kw, D_cond, D_upd], got {shape}."
                )
            self._num_alternatives = int(shape[0])
            self._cond_channels = int(shape[3])
            self._upd_channels = int(shape[4])
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
        kernel_size=5,
        num_alternatives=1,
        update="second",
        selection="sample",
        seed=None,
        init_stddev=None,
        dtype=tf.float32,
        validate_args=False,
        name="half_convolution",
    ):
        """Creates a trainable kernel with small random values.

        The updated half has `channels // 2` channels, the conditioning half the
        rest. Kernel entries are `N(0, s^2)` with `s = init_stddev` or, by
        default, `0.1 / sqrt(kh * kw * D_cond)` (a near-identity start).

        Args:
          channels: `D`, the patch-tensor depth.
          kernel_size: int or `(kh, kw)`; the paper uses 5.
          num_alternatives: `K`.
          update: 'second' or 'first'.
          selection: 'sample' or 'location'.
          seed: int or None.
          init_stddev: see above.
          dtype, validate_args, name: as in the constructor.
        """
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        d_upd = int(channels) // 2
        d_cond = int(channels) - d_upd
        if d_upd < 1:
            raise ValueError(f"HalfConvolution needs at least 2 channels, got {channels}.")
        if init_stddev is None:
            init_stddev = 0.1 / (kh * kw * d_cond) ** 0.5
        rng = _bank.seed_stream(seed)
        kernel = init_stddev * rng.standard_normal((int(num_alternatives), kh, kw, d_cond, d_upd))
        return cls(
            tf.Variable(kernel.astype(tf.as_dtype(dtype).as_numpy_dtype), name="kernel"),
            update=update,
            selection=selection,
            validate_args=validate_args,
            name=name,
        )

    @classmethod
    def _parameter_properties(cls, dtype):
        return dict(kernel=_bank.properties(_bank.param_event_ndims(lambda self: 4, 3)))

    @property
    def kernel(self):
        return self._kernel

    @property
    def update(self):
        return self._update

    @property
    def channels(self):
        return self._cond_channels + self._upd_channels

    def inverse_log_det_table(self, event_shape):
        """Zeros `[K, Hp, Wp]` (volume preserving)."""
        hp, wp = self._default_event_spatial(event_shape)
        return tf.zeros([self._num_alternatives, hp, wp], self.dtype)

    # -- implementation ---------------------------------------------------------

    def _split(self, x):
        # `tf.split`, not slicing: the gradient of a slice is a zero-filled copy of
        # the whole input per half (`StridedSliceGrad`, a third of an M-step's time
        # in the Table-3 model), that of a split a single concat.
        if self._update == "second":
            return tf.split(x, [self._cond_channels, self._upd_channels], axis=-1)
        upd, cond = tf.split(x, [self._upd_channels, self._cond_channels], axis=-1)
        return cond, upd

    def _join(self, cond, upd):
        if self._update == "second":
            return tf.concat([cond, upd], axis=-1)
        return tf.concat([upd, cond], axis=-1)

    def _conv(self, cond, choice):
        """`conv(cond, w_choice)`, shaped like the (broadcast) updated half."""
        kernel = tf.convert_to_tensor(self._kernel)
        k = self._num_alternatives
        du = self._upd_channels
        hp, wp, dc = _bank.shape_list(cond)[-3:]

        def conv(x, w):
            return tf.nn.conv2d(x, w, strides=1, padding="SAME")

        def cat_kernel():  # [kh, kw, Dc, K * Du]
            return tf.reshape(
                tf.transpose(kernel, [1, 2, 3, 0, 4]),
                tf.concat([tf.shape(kernel)[1:4], [k * du]], 0),
            )

        if choice is None:
            mode, xr, out_batch = _bank.batch_form_layout(cond, 3, k, self.name)
            if mode == "expand":
                y = conv(xr, cat_kernel())  # [M, Hp, Wp, K Du]
                y = tf.reshape(y, [-1, hp, wp, k, du])
                y = tf.transpose(y, [0, 3, 1, 2, 4])  # [M, K, Hp, Wp, Du]
            else:
                # (unstack: the gradient of `xr[:, j]` would be a zero-filled copy of xr)
                y = tf.stack(
                    [conv(xj, kernel[j]) for j, xj in enumerate(tf.unstack(xr, num=k, axis=1))],
                    axis=1,
                )
            return tf.reshape(y, _bank.concat_shape(out_batch, [hp, wp, du]))

        xf, cf, out_batch = _bank.broadcast_with_choice(cond, choice, 3, self._selection)
        if self._selection == "sample":
            y = _bank.partition_apply(xf, cf, k, lambda j, xj: conv(xj, kernel[j]))
        elif k == 1:
            y = conv(xf, kernel[0])
        else:
            # Every output location uses the kernel its choice names: one conv with
            # all K kernels stacked on the output channels, then a per-location pick.
            y = tf.reshape(conv(xf, cat_kernel()), [-1, hp, wp, k, du])
            y = tf.gather(y, cf, axis=3, batch_dims=3)
        return tf.reshape(y, _bank.concat_shape(out_batch, [hp, wp, du]))

    def _check_input(self, x, what):
        _bank.check_event(x, 3, [None, None, self.channels], self.name, what)
        return _bank.maybe_assert_finite(x, self.validate_args, self.name, what)

    def _apply(self, x, choice, sign, what):
        x = self._check_input(x, what)
        choice = self._choice(choice, x)
        cond, upd = self._split(x)
        delta = self._conv(cond, choice)
        upd = upd + delta if sign > 0 else upd - delta
        shape = tf.shape(upd)
        if not (
            cond.shape.is_fully_defined()
            and upd.shape.is_fully_defined()
            and cond.shape[:-1] == upd.shape[:-1]
        ):
            cond = tf.broadcast_to(cond, tf.concat([shape[:-1], tf.shape(cond)[-1:]], 0))
        return self._join(cond, upd)

    def _forward(self, x, choice=None):
        return self._apply(x, choice, +1, "input to forward")

    def _inverse(self, y, choice=None):
        return self._apply(y, choice, -1, "input to inverse")

    def _ildj(self, x, choice):
        _bank.check_event(x, 3, [None, None, self.channels], self.name)
        choice = self._choice(choice, x)
        if choice is None:
            return tf.zeros([self._num_alternatives], self.dtype)
        table = self.inverse_log_det_table(_bank.shape_list(x)[-3:])
        return _bank.reduce_table(table, choice, self._selection, x)

    def _inverse_log_det_jacobian(self, y, choice=None):
        return self._ildj(y, choice)

    def _forward_log_det_jacobian(self, x, choice=None):
        return self._ildj(x, choice)
