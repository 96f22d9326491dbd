r"""The hard E-step: searching each datapoint's best path through a deep GMM.

The paper's heuristic (van den Oord & Schrauwen 2014; section 4.1 of the 2015 paper) is
coordinate ascent over the discrete choices: one layer at a time, bottom-up, keep the other
choices fixed and take the alternative with the highest `log pi_p + log p_p(x)`. A pass visits
every choice variable once; the search starts from the previous paths (1 pass), then from random
paths (2 passes each), and keeps the best path per datapoint.

Everything here is vectorised over a minibatch and runs inside `tf.function`.

**Per-sample layers** (shared blocks) try all `K` alternatives at once: the prefix below the layer
is computed once, the layer is applied in its batch form, and the layers above run on
`[N, K, ...]`. Terms that do not depend on the layer's choice (the log-determinants of the
other layers) are left out of the comparison.

**Per-location layers** (unshared blocks) have `Hp * Wp` choice variables each. Evaluating every
(location, alternative) by running the layers above, as the paper does, costs
`Hp * Wp * K` network evaluations per datapoint and pass. Every path is affine, so with
`y` the layer's output and `G` the (linear part of the) map above it, `z = G y + c`, and changing
location `l` from its current output to candidate `y_l + delta` changes the objective by exactly

```none
Delta = g_l . delta - 1/2 delta^T Q_l delta + (change of ildj and log-prior at l),
g = -G^T z,   Q_l = (G^T G)_{ll}   (the local d x d Gram block).
```

* `'gram'` (exact; used automatically when no layer above has a choice, e.g. only
  half-convolutions lie above): `G` is the same for all datapoints, computed once per call by
  pushing the basis through the layers above. Locations are visited in order; after each
  accepted change `z <- z + G_l delta`, so the result equals brute-force coordinate ascent in the
  same order, at the cost of `O(L d^2 + L d * L d)` multiply-adds per datapoint and layer
  instead of `L K` network evaluations.
* `'gram'` also when exactly one layer above has a choice, per location, and it and every
  layer above it are local (block-diagonal or diagonal banks; the layer under Table 3's top
  layer): `G` then depends on the datapoint only through that layer's choices, and its local
  blocks are sums of per-alternative tables (`_local_gram_update`); exact, with no evaluation of
  the layers above. `'auto'` takes it; `'auto-shared'` (the default before 2026-12-01) takes
  `'gram'` only with a shared `G`.
* `'ranked'` (default when more layers above have choices, so that `G` depends on the datapoint):
  the linear term comes from one vector-Jacobian product for all locations at once and the
  quadratic term from the batch-mean local Gram `E_n[(G_n^T G_n)_{ll}]`, estimated without bias
  from Gaussian probes (`E[G^T v v^T G] = G^T G`, one extra VJP per probe). This quadratic
  model only *ranks* the locations; the `top` most promising ones (default `L/2`) are then
  visited in that order with exact coordinate-ascent steps (all K alternatives evaluated
  exactly), so a pass never lowers the objective and costs `top/L` of brute force (default
  `top = L/2`, every location on grids of at most 16).
* `'linearized'`: the same quadratic model proposes changes at all locations at once (Jacobi
  style); the best change at the top `L, L/2, ..., 1` locations is evaluated exactly and the
  best of those and the current path is kept (also monotone, cheaper, less thorough).
* `'brute_force'`: the paper's exact coordinate ascent, location by location; for checks.

**Choices independent across locations** (every choice in a top stack of per-location
block-diagonal or diagonal layers, a prior that adds up over locations: Table 2's models):
the objective is a sum over locations of terms that each depend on that location's choices
only, so the best path is a per-location argmax over the `prod_j K_j` combinations
(`tfdgmm.local_paths`). `'enumerate'` takes it (and raises when it does not apply); `'auto'`
takes it when there are at most `local_paths.MAX_COMBINATIONS` combinations, in place of the
whole search (warm start, passes and restarts): the result is the global maximum, so it is
never below what coordinate ascent from any start finds.
"""

import contextlib
import math

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfdgmm import local_paths
from tfdgmm.bijectors import BlockDiagonal, Diagonal, in_xla_context, precomposed
from tfdgmm.path_priors import split_seed
from tfdgmm.scoped import ScopedValues

__all__ = [
    "best_path",
    "coordinate_ascent_pass",
    "random_path",
    "LOCATION_METHODS",
    "SEARCH_SETTINGS",
]

LOCATION_METHODS = (
    "auto",
    "auto-shared",
    "enumerate",
    "gram",
    "ranked",
    "linearized",
    "brute_force",
)

# Named E-step settings (`tfdgmm.training.DatasetSearch` keyword arguments), see BENCHMARKS.md.
# "classic": the defaults before issue 15 (1 warm pass, a random restart of 2 passes for every
# batch, ranked top-half steps, exact Gram steps only where no layer above has a choice).
# "fast" (2026-11-30): the restart only for never-searched datapoints, every block composed once
# per search, ranked steps skip locations whose linear bound proves that no alternative
# improves and evaluate only the K - 1 others. "adaptive" (the `EMConfig` defaults since
# 2026-12-01): exact Gram steps wherever a single local choice layer lies above, ranked steps
# only where the predicted gain is positive, and up to 2 more passes for the datapoints whose
# last pass gained more than 20 nats (stale paths after a long M-step need them).
# "adaptive1" (the `EMConfig` defaults since 2026-12-02): "adaptive" whose ranked steps evaluate
# only the best-predicted other alternative at a visited location (`alternatives: 1`): 1.25-1.35
# times as fast at the same or a better joint on every state measured (BENCHMARKS.md).
SEARCH_SETTINGS = {
    "classic": {
        "location_method": "auto-shared",
        "restarts": 1,
        "restart_passes": 2,
        "restart_when": "always",
        "location_options": {},
        "compose_once": False,
    },
    "fast": {  # (2026-11-30)
        "location_method": "auto-shared",
        "restarts": 1,
        "restart_passes": 2,
        "restart_when": "unsearched",
        "location_options": {"bound": True},
        "compose_once": True,
    },
    "adaptive": {  # the `EMConfig` defaults from 2026-12-01 to 2026-12-02
        "location_method": "auto",
        "restarts": 1,
        "restart_passes": 2,
        "restart_when": "unsearched",
        "location_options": {"threshold": 0.0},
        "compose_once": True,
        "extra_passes": 2,
        "extra_pass_gain": 20.0,
    },
    "adaptive1": {  # the `EMConfig` defaults since 2026-12-02
        "location_method": "auto",
        "restarts": 1,
        "restart_passes": 2,
        "restart_when": "unsearched",
        "location_options": {"threshold": 0.0, "alternatives": 1},
        "compose_once": True,
        "extra_passes": 2,
        "extra_pass_gain": 20.0,
    },
}


