"""Uniform dequantization onto [-1, 1): `x = (pixel + u) / 128 - 1` with `u ~ U[0, 1)`.

Two noise conventions (see the package docstring for when to use which):

* **fixed** (the reference layout; what the README's figures use with "noise seed 0"): one numpy
  stream `u = np.random.default_rng(seed).random((N_train_file + N_test_file, 32, 32, 3))`,
  training file first in its official order, then the test file. Image `k` of the training file
  gets `u[k]`, image `j` of the test file gets `u[N_train_file + j]`. A datapoint's noise
  is fixed for good and depends only on `seed` and its position in the stream, so splits use
  disjoint (independent) parts of it, and a split truncated by `train_limit` etc. keeps the
  noise it has in the full protocol. Any part of the stream is generated directly with
  `PCG64.advance` without drawing what comes before it.
* **epoch** (redrawn per epoch): see `tfdgmm.data.pipeline`.
"""

from __future__ import annotations

import numpy as np

CIFAR10_IMAGE_SHAPE = (32, 32, 3)


def reference_noise(
    seed: int, start: int, count: int, image_shape=CIFAR10_IMAGE_SHAPE
) -> np.ndarray:
    """float64 `U[0, 1)` noise `[count, *image_shape]` for stream images `start ..
    start + count - 1`.

    Equal to `np.random.default_rng(seed).random((start + count, *image_shape))[start:]`
    (PCG64 draws one 64-bit word per float64, so skipping `start` images is an `advance`).
    """
    if start < 0 or count < 0:
        raise ValueError(f"start and count must be >= 0, got {start}, {count}")
    image_shape = tuple(int(d) for d in image_shape)
    rng = np.random.default_rng(seed)
    rng.bit_generator.advance(start * int(np.prod(image_shape)))
    return rng.random((count,) + image_shape)


def dequantize(images: np.ndarray, noise: np.ndarray | float, dtype=np.float32) -> np.ndarray:
    """`(images + noise) / 128 - 1` computed in float64, returned as `dtype`, in [-1, 1).

    `noise` is `U[0, 1)` noise of the same shape, or a constant (0.5 = bin midpoints).
    Every value stays inside its pixel's bin `[p/128 - 1, (p+1)/128 - 1)`: rounding can carry
    `p + u` with `u` just below 1 onto the next bin's edge (in float32 for ~1e-5 of the pixels,
    in float64 ~1e-14), and such values are moved to the largest number below that edge.
    """
    pixels = np.asarray(images, dtype=np.float64)
    x = ((pixels + noise) / 128.0 - 1.0).astype(dtype, copy=False)
    upper = ((pixels + 1.0) / 128.0 - 1.0).astype(dtype, copy=False)  # exact: k / 128
    np.minimum(x, np.nextafter(upper, np.array(-2, dtype)), out=x)
    return x


def quantize(x: np.ndarray) -> np.ndarray:
    """Inverse up to the noise: the uint8 pixel `p` whose bin `[p/128 - 1, (p+1)/128 - 1)`
    contains `x` (exactly, also for values a rounding error below a bin edge)."""
    x = np.asarray(x, np.float64)
    p = np.floor((x + 1.0) * 128.0)
    p -= (p / 128.0 - 1.0) > x  # (x + 1) may have rounded up onto the next edge
    return np.clip(p, 0, 255).astype(np.uint8)
