r"""Kronecker-factored (K-FAC) preconditioning of the half-convolution kernels in the M-step.

**Why** (measured 2026-11-30, `BENCHMARKS.md`, "Why training diverged"): after the
data-dependent init, the block-diagonal layer above the half-convolutions whitens their output,
and its smallest variances are those of the dequantisation noise (a pixel's uniform noise has
standard deviation `1 / (128 sqrt(12)) ~ 0.0023` on the [-1, 1] scale). The loss is quadratic in a
half-convolution's kernel `w` (log-det 0), with curvature `J^T W^T W J`: a change of the kernel
that leaks into a noise direction is amplified about 400-fold by the whitening. Adam moves every
kernel entry by about the learning rate per update whatever the curvature: at 1e-3 a step changes
each updated pixel by about `sqrt(25 * 24) * 1e-3 * 0.5 ~ 0.01`, several noise standard
deviations, and the bound falls by hundreds of nats per update (3 HC + BD on CIFAR-10: 5,641 to
5,369 nats/image on validation within the first 100 updates of the warm-up, training the kernels
alone; the block-diagonal layer alone trains stably at the same rate). A smaller rate is stable
but slow (3e-5: +230 nats in 3,000 updates).

**What**: a Gauss-Newton step in Kronecker form (Martens & Grosse, 2015; Grosse & Martens, 2016,
for convolutions). For a half-convolution updating `x_b` from `x_a` (density direction
`y_b = x_b - conv(x_a, w)`), the gradient of the loss with respect to the kernel is a sum over
datapoints and locations of `p (x) g`, with `p` the `kh kw D_a` patch of the conditioning half
around the location and `g` the gradient with respect to the updated half's output there. Its
curvature is approximated by

```none
H ~ L * A (x) B,   A = E[p p^T]  ([kh kw D_a]^2),   B = E[g g^T]  ([D_b]^2),
```

with `L` the number of locations and expectations over datapoints and locations. `B` is the
Gauss-Newton matrix `J^T J` of the layers above, estimated by back-propagating standard-normal
probes from the latent (`fisher='sampled'`, the default; the curvature of the Gaussian term
whatever the fit), or the empirical Fisher of the datapoints' own gradients
(`fisher='empirical'`, equal in expectation while the latent is white, as after the init, but
it shrinks as a training set is fitted, understating the curvature; tested:
`test_sampled_and_empirical_curvature_agree_at_a_white_latent`). The step for the kernel
gradient `G` (`[kh kw D_a, D_b]`
per alternative) is

```none
P = (A + a I)^{-1} G (B + b I)^{-1} / (L f_k)
```

with damping `a = damping * mean(diag A)`, `b = damping * mean(diag B)`, and `f_k` the fraction
of (datapoint, location) units that choose alternative `k` (1 for one alternative; at least
`0.1 / K`). `P` is the Newton step of the Kronecker model, so the rate `hc_learning_rate` is a
fraction of a Newton step (momentum SGD, `tfdgmm.training.config`), not a per-parameter size.

The factors are recomputed from `statistics_images` training images with their E-step paths every
`statistics_interval` updates (by update count, so resumed runs equal uninterrupted ones), and
are kept in variables, so a checkpoint holds them.

**Cost.** `A` is not formed as `p^T p` from the `[N H W, kh kw D_a]` patch matrix (for 500
images on the 8 x 8 patch grid with a 5 x 5 kernel and `D_a = 24`: a 32,000 x 600 matrix, 23
GFLOP per layer, which made the refreshes about 40% of an M-step). Its block for window
offsets `(d_i, d_j)` is a sum of the *lagged products* `x(v + d_i - d_j) x(v)^T` over a
rectangle of grid positions `v` (those for which `v - d_j` is on the grid: SAME zero padding).
There are only `(2 kh - 1)(2 kw - 1)` lags and `kh kw` rectangles, so `patch_gram` cuts the
grid into the cells between the rectangles' edges, gets each cell's products at every lag from
one convolution (the cell's values as the filter, the datapoints as the contracted channels:
3 GFLOP in all here), sums the cells of each rectangle and gathers the blocks. It is the same
matrix to rounding, 3.3x faster (BENCHMARKS.md, "The K-FAC refresh").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf

from tfdgmm.bijectors import HalfConvolution

if TYPE_CHECKING:
    from collections.abc import Sequence

    from tfdgmm.deep_gmm import DeepGMM
    from tfdgmm.types import ChoicePath, Seed

__all__ = ["FISHERS", "HalfConvolutionKFAC", "patch_gram"]

FISHERS = ("sampled", "empirical")


class HalfConvolutionKFAC(tf.Module):
    """K-FAC factors of every `HalfConvolution` of `model` (see the module docstring).

    Args:
      model: a `tfdgmm.DeepGMM`. (`update` and `kernel_gradient_factors` take another
        `DeepGMM` of the same architecture through `model=`: the Keras model builds a fresh one
        from its weights at every step.)
      damping: relative Tikhonov damping of each factor (`>= 0`).
      fisher: `'sampled'` (Gauss-Newton by standard-normal latent probes) or `'empirical'`.
    """

    def __init__(
        self, model: DeepGMM, damping: float = 1e-3, fisher: str = "sampled", name: str = "hc_kfac"
    ) -> None:
        super().__init__(name=name)
        if fisher not in FISHERS:
            raise ValueError(f"fisher must be one of {FISHERS}; got {fisher!r}")
        self.model = model
        self.damping = float(damping)
        self.fisher = fisher
        self.indices = [
            i for i, layer in enumerate(model.layers) if isinstance(layer, HalfConvolution)
        ]
        self.layers = [model.layers[i] for i in self.indices]
        hp, wp = model.patch_shape[:2]
        self.num_locations = int(hp) * int(wp)
        dtype = model.dtype
        self.ready = tf.Variable(False, trainable=False, name="ready")
        """False until the first `update`: identity factors are no preconditioner."""
        self.a_inverse, self.b_inverse, self.usage = [], [], []
        for layer in self.layers:
            k, kh, kw, dc, du = (int(s) for s in layer.kernel.shape)
            self.a_inverse.append(
                tf.Variable(tf.eye(kh * kw * dc, dtype=dtype), trainable=False, name="a_inverse")
            )
            self.b_inverse.append(
                tf.Variable(tf.eye(du, dtype=dtype), trainable=False, name="b_inverse")
            )
            self.usage.append(tf.Variable(tf.ones([k], dtype) / k, trainable=False, name="usage"))

    @property
    def kernels(self) -> list:
        """The kernel variables this preconditioner acts on, in layer order."""
        return [layer.kernel for layer in self.layers]

    def __bool__(self) -> bool:
        return bool(self.layers)

    def _halves(
        self, layer: HalfConvolution, h: tf.Tensor, g: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """`(x_a, g_b)`: the conditioning half of the input and the updated half of the output
        gradient."""
        _, _, _, dc, du = (int(s) for s in layer.kernel.shape)
        if layer.update == "second":
            return h[..., :dc], g[..., dc:]
        return h[..., du:], g[..., :du]

    def kernel_gradient_factors(
        self,
        x: tf.Tensor,
        path: ChoicePath,
        model: DeepGMM | None = None,
        latent_probe: tf.Tensor | None = None,
    ) -> list:
        """Per layer, `(p, g)`: the conditioning-half patches `[U, kh kw D_a]` and the
        gradients of the negative joint with respect to the updated half's output `[U, D_b]`,
        one row per (datapoint, location) unit `U`. The gradient of `-sum_n log(pi p(x_n))` with
        respect to alternative `k`'s kernel is `-p_k^T g_k` over the units that choose `k`.
        With `latent_probe`, `g` back-propagates it instead (see
        `DeepGMM.layer_inputs_and_output_gradients`)."""
        out = []
        for layer, (cond, g) in zip(self.layers, self._halves_of(x, path, model, latent_probe)):
            _, kh, kw, dc, du = (int(s) for s in layer.kernel.shape)
            # patches ordered (row, column, channel), like the kernel's [kh, kw, D_a] axes
            p = tf.image.extract_patches(cond, [1, kh, kw, 1], [1, 1, 1, 1], [1, 1, 1, 1], "SAME")
            out.append((tf.reshape(p, [-1, kh * kw * dc]), tf.reshape(g, [-1, du])))
        return out

    def _halves_of(
        self,
        x: tf.Tensor,
        path: ChoicePath,
        model: DeepGMM | None,
        latent_probe: tf.Tensor | None,
    ) -> list:
        """Per layer, `(x_a, g_b)` on the grid (see `kernel_gradient_factors`)."""
        model = self.model if model is None else model
        inputs, grads = model.layer_inputs_and_output_gradients(
            x, path, self.indices, latent_probe=latent_probe
        )
        return [self._halves(layer, h, g) for layer, h, g in zip(self.layers, inputs, grads)]

    def update(
        self, x: tf.Tensor, path: ChoicePath, model: DeepGMM | None = None, seed: Seed = (0, 0)
    ) -> None:
        """Recompute the factors from images `x` `[N, H, W, C]` on their paths `path`
        (`seed`: stateless seed of the latent probes)."""
        probe = None
        if self.fisher == "sampled":
            shape = tf.concat([tf.shape(x)[:1], tf.constant(self.model.patch_shape)], 0)
            probe = tf.random.stateless_normal(shape, seed, dtype=self.model.dtype)
        halves = self._halves_of(x, path, model, probe)
        for j, (i, (cond, g)) in enumerate(zip(self.indices, halves)):
            k, kh, kw, _, du = (int(s) for s in self.layers[j].kernel.shape)
            g = tf.reshape(g, [-1, du])
            count = tf.cast(tf.shape(g)[0], g.dtype)
            a = patch_gram(cond, kh, kw) / count  # = p^T p / count, without forming p
            b = tf.matmul(g, g, transpose_a=True) / count
            self.a_inverse[j].assign(_damped_inverse(a, self.damping))
            self.b_inverse[j].assign(_damped_inverse(b, self.damping))
            if k > 1:
                choice = tf.reshape(path[i], [-1])
                self.usage[j].assign(tf.reduce_mean(tf.one_hot(choice, k, dtype=g.dtype), 0))
        self.ready.assign(True)

    def precondition(
        self,
        grads: Sequence[tf.Tensor],
        learning_rate: float | tf.Tensor | None = None,
        max_step_nats: float = 0.0,
    ) -> list:
        """The K-FAC steps `P` for the kernels' gradients `grads` (in `kernels` order).

        With `max_step_nats > 0` the steps are scaled down together so that the predicted
        first-order decrease of the loss of a step of `learning_rate * P`,
        `learning_rate * sum <P, G>` (nats per image), is at most `max_step_nats` (a trust
        region in the Gauss-Newton norm, like K-FAC's KL clipping [Ba et al., 2017]). In
        ordinary training it does not bind; it keeps a state far from the quadratic model (a
        loss blown up by another variable's step) from taking a Newton step of its own size."""
        steps = self._steps(grads)
        if max_step_nats and learning_rate is not None:
            decrease = tf.add_n([tf.reduce_sum(p * g) for p, g in zip(steps, grads)])
            decrease = tf.cast(learning_rate, decrease.dtype) * decrease
            scale = tf.where(
                decrease > max_step_nats,
                max_step_nats / tf.maximum(decrease, 1e-30),
                tf.ones_like(decrease),
            )
            scale = tf.where(tf.math.is_finite(scale), scale, tf.zeros_like(scale))
            steps = [scale * p for p in steps]
        return steps

    def _steps(self, grads: Sequence[tf.Tensor]) -> list:
        out = []
        for j, (layer, g) in enumerate(zip(self.layers, grads)):
            k, kh, kw, dc, du = (int(s) for s in layer.kernel.shape)
            usage = tf.maximum(self.usage[j], 0.1 / k)
            gm = tf.reshape(g, [k, kh * kw * dc, du])
            step = tf.matmul(tf.matmul(self.a_inverse[j], gm), self.b_inverse[j])
            step /= (self.num_locations * usage)[:, None, None]
            out.append(tf.reshape(step, tf.shape(g)))
        return out


def patch_gram(x: tf.Tensor, kh: int, kw: int) -> tf.Tensor:
    """`p^T p` for `p` the `[N H W, kh kw C]` matrix of `x`'s `kh x kw` patches (stride 1,
    SAME zero padding, ordered like `tf.image.extract_patches`: row, column, channel), computed
    from lagged products without forming `p` (see the module docstring, "Cost").

    Block `(i, j)` of the result, for window elements `i, j` at offsets `d_i, d_j`, is
    `sum_{v in R(d_j)} x(v + d_i - d_j) x(v)^T` (sums over the datapoints too), with `R(d)` the
    grid positions `v` for which `v - d` is a grid position. The grid is cut into the cells
    between the rectangles' edges; each cell's products at every lag are one convolution of the
    zero-padded `x` with the cell's own values as the filter (datapoints as the contracted
    channels), and each `R(d)` sums its cells.

    Args:
      x: `[N, H, W, C]` with static `H, W, C`.
      kh, kw: the window's height and width.

    Returns:
      `[kh kw C, kh kw C]`.
    """
    _, h, w, c = (int(s) if s is not None else None for s in x.shape)
    if None in (h, w, c):
        raise ValueError(f"patch_gram needs static H, W, C; got shape {x.shape}")
    oy, ox = (kh - 1) // 2, (kw - 1) // 2  # SAME: window element (a, b) sits at u + (a-oy, b-ox)

    def spans(size: int, k: int, o: int) -> tuple[list, list]:
        """Per window row (or column) offset, the interval of `R`; and the cells between."""
        rect = [(max(0, min(size, a - o)), max(0, min(size, size + a - o))) for a in range(k)]
        edges = sorted({0, size, *(e for r in rect for e in r)})
        return rect, [(lo, hi) for lo, hi in zip(edges[:-1], edges[1:]) if lo < hi]

    rect_y, cells_y = spans(h, kh, oy)
    rect_x, cells_x = spans(w, kw, ox)
    # [C, H + 2 (kh - 1), W + 2 (kw - 1), N]: channels as the batch, datapoints contracted
    source = tf.transpose(
        tf.pad(x, [[0, 0], [kh - 1, kh - 1], [kw - 1, kw - 1], [0, 0]]), [3, 1, 2, 0]
    )
    products, members = [], []
    for y0, y1 in cells_y:
        for x0, x1 in cells_x:
            cell = tf.transpose(x[:, y0:y1, x0:x1, :], [1, 2, 0, 3])  # filter [h', w', N, C]
            window = source[:, y0 : y1 + 2 * (kh - 1), x0 : x1 + 2 * (kw - 1), :]
            # [C, 2 kh - 1, 2 kw - 1, C]: (c, lag, c') = sum_{v in cell} x(v + lag, c) x(v, c')
            products.append(tf.nn.conv2d(window, cell, 1, "VALID"))
            members.append(
                [
                    float(ry[0] <= y0 and y1 <= ry[1] and rx[0] <= x0 and x1 <= rx[1])
                    for ry in rect_y
                    for rx in rect_x
                ]
            )
    # per window element j: its rectangle's products at every lag, [kh kw, 2kh-1, 2kw-1, C, C]
    sums = tf.einsum("mj,mclkd->jlkcd", tf.constant(np.array(members), x.dtype), tf.stack(products))
    # block (i, j) = sums[j, lag d_i - d_j]
    index = np.array(
        [
            [j, i // kw - j // kw + kh - 1, i % kw - j % kw + kw - 1]
            for j in range(kh * kw)
            for i in range(kh * kw)
        ]
    )
    blocks = tf.reshape(tf.gather_nd(sums, index), [kh * kw, kh * kw, c, c])  # [j, i, c, c']
    return tf.reshape(tf.transpose(blocks, [1, 2, 0, 3]), [kh * kw * c, kh * kw * c])


def _damped_inverse(m: tf.Tensor, damping: float) -> tf.Tensor:
    n = tf.shape(m)[0]
    scale = damping * tf.reduce_mean(tf.linalg.diag_part(m))
    # a tiny absolute floor keeps an all-zero factor (e.g. an unused layer) invertible
    m = m + (scale + tf.constant(1e-12, m.dtype)) * tf.eye(n, dtype=m.dtype)
    return tf.linalg.cholesky_solve(tf.linalg.cholesky(m), tf.eye(n, dtype=m.dtype))