def random_path(model, n, seed):
    """A uniformly random path for `n` datapoints from a stateless seed."""
    seeds = split_seed(seed, n=max(len(model.layer_specs), 1))
    path = []
    for i, (k, shape) in enumerate(model.layer_specs):
        path.append(
            tf.random.stateless_uniform(
                tf.concat([[n], tf.constant(shape, tf.int32, shape=[len(shape)])], 0),
                seed=seeds[i],
                minval=0,
                maxval=k,
                dtype=tf.int32,
                alg="philox",  # (named: XLA then draws the same paths)
            )
        )
    return tuple(path)


def objective(model, h0, path, use_prior=True):
    """`log p_p(x) (+ log pi_p)` from the patch tensor `h0 = patchify(x)`."""
    return model.joint_from_patches(h0, path, use_prior)


def best_path(
    model,
    x,
    init=None,
    restarts=1,
    init_passes=1,
    restart_passes=2,
    seed=None,
    location_method="auto",
    use_prior=True,
    location_options=None,
    restart_rows=None,
    compose_once=True,
    extra_passes=0,
    extra_pass_gain=1.0,
):
    """See `DeepGMM.best_path`. `x` is `[N, H, W, C]` in the model's dtype.

    `extra_passes`, `extra_pass_gain`: after the `init_passes` from `init`, up to
    `extra_passes` more passes, each for the datapoints whose previous pass raised their
    objective by more than `extra_pass_gain` nats (a datapoint whose pass changed nothing is at
    a fixed point of the exact steps; one that gained little is near one). The work follows
    how far the stored paths are from a local optimum: after a long M-step the paths are
    stale and one pass leaves much behind (BENCHMARKS.md, issue 15).

    `compose_once`: the layers' batch-independent parameter work (`W = P L U` of every block)
    is done once for all the passes (`tfdgmm.bijectors.precomposed`); False: once per layer
    call, as before issue 15 (for comparisons).

    `restart_rows=(global_n, offset)`: `x` is rows `[offset, offset + N)` of a batch of
    `global_n`; random restarts are drawn for the whole batch and sliced, so every datapoint
    starts where it would if the batch were searched at once (data-parallel E-steps).
    """
    if location_method not in LOCATION_METHODS:
        raise ValueError(
            f"location_method must be one of {LOCATION_METHODS}; got {location_method!r}"
        )
    if location_method in ("auto", "enumerate"):
        stack = local_paths.local_stack(model, use_prior)
        if location_method == "enumerate" or (
            stack is not None and stack.combinations <= local_paths.MAX_COMBINATIONS
        ):  # the exact global maximum: no start, pass or restart can beat it
            with precomposed(model.layers if compose_once else []):
                return local_paths.best_local_path(model, model.patchify(x), use_prior)
    if init is None and restarts < 1:
        raise ValueError("best_path needs an initial path or at least one random restart")
    # every block composed once, and the exact Gram steps' constants computed once
    with precomposed(model.layers if compose_once else []), gram_constants(model, compose_once):
        return _best_path(
            model,
            x,
            init,
            restarts,
            init_passes,
            restart_passes,
            seed,
            location_method,
            use_prior,
            location_options,
            restart_rows,
            extra_passes,
            extra_pass_gain,
        )


def _best_path(
    model,
    x,
    init,
    restarts,
    init_passes,
    restart_passes,
    seed,
    location_method,
    use_prior,
    location_options,
    restart_rows,
    extra_passes=0,
    extra_pass_gain=1.0,
):
    h0 = model.patchify(x)
    n = tf.shape(h0)[0]
    seed = tfp.random.sanitize_seed(seed, salt="best_path")
    seeds = split_seed(seed, n=max(restarts, 1) + 1)
    probe_seed = seeds[-1]
    starts = []
    if init is not None:
        starts.append((tuple(init), init_passes))
    for r in range(restarts):
        if restart_rows is None:
            starts.append((random_path(model, n, seeds[r]), restart_passes))
        else:
            global_n, offset = restart_rows
            full = random_path(model, global_n, seeds[r])
            starts.append((tuple(z[offset : offset + n] for z in full), restart_passes))
    best, best_score = None, None
    for number, (path, passes) in enumerate(starts):
        more = extra_passes if (number == 0 and init is not None) else 0
        if more:
            score = objective(model, h0, path, use_prior)
        for _ in range(passes):
            probe_seed, pass_seed = split_seed(probe_seed, n=2)
            before = score if more else None
            path = coordinate_ascent_pass(
                model,
                h0,
                path,
                location_method,
                use_prior,
                seed=pass_seed,
                location_options=location_options,
            )
            if more:
                score = objective(model, h0, path, use_prior)
        if more:
            gain = score - before
            for _ in range(more):
                probe_seed, pass_seed = split_seed(probe_seed, n=2)
                path, score, gain = _pass_where(
                    model,
                    h0,
                    path,
                    score,
                    gain > extra_pass_gain,
                    location_method,
                    use_prior,
                    pass_seed,
                    location_options,
                )
        else:
            score = objective(model, h0, path, use_prior)
        if best is None:
            best, best_score = path, score
        else:
            best = keep_better(best, best_score, path, score)
            best_score = tf.maximum(best_score, score)
    return best, best_score


