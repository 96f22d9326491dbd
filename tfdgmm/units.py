"""Units of log-likelihood: nats per image on the [-1, 1] scale <-> bits per dimension.

Derivation. Pixels `y in {0..255}^D` are dequantized to `y + u in [0, 256)^D` and rescaled to
`x = (y + u) / 128 - 1 in [-1, 1)^D`. A model density `p_X` on the [-1, 1] scale is, on the
pixel scale, `p_Y(y + u) = p_X(x) |dx/dy| = p_X(x) * 128^-D`: every dimension's unit-width pixel
bin has width `1/128` on the [-1, 1] scale. So with `LL = log p_X(x)` in nats per image::

    bits/dim = -log2 p_Y(y + u) / D = log2(128) - LL / (D ln 2) = 7 - LL / (3072 ln 2)

for 32x32x3 images (`D = 3072`). In general `bits/dim = -log2(bin_width) - LL / (D ln 2)`
with `bin_width` the width of one quantisation bin in the units the density is defined in
(`2/256` here; 1 for densities on the raw pixel scale [0, 256), giving the familiar
`-LL / (D ln 2)`). By Jensen's inequality the expected dequantized log-density is a lower bound
on the log-probability of the discrete pixels, so bits/dim computed this way upper-bound the
model's code length for the discrete images.
"""

from __future__ import annotations

import math

import numpy as np

CIFAR10_DIMS = 32 * 32 * 3
BIN_WIDTH = 2.0 / 256.0  # one pixel level on the [-1, 1] scale


def nats_to_bits_per_dim(ll_nats, num_dims: int = CIFAR10_DIMS, bin_width: float = BIN_WIDTH):
    """Mean log-likelihood per image (nats, on the scale of `bin_width`) -> bits/dim.

    `nats_to_bits_per_dim(LL) == 7 - LL / (3072 ln 2)` with the defaults.
    """
    ll = np.asarray(ll_nats, dtype=np.float64)
    out = -math.log2(bin_width) - ll / (num_dims * math.log(2.0))
    return float(out) if out.ndim == 0 else out


def bits_per_dim_to_nats(bpd, num_dims: int = CIFAR10_DIMS, bin_width: float = BIN_WIDTH):
    """Inverse of `nats_to_bits_per_dim`: `LL = (-log2(bin_width) - bpd) * D ln 2`."""
    bpd = np.asarray(bpd, dtype=np.float64)
    out = (-math.log2(bin_width) - bpd) * num_dims * math.log(2.0)
    return float(out) if out.ndim == 0 else out
