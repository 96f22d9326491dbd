r"""Multi-device and multi-worker hard EM with `tf.distribute`.

`make_strategy(name)` builds the strategy behind `tfdgmm train --strategy`:

* `'default'`: no strategy (`None`): the single-device code path, unchanged.
* `'mirrored'`: `tf.distribute.MirroredStrategy` over all local GPUs, or, without GPUs, over
  all logical CPU devices (`configure_cpu_devices(n)` splits the CPU into `n` of them; it must
  run before TensorFlow initialises its devices).
* `'multiworker'`: `tf.distribute.MultiWorkerMirroredStrategy` from the `TF_CONFIG` environment
  variable (checked first: a missing or invalid `TF_CONFIG` is a `DistributeConfigError` saying
  what is wrong). Every worker runs the same command on the same data and config.

How `EMTrainer` uses a strategy (everything else is the single-device algorithm):

* **Variables** (model, optimizer slots, E-step path tables, data, loop state) are mirrored: the
  model must be built under `strategy.scope()` (the trainer checks; `tfdgmm.runs.train_run` does
  it), the trainer creates the rest under the scope.
* **M-step**: data-parallel on the *same* global minibatch as a single device: the stateless
  shuffle picks the global minibatch of `batch_size` (100) indices, replica `r` of `R` takes
  the slice `[r B/R, (r+1) B/R)`, computes the gradient of `-sum(joint) / B` over its slice,
  the gradients are all-reduced (sum) and the Keras optimizer applies the sum once, in
  cross-replica context, to the mirrored variables. The sum is the single-device gradient of the
  mean (up to float summation order), so no learning-rate rule is needed and a run with `R`
  replicas follows the single-device run to float tolerance. `batch_size` must be divisible by
  `R`.
* **E-step**: every search batch of `estep_batch_size` images is split the same way; each
  replica searches its slice, with random restarts drawn for the whole global batch from the
  batch's seed and sliced (so a datapoint starts from the same random path as on one device),
  and the paths and bounds are gathered back (`strategy.gather`) into the mirrored path tables.
  For per-sample choices and the exact `'gram'` per-location scheme the search is per datapoint,
  so its result equals the single-device search; the `'ranked'` and `'linearized'` per-location
  schemes estimate a batch-mean local Gram from random probes of the batch, which on `R`
  replicas is estimated from each replica's slice (same quality, not the same numbers): those
  runs agree with a single device statistically, not bit for bit. `estep_batch_size` (after
  clipping to the data size) must be divisible by `R`. Scoring stored paths (`score`, the
  training bound after an M-step) is not sharded: every worker computes it in full.
* **Data**: the trainer holds the images in memory (a mirrored variable), not in a `tf.data`
  pipeline, so there is no auto-sharding to configure: sharding is the explicit per-replica
  slicing of the same stateless global batches above, which is what makes results independent
  of the replica count. Every worker must load the same images (same config, data spec and
  noise seed). A pipeline fed to a strategy elsewhere should use
  `tf.data.experimental.AutoShardPolicy.DATA` (`data_options()`).
* **Checkpoints**: all workers save (saving may involve collectives), the chief into the run
  directory, the others into a private temporary directory (`worker_dir`) removed at the end;
  on `--resume` every worker restores the chief's latest checkpoint. TensorBoard and logs: the
  same split.
* **One strategy object per process.** Build it once and pass it to every trainer: two
  `MirroredStrategy` objects over the same CPUs in one process reuse collective instance keys
  (measured in TF 2.21: "Shape mismatch in the collective instance 100" when the second one
  all-reduced). `strategy.gather` on `MirroredStrategy` over logical CPUs returned one
  replica's rows, so the E-step all-gathers in replica context instead.
* The replica count is logged and recorded (`EMTrainer.num_replicas`, every history record's
  `replicas`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import TYPE_CHECKING

import tensorflow as tf

from tfdgmm.training.seeds import fold_seed

if TYPE_CHECKING:
    import contextlib
    from collections.abc import Callable, Sequence
    from typing import Any

    from tfdgmm.deep_gmm import DeepGMM
    from tfdgmm.training.search import DatasetSearch
    from tfdgmm.types import ChoicePath, PathLike, Seed, Strategy

__all__ = [
    "STRATEGIES",
    "DistributeConfigError",
    "make_strategy",
    "configure_cpu_devices",
    "num_replicas",
    "is_chief",
    "worker_dir",
    "remove_worker_dir",
    "data_options",
    "parse_tf_config",
    "sharded_best_path",
    "build_sharded_search",
    "scope",
    "check_model_in_scope",
    "split_size",
]

STRATEGIES = ("default", "mirrored", "multiworker")


class DistributeConfigError(ValueError):
    """The distribution strategy cannot be built (e.g. a missing or invalid TF_CONFIG)."""


# ---------------------------------------------------------------------- building strategies


def configure_cpu_devices(n: int) -> None:
    """Split the (first) physical CPU into `n` logical devices, for `MirroredStrategy` without
    GPUs (tests, benchmarks). Must run before TensorFlow initialises its devices."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(int(n))]
        )
    except RuntimeError as e:
        raise DistributeConfigError(
            f"cannot split the CPU into {n} logical devices: TensorFlow has already initialised "
            f"its devices ({e}); call configure_cpu_devices before any other TensorFlow work"
        ) from e