def _pass_where(model, h0, path, score, active, method, use_prior, seed, options):
    """One more pass for the datapoints where `active` (`[N]` bool): `(path, score, gain)`
    with the others unchanged (gain 0). Outside XLA only their rows are searched; under XLA
    (static shapes) every row is, and only the active rows' results are kept."""
    if in_xla_context():
        new = coordinate_ascent_pass(model, h0, path, method, use_prior, seed, options)
        new_score = objective(model, h0, new, use_prior)
        new = tuple(tf.where(_expand(active, p), q, p) for p, q in zip(path, new))
        new_score = tf.where(active, new_score, score)
        return new, new_score, new_score - score
    rows = tf.cast(tf.where(active)[:, 0], tf.int32)

    def search():
        sub = tuple(tf.gather(p, rows) for p in path)
        h_sub = tf.gather(h0, rows)
        new = coordinate_ascent_pass(model, h_sub, sub, method, use_prior, seed, options)
        return new, objective(model, h_sub, new, use_prior)

    def nothing():
        return tuple(tf.gather(p, rows) for p in path), tf.gather(score, rows)

    new_sub, score_sub = tf.cond(tf.size(rows) > 0, search, nothing)
    idx = rows[:, None]
    new = tuple(tf.tensor_scatter_nd_update(p, idx, q) for p, q in zip(path, new_sub))
    new_score = tf.tensor_scatter_nd_update(score, idx, score_sub)
    return new, new_score, new_score - score


def _expand(mask, like):
    """`mask [N]` broadcastable against `like [N, ...]`."""
    return tf.reshape(mask, tf.concat([tf.shape(mask), tf.ones([tf.rank(like) - 1], tf.int32)], 0))


def keep_better(path_a, score_a, path_b, score_b):
    """Per datapoint, path b where `score_b > score_a`, else path a."""
    better = score_b > score_a
    out = []
    for a, b in zip(path_a, path_b):
        mask = tf.reshape(
            better, tf.concat([tf.shape(better), tf.ones([tf.rank(a) - 1], tf.int32)], 0)
        )
        out.append(tf.where(mask, b, a))
    return tuple(out)


def coordinate_ascent_pass(
    model, h0, path, location_method="auto", use_prior=True, seed=None, location_options=None
):
    """One bottom-up pass of coordinate ascent over every choice variable.

    `location_options` go to the per-location scheme: `top`, `iterations`, `probes` for
    `'ranked'` (default `top = max(L // 2, min(L, 16))`, 1 iteration, 2 probes), and its
    filters (issue 15): `bound` (skip locations whose linear upper bound of the gain is not
    positive), `threshold` (skip those whose predicted gain is not above it), `patience`,
    `own_weight`, `alternatives`, `compact` (see `_thresholded_steps`); `iterations`, `probes` for
    `'linearized'` (which ignores the ranked-only options).
    """
    path = list(path)
    h = h0
    for i, layer in enumerate(model.layers):
        k, shape = model.layer_specs[i]
        if k == 1:
            h = layer.inverse(h)
        elif not shape:
            path[i], h = _sample_layer_update(model, i, h, path, use_prior)
        else:
            method = "auto" if location_method == "enumerate" else location_method
            above_fixed = all(kk == 1 for kk, _ in model.layer_specs[i + 1 :])
            local_top = not above_fixed and _local_top_layer(model, i) is not None
            separable = not (use_prior and model.path_prior.is_conditional)
            if method in ("auto", "auto-shared"):
                exact = above_fixed or (local_top and method == "auto")
                method = "gram" if exact and separable else "ranked"
            if method == "gram" and not (above_fixed or local_top):
                raise ValueError(
                    f"location_method='gram' needs every layer above layer {i} to have a "
                    "single alternative (the Gram matrix is then shared by all datapoints), "
                    "or exactly one to have a choice, per location, with it and every layer "
                    "above it local (block-diagonal or diagonal); use 'ranked', 'linearized' "
                    "or 'brute_force'"
                )
            if method == "gram" and not separable:
                raise ValueError(
                    "location_method='gram' needs a prior that adds up over locations; gating "
                    "networks do not. Use 'ranked', 'linearized' or 'brute_force'"
                )
            update = {
                "gram": _local_gram_update if local_top else _gram_update,
                "ranked": _ranked_update,
                "linearized": _linearized_update,
                "brute_force": _brute_force_update,
            }[method]
            options = dict(location_options or {}) if method in ("ranked", "linearized") else {}
            if method == "linearized":  # (options only the ranked steps take)
                options = {k: v for k, v in options.items() if k not in _RANKED_ONLY}
            path[i], h = update(model, i, h, path, use_prior, seed=seed, **options)
    return tuple(path)


_LOCAL_BANKS = (BlockDiagonal, Diagonal)
_RANKED_ONLY = (
    "top",
    "threshold",
    "compact",
    "bound",
    "patience",
    "own_weight",
    "alternatives",
)


def _sample_layer_update(model, i, h, path, use_prior):
    """All K alternatives of a per-sample layer at once; returns `(choice [N], h_{i+1})`."""
    ys = model.layers[i].inverse(h[:, None])  # [N, K, Hp, Wp, D] (batch form)
    k = model.layer_specs[i][0]
    choices = tf.broadcast_to(tf.range(k)[None], tf.shape(ys)[:2])
    score = (
        model.score_above(ys, path, i, choices, use_prior)
        + tf.reduce_sum(model.ildj_table(i), axis=[1, 2])[None]
    )
    if use_prior and not model.path_prior.is_conditional:
        score += model.path_prior.conditional_log_probs(i, path)
    best = tf.argmax(score, axis=1, output_type=tf.int32)
    return best, tf.gather(ys, best, axis=1, batch_dims=1)


