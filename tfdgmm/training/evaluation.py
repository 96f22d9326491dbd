"""Bounds of a model on a data set, and the one record they are reported in.

* `evaluate_bounds(model, x)`: lower and (approximate) upper bounds by a fresh E-step.
* `bounds_record(...)`: the dict every report of bounds uses (`metrics.json`'s splits, the
  gating block, `tfdgmm evaluate`, the tuner's objective).
* `EVAL_SEED_OFFSET`: evaluations of a run search with the seed `training.seed + 104729`, so
  `tfdgmm evaluate`, the run's final test bounds and the tuner's objective agree.

Related names: `EMTrainer.evaluate` (this with the run's settings), `EMTrainer.refine` (one more
E-step on a split's stored paths), `DatasetSearch.score` / `mean_bounds` (bounds at stored
paths), `gating.gated_search_bounds` (with a gating prior).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import tensorflow as tf

from tfdgmm.path_search import keep_better
from tfdgmm.training.search import DatasetSearch
from tfdgmm.training.summaries import RateMeter, format_duration

if TYPE_CHECKING:
    from tfdgmm.deep_gmm import DeepGMM
    from tfdgmm.types import ChoicePath, Images, Log, NatsToBpd

__all__ = ["EVAL_SEED_OFFSET", "bounds_record", "donor_starts", "evaluate_bounds"]

#: Evaluation searches of a run use the seed `training.seed + EVAL_SEED_OFFSET`.
EVAL_SEED_OFFSET = 104729


def bounds_record(
    lower: float,
    upper: float,
    num_images: int,
    seconds: float | None,
    nats_to_bpd: Callable[[float], float] | None,
) -> dict:
    """`{num_images, lower_bound_nats, upper_bound_nats, seconds}` plus
    `(lower|upper)_bound_bits_per_dim` when `nats_to_bpd` is given (means per image)."""
    out = {
        "num_images": num_images,
        "lower_bound_nats": lower,
        "upper_bound_nats": upper,
        "seconds": seconds,
    }
    if nats_to_bpd is not None:
        out["lower_bound_bits_per_dim"] = float(nats_to_bpd(lower))
        out["upper_bound_bits_per_dim"] = float(nats_to_bpd(upper))
    return out


def search_record(
    search: DatasetSearch, nats_to_bpd: Callable[[float], float] | None, seconds: float
) -> dict:
    """`bounds_record` of a `DatasetSearch`'s stored bounds."""
    lo, up = search.mean_bounds()
    return bounds_record(lo, up, search.num_images, seconds, nats_to_bpd)


def evaluate_bounds(
    model: DeepGMM,
    x: Images,
    batch_size: int = 500,
    restarts: int = 2,
    location_method: str = "auto",
    location_options: dict | None = None,
    seed: int = 0,
    nats_to_bpd: NatsToBpd | None = None,
    log: Log | None = None,
    label: str = "data",
    starts: Sequence[ChoicePath] = (),
    rounds: int = 0,
    round_tol: float = 0.5,
    extra_passes: int = 0,
    extra_pass_gain: float = 20.0,
) -> dict:
    """Lower and (approximate) upper bounds of `model` on images `x` by a fresh E-step.

    Every datapoint starts from a random path (1 pass), then `restarts` random restarts
    (2 passes each); the best path is kept. Then, for a more thorough search (a split with no
    stored paths scored like one whose paths were refined through training):

    * `starts`: more initial paths for `x` (each a path tuple, e.g. `donor_starts`: the
      stored paths of the nearest training images); each gets 1 pass plus up to
      `extra_passes` more where a pass gained over `extra_pass_gain` nats, and the best path
      per datapoint is kept;
    * `rounds`: then up to this many warm rounds (1 pass + the extra passes, from the kept
      paths) while a round raises the mean bound by at least `round_tol` nats/image.

    Every step keeps each datapoint's best path, so the bound never goes down along the way.
    Returns `{num_images, lower_bound_nats, upper_bound_nats, (lower|upper)_bound_bits_per_dim,
    seconds}` (means per image), plus `search: {restarts, starts, trace}` when `starts` or
    `rounds` are used (`trace`: the mean lower bound after the fresh search, after each start,
    and after each round).
    """
    start = time.monotonic()
    settings = dict(
        batch_size=batch_size,
        init_passes=1,
        restart_passes=2,
        location_method=location_method,
        location_options=location_options,
        seed=seed,
    )
    search = DatasetSearch(model, x, restarts=restarts, name="evaluation", **settings)
    _run(search, 0, log, f"evaluating {label}")
    trace = [search.mean_bounds()[0]]
    if starts or rounds:  # (one more traced search for all the starts and rounds)
        warm = DatasetSearch(
            model,
            x,
            restarts=0,
            extra_passes=extra_passes,
            extra_pass_gain=extra_pass_gain,
            name="evaluation_warm",
            **settings,
        )
        for number, init in enumerate(starts):
            for v, p in zip(warm.paths, model.check_path(init)):
                v.assign(p)
            warm.reset()
            _run(warm, number + 1, log, f"evaluating {label} (start {number + 1}/{len(starts)})")
            _keep_better(search, warm)
            trace.append(search.mean_bounds()[0])
        if rounds:
            for v, w in zip(warm.paths, search.paths):
                v.assign(w)
            for r in range(int(rounds)):
                warm.reset()
                _run(warm, 1_000 + r, log, f"evaluating {label} (round {r + 1})")
                trace.append(warm.mean_bounds()[0])
                if trace[-1] - trace[-2] < round_tol:
                    break
            search = warm
    out = search_record(search, nats_to_bpd, time.monotonic() - start)
    if starts or rounds:
        out["search"] = {"restarts": int(restarts), "starts": len(starts), "trace": trace}
    return out