def parse_tf_config(text: str | None = None) -> dict:
    """Check `TF_CONFIG` (or `text`) and return it as a dict; a `DistributeConfigError` names
    what is missing or wrong."""
    text = os.environ.get("TF_CONFIG") if text is None else text
    example = (
        'e.g. TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
        '"task": {"type": "worker", "index": 0}}\''
    )
    if not text:
        raise DistributeConfigError(
            f"--strategy multiworker needs the TF_CONFIG environment variable (the cluster and "
            f"this process's task), {example}"
        )
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as e:
        raise DistributeConfigError(f"TF_CONFIG is not valid JSON ({e}): {text!r}") from e
    if not isinstance(cfg, dict) or not isinstance(cfg.get("cluster"), dict):
        raise DistributeConfigError(f"TF_CONFIG needs a 'cluster' mapping; {example}")
    cluster, task = cfg["cluster"], cfg.get("task")
    jobs = {k: v for k, v in cluster.items() if k in ("chief", "worker")}
    if not jobs or not all(
        isinstance(v, list) and v and all(isinstance(a, str) for a in v) for v in jobs.values()
    ):
        raise DistributeConfigError(
            f"TF_CONFIG's cluster needs a non-empty 'worker' (and optional 'chief') list of "
            f"'host:port' addresses; got {cluster!r}"
        )
    if (
        not isinstance(task, dict)
        or task.get("type") not in jobs
        or not isinstance(task.get("index"), int)
        or not 0 <= task["index"] < len(jobs[task["type"]])
    ):
        raise DistributeConfigError(
            f"TF_CONFIG's task must be {{'type': one of {sorted(jobs)}, 'index': 0 .. "
            f"n - 1}}; got {task!r}"
        )
    return cfg


def make_strategy(name: str = "default", devices: Sequence[str] | None = None) -> Strategy | None:
    """The strategy for `name` in `STRATEGIES` (`None` for `'default'`); see the module
    docstring. `devices` (mirrored only) overrides the device list."""
    name = (name or "default").lower()
    if name not in STRATEGIES:
        raise DistributeConfigError(f"unknown strategy {name!r}; expected one of {STRATEGIES}")
    if name == "default":
        return None
    if name == "mirrored":
        if devices is None:
            devices = [d.name for d in tf.config.list_logical_devices("GPU")] or [
                d.name for d in tf.config.list_logical_devices("CPU")
            ]
        return tf.distribute.MirroredStrategy(devices=list(devices))
    parse_tf_config()
    gpus = tf.config.list_physical_devices("GPU")
    impl = (
        tf.distribute.experimental.CommunicationImplementation.NCCL
        if gpus
        else tf.distribute.experimental.CommunicationImplementation.RING
    )
    return tf.distribute.MultiWorkerMirroredStrategy(
        communication_options=tf.distribute.experimental.CommunicationOptions(implementation=impl)
    )


def num_replicas(strategy: Strategy | None) -> int:
    return 1 if strategy is None else int(strategy.num_replicas_in_sync)


def _task(strategy: Strategy | None) -> tuple:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return None, None, {}
    return resolver.task_type, resolver.task_id, resolver.cluster_spec().as_dict()


def is_chief(strategy: Strategy | None) -> bool:
    """True for single-process strategies and for the chief worker (the `chief` task, or worker
    0 when the cluster has no chief)."""
    if strategy is None:
        return True
    task_type, task_id, cluster = _task(strategy)
    if task_type is None:
        return True
    return task_type == "chief" or (
        task_type == "worker" and task_id == 0 and "chief" not in cluster
    )


def worker_dir(out_dir: PathLike, strategy: Strategy | None) -> str:
    """Where this process writes: `out_dir` for the chief, a fresh temporary directory for the
    other workers (their checkpoints are only needed while they run)."""
    if is_chief(strategy):
        return out_dir
    task_type, task_id, _ = _task(strategy)
    return tempfile.mkdtemp(prefix=f"tfdgmm-{task_type}{task_id}-")


def remove_worker_dir(path: PathLike, out_dir: PathLike) -> None:
    if path and os.path.abspath(path) != os.path.abspath(out_dir):
        shutil.rmtree(path, ignore_errors=True)


