"""Shared base of the Keras layers (private): weights, directions, serialisation.

Every layer owns Keras 3 weights and, inside each `call`, builds the TFP bijector of the same
name from the weights' current values (`tf.convert_to_tensor(weight)`), so the math exists once
(in `tfdgmm.bijectors`) and gradients reach every Keras weight. (A Keras 3 weight handed to a
bijector *outside* the gradient tape would be converted once and frozen.) Initial values come
from the bijector's own `.new(...)` factory, called once at build time, so there is also one
initialisation.
"""

import keras
import numpy as np
import tensorflow as tf

__all__ = ["TransformLayer"]


class TransformLayer(keras.layers.Layer):
    """Base class: a Keras layer that applies one `tfdgmm.bijectors` bijector.

    Direction: `call` maps data towards the latent side, the *density* direction (the
    bijector's `inverse`; for `Patchify`, whose bijector is named after the data -> patches
    map, its `forward`), and returns `(z, log_det)` where `log_det` is the log-determinant
    of that map, i.e. the bijector's `inverse_log_det_jacobian` with `event_ndims=3`, broadcast
    to the batch shape of `z`. Summing the `log_det`s of a chain and adding
    `log N(z_top; 0, I)` gives a Gaussian component's log-density (see `docs/DESIGN.md`).
    `forward(z, choice)` runs the generative direction and returns `(x, log_det)` with the
    forward log-determinant.

    `choice` (an int tensor, see `docs/DESIGN.md`): `None` for layers with one alternative;
    otherwise `[N]` (`selection='sample'`) or `[N, Hp, Wp]` (`selection='location'`).
    `choice=None` with `num_alternatives > 1` is the bijector's batch form: an input
    `[N, 1, Hp, Wp, D]` gives all alternatives, `[N, K, Hp, Wp, D]`.
    """

    #: Subclasses: names of the bijector parameters held as Keras weights, in constructor order.
    PARAMETERS = ()

    @classmethod
    def from_spec(cls, spec, **kwargs):
        """The layer for a normalised architecture layer spec (`tfdgmm.architectures`).

        Args:
          spec: a normalised layer dict: `type`, `alternatives` and the type's other keys,
            which are this layer's constructor arguments of the same names.
          **kwargs: further constructor arguments (`seed`, `name`, `dtype`).

        Returns:
          A new, unbuilt layer.
        """
        options = {k: v for k, v in spec.items() if k not in ("type", "alternatives")}
        return cls(num_alternatives=spec["alternatives"], **options, **kwargs)

    def __init__(self, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.seed = None if seed is None else int(seed)
        # dynamic_partition / data-dependent gathers: keep XLA off for models using the layers.
        self.supports_jit = False

    # -- building -----------------------------------------------------------------------------

    def build(self, input_shape):
        """Creates the weights for inputs `[..., Hp, Wp, D]` (the event dims must be known)."""
        input_shape = tuple(None if s is None else int(s) for s in input_shape)
        if len(input_shape) < 3 or any(s is None for s in input_shape[-3:]):
            raise ValueError(
                f"{self.name}: inputs must be [..., Hp, Wp, D] with known Hp, Wp, D;"
                f" got shape {input_shape}."
            )
        self._built_input_shape = input_shape
        self._build_event(*input_shape[-3:])

    def _build_event(self, hp, wp, d):
        raise NotImplementedError

    def get_build_config(self):
        shape = getattr(self, "_built_input_shape", None)
        return None if shape is None else {"input_shape": list(shape)}

    # -- weights ------------------------------------------------------------------------------

    def _add_from(self, name, value, trainable=True, dtype=None):
        """A Keras weight initialised to `value` (a numpy array or `tf.Variable`)."""
        value = np.asarray(value.numpy() if hasattr(value, "numpy") else value)
        dtype = self.variable_dtype if dtype is None else dtype

        def initializer(shape, dtype=None):
            return tf.constant(value, dtype=dtype)

        return self.add_weight(
            name=name, shape=value.shape, dtype=dtype, initializer=initializer, trainable=trainable
        )

    def _adopt(self, bijector):
        """Create one Keras weight per bijector parameter, initialised to its values."""
        for name in self.PARAMETERS:
            var = getattr(bijector, name)
            integer = var.dtype.is_integer
            weight = self._add_from(
                name, var, trainable=not integer, dtype="int32" if integer else None
            )
            setattr(self, name, weight)

    def parameter_values(self):
        """`{name: tensor}` of the current parameter values (differentiable reads)."""
        return {name: tf.convert_to_tensor(getattr(self, name)) for name in self.PARAMETERS}

    # -- the bijector -------------------------------------------------------------------------

    def bijector(self):
        """The TFP bijector of the same name on the weights' current values.

        Build it inside the gradient tape (as `call` does): its parameters are tensors read
        from the Keras weights at the time of this call.
        """
        if not self.built:
            raise ValueError(
                f"{self.name}: the layer is not built yet; call it on an input "
                "(or `layer.build(input_shape)`) first."
            )
        return self._make_bijector(**self.parameter_values())

    def _make_bijector(self, **params):
        raise NotImplementedError

    def _event_ndims(self):
        return 3

    def _cast(self, x):
        return tf.cast(x, self.compute_dtype) if x.dtype != self.compute_dtype else x

    @staticmethod
    def _kw(choice):
        return {} if choice is None else {"choice": choice}

    def call(self, x, choice=None):
        """Data -> latent (density direction): `(z, log_det)`, `log_det` of shape `batch(z)`."""
        x = self._cast(tf.convert_to_tensor(x))
        b = self.bijector()
        kw = self._kw(choice)
        z = b.inverse(x, **kw)
        ildj = b.inverse_log_det_jacobian(x, event_ndims=self._event_ndims(), **kw)
        return z, self._broadcast(ildj, z)

    def forward(self, z, choice=None):
        """Latent -> data (generative direction): `(x, log_det)` with `log|det dx/dz|`."""
        z = self._cast(tf.convert_to_tensor(z))
        b = self.bijector()
        kw = self._kw(choice)
        x = b.forward(z, **kw)
        fldj = b.forward_log_det_jacobian(z, event_ndims=self._event_ndims(), **kw)
        return x, self._broadcast(fldj, x)

    def compute_output_shape(self, input_shape):
        """`(z shape, log_det shape)` of `call` with a `choice` (or one alternative): the
        input's shape and its batch dims. (`model.summary()` shows it for built layers.)"""
        shape = tuple(input_shape)
        return shape, shape[: -self._event_ndims()]

    def compute_output_spec(self, *args, **kwargs):
        # Symbolic calls trace `call` as Keras does by default: the output shape depends on
        # `choice` (the batch form adds a K axis), which `compute_output_shape` does not see.
        return super(keras.layers.Layer, self).compute_output_spec(*args, **kwargs)

    def _broadcast(self, log_det, out):
        batch = tf.shape(out)[: -self._event_ndims()]
        return tf.broadcast_to(tf.cast(log_det, out.dtype), batch)

    def get_config(self):
        config = super().get_config()
        config["seed"] = self.seed
        return config


def check_selection(selection):
    if selection not in ("sample", "location"):
        raise ValueError(f"`selection` must be 'sample' or 'location'; got {selection!r}")
    return selection
