"""`Patchify`: image `[..., H, W, C]` <-> patch tensor `[..., H/r, W/r, r*r*C]`."""

import tensorflow as tf
import tensorflow_probability as tfp

from tfdgmm.bijectors import _bank

__all__ = ["Patchify"]


class Patchify(tfp.bijectors.Bijector):
    r"""Rearranges an image into non-overlapping `r x r` patches (a permutation).

    `forward` maps an image `[..., H, W, C]` to the patch tensor
    `[..., H/r, W/r, r*r*C]` (the paper's feature-map view, van den Oord &
    Dambre, 2015, Sec. 2.2) with the channel ordering of `tf.nn.space_to_depth`:

    ```none
    patches[..., i, j, (a * r + b) * C + c] = image[..., i * r + a, j * r + b, c]
    ```

    `inverse` is `tf.nn.depth_to_space`. Both are implemented with reshape and
    transpose so that any number of leading batch dims (also unknown sizes)
    works. It is a permutation of the elements: `log|det J| = 0`.

    Note the direction: `forward` is image -> patches as the name says; a
    generative chain (latent -> image) uses `tfb.Invert(Patchify(r))`.

    #### Examples

    ```python
    from tfdgmm.bijectors import Patchify
    p = Patchify(4)
    x = tf.random.normal([10, 32, 32, 3])
    h = p.forward(x)            # [10, 8, 8, 48]
    tf.reduce_all(p.inverse(h) == x)
    ```

    #### References

    [1]: Aaron van den Oord and Joni Dambre. Locally-connected transformations
         for deep GMMs. ICML Deep Learning Workshop, 2015.
    """

    def __init__(self, patch_size, validate_args=False, name="patchify"):
        """Creates the bijector.

        Args:
          patch_size: Python int `r >= 1`.
          validate_args: Python `bool`; check shapes and finiteness at run time.
          name: Python `str` name.
        """
        parameters = dict(locals())
        if int(patch_size) != patch_size or patch_size < 1:
            raise ValueError(f"{name}: `patch_size` must be a positive int, got {patch_size!r}.")
        self._patch_size = int(patch_size)
        with tf.name_scope(name) as name:
            super().__init__(
                forward_min_event_ndims=3,
                inverse_min_event_ndims=3,
                is_constant_jacobian=True,
                validate_args=validate_args,
                parameters=parameters,
                name=name,
            )

    @classmethod
    def _parameter_properties(cls, dtype):
        return dict()

    @property
    def patch_size(self):
        return self._patch_size

    def _image_to_patch_shape(self, shape, what="image"):
        r = self._patch_size
        h, w, c = shape
        for dim, label in ((h, "height"), (w, "width")):
            if dim is not None and not tf.is_tensor(dim) and dim % r:
                raise ValueError(
                    f"{self.name}: {what} {label} {dim} is not divisible by patch_size {r}."
                )
        return [
            h // r if h is not None else None,
            w // r if w is not None else None,
            c * r * r if c is not None else None,
        ]

    def _patch_to_image_shape(self, shape):
        r = self._patch_size
        hp, wp, d = shape
        if d is not None and not tf.is_tensor(d) and d % (r * r):
            raise ValueError(
                f"{self.name}: patch tensor depth {d} is not divisible by patch_size**2 = {r * r}."
            )
        return [
            hp * r if hp is not None else None,
            wp * r if wp is not None else None,
            d // (r * r) if d is not None else None,
        ]

    def _check_rank(self, x, what):
        if x.shape.rank is not None and x.shape.rank < 3:
            raise ValueError(
                f"{self.name}: {what} must have rank >= 3 ([..., H, W, C]), got shape {x.shape}."
            )
        if x.shape.rank is None:
            raise ValueError(f"{self.name}: {what} must have a known rank.")

    def _dynamic_divisible(self, dims, divisor, message):
        checks = [
            tf.debugging.assert_equal(tf.math.floormod(dim, divisor), 0, message=message)
            for dim in dims
            if tf.is_tensor(dim)
        ]
        return checks

    def _forward(self, x):
        self._check_rank(x, "image")
        r = self._patch_size
        rank = x.shape.rank
        x = _bank.maybe_assert_finite(x, self.validate_args, self.name, "image")
        full = _bank.shape_list(x)
        batch, (h, w, c) = full[:-3], full[-3:]
        self._image_to_patch_shape([h, w, c])  # static divisibility check
        checks = self._dynamic_divisible(
            [h, w], r, f"{self.name}: image height/width not divisible by patch_size {r}."
        )
        with tf.control_dependencies(checks):
            x = tf.reshape(x, _bank.concat_shape(batch, [h // r, r, w // r, r, c]))
        nb = rank - 3
        perm = list(range(nb)) + [nb, nb + 2, nb + 1, nb + 3, nb + 4]
        x = tf.transpose(x, perm)
        return tf.reshape(x, _bank.concat_shape(batch, [h // r, w // r, r * r * c]))

    def _inverse(self, y):
        self._check_rank(y, "patch tensor")
        r = self._patch_size
        rank = y.shape.rank
        y = _bank.maybe_assert_finite(y, self.validate_args, self.name, "patch tensor")
        full = _bank.shape_list(y)
        batch, (hp, wp, d) = full[:-3], full[-3:]
        self._patch_to_image_shape([hp, wp, d])
        checks = self._dynamic_divisible(
            [d], r * r, f"{self.name}: patch tensor depth not divisible by patch_size**2 = {r * r}."
        )
        with tf.control_dependencies(checks):
            y = tf.reshape(y, _bank.concat_shape(batch, [hp, wp, r, r, d // (r * r)]))
        nb = rank - 3
        perm = list(range(nb)) + [nb, nb + 2, nb + 1, nb + 3, nb + 4]
        y = tf.transpose(y, perm)
        return tf.reshape(y, _bank.concat_shape(batch, [hp * r, wp * r, d // (r * r)]))

    def _forward_log_det_jacobian(self, x):
        return tf.zeros([], dtype=x.dtype)

    def _inverse_log_det_jacobian(self, y):
        return tf.zeros([], dtype=y.dtype)

    def _forward_event_shape(self, input_shape):
        if input_shape.rank is None:
            return input_shape
        if input_shape.rank < 3:
            raise ValueError(
                f"{self.name}: image event shape must have rank >= 3, got {input_shape}."
            )
        return input_shape[:-3].concatenate(self._image_to_patch_shape(input_shape[-3:].as_list()))

    def _inverse_event_shape(self, output_shape):
        if output_shape.rank is None:
            return output_shape
        if output_shape.rank < 3:
            raise ValueError(
                f"{self.name}: patch event shape must have rank >= 3, got {output_shape}."
            )
        return output_shape[:-3].concatenate(
            self._patch_to_image_shape(output_shape[-3:].as_list())
        )

    def _forward_event_shape_tensor(self, input_shape):
        r = self._patch_size
        return tf.concat([input_shape[:-3], input_shape[-3:-1] // r, input_shape[-1:] * r * r], 0)

    def _inverse_event_shape_tensor(self, output_shape):
        r = self._patch_size
        return tf.concat(
            [output_shape[:-3], output_shape[-3:-1] * r, output_shape[-1:] // (r * r)], 0
        )
