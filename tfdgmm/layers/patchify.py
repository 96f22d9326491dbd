"""Keras layer `Patchify`: image `[N, H, W, C]` -> patch tensor `[N, H/r, W/r, r*r*C]`."""

import keras
import tensorflow as tf

from tfdgmm import bijectors
from tfdgmm.layers._base import TransformLayer

__all__ = ["Patchify"]


@keras.saving.register_keras_serializable(package="tfdgmm")
class Patchify(TransformLayer):
    """Keras face of `tfdgmm.bijectors.Patchify` (no weights).

    `call(x)` maps images `[N, H, W, C]` to patch tensors `[N, H/r, W/r, r*r*C]` (the data ->
    latent side, which for this bijector is its `forward`) and returns `(patches, log_det)`
    with `log_det = 0` (`[N]`); `forward(patches)` (the generative direction) un-patchifies.

    Args:
      patch_size: `r`.
    """

    def __init__(self, patch_size, **kwargs):
        kwargs.pop("seed", None)
        super().__init__(**kwargs)
        self.patch_size = int(patch_size)

    def _build_event(self, h, w, c):
        r = self.patch_size
        if h % r or w % r:
            raise ValueError(
                f"{self.name}: image size {h}x{w} is not divisible by the patch size {r}"
            )

    def _make_bijector(self):
        return bijectors.Patchify(self.patch_size, name=self.name)

    def call(self, x, choice=None):
        if choice is not None:
            raise ValueError(f"{self.name}: Patchify takes no `choice`.")
        x = self._cast(tf.convert_to_tensor(x))
        b = self.bijector()
        z = b.forward(x)
        return z, self._broadcast(b.forward_log_det_jacobian(x, event_ndims=3), z)

    def compute_output_shape(self, input_shape):
        """`(patches shape, log_det shape)`: `[N, H/r, W/r, r*r*C]` and `[N]`."""
        *batch, h, w, c = tuple(input_shape)
        r = self.patch_size
        div = lambda v: None if v is None else v // r  # noqa: E731
        return (*batch, div(h), div(w), None if c is None else r * r * c), tuple(batch)

    def forward(self, z, choice=None):
        if choice is not None:
            raise ValueError(f"{self.name}: Patchify takes no `choice`.")
        z = self._cast(tf.convert_to_tensor(z))
        b = self.bijector()
        x = b.inverse(z)
        return x, self._broadcast(b.inverse_log_det_jacobian(z, event_ndims=3), x)

    def get_config(self):
        config = super().get_config()
        config.pop("seed", None)
        config["patch_size"] = self.patch_size
        return config
