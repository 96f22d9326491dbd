"""Input checks shared by the distribution and the modules that use it: float images, seeds."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

__all__ = ["check_float_images", "check_seed"]


def check_float_images(x, where="images"):
    """Refuse integer images (numpy arrays or tensors of any integer dtype): the model is a
    density of dequantised data on [-1, 1]; raw pixels would be silently scored ~1e7 nats off."""
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        return
    try:
        dtype = tf.as_dtype(dtype)
    except TypeError:
        return
    if dtype.is_integer or dtype == tf.bool:
        raise ValueError(
            f"{where} are {dtype.name} (raw pixels?); expected dequantised float images on "
            "[-1, 1]: tfdgmm.data.dequantize(pixels, np.random.default_rng(0).random("
            "pixels.shape)) or split.dequantized(seed) of tfdgmm.data.load_cifar10"
        )


def check_seed(seed, where="seed"):
    """A stateless seed: None, a Python int, or an int32 `[2]` tensor; a clear error otherwise."""
    if seed is None or (isinstance(seed, (int, np.integer)) and not isinstance(seed, bool)):
        return seed
    try:
        t = tf.convert_to_tensor(seed)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"{where} must be an int or an int32 [2] tensor (a stateless seed); got {seed!r}"
        ) from err
    if not t.dtype.is_integer or (
        t.shape.rank is not None and t.shape.as_list() not in ([], [2], [None])
    ):
        raise ValueError(
            f"{where} must be an int or an int32 [2] tensor (a stateless seed); "
            f"got {t.dtype.name} of shape {t.shape.as_list()}"
        )
    return seed