def data_options() -> tf.data.Options:
    """`tf.data.Options` with auto-sharding by data (each worker reads every file and keeps
    its share of the elements): the right policy for in-memory or single-file data."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return options


def check_model_in_scope(model: DeepGMM, strategy: Strategy | None) -> None:
    if strategy is None:
        return
    outside = [
        v.name for v in model.variables if not strategy.extended.variable_created_in_scope(v)
    ]
    if outside:
        raise ValueError(
            f"the model's variables must be created under strategy.scope() (build the model "
            f"inside `with strategy.scope():`); {len(outside)} are not, e.g. {outside[0]}"
        )


def split_size(total: int, strategy: Strategy | None, what: str) -> int:
    """Per-replica share of a global batch of `total` (must divide evenly)."""
    r = num_replicas(strategy)
    if total % r:
        raise ValueError(
            f"{what} ({total}) must be divisible by the number of replicas ({r}) "
            "so that every replica takes an equal slice of each global batch"
        )
    return total // r


def replica_offset(per_replica: int) -> tf.Tensor:
    """The first row of this replica's slice of a global batch (inside `strategy.run`)."""
    ctx = tf.distribute.get_replica_context()
    return tf.cast(ctx.replica_id_in_sync_group, tf.int32) * per_replica


def local_value(strategy: Strategy, value: Any) -> Any:
    """The first local copy of an all-reduced / all-gathered (mirrored) structure."""
    return tf.nest.map_structure(lambda v: strategy.experimental_local_results(v)[0], value)


# ---------------------------------------------------------------------- the sharded E-step


def sharded_best_path(
    model: DeepGMM,
    x: tf.Tensor,
    init: ChoicePath | None,
    global_n: int,
    offset: int | tf.Tensor,
    restarts: int = 1,
    init_passes: int = 1,
    restart_passes: int = 2,
    seed: Seed | None = None,
    location_method: str = "auto",
    use_prior: bool = True,
    location_options: dict | None = None,
    extra_passes: int = 0,
    extra_pass_gain: float = 1.0,
) -> tuple[tuple[tf.Tensor, ...], tf.Tensor]:
    """`tfdgmm.path_search.best_path` on rows `[offset, offset + n)` of a global batch of
    `global_n`: the same algorithm and seeds, with the random restarts drawn for the global
    batch and sliced, so each datapoint starts where it would on one device."""
    from tfdgmm import path_search

    x, _ = model.prepare_images(x)
    init = model.check_path(init) if init is not None else None
    return path_search.best_path(
        model,
        x,
        init=init,
        restarts=restarts,
        init_passes=init_passes,
        restart_passes=restart_passes,
        seed=seed,
        location_method=location_method,
        use_prior=use_prior,
        location_options=location_options,
        restart_rows=(global_n, offset),
        extra_passes=extra_passes,
        extra_pass_gain=extra_pass_gain,
    )


def build_sharded_search(search: DatasetSearch, strategy: Strategy) -> Callable:
    """The `DatasetSearch` search function (same signature and effect) with every batch split
    across the replicas of `strategy` and the results gathered back."""
    model = search.model
    b = search.batch_size
    per = split_size(b, strategy, f"{search.name}: the E-step batch size")
    image_shape = list(model.image_shape)

    def replica_fn(lo: tf.Tensor, batch_seed: tf.Tensor) -> tuple:
        off = replica_offset(per)
        start = lo + off
        x = tf.slice(search.data, [start, 0, 0, 0], [per, *image_shape])
        init = tuple(tf.gather(v, tf.range(start, start + per)) for v in search.paths)

        def search_with(restarts: int) -> tuple:
            return sharded_best_path(
                model,
                x,
                init,
                b,
                off,
                restarts=restarts,
                init_passes=search.init_passes,
                restart_passes=search.restart_passes,
                seed=batch_seed,
                location_method=search.location_method,
                location_options=search.location_options or None,
                extra_passes=search.extra_passes,
                extra_pass_gain=search.extra_pass_gain,
            )

        if search.restart_when == "always" or search.restarts == 0:
            path, joint = search_with(search.restarts)
        else:  # the same decision on every replica: from the whole global batch
            lower = tf.gather(search.lower, tf.range(lo, lo + b))
            path, joint = tf.cond(
                tf.reduce_any(tf.logical_not(tf.math.is_finite(lower))),
                lambda: search_with(search.restarts),
                lambda: search_with(0),
            )
        upper = model.log_prob_upper_bound(x, path=path, joint=joint)
        # all-gather in replica context (strategy.gather on MirroredStrategy over logical CPU
        # devices returned one replica's rows in TF 2.21: measured, not assumed)
        return tf.distribute.get_replica_context().all_gather((tuple(path), joint, upper), axis=0)

    @tf.function
    def run(start: tf.Tensor, stop: tf.Tensor, step_seed: tf.Tensor) -> tf.Tensor:
        def body(bb: tf.Tensor) -> list[tf.Tensor]:
            lo, idx = search.window(bb)
            out = strategy.run(replica_fn, args=(lo, fold_seed(step_seed, bb)))
            path, joint, upper = local_value(strategy, out)
            with tf.control_dependencies(search.store(idx, path, joint, upper)):
                return [bb + 1]

        (bb,) = tf.while_loop(lambda bb: bb < stop, body, [start], parallel_iterations=1)
        return bb

    return run


def scope(strategy: Strategy | None) -> contextlib.AbstractContextManager:
    """`strategy.scope()`, or a no-op context for the default (None) strategy."""
    import contextlib

    return strategy.scope() if strategy is not None else contextlib.nullcontext()
