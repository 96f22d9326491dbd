r"""Conditionals of a deep GMM: inpainting, conditional sampling and the likelihood of a part.

Given an image whose pixels are split by a mask into observed (`mask = 1`) and missing
(`mask = 0`) ones, `conditional(model, x, mask)` (or `model.conditional(x, mask)`) returns the
posterior over the missing pixels as a `tfd.Distribution` over the full image, observed pixels
fixed, that can `sample`, give its `mean` and score with `log_prob`.

#### One path: an exact Gaussian conditional

Along a path `p` the model is affine in the density direction, `z = W (x - b)` with
`W = Omega_p^{-1}`, and `log p_p(x) = log N(z; 0, I) + log |det W|`. Write `W_o` and `W_m` for the
columns of `W` that touch the observed and the missing pixels. Then `log p_p(x_o, x_m)` is
quadratic in `x_m`, so the conditional is Gaussian with

```none
precision  Lambda_m = W_m^T W_m
mean       mu_m     = b_m - Lambda_m^{-1} W_m^T W_o (x_o - b_o)
                    = -Lambda_m^{-1} W_m^T z0,   z0 = z(x with its missing pixels set to 0)
```

and the observed block's marginal is `log p_p(x_o) = log p_p(x_o, mu_m) + (m/2) log 2 pi
- (1/2) log det Lambda_m` (`m` missing pixels). The columns `W_m` are found by pushing the `m`
basis images `e_j` (and the zero image, for the offset) through the layers' inverses in one
batch (through the layers below the first one with alternatives only once, for every path);
`Lambda_m` is formed in the model's dtype and factored by Cholesky (`Lambda_m = L L^T`) in
`linalg_dtype`, float64 by default: the whitening layers make `Lambda_m` too ill-conditioned
for a float32 factorisation.

#### Across paths: weights by the observed block's marginal likelihood

The conditional of the mixture is the mixture of the per-path conditionals with weights
`pi_p p_p(x_o) / sum_q pi_q p_q(x_o)`. With `paths='all'` (the default for models whose paths
can be enumerated, `num_paths <= exact_limit`) the sum runs over every path, which is the exact
conditional of `as_mixture()`. Larger models cannot enumerate paths, so the sum runs over the
*candidate paths found by a search*:

1. fill the missing pixels with the mean of the observed ones (per image and channel) and run
   the E-step search (`best_path`) from `restarts` independent random starts (a batch of
   chains, searched at once);
2. alternate `iterations` times, per chain: impute the missing pixels with the current path's
   conditional mean, then one coordinate-ascent pass from the current path on the imputed
   image. This is hard EM on `(x_m, path)`: neither step lowers `p(x_o, x_m, path)`;
3. every path visited (`restarts * (iterations + 1)` per image, duplicates removed) is a
   component, weighted by `pi_p p_p(x_o)`.

Why the marginal and not the alternation's last path alone: the alternation only finds paths
(it maximises the joint with `x_m` imputed, which rewards paths that are sure about the missing
pixels); the weights must be the paths' posterior given what is *observed*, `pi_p p_p(x_o)`,
which is exact per path and costs nothing beyond the Gaussian conditional itself. Restricted to
the candidates the result is the exact conditional of the sub-mixture they form; its
`observed_log_prob` (`log sum_c pi_c p_c(x_o)`) is a lower bound on `log p(x_o)`, as the E-step's
score is on `log p(x)`, and equals it with `paths='all'`.

Gating priors (`pi_p` depending on the image) are refused: the per-path conditional is then no
longer Gaussian.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfdgmm.bijectors import Patchify
from tfdgmm.checks import check_float_images, check_seed

tfd = tfp.distributions

__all__ = ["conditional", "DeepGMMConditional", "PATH_MODES", "prepare_mask"]

#: `paths=` of `conditional`: every path when enumerable ('auto'), every path, or a search.
PATH_MODES = ("auto", "all", "search")

_LOG_2PI = math.log(2.0 * math.pi)
_no_autograph = tf.autograph.experimental.do_not_convert


def prepare_mask(mask, image_shape):
    """The mask as a bool `[H, W, C]` tensor (True = observed).

    Accepts `[H, W, C]`, `[H, W, 1]` or `[H, W]` (broadcast over channels), bool or numbers that
    are 0 or 1. A mask known in Python (eager, or a constant) is checked at once: wrong shape,
    values other than 0/1, or no missing pixel are `ValueError`s naming the problem; in a graph
    the values are checked at run time.
    """
    h, w, c = image_shape
    m = tf.convert_to_tensor(mask)
    if m.shape.rank is not None:
        shape = tuple(m.shape.as_list())
        if shape not in ((h, w, c), (h, w, 1), (h, w)) and None not in shape:
            raise ValueError(
                f"mask must have shape [{h}, {w}, {c}], [{h}, {w}, 1] or [{h}, {w}] "
                f"(1 = observed, 0 = missing); got {list(shape)}"
            )
        if m.shape.rank == 2:
            m = m[..., None]
    static = tf.get_static_value(m)
    if m.dtype != tf.bool:
        if static is not None:
            values = np.unique(np.asarray(static))
            if not np.all(np.isin(values, [0, 1])):
                raise ValueError(
                    "mask values must be 0 (missing) or 1 (observed); got values "
                    f"{values[:6].tolist()}{' ...' if values.size > 6 else ''}"
                )
            m = tf.constant(np.asarray(static) != 0)
        else:
            mf = tf.cast(m, tf.float32)
            check = tf.debugging.assert_equal(
                tf.reduce_all(tf.logical_or(tf.equal(mf, 0.0), tf.equal(mf, 1.0))),
                True,
                message="mask values must be 0 (missing) or 1 (observed)",
            )
            with tf.control_dependencies([check]):
                m = tf.not_equal(mf, 0.0)
    m = tf.broadcast_to(m, [h, w, c])
    static = tf.get_static_value(m)
    if static is not None and bool(np.all(static)):
        raise ValueError("the mask marks every pixel as observed (1): there is nothing to fill in")
    return m


@_no_autograph
def conditional(
    model,
    x,
    mask,
    *,
    paths="auto",
    restarts=2,
    iterations=1,
    search=None,
    seed=None,
    linalg_dtype=tf.float64,
    validate_args=False,
    name="DeepGMMConditional",
):
    """The conditional of `model` given the observed pixels of `x`: a `DeepGMMConditional`.

    Args:
      model: a `tfdgmm.DeepGMM` (any path prior but gating networks).
      x: images `[N, H, W, C]` or one image `[H, W, C]`, dequantised floats on [-1, 1]; the
        values of the missing pixels are ignored.
      mask: `[H, W, C]`, `[H, W, 1]` or `[H, W]`, 1 = observed, 0 = missing, shared by the
        batch (see `prepare_mask`).
      paths: `'auto'` (every path when `model.num_paths <= model.exact_limit`, else a search),
        `'all'` (exact; raises for large models) or `'search'` (see the module docstring).
      restarts: search chains per image (random starts, searched as one batch).
      iterations: impute / re-search alternations per chain; every visited path is a candidate.
      search: extra `best_path` keywords for the search (`restart_passes`, `location_method`,
        `location_options`, `use_prior`).
      seed: stateless seed (int or int32 `[2]`) of the search's random starts.
      linalg_dtype: dtype of the Gram matrices `W_m^T W_m` and their Cholesky factors.
      validate_args, name: as for TFP distributions.

    Returns:
      A `DeepGMMConditional` with batch shape `[N]` (or `[]` for one image) and the image as
      its event.
    """

    if model.path_prior.is_conditional:
        raise ValueError(
            "conditional: this model's path prior (gating networks) depends on the image, so "
            "its per-path conditionals are not Gaussian; use a model without gating"
        )
    if paths not in PATH_MODES:
        raise ValueError(f"paths must be one of {PATH_MODES}; got {paths!r}")
    for what, v, low in (("restarts", restarts, 1), ("iterations", iterations, 0)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
            raise ValueError(f"conditional: {what} must be an int >= {low}; got {v!r}")
    search = dict(search or {})
    bad = set(search) - {"restart_passes", "location_method", "location_options", "use_prior"}
    if bad:
        raise ValueError(
            f"conditional: search takes restart_passes, location_method, location_options and "
            f"use_prior; got {sorted(bad)}"
        )
    check_seed(seed)
    check_float_images(x)
    image_shape = tuple(model.image_shape)
    x = tf.convert_to_tensor(x, model.dtype, name="x")
    if x.shape.rank not in (3, 4) or tuple(x.shape[-3:].as_list()) != image_shape:
        raise ValueError(
            f"conditional: x must be images [N, {', '.join(map(str, image_shape))}] or one "
            f"image [{', '.join(map(str, image_shape))}]; got shape {x.shape.as_list()}"
        )
    unbatched = x.shape.rank == 3
    if unbatched:
        x = x[None]
    observed = prepare_mask(mask, image_shape)
    d = int(np.prod(image_shape))
    obs_flat = tf.reshape(observed, [d])
    missing = tf.cast(tf.where(tf.logical_not(obs_flat))[:, 0], tf.int32)
    n = tf.shape(x)[0]
    x_zero = tf.where(observed[None], x, tf.zeros_like(x))  # missing pixels set to 0

    if paths == "auto":
        paths = "all" if model.num_paths <= model.exact_limit else "search"
    if paths == "all":
        every = model.enumerate_paths()
        mu, chol, log_obs, log_pi = _path_groups(model, every, x_zero, missing, linalg_dtype)
        # [P, N, ...] -> [N, P, ...]; the factors are shared by the images
        num_p = tf.shape(every[0])[0]
        mu = tf.transpose(mu, [1, 0, 2])
        chol = tf.broadcast_to(chol[None], tf.concat([[n], tf.shape(chol)], 0))
        log_joint = tf.transpose(log_obs) + tf.cast(log_pi, linalg_dtype)[None]
        cand = tuple(
            tf.broadcast_to(z[None], tf.concat([[n, num_p], tf.shape(z)[1:]], 0)) for z in every
        )
        duplicate = tf.zeros(tf.shape(log_joint), tf.bool)
    else:
        cand, mu, chol, log_joint = _search_candidates(
            model, x_zero, observed, missing, restarts, iterations, search, seed, linalg_dtype
        )
        duplicate = _duplicates(cand)
    logits = tf.where(duplicate, tf.constant(-np.inf, linalg_dtype), log_joint)
    return DeepGMMConditional(
        model,
        x_zero,
        observed,
        missing,
        cand,
        logits,
        mu,
        chol,
        unbatched=unbatched,
        validate_args=validate_args,
        name=name,
    )


def _path_groups(model, path, x_zero, missing, linalg_dtype, compute=None):
    """Per path `g` of `path` (a batch `[G...]`), the Gaussian conditionals of the images
    `x_zero [G, k, H, W, C]` (or `[k, H, W, C]`, the same images for every path).

    Returns `mu [G, k, m]`, `chol [G, m, m]`, `log p_g(x_o) [G, k]` (in `linalg_dtype`) and
    `log pi_g [G]`.

    The layers below the lowest one with alternatives are the same on every path: the basis
    images `e_j` (and the zero image) go through them once, for all paths. Each path then costs
    the rest of the push (`m + 1 + k` rows, one path at a time by `tf.map_fn`), the Gram matrix
    `W_m^T W_m` (in the model's dtype: `W_m` is no more accurate than that) and its Cholesky
    factor (in `linalg_dtype`). With `compute` (bool `[G]`), groups marked False are skipped
    (their outputs are zeros: the caller copies them from an identical group)."""
    image_shape = list(model.image_shape)
    d = int(np.prod(image_shape))
    m = tf.size(missing)
    g = tf.shape(path[0])[0]
    shared = x_zero.shape.rank == 4
    split = _first_choice_layer(model)
    log_pi = model.path_log_prob(path)
    # log |det W| per path from the zero image: log p_g(0) = log N(z_g(0)) + log |det W_g|
    zeros = tf.zeros([g, *image_shape], model.dtype)
    offset = tf.cast(tf.reshape(model.latent(zeros, path), [g, d]), linalg_dtype)  # z(0) = -W b
    log_det_w = (
        tf.cast(model.component_log_prob(zeros, path), linalg_dtype)
        + 0.5 * tf.reduce_sum(tf.square(offset), -1)
        + 0.5 * d * _LOG_2PI
    )
    basis = tf.concat([tf.zeros([1, d], model.dtype), tf.one_hot(missing, d, dtype=model.dtype)], 0)
    low_basis = _lower_layers(model, tf.reshape(basis, [-1, *image_shape]), split)
    xz = tf.cast(x_zero, model.dtype)
    low_x = _lower_layers(model, tf.reshape(xz, [-1, *image_shape]), split)
    if not shared:
        low_x = tf.reshape(low_x, tf.concat([tf.shape(x_zero)[:2], tf.shape(low_x)[1:]], 0))

    k = tf.shape(x_zero)[0] if shared else tf.shape(x_zero)[1]

    def one(args):
        p, lx, ldw, do = args[:-3], args[-3], args[-2], args[-1]
        if compute is None:
            return conditional_of(p, lx, ldw)
        return tf.cond(
            do,
            lambda: conditional_of(p, lx, ldw),
            lambda: (
                tf.zeros(tf.stack([k, m]), linalg_dtype),
                tf.zeros(tf.stack([m, m]), linalg_dtype),
                tf.zeros(tf.reshape(k, [1]), linalg_dtype),
            ),
        )

    def conditional_of(p, lx, ldw):
        h = tf.concat([low_basis, low_x if shared else lx], 0)
        z = tf.reshape(_upper_layers(model, h, p, split), [-1, d])
        w_m = z[1 : 1 + m] - z[:1]  # [m, D]: row j is W e_j, the column of W at pixel j
        gram = tf.cast(tf.matmul(w_m, w_m, transpose_b=True), linalg_dtype)  # W_m^T W_m
        w_m = tf.cast(w_m, linalg_dtype)
        z0 = tf.cast(z[1 + m :], linalg_dtype)  # [k, D]: latents with the missing pixels at 0
        chol = tf.linalg.cholesky(gram)
        rhs = -tf.matmul(w_m, z0, transpose_b=True)  # [m, k]
        mu = tf.transpose(tf.linalg.cholesky_solve(chol, rhs))  # [k, m]
        z_hat = z0 + tf.matmul(mu, w_m)  # the latent at the conditional mode
        log_full = -0.5 * tf.reduce_sum(tf.square(z_hat), -1) - 0.5 * d * _LOG_2PI + ldw
        half_log_det = tf.reduce_sum(tf.math.log(tf.linalg.diag_part(chol)))
        log_obs = log_full + 0.5 * tf.cast(m, linalg_dtype) * _LOG_2PI - half_log_det
        return mu, chol, log_obs

    flags = tf.ones([g], tf.bool) if compute is None else compute
    elems = tuple(path) + (tf.zeros([g]) if shared else low_x, log_det_w, flags)
    spec_v = tf.TensorSpec([None, None], linalg_dtype)
    mu, chol, log_obs = tf.map_fn(
        one,
        elems,
        fn_output_signature=(spec_v, spec_v, tf.TensorSpec([None], linalg_dtype)),
        parallel_iterations=1,
    )
    return mu, chol, log_obs, log_pi


def _first_choice_layer(model):
    """Index of the lowest layer with alternatives (the layers below are on every path)."""
    for i, (k, _) in enumerate(model.layer_specs):
        if k > 1:
            return i
    return len(model.layer_specs)


def _lower_layers(model, images, stop):
    """Images `[B, H, W, C]` through layers `0 .. stop - 1` (density direction, no choices):
    the patch tensor `[B, Hp, Wp, D]`."""
    h = Patchify(model.patch_size).forward(images)
    for layer in model.layers[:stop]:
        h = layer.inverse(h)
    return h


def _upper_layers(model, h, path, start):
    """`h [B, Hp, Wp, D]` through layers `start ..` on one path (scalar / `[Hp, Wp]` choices)."""
    b = tf.shape(h)[0]
    for i in range(start, len(model.layers)):
        k, _ = model.layer_specs[i]
        layer = model.layers[i]
        if k == 1:
            h = layer.inverse(h)
        else:
            z = path[i]
            h = layer.inverse(h, choice=tf.broadcast_to(z[None], tf.concat([[b], tf.shape(z)], 0)))
    return h


def _scatter_missing(x_zero_flat, missing, values):
    """`x_zero_flat [B, D]` with `values [B, m]` written at the missing positions."""
    out = tf.tensor_scatter_nd_update(
        tf.transpose(x_zero_flat),
        missing[:, None],
        tf.transpose(tf.cast(values, x_zero_flat.dtype)),
    )
    return tf.transpose(out)


def _search_candidates(
    model, x_zero, observed, missing, restarts, iterations, search, seed, linalg_dtype
):
    """Candidate paths by search chains (module docstring): `(paths [N, C, ...], mu [N, C, m],
    chol [N, C, m, m], log pi_c + log p_c(x_o) [N, C])` with `C = restarts * (iterations + 1)`."""
    n = tf.shape(x_zero)[0]
    d = int(np.prod(model.image_shape))
    obs = tf.cast(observed, x_zero.dtype)[None]
    count = tf.maximum(tf.reduce_sum(obs, axis=[1, 2]), 1.0)  # observed pixels per channel
    channel_mean = tf.reduce_sum(x_zero * obs, axis=[1, 2]) / count  # [N, C]
    filled = x_zero + (1.0 - obs) * channel_mean[:, None, None, :]
    xz = tf.reshape(tf.repeat(x_zero, restarts, axis=0), [-1, d])  # chain b = n * R + r
    xt = tf.repeat(filled, restarts, axis=0)
    seeds = tfp.random.split_seed(
        tfp.random.sanitize_seed(seed, salt="conditional"), iterations + 1
    )
    first = {k: v for k, v in search.items()}
    path, _ = model.best_path(xt, restarts=1, seed=seeds[0], **first)
    again = {k: v for k, v in search.items() if k != "restart_passes"}
    visited = []
    rows = tf.range(n * restarts)
    for t in range(iterations + 1):
        # a path met before needs no new factorisation: the same path of the chain one
        # iteration ago, or an earlier chain's path of the same image in this iteration
        earlier = _first_equal_in_group(path, restarts)
        same_as_before = (
            _rows_equal(path, visited[-1][0]) if visited else tf.zeros_like(rows, tf.bool)
        )
        compute = tf.logical_and(tf.equal(earlier, rows), tf.logical_not(same_as_before))
        mu, chol, log_obs, log_pi = _path_groups(
            model,
            path,
            tf.reshape(xz, [-1, 1, *model.image_shape]),
            missing,
            linalg_dtype,
            compute=compute,
        )
        out = [mu[:, 0], chol, log_obs[:, 0] + tf.cast(log_pi, linalg_dtype)]
        if visited:
            out = [_select(same_as_before, old, new) for old, new in zip(visited[-1][1:], out)]
        out = [tf.gather(v, earlier) for v in out]
        visited.append((path, *out))
        if t < iterations:
            xt = tf.reshape(_scatter_missing(xz, missing, out[0]), [-1, *model.image_shape])
            path, _ = model.best_path(
                xt, init=path, restarts=0, init_passes=1, seed=seeds[t + 1], **again
            )

    def per_image(tensors):  # [T, N * R, ...] -> [N, T * R, ...]
        t = tf.stack(tensors)
        rest = tf.shape(t)[2:]
        t = tf.reshape(t, tf.concat([[iterations + 1, n, restarts], rest], 0))
        perm = [1, 0, 2] + list(range(3, t.shape.rank))
        return tf.reshape(tf.transpose(t, perm), tf.concat([[n, -1], rest], 0))

    cand = tuple(per_image([v[0][i] for v in visited]) for i in range(len(path)))
    return (
        cand,
        per_image([v[1] for v in visited]),
        per_image([v[2] for v in visited]),
        per_image([v[3] for v in visited]),
    )


def _flat_paths(path):
    """`[B, F]` int32: every layer's choices of each row, side by side."""
    return tf.concat([tf.reshape(tf.cast(z, tf.int32), [tf.shape(z)[0], -1]) for z in path], 1)


def _rows_equal(a, b):
    """bool `[B]`: row b of path `a` equals row b of path `b`."""
    return tf.reduce_all(tf.equal(_flat_paths(a), _flat_paths(b)), axis=1)


def _first_equal_in_group(path, group):
    """int32 `[B]`: for row `b = n * group + r`, the first row of its group with the same path."""
    flat = _flat_paths(path)
    f = tf.shape(flat)[1]
    g = tf.reshape(flat, tf.stack([-1, group, f]))
    eq = tf.reduce_all(tf.equal(g[:, :, None], g[:, None, :]), axis=-1)  # [N, R, R]
    first = tf.argmax(tf.cast(eq, tf.int32), axis=-1, output_type=tf.int32)  # [N, R]
    base = tf.range(tf.shape(g)[0]) * group
    return tf.reshape(first + base[:, None], [-1])


def _select(flag, a, b):
    """`a` where `flag` (bool `[B]`) else `b`, for tensors `[B, ...]`."""
    shape = tf.concat([tf.shape(flag), tf.ones([tf.rank(a) - 1], tf.int32)], 0)
    return tf.where(tf.reshape(flag, shape), a, b)


def _duplicates(cand):
    """`[N, C]` True where candidate c repeats an earlier candidate of the same image."""
    eq = None
    for z in cand:
        flat = tf.reshape(z, tf.concat([tf.shape(z)[:2], [-1]], 0))
        e = tf.reduce_all(tf.equal(flat[:, :, None], flat[:, None, :]), axis=-1)
        eq = e if eq is None else tf.logical_and(eq, e)
    c = tf.shape(eq)[-1]
    earlier = tf.cast(tf.linalg.band_part(tf.ones([c, c]), -1, 0) - tf.eye(c), tf.bool)
    return tf.reduce_any(tf.logical_and(eq, earlier[None]), axis=-1)


class DeepGMMConditional(tfd.Distribution):
    """`p(x | x_o)`: a deep GMM conditioned on observed pixels, a mixture of Gaussians over the
    missing pixels (one per candidate path), as a distribution over the full image whose
    observed pixels are fixed.

    Batch shape `[N]` (`[]` for one image), event shape `[H, W, C]`. `sample` and `mean` return
    full images (observed pixels as given); `log_prob(x)` is the log-density of the missing
    pixels of `x`, `log p(x_m | x_o)` in nats (its observed pixels are not looked at). Built by
    `tfdgmm.conditional.conditional` / `DeepGMM.conditional`.

    Besides the distribution methods: `log_weights` `[N, C]` (normalised), `component_means`
    `[N, C, m]`, `precision_cholesky` `[N, C, m, m]`, `component_covariances()`, `paths`
    (candidate paths, a tuple of `[N, C]` / `[N, C, Hp, Wp]`), `observed_log_prob` `[N]`
    (`log sum_c pi_c p_c(x_o)`), `missing_indices` `[m]` (row-major positions in the image),
    `observed` (bool `[H, W, C]`) and `missing_distribution()` (the same mixture as a
    `tfd.MixtureSameFamily` over the `m` missing values).
    """

    def __init__(
        self,
        model,
        x_zero,
        observed,
        missing,
        paths,
        logits,
        means,
        precision_cholesky,
        unbatched=False,
        validate_args=False,
        name="DeepGMMConditional",
    ):
        parameters = dict(locals())
        self._image_shape = tuple(model.image_shape)
        self._x_zero = x_zero
        self._observed = observed
        self._missing = missing
        self._paths = tuple(paths)
        self._logits = logits
        self._means = means
        self._chol = precision_cholesky
        self._unbatched = bool(unbatched)
        super().__init__(
            dtype=model.dtype,
            reparameterization_type=tfd.NOT_REPARAMETERIZED,
            validate_args=validate_args,
            allow_nan_stats=True,
            parameters=parameters,
            name=name,
        )

    # ------------------------------------------------------------------ shapes

    def _event_shape(self):
        return tf.TensorShape(self._image_shape)

    def _event_shape_tensor(self):
        return tf.constant(self._image_shape, tf.int32)

    def _batch_shape(self):
        return tf.TensorShape([]) if self._unbatched else self._x_zero.shape[:1]

    def _batch_shape_tensor(self):
        return tf.constant([], tf.int32) if self._unbatched else tf.shape(self._x_zero)[:1]

    # ------------------------------------------------------------------ properties

    @property
    def observed(self):
        """bool `[H, W, C]`, True where the pixel is observed."""
        return self._observed

    @property
    def missing_indices(self):
        """int32 `[m]`: the missing pixels' positions in the row-major flattened image."""
        return self._missing

    @property
    def num_missing(self):
        return tf.size(self._missing)

    @property
    def paths(self):
        """Candidate paths, one tuple entry per layer, `[N, C]` or `[N, C, Hp, Wp]`."""
        return self._paths

    @property
    def log_weights(self):
        """`[N, C]` normalised log mixture weights, `log pi_c p_c(x_o) - log sum`; `-inf` for
        duplicate candidates."""
        return self._logits - tf.reduce_logsumexp(self._logits, axis=-1, keepdims=True)

    @property
    def observed_log_prob(self):
        """`log sum_c pi_c p_c(x_o)` `[N]`: `log p(x_o)` (exact with every path; a lower bound
        over searched candidates)."""
        return self._batch_out(tf.reduce_logsumexp(self._logits, axis=-1))

    @property
    def component_means(self):
        """`[N, C, m]` per-path conditional means of the missing pixels."""
        return self._means

    @property
    def precision_cholesky(self):
        """`[N, C, m, m]` lower-triangular `L` with `L L^T = W_m^T W_m`, the precision."""
        return self._chol

    def component_covariances(self):
        """`[N, C, m, m]` per-path conditional covariances `(W_m^T W_m)^{-1}`."""
        eye = tf.eye(tf.shape(self._chol)[-1], dtype=self._chol.dtype)
        return tf.linalg.cholesky_solve(self._chol, tf.broadcast_to(eye, tf.shape(self._chol)))

    def missing_distribution(self):
        """The conditional of the missing values alone: `tfd.MixtureSameFamily` of
        `MultivariateNormalPrecisionFactorLinearOperator`s, batch `[N]`, event `[m]`."""
        mvn = tfp.experimental.distributions.MultivariateNormalPrecisionFactorLinearOperator(
            loc=self._means,
            precision_factor=tf.linalg.LinearOperatorLowerTriangular(self._chol),
        )
        return tfd.MixtureSameFamily(tfd.Categorical(logits=self._logits), mvn)

    # ------------------------------------------------------------------ methods

    def _batch_out(self, t):
        return t[0] if self._unbatched else t

    def _fill(self, values):
        """Images `[B, H, W, C]` from missing values `[B, m]` (`B` a multiple of N: row b
        belongs to image b mod N)."""
        d = int(np.prod(self._image_shape))
        base = tf.reshape(self._x_zero, [-1, d])
        reps = tf.shape(values)[0] // tf.shape(base)[0]
        base = tf.tile(base, [reps, 1])
        return tf.reshape(_scatter_missing(base, self._missing, values), [-1, *self._image_shape])

    def _sample_n(self, n, seed=None):
        seed = tfp.random.sanitize_seed(seed, salt="DeepGMMConditional")
        pick_seed, noise_seed = tfp.random.split_seed(seed, 2)
        num = tf.shape(self._means)[0]
        m = tf.shape(self._means)[-1]
        pick = tf.random.stateless_categorical(self._logits, n, pick_seed, dtype=tf.int32)
        eps = tf.random.stateless_normal(tf.stack([num, m, n]), noise_seed, dtype=self._chol.dtype)
        # x_m = mu_c + L_c^{-T} eps has covariance (L_c L_c^T)^{-1}: every candidate's solve
        # with the same eps (C solves of n right-hand sides), then each sample takes its pick's
        c = tf.shape(self._chol)[1]
        rhs = tf.broadcast_to(eps[:, None], tf.stack([num, c, m, n]))
        noise = tf.linalg.triangular_solve(self._chol, rhs, lower=True, adjoint=True)
        every = self._means[..., None] + noise  # [N, C, m, n]
        every = tf.transpose(every, [0, 3, 1, 2])  # [N, n, C, m]
        values = tf.gather(every, pick, axis=2, batch_dims=2)  # [N, n, m]
        values = tf.transpose(values, [1, 0, 2])  # [n, N, m]
        images = self._fill(tf.reshape(values, [n * num, m]))
        images = tf.reshape(images, [n, num, *self._image_shape])
        return images[:, 0] if self._unbatched else images

    def _missing_values(self, x):
        """`[..., N, m]` missing values of images `[..., N, H, W, C]` in `linalg_dtype`."""
        d = int(np.prod(self._image_shape))
        flat = tf.reshape(x, tf.concat([tf.shape(x)[:-3], [d]], 0))
        return tf.cast(tf.gather(flat, self._missing, axis=-1), self._chol.dtype)

    def _log_prob(self, x):
        x = tf.convert_to_tensor(x, self.dtype)
        if self._unbatched:
            x = x[..., None, :, :, :]
        lead = tf.shape(x)[:-4]
        v = self._missing_values(x)  # [..., N, m]
        num = tf.shape(self._means)[0]
        v = tf.reshape(v, [-1, num, tf.shape(v)[-1]])  # [S, N, m]
        diff = v[:, :, None, :] - self._means[None]  # [S, N, C, m]
        y = tf.einsum("sncm,ncmk->snck", diff, self._chol)  # L^T (x_m - mu)
        m = tf.cast(tf.shape(self._means)[-1], self._chol.dtype)
        log_det = tf.reduce_sum(tf.math.log(tf.linalg.diag_part(self._chol)), -1)  # [N, C]
        comp = -0.5 * tf.reduce_sum(tf.square(y), -1) + log_det[None] - 0.5 * m * _LOG_2PI
        lp = tf.reduce_logsumexp(comp + self.log_weights[None], axis=-1)  # [S, N]
        out = tf.reshape(lp, tf.concat([lead, [num]], 0))
        out = out[..., 0] if self._unbatched else out
        return tf.cast(out, self.dtype)

    def _mean(self):
        w = tf.exp(self.log_weights)  # [N, C]
        values = tf.reduce_sum(w[..., None] * self._means, axis=1)  # [N, m]
        return self._batch_out(self._fill(values))
