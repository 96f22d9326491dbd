"""`DatasetSearch`: a dataset, its best path per datapoint, and the hard E-step over it.

The images live in a (non-checkpointed) `tf.Variable`; each datapoint's current path lives in
int32 `tf.Variable`s (one per layer, `[N]` or `[N, Hp, Wp]`), and its lower and upper bounds in
float `tf.Variable`s `[N]`. `run(...)` searches a range of batches inside one `tf.function`
(a `tf.while_loop` over batches: no host round trip per batch), starting every datapoint from
its stored path (`init_passes` passes), then from `restarts` random paths (`restart_passes`
passes each), keeping the best; the results are written back to the variables. The position (the
next batch) is a variable too, so an interrupted search resumes where it stopped.

Batches have a fixed size `B` (static shapes); the last one is `[N - B, N)` and overlaps the one
before it when `B` does not divide `N`: those datapoints are searched once more from their new
paths, which can only improve them.

Randomness is stateless: batch `b` of the search tagged `step` uses the seed
`fold_in(fold_in(seed, step), b)`, so results do not depend on how the work is split into calls.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf

from tfdgmm import path_search
from tfdgmm.bijectors import precomposed
from tfdgmm.training.distribute import build_sharded_search
from tfdgmm.training.seeds import fold_seed

if TYPE_CHECKING:
    from collections.abc import Callable

    from tfdgmm.deep_gmm import DeepGMM
    from tfdgmm.types import ChoicePath, Images, Seed, Strategy

__all__ = ["DatasetSearch", "fold_seed", "path_usage_entropy"]


class DatasetSearch(tf.Module):
    """E-step state for one dataset. See the module docstring.

    Args:
      model: a `tfdgmm.DeepGMM`.
      x: images `[N, H, W, C]` (array or tensor), already preprocessed.
      batch_size: images per search batch (clipped to N).
      init_passes, restarts, restart_passes, location_method, location_options: as in
        `DeepGMM.best_path`.
      seed: int seed of the random initial paths and restarts.
      name: name of the module (and of its variables).
      strategy: a `tf.distribute` strategy, or None: each batch is then split across the
        replicas (`tfdgmm.training.distribute.build_sharded_search`); create the search under
        `strategy.scope()`.
      compose_once: compose every block (`W = P L U`) once per call of `run` (all its
        batches), not once per layer call.
      restart_when: `'always'`: every batch gets the random restarts; `'unsearched'`: only
        batches holding a datapoint whose stored path was never searched (its lower bound is
        not finite), e.g. the first E-step; the others search from their stored paths alone.
      extra_passes, extra_pass_gain: more passes from the stored paths for the datapoints
        whose last pass still gained more than `extra_pass_gain` nats (`DeepGMM.best_path`).
    """

    def __init__(
        self,
        model: DeepGMM,
        x: Images,
        batch_size: int = 500,
        init_passes: int = 1,
        restarts: int = 1,
        restart_passes: int = 2,
        location_method: str = "auto",
        location_options: dict | None = None,
        seed: int = 0,
        name: str = "search",
        strategy: Strategy | None = None,
        compose_once: bool = True,
        restart_when: str = "always",
        extra_passes: int = 0,
        extra_pass_gain: float = 1.0,
    ) -> None:
        super().__init__(name=name)
        self._model = model
        self.strategy = strategy
        x = tf.convert_to_tensor(x, dtype=model.dtype)
        if x.shape.rank != 4 or tuple(x.shape[1:]) != tuple(model.image_shape):
            raise ValueError(
                f"{name}: expected images [N, {', '.join(map(str, model.image_shape))}]"
                f"; got {x.shape}"
            )
        n = int(x.shape[0])
        if n < 1:
            raise ValueError(f"{name}: no images")
        self.num_images = n
        self.batch_size = min(int(batch_size), n)
        self.num_batches = math.ceil(n / self.batch_size)
        self.init_passes = int(init_passes)
        self.restarts = int(restarts)
        self.restart_passes = int(restart_passes)
        self.location_method = location_method
        self.location_options = dict(location_options or {})
        self.compose_once = bool(compose_once)
        if int(extra_passes) < 0:
            raise ValueError(f"{name}: extra_passes must be >= 0; got {extra_passes}")
        self.extra_passes = int(extra_passes)
        self.extra_pass_gain = float(extra_pass_gain)
        if restart_when not in ("always", "unsearched"):
            raise ValueError(
                f"{name}: restart_when must be 'always' or 'unsearched'; got {restart_when!r}"
            )
        self.restart_when = restart_when
        self.seed = int(seed)
        with self.name_scope:
            self.data = tf.Variable(x, trainable=False, name="data")
            init = path_search.random_path(model, n, fold_seed(self.seed, 0x5EED))
            self.paths = [
                tf.Variable(z, trainable=False, name=f"path_{i}") for i, z in enumerate(init)
            ]
            neg_inf = tf.fill([n], tf.constant(-np.inf, model.dtype))
            self.lower = tf.Variable(neg_inf, trainable=False, name="lower")
            self.upper = tf.Variable(neg_inf, trainable=False, name="upper")
            self.position = tf.Variable(0, dtype=tf.int64, trainable=False, name="position")
        self._search_fn = None
        self._score_fn = None

    # ------------------------------------------------------------------ state

    def checkpoint_items(self) -> dict:
        """The variables that make up the E-step state (everything but the data)."""
        return {
            "paths": list(self.paths),
            "lower": self.lower,
            "upper": self.upper,
            "position": self.position,
        }

    @property
    def model(self) -> DeepGMM:
        """The `DeepGMM` whose paths this searches."""
        return self._model

    def clear_traced(self) -> None:
        """Forget the traced search function (it is traced again, e.g. after `restarts`
        changed)."""
        self._search_fn = None

    def set_data(self, x: Images) -> None:
        self.data.assign(tf.convert_to_tensor(x, dtype=self._model.dtype))

    def path(self) -> tuple[tf.Tensor, ...]:
        """The stored paths as a tuple of tensors."""
        return tuple(tf.convert_to_tensor(v) for v in self.paths)

    @property
    def done(self) -> bool:
        return int(self.position.numpy()) >= self.num_batches

    def mean_bounds(self) -> tuple[float, float]:
        """`(mean lower, mean upper)` over the dataset, as Python floats (float64 sums)."""
        lo = tf.reduce_mean(tf.cast(self.lower, tf.float64))
        up = tf.reduce_mean(tf.cast(self.upper, tf.float64))
        return float(lo), float(up)

    # ------------------------------------------------------------------ the search

    def store(self, idx: tf.Tensor, path: ChoicePath, joint: tf.Tensor, upper: tf.Tensor) -> list:
        """Ops writing a batch's found paths and bounds at rows `idx`."""
        ops = [v.scatter_update(tf.IndexedSlices(p, idx)) for v, p in zip(self.paths, path)]
        ops.append(self.lower.scatter_update(tf.IndexedSlices(joint, idx)))
        ops.append(self.upper.scatter_update(tf.IndexedSlices(upper, idx)))
        return ops

    def window(self, b: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """`(first row, row indices)` of batch `b` (the last batch overlaps the one before)."""
        lo = tf.minimum(tf.cast(b, tf.int32) * self.batch_size, self.num_images - self.batch_size)
        return lo, tf.range(lo, lo + self.batch_size)

    def _batch(self, lo: tf.Tensor) -> tuple[tf.Tensor, tuple[tf.Tensor, ...]]:
        x = tf.slice(self.data, [lo, 0, 0, 0], [self.batch_size, *self._model.image_shape])
        init = tuple(tf.gather(v, tf.range(lo, lo + self.batch_size)) for v in self.paths)
        return x, init

    def _build_search(self) -> Callable:
        model = self._model

        @tf.function
        def search(start: tf.Tensor, stop: tf.Tensor, step_seed: tf.Tensor) -> tf.Tensor:
            def body(b: tf.Tensor) -> list[tf.Tensor]:
                lo, idx = self.window(b)
                x, init = self._batch(lo)

                def search_with(restarts: int) -> tuple:
                    return model.best_path(
                        x,
                        init=init,
                        restarts=restarts,
                        init_passes=self.init_passes,
                        restart_passes=self.restart_passes,
                        seed=fold_seed(step_seed, b),
                        location_method=self.location_method,
                        location_options=self.location_options or None,
                        compose_once=self.compose_once,
                        extra_passes=self.extra_passes,
                        extra_pass_gain=self.extra_pass_gain,
                    )

                if self.restart_when == "always" or self.restarts == 0:
                    path, joint = search_with(self.restarts)
                else:
                    unsearched = tf.reduce_any(
                        tf.logical_not(tf.math.is_finite(tf.gather(self.lower, idx)))
                    )
                    path, joint = tf.cond(
                        unsearched, lambda: search_with(self.restarts), lambda: search_with(0)
                    )
                upper = model.log_prob_upper_bound(x, path=path, joint=joint)
                with tf.control_dependencies(self.store(idx, path, joint, upper)):
                    return [b + 1]

            with (
                precomposed(model.layers if self.compose_once else []),
                path_search.gram_constants(model, self.compose_once),
            ):
                (b,) = tf.while_loop(lambda b: b < stop, body, [start], parallel_iterations=1)
            return b

        return search

    def run(self, step: int, max_batches: int | None = None, seed: Seed | None = None) -> int:
        """Search batches `position .. position + max_batches - 1` (all remaining by default).

        `step` tags the search (e.g. the EM iteration) so every step draws fresh restarts.
        Returns the number of batches searched.
        """
        if self._search_fn is None:
            if self.strategy is None:
                self._search_fn = self._build_search()
            else:
                self._search_fn = build_sharded_search(self, self.strategy)
        start = int(self.position.numpy())
        stop = (
            self.num_batches
            if max_batches is None
            else min(self.num_batches, start + max(int(max_batches), 1))
        )
        if start >= stop:
            return 0
        step_seed = fold_seed(self.seed if seed is None else seed, step)
        self._search_fn(tf.constant(start, tf.int64), tf.constant(stop, tf.int64), step_seed)
        self.position.assign(stop)
        return stop - start

    def reset(self) -> None:
        """Start a new search over the whole dataset (keeps the paths)."""
        self.position.assign(0)

    # ------------------------------------------------------------------ scores without search

    def _build_score(self) -> Callable:
        model = self._model

        @tf.function
        def score() -> tuple[tf.Tensor, tf.Tensor]:
            def body(
                b: tf.Tensor, lo_sum: tf.Tensor, up_sum: tf.Tensor
            ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
                lo, idx = self.window(b)
                x, path = self._batch(lo)
                # count each datapoint once: skip the rows the overlapping last batch repeats
                mask = tf.cast(
                    tf.range(lo, lo + self.batch_size) >= tf.cast(b, tf.int32) * self.batch_size,
                    tf.float64,
                )
                lower = tf.cast(model.joint_log_prob(x, path), tf.float64)
                upper = tf.cast(model.log_prob_upper_bound(x, path=path), tf.float64)
                return (
                    b + 1,
                    lo_sum + tf.reduce_sum(lower * mask),
                    up_sum + tf.reduce_sum(upper * mask),
                )

            zero = tf.constant(0.0, tf.float64)
            _, lo_sum, up_sum = tf.while_loop(
                lambda b, *_: b < self.num_batches,
                body,
                [tf.constant(0, tf.int64), zero, zero],
                parallel_iterations=1,
            )
            return lo_sum / self.num_images, up_sum / self.num_images

        return score

    def score(self) -> tuple[float, float]:
        """`(mean lower, mean upper)` of the stored paths under the current parameters (no
        search, nothing stored): e.g. the training bound right after an M-step."""
        if self._score_fn is None:
            self._score_fn = self._build_score()
        lo, up = self._score_fn()
        return float(lo), float(up)


def path_usage_entropy(model: DeepGMM, paths: ChoicePath) -> list[float]:
    """Per layer, the entropy (nats) of the empirical distribution of its choices over the
    dataset (pooled over locations for per-location layers); 0 for single-alternative layers."""
    out = []
    for (k, _), z in zip(model.layer_specs, paths):
        if k == 1:
            out.append(0.0)
            continue
        counts = tf.math.bincount(
            tf.reshape(tf.convert_to_tensor(z), [-1]), minlength=k, maxlength=k, dtype=tf.float64
        )
        p = counts / tf.reduce_sum(counts)
        out.append(max(0.0, float(-tf.reduce_sum(tf.math.multiply_no_nan(tf.math.log(p), p)))))
    return out
