"""Keras layer `Dense`: a full invertible matrix on the flattened patch tensor."""

import keras

from tfdgmm import bijectors
from tfdgmm.layers._base import TransformLayer

__all__ = ["Dense"]


@keras.saving.register_keras_serializable(package="tfdgmm")
class Dense(TransformLayer):
    """Keras face of `tfdgmm.bijectors.Dense` (same math, Keras weights).

    Not `keras.layers.Dense`: this is the invertible full-matrix layer of the 2014 deep GMM.
    `call(x, choice=None)` on patch tensors `[N, Hp, Wp, D]` returns `(z, log_det)` with
    `z = W_k (x - shift_k)` on the flattened event (`n = Hp Wp D`), `log_det = log|det W_k|`.
    `choice` is per sample (`[N]`).

    Weights: `lower_upper` `[K, n, n]`, `shift` `[K, n]` (trainable), `permutation` int32
    `[K, n]` (non-trainable); random-orthogonal start from `Dense.new`.

    Args:
      num_alternatives: `K`.
      seed: int or None.
    """

    PARAMETERS = ("lower_upper", "permutation", "shift")

    def __init__(self, num_alternatives=1, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.num_alternatives = int(num_alternatives)
        self.selection = "sample"

    def _build_event(self, hp, wp, d):
        self._adopt(
            bijectors.Dense.new(
                (hp, wp, d),
                num_alternatives=self.num_alternatives,
                seed=self.seed,
                dtype=self.variable_dtype,
            )
        )

    def _make_bijector(self, lower_upper, permutation, shift):
        return bijectors.Dense(lower_upper, permutation, shift, event_ndims=3, name=self.name)

    def get_config(self):
        config = super().get_config()
        config.update(num_alternatives=self.num_alternatives)
        return config


bijectors.registry.register_layer(bijectors.Dense.TYPE, Dense)