class _LocationProblem:
    """Shared set-up for a per-location layer: all candidate outputs and per-location terms."""

    def __init__(self, model, i, h, path, use_prior):
        hp, wp, d = model.patch_shape
        self.shape = (hp, wp, d)
        self.num_locations = hp * wp
        k = model.layer_specs[i][0]
        self.k = k
        ys = model.layers[i].inverse(h[:, None])  # [N, K, Hp, Wp, D]
        n = tf.shape(ys)[0]
        self.n = n
        # candidates[n, l, k, :] = output at location l with alternative k
        self.candidates = tf.transpose(tf.reshape(ys, [n, k, self.num_locations, d]), [0, 2, 1, 3])
        self.cur = tf.reshape(path[i], [n, self.num_locations])
        self._model, self._i, self._path, self._use_prior = model, i, path, use_prior
        # terms of the objective that depend on this layer's choice at each location and add
        # up over locations (gating terms do not: `exact` scores them)
        terms = tf.transpose(tf.reshape(model.ildj_table(i), [k, self.num_locations]))[None]
        if use_prior and not model.path_prior.is_conditional:
            terms = terms + tf.reshape(
                model.path_prior.conditional_log_probs(i, path), [n, self.num_locations, k]
            )
        self.terms = tf.broadcast_to(terms, [n, self.num_locations, k])  # [N, L, K]

    def exact(self, y, choice):
        """Exact score (but the additive `terms`) of outputs `y [N, *extra, L, d]` with this
        layer's choices `choice [N, *extra, L]`: `log N(z)` plus any gating terms."""
        hp, wp, _ = self.shape
        choice = tf.reshape(choice, tf.concat([tf.shape(choice)[:-1], [hp, wp]], 0))
        return self._model.score_above(self.image(y), self._path, self._i, choice, self._use_prior)

    def trial_choices(self, cur, loc_mask):
        """`[N, K, L]`: current choices with the masked location set to each alternative."""
        alt = tf.range(self.k)[None, :, None]
        return tf.where(loc_mask > 0, alt, cur[:, None])

    def select(self, choice):
        """Outputs `[N, L, d]` for choices `[N, L]`."""
        return tf.gather(self.candidates, choice, axis=2, batch_dims=2)

    def term_sum(self, choice):
        return tf.reduce_sum(tf.gather(self.terms, choice, axis=2, batch_dims=2), axis=-1)

    def image(self, y):
        """`[..., L, d]` -> `[..., Hp, Wp, d]`."""
        return tf.reshape(y, tf.concat([tf.shape(y)[:-2], self.shape], 0))

    def done(self, choice, y):
        hp, wp, _ = self.shape
        return tf.reshape(choice, [self.n, hp, wp]), self.image(y)


def _gram_update(model, i, h, path, use_prior, seed=None):
    """Exact sequential coordinate ascent over locations with a shared Gram matrix."""
    prob = _LocationProblem(model, i, h, path, use_prior)
    hp, wp, d = prob.shape
    num_loc = prob.num_locations
    ld = num_loc * d
    gt, gram = _constants(model, i, _shared_gram_constants)
    y = prob.select(prob.cur)  # [N, L, d]
    z = tf.reshape(model.up(prob.image(y), path, i + 1), [prob.n, ld])
    cands = tf.transpose(prob.candidates, [1, 0, 2, 3])  # [L, N, K, d]
    terms = tf.transpose(prob.terms, [1, 0, 2])  # [L, N, K]

    def body(loc, cur, y, z):
        cand = cands[loc]  # [N, K, d]
        delta = cand - tf.gather(y, loc, axis=1)[:, None]
        g = -tf.matmul(z, gt[loc], transpose_b=True)  # [N, d]
        gain = tf.einsum("nkd,nd->nk", delta, g) - 0.5 * tf.reduce_sum(
            delta * tf.einsum("nkd,de->nke", delta, gram[loc]), -1
        )
        t = terms[loc]
        gain += t - tf.gather(t, tf.gather(cur, loc, axis=1), axis=1, batch_dims=1)[:, None]
        best = tf.argmax(gain, axis=1, output_type=tf.int32)
        z += tf.matmul(tf.gather(delta, best, axis=1, batch_dims=1), gt[loc])
        return (
            loc + 1,
            *_set_location(loc, num_loc, cur, y, best, tf.gather(cand, best, axis=1, batch_dims=1)),
            z,
        )

    _, cur, y, _ = tf.while_loop(
        lambda loc, *_: loc < num_loc, body, (tf.constant(0), prob.cur, y, z)
    )
    return prob.done(cur, y)


# ---------------------------------------------------------------------------------------------
# Constants of the exact Gram steps: they depend on the parameters only (not on the batch), so
# a search computes them once (`gram_constants`, entered with `compose_once`) instead of at
# every layer call; without the block they are computed where they are used.

_gram_cache = ScopedValues()  # {(id(model), layer): constants} per `gram_constants` block


@contextlib.contextmanager
def gram_constants(model, enabled=True):
    """Within the block, the constants of every per-location layer's exact Gram step (the map
    of the layers above, and for `_local_gram_update` its per-alternative tables) are computed
    once, here, and reused by every pass and batch. Parameters must not change inside the
    block (an E-step: they do not); values are used only in the graph that made them and in
    functions nested in it."""
    cache = {}
    if enabled:
        specs = model.layer_specs
        for i, (k, shape) in enumerate(specs):
            if k == 1 or not shape:
                continue
            if all(kk == 1 for kk, _ in specs[i + 1 :]):
                cache[(id(model), i)] = _shared_gram_constants(model, i)
            elif _local_top_layer(model, i) is not None:
                cache[(id(model), i)] = _local_gram_constants(model, i)
    with _gram_cache.scope(cache):
        yield


def _constants(model, i, make):
    value = _gram_cache.lookup((id(model), i))
    return make(model, i) if value is None else value


def _basis_images(model, n_dims):
    """`[n_dims + 1, n_dims]`: a zero row, then the unit basis (pushed through layers, the
    rows give an affine map's offset and, minus the offset, its rows)."""
    return tf.concat([tf.zeros([1, n_dims], model.dtype), tf.eye(n_dims, dtype=model.dtype)], 0)


def _shared_gram_constants(model, i):
    """`(gt [L, d, L d], gram [L, d, d])`: the transposed column blocks of the (data-independent)
    linear map above layer `i` (every layer above has one alternative), and its local Gram
    blocks."""
    hp, wp, d = model.patch_shape
    num_loc, ld = hp * wp, hp * wp * d
    basis = tf.reshape(_basis_images(model, ld), [ld + 1, hp, wp, d])
    no_path = [None] * len(model.layers)  # (only layers with one alternative are applied)
    cols = tf.reshape(model.up(basis, no_path, i + 1), [ld + 1, ld])
    gt = tf.reshape(cols[1:] - cols[:1], [num_loc, d, ld])  # gt[l] = (G[:, block l])^T
    return gt, tf.einsum("lde,lfe->ldf", gt, gt)


