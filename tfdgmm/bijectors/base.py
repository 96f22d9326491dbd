"""`BankBijector`, the public base class of every transform, and `WithChoice`.

A *transform* of a deep GMM is a bank of `K` alternative bijectors on the patch tensor (see
`docs/DESIGN.md`) selected by a `choice` keyword. To add one, subclass `BankBijector` in a
module of its own under `tfdgmm/bijectors/`, give it a `TYPE` (the `type` of an architecture
config's layer), register it with `tfdgmm.bijectors.registry.register`, and import the module in
`tfdgmm/bijectors/__init__.py`; `tfdgmm.architectures` and the Keras model then know the type.

#### The contract (what the E-step and the M-step rely on)

* **Affine with a data-independent log-det.** `inverse(x, choice=c)` is affine in `x` for every
  choice, and `inverse_log_det_table(event_shape)` gives the log-det terms as a `[K, Hp, Wp]`
  table that does not depend on `x` (zeros for volume-preserving maps). The path search's
  `gram` and `ranked` schemes assume it ("every path is affine").
* **The `choice` forms.** `choice=None`: a TFP batch of `K` bijectors (`batch_shape == [K]`);
  `selection='sample'`: `choice` has the input's batch shape; `selection='location'`:
  `choice` has shape `batch + [Hp, Wp]`. `_choice(choice, x)` validates it.
* **Parameters.** Leading axis `K` on every parameter; `_parameter_properties` declared (TFP);
  a classmethod `new(...)` creates well-conditioned `tf.Variable`s.
* **Configs.** `TYPE`, `CONFIG_KEYS` (the keys a layer spec may hold besides `type` and
  `repeat`), `normalize_spec(spec, previous)` (defaults filled in) and
  `from_spec(spec, patch_shape, seed=, dtype=, name=)` (a new bank for a normalised spec).
"""

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
from tensorflow_probability.python.internal import parameter_properties

from tfdgmm.bijectors._bank import prepare_choice

__all__ = ["BankBijector", "WithChoice"]


class BankBijector(tfp.bijectors.Bijector):
    """Base class: a bank of `K` alternatives selected by a `choice` keyword.

    The module docstring states the contract a subclass must keep. The class attributes and
    classmethods below connect a subclass to architecture configs (`tfdgmm.architectures`).
    """

    #: The `type` of an architecture config's layer that builds this transform (None: none).
    TYPE = None
    #: Keys a layer spec of this type may hold besides `type` and `repeat`.
    CONFIG_KEYS = ("alternatives",)

    @classmethod
    def normalize_spec(cls, spec, previous):
        """A layer spec with every default filled in (a new dict without `type`).

        Args:
          spec: the layer's dict from the config, without `type` and `repeat`; its keys are
            already checked against `CONFIG_KEYS`.
          previous: the normalised specs of the layers below this one (bottom-up).

        Returns:
          A dict of plain Python values (JSON-serialisable); at least `alternatives`.
        """
        del previous
        return {"alternatives": int(spec.get("alternatives", 1))}

    @classmethod
    def from_spec(cls, spec, patch_shape, seed, dtype, name):
        """A new bank (own `tf.Variable`s) for a normalised spec.

        Args:
          spec: the output of `normalize_spec` (with `type`).
          patch_shape: `(Hp, Wp, D)`, the event the layer acts on.
          seed: int seed of the initial values.
          dtype: the parameters' dtype.
          name: the bijector's name.

        Returns:
          An instance of `cls`.
        """
        raise NotImplementedError(f"{cls.__name__} does not implement from_spec")

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
        return prepare_choice(
            choice, self._num_alternatives, self._selection, spatial, self.validate_args, self.name
        )

    def _default_event_spatial(self, event_shape):
        if event_shape is None:
            raise ValueError(
                f"{self.name}: `event_shape` is required (the "
                "parameters are shared by all locations)."
            )
        if isinstance(event_shape, tf.TensorShape):
            event_shape = event_shape.as_list()
        event_shape = list(event_shape)
        return event_shape[-3], event_shape[-2]

    def with_choice(self, choice, validate_args=None, name=None):
        """This bank conditioned on `choice`: a TFP bijector with a consistent batch shape.

        `bank.with_choice(c)` is the bijector `x -> bank.forward(x, choice=c)` as a TFP
        object of its own: its batch shape is the batch shape of `c` (`c.shape` for
        `selection='sample'`, `c.shape[:-2]` for `'location'`), so
        `tfd.TransformedDistribution(base, bank.with_choice(c))` has `batch_shape` equal to
        that and its `log_prob` and `sample` follow TFP's batch rules. (Passing
        `bijector_kwargs={"choice": c}` to a distribution of the unconditioned bank does not:
        that distribution's batch shape is the bank's `[K]`.) `with_choice(k)` with a scalar
        `k` (sample selection) is alternative `k` alone, batch shape `[]`, as `bank[k]`.
        """
        return WithChoice(
            self,
            choice,
            validate_args=(self.validate_args if validate_args is None else validate_args),
            name=name,
        )

    def __getitem__(self, slices):
        """Batch slicing of the `[K]` alternatives.

        A slice keeps the `K` axis and gives a smaller bank (`bank[1:3]`, `bank[::2]`, as
        TFP slices parameters). An integer drops it: `bank[k]` is alternative `k` alone,
        `bank.with_choice(k)` (batch shape `[]`; with `selection='location'` the same
        alternative at every location, which needs per-location parameters).
        """
        k = self._num_alternatives
        if isinstance(slices, (int, np.integer)) and not isinstance(slices, bool):
            if not -k <= int(slices) < k:
                raise IndexError(
                    f"{self.name}: alternative {int(slices)} out of range for a "
                    f"bank of {k} alternatives (batch shape [{k}])"
                )
            idx = np.int32(int(slices) % k)
            if self._selection == "location":
                spatial = getattr(self, "_spatial_shape", None)
                if spatial is None:
                    raise ValueError(
                        f"{self.name}: bank[{int(slices)}] with selection='location' needs the "
                        "spatial shape, which parameters shared by all locations do not fix; use "
                        "bank.with_choice(c) with c of shape batch + [Hp, Wp]."
                    )
                idx = np.full(tuple(spatial), idx, np.int32)
            return self.with_choice(tf.constant(idx, tf.int32))
        try:
            return super().__getitem__(slices)
        except (ValueError, IndexError, TypeError) as err:
            raise type(err)(
                f"{self.name}: cannot slice a bank of {k} alternatives (batch shape [{k}]) "
                f"with {slices!r}: use a slice of the alternatives (bank[1:3]), an integer "
                f"(bank[1]) or bank.with_choice(c). ({err})"
            ) from err


