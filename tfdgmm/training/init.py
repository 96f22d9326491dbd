r"""Data-dependent initialisation: the first block-diagonal (or dense) layer starts as a whitening.

A freshly built deep GMM maps the data through near-identity layers to the standard-normal
latent, so its starting log-likelihood is poor (about -3,300 nats per CIFAR-10 image on the
[-1, 1] scale) and the first thousands of M-step updates only learn the scale and correlations
of patches. `initialize_from_data` sets the lowest block-diagonal layer to a whitening of the
data as it arrives there (through the layers below it; single-alternative half-convolutions
below it first become the identity, see `identity_below`):

* its shift is the mean of the patch vectors and its matrix the ZCA whitening
  `W = Sigma^{-1/2}` of their covariance (the whitening closest to the identity), so the
  layer's outputs are white and the model starts as a sensible Gaussian (per patch location
  for per-location parameters, pooled over locations otherwise);
* with `K > 1` alternatives, the datapoints the choice applies to (whole images for
  `selection='sample'`, patches for `'location'`) are split into `K` equal groups by quantiles of
  their energy (squared norm after removing the mean), and alternative `k` whitens group `k`:
  smooth and textured content start with different Gaussians, like a GMM initialised from a
  crude clustering. Group covariances are shrunk towards the pooled one (weight `2d` pseudo
  samples) and a ridge keeps them well conditioned.

A `Dense` layer (the 2014 deep GMM's full matrix on the whole image) is initialised the same way
with one unit per image: with one alternative it starts as the full-covariance Gaussian of the
images it saw (the closed-form baseline), with `K` as `K` Gaussians of energy-quantile groups.

The matrices are written in the layer's LU parameterisation (`W = P L U`, see
`docs/DESIGN.md`): `W[p] = L U` by partial pivoting, then signs of rows of `W` are flipped
(which keeps it a whitening) so that `U` has a positive diagonal. Layers above are left as they
are (orthogonal blocks and near-identity half-convolutions keep white data white).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf

from tfdgmm.bijectors import BlockDiagonal, Dense, HalfConvolution, Patchify

if TYPE_CHECKING:
    from tfdgmm.deep_gmm import DeepGMM
    from tfdgmm.types import Images, Log

__all__ = ["initialize_from_data", "whitening_lu"]


def whitening_lu(cov: np.ndarray, ridge: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """ZCA whitening `W = cov^{-1/2}` as `(lower_upper, permutation)` in the bijectors'
    convention (`W = P L U`, `(P v)_i = v[perm[i]]`). `cov` is `[..., d, d]`."""
    cov = np.asarray(cov, np.float64)
    d = cov.shape[-1]
    scale = np.trace(cov, axis1=-2, axis2=-1)[..., None, None] / d
    cov = cov + ridge * scale * np.eye(d)
    evals, evecs = np.linalg.eigh(cov)
    evals = np.maximum(evals, 1e-12 * scale[..., 0])
    w = np.einsum("...ij,...j,...kj->...ik", evecs, evals**-0.5, evecs)
    lu, p = tf.linalg.lu(tf.constant(w, tf.float64))  # w[..., p, :] = L U
    lu, p = lu.numpy(), p.numpy()
    idx = np.arange(d)
    diag = lu[..., idx, idx]
    sign = np.where(diag < 0, -1.0, 1.0)
    # D (L U) = (D L D)(D U) with D = diag(sign): flips rows of w (still a whitening)
    lower = np.tril(lu, -1) * sign[..., :, None] * sign[..., None, :]
    upper = np.triu(lu, 1) * sign[..., :, None]
    lower_upper = lower + upper
    lower_upper[..., idx, idx] = np.log(np.abs(diag))
    perm = np.argsort(p, axis=-1).astype(np.int32)
    return lower_upper, perm


def _group_ids(energy: np.ndarray, k: int) -> np.ndarray:
    """Equal-size groups `0..k-1` by quantiles of `energy` (ties broken by position)."""
    order = np.argsort(energy, kind="stable")
    ids = np.empty(len(energy), np.int64)
    ids[order] = (np.arange(len(energy)) * k) // len(energy)
    return ids


def _group_moments(units: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Per column `G`: weighted mean `[G, d]`, covariance `[G, d, d]` and count `[G]` of
    `units [m, G, d]` with weights `mask [m, G]`."""
    count = mask.sum(axis=0)
    mean = np.einsum("mg,mgd->gd", mask, units) / np.maximum(count, 1e-12)[:, None]
    c = units - mean
    # one BLAS GEMM per column (einsum's three-operand loop takes minutes for a dense layer,
    # d = 3072)
    cov = np.stack([(c[:, g].T * mask[:, g]) @ c[:, g] for g in range(c.shape[1])])
    cov /= np.maximum(count, 1e-12)[:, None, None]
    return mean, cov, count