def _local_gram_constants(model, i):
    """The constants of `_local_gram_update` for layer `i` (see there): `(H [L, d, L, d],
    offset [L d], T [L, Kj L, d d], M [Kj, L, d, d], bW [Kj, L, d])`."""
    j = _local_top_layer(model, i)
    hp, wp, d = model.patch_shape
    num_loc, ld = hp * wp, hp * wp * d
    kj = model.layer_specs[j][0]
    no_path = [None] * len(model.layers)
    # H: rows H e_r of the fixed affine map of layers i+1 .. j-1, and its offset
    basis = tf.reshape(_basis_images(model, ld), [ld + 1, hp, wp, d])
    cols = tf.reshape(model.up(basis, no_path, i + 1, j), [ld + 1, ld])
    offset = cols[0]
    hmat = tf.reshape(cols[1:] - cols[:1], [num_loc, d, num_loc, d])  # [l, k, q, m]
    # W_{q,c}: layers j.. on the patch basis, placed at every location at once (the maps are
    # local), with alternative c everywhere
    patch_basis = tf.broadcast_to(_basis_images(model, d)[:, None, None], [d + 1, hp, wp, d])
    mats, biases = [], []
    for c in range(kj):
        path_c = list(no_path)
        path_c[j] = tf.fill([d + 1, hp, wp], c)
        out = tf.reshape(model.up(patch_basis, path_c, j), [d + 1, num_loc, d])
        biases.append(out[0])  # [L, d]
        mats.append(tf.transpose(out[1:] - out[:1], [1, 0, 2]))  # [L, d(in), d(out)]
    mats, biases = tf.stack(mats), tf.stack(biases)  # [Kj, L, d, d], [Kj, L, d]
    grams = tf.einsum("cqkm,cqlm->cqkl", mats, mats)  # M_{q,c} = W W^T
    # T[l, c, q] = H_lq M_{q,c} H_lq^T, rows ordered (c, q): G_nl = onehot_n @ T[l]
    quad = tf.einsum("pkqm,cqmn,plqn->pcqkl", hmat, grams, hmat)
    quad = tf.reshape(quad, [num_loc, kj * num_loc, d * d])
    w_bias = tf.einsum("cqm,cqkm->cqk", biases, mats)  # b W^T, [Kj, L, d]
    return hmat, offset, quad, grams, w_bias


def _apply_local(onehot, v, mats):
    """`out[n, q] = v[n, q] @ mats[c_nq, q]` for one-hot choices `onehot [N, Kj, L]`, `v [N, L,
    d]`, `mats [Kj, L, d, e]`: every alternative, then the chosen one (no per-datapoint gather
    of the matrices)."""
    return tf.einsum("ncq,ncqk->nqk", onehot, tf.einsum("nqm,cqmk->ncqk", v, mats))


def _local_top_layer(model, i):
    """`j` when the per-datapoint Gram of layer `i`'s outputs can be assembled exactly from
    per-alternative tables (`_local_gram_update`): exactly one layer above `i` has a choice,
    `j`, with per-location choices, and `j` and every layer above it are local (a bank of
    per-location maps: block-diagonal or diagonal). Else None."""
    specs = model.layer_specs
    chosen = [m for m in range(i + 1, len(specs)) if specs[m][0] > 1]
    if len(chosen) != 1 or not specs[chosen[0]][1]:
        return None
    j = chosen[0]
    if not all(isinstance(model.layers[m], _LOCAL_BANKS) for m in range(j, len(specs))):
        return None
    return j


def _local_gram_update(model, i, h, path, use_prior, seed=None):
    """Exact sequential coordinate ascent when one local per-location layer `j` lies above.

    With `H` the (fixed, affine) map of the layers between `i` and `j`, and `W_{q,c}` the
    `d x d` map of layers `j..` at location `q` with alternative `c` (local: no mixing across
    locations), the top output of datapoint `n` is `z_q = (H y + h)_q W_{q,c_nq} + b_{q,c_nq}`.
    A change `delta` at location `l` moves it by `(delta H_l)_q W_{q,c_nq}`, so the objective
    changes by exactly

    ```none
    Delta = -delta . (H_l w) - 1/2 delta G_nl delta^T + (change of ildj and log-prior at l),
    w_q = z_q W_{q,c_nq}^T,   G_nl = sum_q H_lq M_{q,c_nq} H_lq^T,   M_{q,c} = W_{q,c} W_{q,c}^T,
    ```

    and `G_nl` is a sum over `q` of the tables `T[l, c, q] = H_lq M_{q,c} H_lq^T`, one row of
    which each datapoint picks per `q` (a one-hot matmul). Locations are visited in order and
    `w` follows every accepted change (`w += M (delta H_l)`, for the datapoints whose choice
    changed), so the result equals brute-force coordinate ascent in the same order (as `'gram'`
    when no layer above has a choice), with no evaluation of the layers above. Cost per
    datapoint and location: `L K_j d^2` multiply-adds for `G_nl`, `L d^2` for `H_l w`, and
    `(K_j + 1) L d^2` more where the choice changed; plus `O(L^2 K_j d^3)` per search for the
    tables. (Until 2026-12-01 `H_l w` was formed from the one-hot-masked input of layer `j`,
    `K_j` times the multiply-adds, most of them by zero.)
    """
    j = _local_top_layer(model, i)
    prob = _LocationProblem(model, i, h, path, use_prior)
    hp, wp, d = prob.shape
    num_loc = prob.num_locations
    ld = num_loc * d
    dtype = model.dtype
    kj = model.layer_specs[j][0]
    compact = not in_xla_context()
    hmat, offset, quad, grams, w_bias = _constants(model, i, _local_gram_constants)
    onehot = tf.one_hot(tf.reshape(path[j], [prob.n, num_loc]), kj, axis=1, dtype=dtype)
    onehot_flat = tf.reshape(onehot, [prob.n, kj * num_loc])  # [N, (c, q)]
    y = prob.select(prob.cur)  # [N, L, d]
    h_rows = tf.reshape(hmat, [num_loc, d, ld])  # H_l, [L, d, L d]
    v = tf.reshape(
        tf.reshape(y, [prob.n, ld]) @ tf.reshape(h_rows, [ld, ld]) + offset, [-1, num_loc, d]
    )
    # w = z W^T at the top, per datapoint: M_{q,c} v_q + b_{q,c} W_{q,c}^T, [N, L, d]
    w = _apply_local(onehot, v, grams) + tf.einsum("ncq,cqk->nqk", onehot, w_bias)
    cands = tf.transpose(prob.candidates, [1, 0, 2, 3])  # [L, N, K, d]
    terms = tf.transpose(prob.terms, [1, 0, 2])  # [L, N, K]

    def body(loc, cur, y, w):
        cand = cands[loc]  # [N, K, d]
        delta = cand - tf.gather(y, loc, axis=1)[:, None]
        r = tf.matmul(tf.reshape(w, [-1, ld]), h_rows[loc], transpose_b=True)  # [N, d] = H_l w
        gram = tf.reshape(onehot_flat @ quad[loc], [-1, d, d])  # [N, d, d] = G_nl
        gain = -tf.einsum("nkd,nd->nk", delta, r) - 0.5 * tf.reduce_sum(
            delta * tf.einsum("nkd,nde->nke", delta, gram), -1
        )
        t = terms[loc]
        now = tf.gather(cur, loc, axis=1)
        gain += t - tf.gather(t, now, axis=1, batch_dims=1)[:, None]
        best = tf.argmax(gain, axis=1, output_type=tf.int32)
        # w follows the accepted changes: w += M (delta H_loc), only for the rows that changed
        # (outside XLA; under XLA every row, with delta = 0 where nothing changed)
        rows = tf.cast(tf.where(best != now)[:, 0], tf.int32) if compact else tf.range(prob.n)
        step = tf.gather(tf.gather(delta, rows), tf.gather(best, rows), axis=1, batch_dims=1)
        step = tf.reshape(step @ h_rows[loc], [-1, num_loc, d])  # [M, L, d]
        w = tf.tensor_scatter_nd_add(
            w, rows[:, None], _apply_local(tf.gather(onehot, rows), step, grams)
        )
        return (
            loc + 1,
            *_set_location(loc, num_loc, cur, y, best, tf.gather(cand, best, axis=1, batch_dims=1)),
            w,
        )

    _, cur, y, _ = tf.while_loop(
        lambda loc, *_: loc < num_loc, body, (tf.constant(0), prob.cur, y, w)
    )
    return prob.done(cur, y)


