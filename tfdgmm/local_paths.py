r"""Exact best paths and exact likelihoods when the choices are independent across locations.

When every layer with a choice lies in a top stack of *local* layers (block-diagonal or
diagonal banks: per-location `d x d` maps on the one patch grid), each of those layers chooses
per location, and the path prior adds up over locations (uniform or factorized; or no prior),
the hard-EM objective splits into a sum over locations:

```none
log pi_p + log p_p(x) = c(x) + sum_l f_l(x, c_l),
f_l(x, c) = log N(z_l; 0, I_d) + sum_j [ildj_{j, c_j, l} + log pi_{j, l}(c_j)],
```

where `c(x)` is the log-determinant of the choice-free layers below the stack, `c_l` is the
tuple of choices at location `l` (one per choice layer of the stack: `C = prod_j K_j` of them)
and `z_l` the top output at `l`, which depends on the input of the stack at `l` and on `c_l`
only. Hence:

* **the best path is the per-location argmax** of `f_l`: exact (the global maximum of the
  joint over all `C^L` paths), where coordinate ascent only reaches a local one;
* **the log-likelihood is exact**: the mixture over paths factorises over locations,
  `log p(x) = c(x) + sum_l logsumexp_c f_l(x, c)`, though the `C^L` paths cannot be
  enumerated (Table 2's 4 layers x 4: `256^64`, about `1e154`).

The cost is one evaluation of the stack per combination `c`, all locations at once, shared
along the tree of prefixes: `sum_j prod_{i <= j} K_i` layer applications per datapoint (340 for
4 layers x 4). Table 2's models (half-convolutions, then `L` per-location block-diagonal
layers of `K` alternatives) are of this form; Table 3's (half-convolutions between the
block-diagonal layers) are not.

#### Examples

```python
model = tfdgmm.DeepGMM.from_config(cfg)           # e.g. configs/table2_L4_K4.yaml's model
stack = local_stack(model)                         # LocalStack(start=3, combinations=256)
path, joint = best_local_path(model, model.patchify(x))   # the exact hard E-step
log_px = local_log_prob(model, model.patchify(x))          # exact log p(x), [N]
```
"""

from __future__ import annotations

import math
from typing import NamedTuple

import tensorflow as tf

from tfdgmm import path_priors
from tfdgmm.bijectors import BlockDiagonal, Diagonal

__all__ = [
    "MAX_COMBINATIONS",
    "LocalStack",
    "best_local_path",
    "local_log_prob",
    "local_stack",
    "location_scores",
]

#: `location_method='auto'` enumerates per location up to this many combinations.
MAX_COMBINATIONS = 4096

_LOCAL_BANKS = (BlockDiagonal, Diagonal)
_SEPARABLE_PRIORS = (path_priors.UniformPathPrior, path_priors.FactorizedPathPrior)
_MEMORY_BUDGET = 2**28  # bytes of stack outputs per chunk of datapoints
_LOG_2PI = math.log(2.0 * math.pi)


class LocalStack(NamedTuple):
    """The top stack of local layers holding every choice: layers `start..` and the number
    of per-location choice combinations `prod_j K_j` over its choice layers."""

    start: int
    combinations: int


def local_stack(model, use_prior: bool = True) -> LocalStack | None:
    """The model's `LocalStack` when its objective splits over locations (see the module
    docstring), else None. `use_prior=False`: the prior is left out, so any prior will do."""
    specs = model.layer_specs
    chosen = [i for i, (k, _) in enumerate(specs) if k > 1]
    if not chosen:
        return None
    if use_prior and not isinstance(model.path_prior, _SEPARABLE_PRIORS):
        return None
    start = chosen[0]
    grid = tuple(model.patch_shape[:2])
    for m in range(start, len(specs)):
        k, shape = specs[m]
        if not isinstance(model.layers[m], _LOCAL_BANKS):
            return None
        if k > 1 and tuple(shape) != grid:
            return None
    return LocalStack(start, math.prod(specs[m][0] for m in chosen))


def _require_stack(model, use_prior, what):
    stack = local_stack(model, use_prior)
    if stack is None:
        raise ValueError(
            f"{what}: the model's choices are not independent across locations (every layer "
            "with a choice must be a per-location block-diagonal or diagonal layer, with only "
            "such layers above it, and the path prior uniform or factorized)"
        )
    return stack


