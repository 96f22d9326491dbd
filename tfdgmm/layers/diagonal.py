"""Keras layer `Diagonal`: elementwise scale and shift on a patch tensor."""

import keras

from tfdgmm import bijectors
from tfdgmm.layers._base import TransformLayer, check_selection

__all__ = ["Diagonal"]


@keras.saving.register_keras_serializable(package="tfdgmm")
class Diagonal(TransformLayer):
    """Keras face of `tfdgmm.bijectors.Diagonal` (same math, Keras weights).

    `call(x, choice=None)` on patch tensors `[N, Hp, Wp, D]` returns
    `(z, log_det)` with `z = (x - shift_k) * exp(-log_scale_k)` and
    `log_det = -sum log_scale_k` (`[N]`).

    Weights: `log_scale`, `shift`, `[K, (Hp, Wp,) D]`; initial values from `Diagonal.new`
    (the identity for `K = 1`, small random perturbations for `K > 1`).

    Args:
      num_alternatives: `K`.
      selection: `'sample'` or `'location'`.
      per_location: parameters per location (default True) or shared by all locations.
      seed: int or None.
      init_stddev: perturbation scale of the initial values for `K > 1`.
    """

    PARAMETERS = ("log_scale", "shift")

    def __init__(
        self,
        num_alternatives=1,
        selection="sample",
        per_location=True,
        seed=None,
        init_stddev=0.05,
        **kwargs,
    ):
        super().__init__(seed=seed, **kwargs)
        self.num_alternatives = int(num_alternatives)
        self.selection = check_selection(selection)
        self.per_location = bool(per_location)
        self.init_stddev = float(init_stddev)

    def _build_event(self, hp, wp, d):
        self._adopt(
            bijectors.Diagonal.new(
                d,
                num_alternatives=self.num_alternatives,
                spatial_shape=(hp, wp) if self.per_location else None,
                selection=self.selection,
                seed=self.seed,
                init_stddev=self.init_stddev,
                dtype=self.variable_dtype,
            )
        )

    def _make_bijector(self, log_scale, shift):
        return bijectors.Diagonal(log_scale, shift, selection=self.selection, name=self.name)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_alternatives=self.num_alternatives,
            selection=self.selection,
            per_location=self.per_location,
            init_stddev=self.init_stddev,
        )
        return config


bijectors.registry.register_layer(bijectors.Diagonal.TYPE, Diagonal)
