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
from collections.abc import Callable
from typing import TYPE_CHECKING

from tfdgmm.training.search import DatasetSearch
from tfdgmm.training.summaries import RateMeter, format_duration

if TYPE_CHECKING:
    from tfdgmm.deep_gmm import DeepGMM
    from tfdgmm.types import Images, Log, NatsToBpd

__all__ = ["EVAL_SEED_OFFSET", "bounds_record", "evaluate_bounds"]

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
) -> dict:
    """Lower and (approximate) upper bounds of `model` on images `x` by a fresh E-step.

    Every datapoint starts from a random path (1 pass), then `restarts` random restarts
    (2 passes each); the best path is kept. Returns `{num_images, lower_bound_nats,
    upper_bound_nats, (lower|upper)_bound_bits_per_dim, seconds}` (means per image).
    """
    start = time.monotonic()
    search = DatasetSearch(
        model,
        x,
        batch_size=batch_size,
        init_passes=1,
        restarts=restarts,
        restart_passes=2,
        location_method=location_method,
        location_options=location_options,
        seed=seed,
        name="evaluation",
    )
    meter = RateMeter()
    last = time.monotonic()
    while not search.done:
        remaining = search.num_batches - int(search.position.numpy())
        n = 1 if meter.rate is None else max(1, min(remaining, int(meter.rate * 15)))
        t0 = time.monotonic()
        search.run(step=0, max_batches=n)
        meter.update(n, time.monotonic() - t0)
        if log is not None and time.monotonic() - last > 15 and not search.done:
            last = time.monotonic()
            pos = int(search.position.numpy())
            log(
                f"evaluating {label}: {pos}/{search.num_batches} batches, ETA "
                f"{format_duration(meter.eta(search.num_batches - pos))}"
            )
    return search_record(search, nats_to_bpd, time.monotonic() - start)