def _set_location(loc, num_loc, cur, y, choice, value):
    """`cur[:, loc] = choice`, `y[:, loc] = value` without Python indexing (while-loop body)."""
    mask = tf.one_hot(loc, num_loc, on_value=True, off_value=False)  # [L]
    cur = tf.where(mask[None], choice[:, None], cur)
    y = tf.where(mask[None, :, None], value[:, None], y)
    return cur, y


def _brute_force_update(model, i, h, path, use_prior, seed=None):
    """The paper's exact coordinate ascent: each location tries every alternative."""
    prob = _LocationProblem(model, i, h, path, use_prior)
    num_loc = prob.num_locations
    cands = tf.transpose(prob.candidates, [1, 0, 2, 3])  # [L, N, K, d]
    terms = tf.transpose(prob.terms, [1, 0, 2])  # [L, N, K]

    def body(loc, cur, y):
        mask = tf.one_hot(loc, num_loc, dtype=model.dtype)[:, None]  # [L, 1]
        trial = y[:, None] * (1.0 - mask) + cands[loc][:, :, None] * mask  # [N, K, L, d]
        score = prob.exact(trial, prob.trial_choices(cur, mask[None, None, :, 0])) + terms[loc]
        best = tf.argmax(score, axis=1, output_type=tf.int32)
        return loc + 1, *_set_location(
            loc, num_loc, cur, y, best, tf.gather(cands[loc], best, axis=1, batch_dims=1)
        )

    _, cur, y = tf.while_loop(
        lambda loc, *_: loc < num_loc, body, (tf.constant(0), prob.cur, prob.select(prob.cur))
    )
    return prob.done(cur, y)


def _linearized_update(model, i, h, path, use_prior, seed=None, iterations=2, probes=2):
    """Parallel single-site gains from one VJP, verified exactly (never lowers the objective).

    All predicted single-site improvements are proposed at once (Jacobi style); the best
    change at the top `L, L/2, ..., 1` locations (ranked by predicted gain) are evaluated
    exactly and the best of them and the current path is kept.
    """
    prob = _LocationProblem(model, i, h, path, use_prior)
    num_loc = prob.num_locations
    cur = prob.cur
    y = prob.select(cur)
    gram = _mean_local_gram(model, i, prob, y, path, probes, seed)
    sizes = sorted({max(1, num_loc >> s) for s in range(int(math.log2(num_loc)) + 1)}, reverse=True)
    for _ in range(iterations):
        gain, base = _predicted_gains(model, i, prob, y, cur, path, gram)
        current = base + prob.term_sum(cur)
        best_k = tf.argmax(gain, axis=-1, output_type=tf.int32)  # [N, L]
        best_gain = tf.reduce_max(gain, axis=-1)
        ranks = tf.argsort(tf.argsort(-best_gain, axis=1), axis=1)
        proposed_y = prob.select(best_k)
        accept = [(ranks < m) & (best_gain > 0) for m in sizes]
        trials_choice = tf.stack([tf.where(a, best_k, cur) for a in accept], 1)  # [N, M, L]
        trials_y = tf.stack([tf.where(a[..., None], proposed_y, y) for a in accept], 1)
        terms = tf.broadcast_to(
            prob.terms[:, None], tf.concat([tf.shape(trials_choice), [prob.k]], 0)
        )
        scores = prob.exact(trials_y, trials_choice) + tf.reduce_sum(
            tf.gather(terms, trials_choice, axis=3, batch_dims=3), -1
        )
        pick = tf.argmax(scores, axis=1, output_type=tf.int32)
        improved = tf.gather(scores, pick, axis=1, batch_dims=1) > current
        cur = tf.where(improved[:, None], tf.gather(trials_choice, pick, axis=1, batch_dims=1), cur)
        y = tf.where(improved[:, None, None], tf.gather(trials_y, pick, axis=1, batch_dims=1), y)
    return prob.done(cur, y)