def _run(search: DatasetSearch, step: int, log: Log | None, what: str) -> None:
    """`search.run(step)` over every batch, with a progress line every 15 s."""
    meter = RateMeter()
    last = time.monotonic()
    while not search.done:
        remaining = search.num_batches - int(search.position.numpy())
        n = 1 if meter.rate is None else max(1, min(remaining, int(meter.rate * 15)))
        t0 = time.monotonic()
        search.run(step=step, max_batches=n)
        meter.update(n, time.monotonic() - t0)
        if log is not None and time.monotonic() - last > 15 and not search.done:
            last = time.monotonic()
            pos = int(search.position.numpy())
            log(
                f"{what}: {pos}/{search.num_batches} batches, ETA "
                f"{format_duration(meter.eta(search.num_batches - pos))}"
            )


def _keep_better(search: DatasetSearch, other: DatasetSearch) -> None:
    """Per datapoint, `other`'s path and bounds where its lower bound is higher."""
    better = other.lower > search.lower
    paths = keep_better(search.path(), search.lower, other.path(), other.lower)
    for v, p in zip(search.paths, paths):
        v.assign(p)
    search.lower.assign(tf.where(better, other.lower, search.lower))
    search.upper.assign(tf.where(better, other.upper, search.upper))


def donor_starts(
    x: Images, donor_images: Images, donor_paths: ChoicePath, k: int = 1, chunk: int = 1000
) -> list[tuple[tf.Tensor, ...]]:
    """`k` initial paths for images `x`: the paths `donor_paths` (one per donor image, e.g. a
    run's stored training paths) of each image's `k` nearest donor images, nearest first.

    Nearness is the Euclidean distance between the images average-pooled to at most 8 x 8
    pixels (coarse structure; the pooled images are compared in chunks of `chunk` rows)."""
    x = tf.cast(tf.convert_to_tensor(x), tf.float32)
    donors = tf.cast(tf.convert_to_tensor(donor_images), tf.float32)
    if x.shape.rank != 4 or donors.shape.rank != 4 or x.shape[1:] != donors.shape[1:]:
        raise ValueError(
            f"donor_starts: images {x.shape} and donor images {donors.shape} must be "
            "[N, H, W, C] of the same H, W, C"
        )
    num_donors = int(donors.shape[0])
    if any(int(p.shape[0]) != num_donors for p in donor_paths):
        raise ValueError(
            f"donor_starts: {num_donors} donor images but paths for "
            f"{[int(p.shape[0]) for p in donor_paths]}"
        )
    if not 1 <= int(k) <= num_donors:
        raise ValueError(f"donor_starts: k must be in [1, {num_donors}]; got {k}")
    a, b = _pooled(x), _pooled(donors)
    b_sq = tf.reduce_sum(b * b, axis=1)
    nearest = []
    for lo in range(0, int(a.shape[0]), int(chunk)):
        part = a[lo : lo + int(chunk)]
        dist = b_sq[None] - 2.0 * tf.matmul(part, b, transpose_b=True)  # (+ |a|^2: same order)
        nearest.append(tf.math.top_k(-dist, k=int(k)).indices)
    idx = tf.concat(nearest, axis=0)  # [N, k]
    return [tuple(tf.gather(p, idx[:, j]) for p in donor_paths) for j in range(int(k))]


def _pooled(x: tf.Tensor) -> tf.Tensor:
    """`[N, H, W, C]` -> `[N, h * w * C]`, average-pooled by the largest factor that divides H
    and W and leaves at least 8 pixels (1 for images of 8 pixels or fewer)."""
    h, w = int(x.shape[1]), int(x.shape[2])
    f = max(
        [f for f in range(1, min(h, w) + 1) if h % f == 0 and w % f == 0 and min(h, w) // f >= 8]
        + [1]
    )
    if f > 1:
        x = tf.nn.avg_pool2d(x, ksize=f, strides=f, padding="VALID")
    return tf.reshape(x, [tf.shape(x)[0], -1])