class WithChoice(tfp.bijectors.Bijector):
    """A bank of alternatives (`BankBijector`) with a fixed `choice` (see
    `BankBijector.with_choice`). Its batch shape is the choice's batch shape."""

    def __init__(self, bank, choice, validate_args=False, name=None):
        parameters = dict(locals())
        if not isinstance(bank, BankBijector):
            raise TypeError(f"with_choice needs a bank of alternatives; got {type(bank).__name__}")
        name = name or f"{bank.name}_with_choice"
        with tf.name_scope(name) as name:
            self._bank = bank
            spatial = getattr(bank, "_spatial_shape", None) or (None, None)
            self._chosen = prepare_choice(
                choice,
                bank.num_alternatives,
                bank.selection,
                list(spatial),
                validate_args,
                bank.name,
            )
            if bank.selection == "location" and self._chosen.shape.rank is None:
                raise ValueError(
                    f"{bank.name}: with selection='location', `choice` needs a known "
                    "rank (batch + [Hp, Wp])."
                )
            super().__init__(
                forward_min_event_ndims=bank.forward_min_event_ndims,
                inverse_min_event_ndims=bank.inverse_min_event_ndims,
                is_constant_jacobian=bank.is_constant_jacobian,
                validate_args=validate_args,
                parameters=parameters,
                dtype=bank.dtype,
                name=name,
            )

    @classmethod
    def _parameter_properties(cls, dtype):
        def event_ndims(self, x_event_ndims=None):
            extra = 0 if x_event_ndims is None else x_event_ndims - self.forward_min_event_ndims
            return (0 if self._bank.selection == "sample" else 2) + extra

        return dict(
            choice=parameter_properties.ParameterProperties(
                event_ndims=event_ndims,
                default_constraining_bijector_fn=(parameter_properties.BIJECTOR_NOT_IMPLEMENTED),
            )
        )

    @property
    def bank(self):
        """The unconditioned bank of alternatives."""
        return self._bank

    @property
    def choice(self):
        """The fixed choice (int32)."""
        return self._chosen

    def _forward(self, x):
        return self._bank.forward(x, choice=self._chosen)

    def _inverse(self, y):
        return self._bank.inverse(y, choice=self._chosen)

    def _forward_log_det_jacobian(self, x):
        return self._bank.forward_log_det_jacobian(
            x, event_ndims=self.forward_min_event_ndims, choice=self._chosen
        )

    def _inverse_log_det_jacobian(self, y):
        return self._bank.inverse_log_det_jacobian(
            y, event_ndims=self.inverse_min_event_ndims, choice=self._chosen
        )