def _mean_local_gram(model, i, prob, y, path, probes, seed, return_probes=False):
    """Batch-mean local Gram blocks `E_n[(G_n^T G_n)_ll]`, `[L, d, d]`, from Gaussian probes:
    `E[u u^T] = G^T G` for `u = G^T v`, `v ~ N(0, I)` (one VJP per probe)."""
    n = prob.n
    seed = tfp.random.sanitize_seed(seed, salt="mean_local_gram")
    y_rep = tf.tile(y, [probes, 1, 1])
    rep_path = tuple(
        tf.tile(z_, tf.concat([[probes], tf.ones([tf.rank(z_) - 1], tf.int32)], 0)) for z_ in path
    )
    v = tf.random.stateless_normal(
        tf.concat([[probes * n], model.patch_shape], 0), seed=seed, dtype=model.dtype, alg="philox"
    )
    with tf.GradientTape() as tape:
        tape.watch(y_rep)
        s = tf.reduce_sum(v * model.up(prob.image(y_rep), rep_path, i + 1))
    u = tape.gradient(s, y_rep)  # [P*N, L, d]
    gram = tf.einsum("mld,mle->lde", u, u) / tf.cast(probes * n, model.dtype)
    if return_probes:  # and each datapoint's own `u`s, [P, N, L, d]
        return gram, tf.reshape(u, tf.concat([[probes, n], tf.shape(u)[1:]], 0))
    return gram


def _predicted_gains(
    model, i, prob, y, cur, path, gram, with_bound=False, probe_u=None, own_weight=0.0
):
    """Single-site gains `[N, L, K]` of the quadratic model around the current outputs `y`.

    With `with_bound`, also the linear term alone, `g . delta + (change of the additive
    terms)`: with a prior that adds up over locations, an upper bound of the exact single-site
    gain at the current path (the exact gain subtracts `1/2 |G delta|^2 >= 0`).
    """
    with tf.GradientTape() as tape:
        tape.watch(y)
        base = prob.exact(y, cur)
    g = tape.gradient(base, y)  # [N, L, d] = -G^T z (+ gating gradients)
    delta = prob.candidates - y[:, :, None]  # [N, L, K, d]
    terms = prob.terms - tf.gather(prob.terms, cur, axis=2, batch_dims=2)[..., None]
    linear = tf.einsum("nlkd,nld->nlk", delta, g) + terms
    quad = tf.reduce_sum(delta * tf.einsum("nlkd,lde->nlke", delta, gram), -1)
    if probe_u is not None and own_weight > 0:
        # each datapoint's own estimate `mean_p (u_p . delta)^2` of `|G_n delta|^2`
        own = tf.reduce_mean(tf.square(tf.einsum("pnld,nlkd->pnlk", probe_u, delta)), 0)
        quad = (1.0 - own_weight) * quad + own_weight * own
    gain = linear - 0.5 * quad
    if with_bound:
        return gain, base, linear
    return gain, base


def _ranked_update(
    model,
    i,
    h,
    path,
    use_prior,
    seed=None,
    top=None,
    iterations=1,
    probes=2,
    threshold=None,
    compact=True,
    bound=False,
    patience=None,
    own_weight=0.0,
    alternatives=None,
):
    """See `_ranked_steps` (no threshold: every datapoint visits its `top` best-ranked
    locations) and `_thresholded_steps` (`threshold` set, or `bound`: only locations whose
    predicted gain, or with `bound` its linear upper bound, exceeds it)."""
    if (
        threshold is None
        and not bound
        and patience is None
        and not own_weight
        and alternatives is None
    ):
        return _ranked_steps(model, i, h, path, use_prior, seed, top, iterations, probes)
    threshold = (0.0 if bound else -np.inf) if threshold is None else float(threshold)
    return _thresholded_steps(
        model,
        i,
        h,
        path,
        use_prior,
        seed,
        top,
        iterations,
        probes,
        threshold,
        compact,
        bound,
        patience,
        float(own_weight),
        alternatives,
    )