def initialize_from_data(
    model: DeepGMM,
    x: Images,
    max_images: int = 5000,
    ridge: float = 1e-6,
    log: Log | None = None,
    identity_below: bool = True,
) -> int | None:
    """Set the lowest `BlockDiagonal` or `Dense` layer of `model` to a whitening of the data `x`
    (`[N, H, W, C]`, the preprocessed training images; at most `max_images` are used).

    With `identity_below`, the single-alternative half-convolutions below that layer first
    become the identity (zero kernel), so the model starts as exactly the best Gaussian the
    layer can give on its own (for one per-location block-diagonal layer, the maximum-likelihood
    per-location Gaussian) and training the half-convolutions moves on from there. Their own
    small random start is a random volume-preserving mixing of neighbouring patches, which no
    per-location Gaussian fits as well: 3 such half-convolutions start about 2,000 nats per
    CIFAR-10 image below the model without them. Half-convolutions with several alternatives keep
    their random start (identical alternatives could never be told apart).

    Returns the index of the layer initialised, or None when the model has no such layer."""
    layers = model.layers
    b = next(
        (i for i, layer in enumerate(layers) if isinstance(layer, (BlockDiagonal, Dense))), None
    )
    if b is None:
        return None
    layer = layers[b]
    zeroed = []
    if identity_below:
        for i in range(b):
            below = layers[i]
            if isinstance(below, HalfConvolution) and below.num_alternatives == 1:
                below.kernel.assign(tf.zeros_like(below.kernel))
                zeroed.append(i)
    x = np.asarray(x[:max_images])
    h = Patchify(model.patch_size).forward(tf.constant(x, model.dtype))
    for i in range(b):  # the layers below, alternative 0 where they have several
        k, shape = model.layer_specs[i]
        kw = {} if k == 1 else {"choice": tf.zeros([len(x), *shape], tf.int32)}
        h = layers[i].inverse(h, **kw)
    h = h.numpy().astype(np.float64)  # [n, Hp, Wp, d]
    n, hp, wp, d = h.shape
    k = int(layer.num_alternatives)
    dense = isinstance(layer, Dense)
    if dense:  # one unit per image: the whole flattened event
        h = h.reshape(n, 1, 1, hp * wp * d)
        hp = wp = 1
        d = h.shape[-1]
    locations = hp * wp
    per_location = not dense and layer.spatial_shape is not None
    per_image = dense or layer.selection == "sample" or k == 1

    # units [m, G, d]: G parameter sets (locations, or 1 when pooled); energy [m, G] to group by
    centred = h - h.mean(axis=0)
    if per_image:
        energy = np.sum(centred**2, axis=(1, 2, 3))  # [n]
    else:
        energy = np.sum(centred**2, axis=-1).reshape(n, locations)  # per patch
    if per_location:
        units = h.reshape(n, locations, d)
        energy = np.broadcast_to(energy[:, None], (n, locations)) if per_image else energy
    else:
        units = h.reshape(n * locations, 1, d)
        energy = np.repeat(energy, locations) if per_image else energy.reshape(-1)
        energy = energy[:, None]
    groups = np.stack([_group_ids(energy[:, j], k) for j in range(energy.shape[1])], axis=1)

    all_mean, all_cov, _ = _group_moments(units, np.ones(groups.shape))
    lead = (hp, wp) if per_location else ()
    lower_upper = np.zeros((k,) + lead + (d, d))
    perm = np.zeros((k,) + lead + (d,), np.int32)
    shift = np.zeros((k,) + lead + (d,))
    shrink = 2.0 * d
    for g in range(k):
        mean, cov, count = _group_moments(units, (groups == g).astype(np.float64))
        if k == 1:
            mean, cov = all_mean, all_cov
        else:
            cov = (count[:, None, None] * cov + shrink * all_cov) / (count + shrink)[:, None, None]
        lu, p = whitening_lu(cov, ridge)  # [G, d, d], [G, d]
        lower_upper[g] = lu.reshape(lead + (d, d))
        perm[g] = p.reshape(lead + (d,))
        shift[g] = mean.reshape(lead + (d,))
    dtype = layer.lower_upper.dtype.as_numpy_dtype
    layer.lower_upper.assign(lower_upper.astype(dtype))
    layer.permutation.assign(perm)
    if layer.shift is not None:
        layer.shift.assign(shift.astype(dtype))
    if log is not None:
        log(
            f"data-dependent init: layer {b} ({type(layer).__name__}, {k} alternative"
            f"{'s' if k > 1 else ''}) set to whiten {n} images"
            f"{' by energy quantile groups' if k > 1 else ''}"
            + (f"; half-convolution layers {zeroed} start as the identity" if zeroed else "")
        )
    return b