def location_scores(model, h, start: int, use_prior: bool = True):
    """`f_l(x, c)` of the module docstring for every location and combination:
    `[N, Hp, Wp, C]` from the stack's input `h` (`[N, Hp, Wp, D]`, the output of layer
    `start - 1`). Combination `c` is the mixed-radix number of the stack's choices, its
    lowest choice layer the most significant digit."""
    hp, wp, d = model.patch_shape
    dtype = h.dtype
    n = tf.shape(h)[0]
    h = h[:, None]  # [N, P = 1, Hp, Wp, D]
    terms = tf.zeros([1, 1, hp, wp], dtype)  # [1, P, Hp, Wp]
    for m in range(start, len(model.layers)):
        k, _ = model.layer_specs[m]
        table = tf.cast(model.ildj_table(m), dtype)  # [K, Hp, Wp]
        if k == 1:
            h = model.layers[m].inverse(h)
            terms += table[0]
            continue
        h = model.layers[m].inverse(h[:, :, None])  # batch form: [N, P, K, Hp, Wp, D]
        if use_prior:
            logits = tf.cast(model.path_prior.layer_logits(m), dtype)
            log_pi = tf.nn.log_softmax(tf.broadcast_to(logits, [hp, wp, k]), axis=-1)
            table = table + tf.transpose(log_pi, [2, 0, 1])
        terms = terms[:, :, None] + table[None, None]  # [1, P, K, Hp, Wp]
        p = tf.shape(h)[1]
        h = tf.reshape(h, [n, p * k, hp, wp, d])
        terms = tf.reshape(terms, [1, p * k, hp, wp])
    f = -0.5 * tf.reduce_sum(tf.square(h), axis=-1) - 0.5 * d * _LOG_2PI + terms
    return tf.transpose(f, [0, 2, 3, 1])


def _below(model, h0, start):
    """The stack's input and `c(x)` (the choice-free layers below it: `[N]`)."""
    h = h0
    const = tf.zeros([], h0.dtype)
    for m in range(start):
        h = model.layers[m].inverse(h)
        const += tf.reduce_sum(tf.cast(model.ildj_table(m), h0.dtype))
    return h, const


def _reduced(model, h, stack, use_prior):
    """Per location: `(argmax_c f, max_c f, logsumexp_c f)`, each `[N, Hp, Wp]`, in chunks of
    datapoints small enough for `_MEMORY_BUDGET` (padded, so XLA sees static shapes)."""
    hp, wp, d = model.patch_shape
    itemsize = h.dtype.size
    rows = max(1, _MEMORY_BUDGET // (3 * stack.combinations * hp * wp * d * itemsize))

    def reduce(hc):
        f = location_scores(model, hc, stack.start, use_prior)
        return (
            tf.argmax(f, axis=-1, output_type=tf.int32),
            tf.reduce_max(f, axis=-1),
            tf.reduce_logsumexp(f, axis=-1),
        )

    static_n = h.shape[0]
    if static_n is not None and static_n <= rows:
        return reduce(h)
    n = tf.shape(h)[0]
    chunks = (n + rows - 1) // rows
    padded = tf.pad(h, [[0, chunks * rows - n], [0, 0], [0, 0], [0, 0]])
    padded = tf.reshape(padded, [chunks, rows, hp, wp, d])
    out = tf.map_fn(
        reduce,
        padded,
        fn_output_signature=(tf.int32, h.dtype, h.dtype),
        parallel_iterations=1,
    )
    return tuple(tf.reshape(t, [chunks * rows, hp, wp])[:n] for t in out)


def _decode(model, best, stack, n):
    """Combination indices `[N, Hp, Wp]` -> the path (one choice tensor per layer)."""
    path, radix = [], stack.combinations
    for m, (k, shape) in enumerate(model.layer_specs):
        if m < stack.start or k == 1:
            shape = tf.constant(list(shape), tf.int32, [len(shape)])
            path.append(tf.zeros(tf.concat([[n], shape], 0), tf.int32))
            continue
        radix //= k
        path.append((best // radix) % k)
    return tuple(path)


def best_local_path(model, h0, use_prior: bool = True):
    """The exact best path per datapoint (the global maximum of the hard-EM objective) and
    its objective: `(path, joint [N])`, from the patch tensor `h0 = patchify(x)`. Raises
    when `local_stack(model, use_prior)` is None."""
    stack = _require_stack(model, use_prior, "best_local_path")
    h, const = _below(model, h0, stack.start)
    best, top, _ = _reduced(model, h, stack, use_prior)
    return _decode(model, best, stack, tf.shape(h0)[0]), const + tf.reduce_sum(top, [1, 2])


def local_log_prob(model, h0):
    """The exact `log p(x)` (`[N]`) from `h0 = patchify(x)`, summing over all paths by the
    per-location factorisation. Raises when `local_stack(model)` is None."""
    stack = _require_stack(model, True, "local_log_prob")
    h, const = _below(model, h0, stack.start)
    _, _, lse = _reduced(model, h, stack, True)
    return const + tf.reduce_sum(lse, [1, 2])
