"""Keras layer `HalfConvolution`: additive coupling by a convolution of the other half."""

import keras

from tfdgmm import bijectors
from tfdgmm.layers._base import TransformLayer, check_selection

__all__ = ["HalfConvolution"]


@keras.saving.register_keras_serializable(package="tfdgmm")
class HalfConvolution(TransformLayer):
    """Keras face of `tfdgmm.bijectors.HalfConvolution` (same math, Keras weights).

    `call(x, choice=None)` on patch tensors `[N, Hp, Wp, D]` returns `(z, log_det)`:
    the updated channel half minus a 'SAME' convolution of the conditioning half, and
    `log_det = 0` (volume preserving).

    Weights: `kernel` `[K, kh, kw, D_cond, D_upd]` (`D_upd = D // 2`); small random start from
    `HalfConvolution.new`.

    Args:
      kernel_size: int or `(kh, kw)`.
      num_alternatives: `K`.
      update: `'second'` (update channels `[D_cond:]`) or `'first'`; alternate it between
        consecutive half-convolutions.
      selection: `'sample'` or `'location'`.
      seed: int or None.
      init_stddev: kernel init scale (default `0.1 / sqrt(kh * kw * D_cond)`).
    """

    PARAMETERS = ("kernel",)

    def __init__(
        self,
        kernel_size=5,
        num_alternatives=1,
        update="second",
        selection="sample",
        seed=None,
        init_stddev=None,
        **kwargs,
    ):
        super().__init__(seed=seed, **kwargs)
        if isinstance(kernel_size, int):
            kernel_size = (kernel_size, kernel_size)
        self.kernel_size = tuple(int(k) for k in kernel_size)
        self.num_alternatives = int(num_alternatives)
        if update not in ("second", "first"):
            raise ValueError(f"update must be 'second' or 'first'; got {update!r}")
        self.update = update
        self.selection = check_selection(selection)
        self.init_stddev = None if init_stddev is None else float(init_stddev)

    def _build_event(self, hp, wp, d):
        self._adopt(
            bijectors.HalfConvolution.new(
                d,
                kernel_size=self.kernel_size,
                num_alternatives=self.num_alternatives,
                update=self.update,
                selection=self.selection,
                seed=self.seed,
                init_stddev=self.init_stddev,
                dtype=self.variable_dtype,
            )
        )

    def _make_bijector(self, kernel):
        return bijectors.HalfConvolution(
            kernel, update=self.update, selection=self.selection, name=self.name
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            kernel_size=list(self.kernel_size),
            num_alternatives=self.num_alternatives,
            update=self.update,
            selection=self.selection,
            init_stddev=self.init_stddev,
        )
        return config


bijectors.registry.register_layer(bijectors.HalfConvolution.TYPE, HalfConvolution)