def _thresholded_steps(
    model,
    i,
    h,
    path,
    use_prior,
    seed,
    top,
    iterations,
    probes,
    threshold,
    compact,
    bound,
    patience=None,
    own_weight=0.0,
    alternatives=None,
):
    """Exact coordinate-ascent steps at the locations whose predicted gain exceeds `threshold`.

    As `_ranked_steps`, but each datapoint visits only its locations (best-ranked first, at
    most `top`, default as there) whose predicted gain (quadratic model) is above `threshold`
    nats; with `bound`, whose *linear bound* is: the exact gain of a single change at the
    current path is at most its linear term, so `bound=True, threshold=0` skips only
    locations where no alternative can improve the path as it was when ranked.
    With `compact` (outside XLA), step `t` evaluates only the datapoints that have a
    `t`-th such location (a gather of their rows), so the cost follows the number of
    promising locations instead of `top` for every datapoint: a warm-started pass on a
    trained model, where few locations change, costs a few evaluations per datapoint.
    With `patience`, a datapoint stops after that many visited locations in a row brought no
    improvement (the ranking puts the likely changes first). `own_weight` in [0, 1] mixes each
    datapoint's own probe estimate of its quadratic term into the batch mean's.
    `alternatives` (at least 1; default, or more than K - 1: K - 1): at a visited location
    only that many of the other alternatives are evaluated, those with the highest predicted
    gain (the step is then exact among them, not among all K).
    Every step compares exact scores with the current one, so the objective never decreases.
    """
    prob = _LocationProblem(model, i, h, path, use_prior)
    num_loc = prob.num_locations
    top = max(num_loc // 2, min(num_loc, 16)) if top is None else min(int(top), num_loc)
    compact = compact and not in_xla_context()
    cur = prob.cur
    y = prob.select(cur)
    gram, probe_u = _mean_local_gram(model, i, prob, y, path, probes, seed, return_probes=True)
    hp, wp, d = prob.shape
    k = prob.k
    if alternatives is not None and int(alternatives) < 1:
        raise ValueError(f"alternatives must be at least 1; got {alternatives}")
    n_alt = k - 1 if alternatives is None else min(int(alternatives), k - 1)
    for _ in range(iterations):
        gain, base, linear = _predicted_gains(
            model, i, prob, y, cur, path, gram, True, probe_u, own_weight
        )
        best_gain = tf.reduce_max(gain, axis=-1)  # [N, L]
        passes = (tf.reduce_max(linear, axis=-1) if bound else best_gain) > threshold
        # the qualifying locations first, by predicted gain
        key = tf.where(passes, best_gain, tf.constant(-np.inf, best_gain.dtype))
        order = tf.argsort(key, axis=1, direction="DESCENDING")
        count = tf.minimum(tf.reduce_sum(tf.cast(passes, tf.int32), axis=1), top)  # [N]
        steps = tf.reduce_max(tf.concat([count, [0]], 0))

        def body(t, cur, y, base, miss, order=order, count=count, gain=gain):
            # `base`: exact score (but the additive terms) of the current path, so only the
            # K - 1 other alternatives at the location are evaluated.
            active = count > t
            if patience is not None:
                active &= miss < patience
            if compact:
                rows = tf.cast(tf.where(active)[:, 0], tf.int32)  # [M] active datapoints
            else:
                rows = tf.range(prob.n)
            loc = tf.gather(order[:, t], rows)  # [M]
            cand = tf.gather(
                tf.gather(prob.candidates, rows), loc, axis=1, batch_dims=1
            )  # [M, K, d]
            y_r, cur_r = tf.gather(y, rows), tf.gather(cur, rows)
            now = tf.gather(cur_r, loc, axis=1, batch_dims=1)  # [M] current choice at loc
            if alternatives is None:
                alt = (now[:, None] + 1 + tf.range(k - 1)[None]) % k  # [M, K-1] the others
            else:  # the `n_alt` others with the highest predicted gain
                pred = tf.gather(tf.gather(gain, rows), loc, axis=1, batch_dims=1)  # [M, K]
                pred = tf.where(
                    tf.one_hot(now, k, on_value=True, off_value=False),
                    tf.constant(-np.inf, pred.dtype),
                    pred,
                )
                alt = tf.math.top_k(pred, n_alt).indices  # [M, n_alt]
            other = tf.gather(cand, alt, axis=1, batch_dims=1)  # [M, K-1, d]
            mask = tf.one_hot(loc, num_loc, dtype=model.dtype)[:, None, :, None]  # [M,1,L,1]
            trial = y_r[:, None] * (1.0 - mask) + other[:, :, None] * mask  # [M, K-1, L, d]
            trial_choice = tf.where(mask[..., 0] > 0, alt[..., None], cur_r[:, None])
            sub_path = tuple(tf.gather(p_, rows) for p_ in path)
            score = model.score_above(
                tf.reshape(trial, tf.concat([tf.shape(trial)[:2], [hp, wp, d]], 0)),
                sub_path,
                i,
                tf.reshape(trial_choice, tf.concat([tf.shape(trial_choice)[:2], [hp, wp]], 0)),
                use_prior,
            )  # [M, K-1]
            terms = tf.gather(tf.gather(prob.terms, rows), loc, axis=1, batch_dims=1)  # [M, K]
            base_r = tf.gather(base, rows)
            total = tf.concat(
                [
                    (base_r + tf.gather(terms, now, axis=1, batch_dims=1))[:, None],
                    score + tf.gather(terms, alt, axis=1, batch_dims=1),
                ],
                axis=1,
            )  # [M, K]: the current choice first
            pick = tf.argmax(total, axis=1, output_type=tf.int32)
            if not compact:  # inactive datapoints keep their choice
                pick = tf.where(active, pick, tf.zeros_like(pick))
            best = tf.where(pick > 0, tf.gather(alt, tf.maximum(pick - 1, 0), batch_dims=1), now)
            new_base = tf.where(
                pick > 0, tf.gather(score, tf.maximum(pick - 1, 0), batch_dims=1), base_r
            )
            idx = tf.stack([rows, loc], axis=1)
            cur = tf.tensor_scatter_nd_update(cur, idx, best)
            y = tf.tensor_scatter_nd_update(y, idx, tf.gather(cand, best, axis=1, batch_dims=1))
            base = tf.tensor_scatter_nd_update(base, rows[:, None], new_base)
            miss_r = tf.where(pick > 0, 0, tf.gather(miss, rows) + 1)
            miss = tf.tensor_scatter_nd_update(miss, rows[:, None], miss_r)
            return t + 1, cur, y, base, miss

        _, cur, y, _, _ = tf.while_loop(
            lambda t, *_, steps=steps: t < steps,
            body,
            (tf.constant(0), cur, y, base, tf.zeros([prob.n], tf.int32)),
        )
    return prob.done(cur, y)


def _ranked_steps(model, i, h, path, use_prior, seed, top, iterations, probes):
    """Exact coordinate-ascent steps at the `top` locations the quadratic model ranks highest.

    The linearisation (one VJP, batch-mean local Gram) only *orders* the locations; every step
    then evaluates all K alternatives at its location exactly (K evaluations of the layers
    above), so each step is an exact coordinate-ascent step and the objective never decreases.
    Cost per iteration: about `top * K` evaluations of the layers above, against `L * K` for
    brute force.
    """
    prob = _LocationProblem(model, i, h, path, use_prior)
    num_loc = prob.num_locations
    top = max(num_loc // 2, min(num_loc, 16)) if top is None else min(int(top), num_loc)
    cur = prob.cur
    y = prob.select(cur)
    gram = _mean_local_gram(model, i, prob, y, path, probes, seed)
    rows = tf.range(prob.n)
    for _ in range(iterations):
        gain, _ = _predicted_gains(model, i, prob, y, cur, path, gram)
        order = tf.argsort(tf.reduce_max(gain, axis=-1), axis=1, direction="DESCENDING")

        def body(t, cur, y, order=order):
            loc = order[:, t]  # [N]: each datapoint's t-th most promising location
            cand = tf.gather(prob.candidates, loc, axis=1, batch_dims=1)  # [N, K, d]
            mask = tf.one_hot(loc, num_loc, dtype=model.dtype)[:, None, :, None]  # [N,1,L,1]
            trial = y[:, None] * (1.0 - mask) + cand[:, :, None] * mask  # [N, K, L, d]
            score = prob.exact(trial, prob.trial_choices(cur, mask[..., 0])) + tf.gather(
                prob.terms, loc, axis=1, batch_dims=1
            )
            best = tf.argmax(score, axis=1, output_type=tf.int32)
            idx = tf.stack([rows, loc], axis=1)
            cur = tf.tensor_scatter_nd_update(cur, idx, best)
            y = tf.tensor_scatter_nd_update(y, idx, tf.gather(cand, best, axis=1, batch_dims=1))
            return t + 1, cur, y

        _, cur, y = tf.while_loop(lambda t, *_: t < top, body, (tf.constant(0), cur, y))
    return prob.done(cur, y)
