"""Keras layer `BlockDiagonal`: an invertible `d x d` map at every patch location."""

import keras

from tfdgmm import bijectors
from tfdgmm.layers._base import TransformLayer, check_selection

__all__ = ["BlockDiagonal"]


@keras.saving.register_keras_serializable(package="tfdgmm")
class BlockDiagonal(TransformLayer):
    """Keras face of `tfdgmm.bijectors.BlockDiagonal` (same math, Keras weights).

    Inputs are patch tensors `[N, Hp, Wp, d]`; `call(x, choice=None)` returns
    `(z, log_det)` with `z = W_k (x - shift_k)` per location (`W = P L U`) and
    `log_det = sum log|det W_k|` (`[N]`).

    Weights: `lower_upper` `[K, (Hp, Wp,) d, d]` and `shift` `[K, (Hp, Wp,) d]` (trainable),
    `permutation` int32 `[K, (Hp, Wp,) d]` (non-trainable); random-orthogonal start from
    `BlockDiagonal.new`.

    Args:
      num_alternatives: `K`.
      selection: `'sample'` (one alternative per image) or `'location'` (per patch location).
      per_location: a separate block at every location (`(Hp, Wp)` axes in the weights) or one
        set of `K` blocks shared by all locations. Default: True for `'sample'`, False for
        `'location'` (the paper's shared / unshared blocks, as in `tfdgmm.architectures`).
      seed: int or None, for the initial values.
    """

    PARAMETERS = ("lower_upper", "permutation", "shift")

    def __init__(
        self, num_alternatives=1, selection="sample", per_location=None, seed=None, **kwargs
    ):
        super().__init__(seed=seed, **kwargs)
        self.num_alternatives = int(num_alternatives)
        self.selection = check_selection(selection)
        self.per_location = (selection == "sample") if per_location is None else bool(per_location)

    def _build_event(self, hp, wp, d):
        self._adopt(
            bijectors.BlockDiagonal.new(
                d,
                num_alternatives=self.num_alternatives,
                spatial_shape=(hp, wp) if self.per_location else None,
                selection=self.selection,
                seed=self.seed,
                dtype=self.variable_dtype,
            )
        )

    def _make_bijector(self, lower_upper, permutation, shift):
        return bijectors.BlockDiagonal(
            lower_upper, permutation, shift, selection=self.selection, name=self.name
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            num_alternatives=self.num_alternatives,
            selection=self.selection,
            per_location=self.per_location,
        )
        return config


bijectors.registry.register_layer(bijectors.BlockDiagonal.TYPE, BlockDiagonal)
