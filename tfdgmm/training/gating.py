"""Training gating networks (paper, section 3): after the deep GMM, on the last E-step's paths.

The gating prior `p(z_i | h_i)` is fitted by maximum likelihood on fixed paths: with the deep
GMM's layers frozen, maximise `mean_n sum_i log p(z_{n,i} | h_{n,i})`, where `h_{n,i}` is the
partial sample of datapoint n on its path (the output of layer i's inverse). This is exactly the
part of the hard-EM objective `log pi_p + log p_p(x)` that depends on the gating weights.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import keras
import numpy as np
import tensorflow as tf

from tfdgmm import path_priors
from tfdgmm.deep_gmm import DeepGMM

if TYPE_CHECKING:
    from collections.abc import Sequence

    from tfdgmm.training.em import EMTrainer
    from tfdgmm.training.search import DatasetSearch
    from tfdgmm.types import ChoicePath, Config, Images, Log

__all__ = [
    "GATING_DEFAULTS",
    "GatingBetweenSteps",
    "fit_gating",
    "gated_copy",
    "gated_search_bounds",
    "gating_prior_config",
    "mean_neg_log_prior",
    "normalize_gating",
    "with_gating",
]


def with_gating(model: DeepGMM, hidden: int = 32, kernel_size: int = 3, seed: int = 0) -> DeepGMM:
    """A `DeepGMM` sharing `model`'s layers, with a fresh (uniform-initialised) gating prior."""
    prior = path_priors.GatingPathPrior(
        model.layer_specs,
        model.patch_shape,
        hidden=hidden,
        kernel_size=kernel_size,
        seed=seed,
        dtype=model.dtype,
    )
    config = model.config
    if config is not None:
        config["path_prior"] = {"kind": "gating", "hidden": hidden, "kernel_size": kernel_size}
    gated = DeepGMM(
        model.layers,
        image_shape=model.image_shape,
        patch_size=model.patch_size,
        path_prior=prior,
        exact_limit=model.exact_limit,
        validate_args=model.validate_args,
        config=config,
    )
    return gated


def fit_gating(
    model: DeepGMM,
    images: Images,
    paths: ChoicePath,
    steps: int = 1000,
    batch_size: int = 100,
    learning_rate: float = 1e-3,
    optimizer: keras.optimizers.Optimizer | None = None,
    seed: int = 0,
    log_every: int = 0,
    log: Log | None = print,
) -> dict:
    """Fit `model.path_prior` (a `GatingPathPrior`) to fixed paths; returns the loss history.

    Args:
      model: a `DeepGMM` with a gating prior (see `with_gating`).
      images: float images `[N, H, W, C]` (preprocessed like the training data).
      paths: their paths (tuple of int arrays `[N]` / `[N, Hp, Wp]`), e.g. the last E-step's.
      steps, batch_size, learning_rate: Adam on minibatches (sampled with replacement from a
        seeded stream).
      optimizer: a Keras optimizer (default Adam).
      log_every: print a progress line every this many steps (0: never).

    Returns:
      `dict(loss=[...], nats_before=float, nats_after=float)`: mean `-log pi(path | x)` per
      image over the whole set before and after fitting.
    """
    prior = model.path_prior
    if not isinstance(prior, path_priors.GatingPathPrior):
        raise TypeError(
            "fit_gating needs a model whose path prior is a GatingPathPrior "
            f"(see tfdgmm.training.gating.with_gating); got {type(prior).__name__}"
        )
    images = tf.convert_to_tensor(images, model.dtype)
    paths = tuple(tf.convert_to_tensor(z, tf.int32) for z in paths)
    n = int(images.shape[0])
    if any(int(z.shape[0]) != n for z in paths):
        raise ValueError("fit_gating: every path tensor needs one row per image")
    variables = list(prior.trainable_variables)
    optimizer = optimizer or keras.optimizers.Adam(learning_rate)
    optimizer.build(variables)

    @tf.function
    def nll(x: tf.Tensor, path: ChoicePath) -> tf.Tensor:
        return -tf.reduce_mean(model.path_log_prob(path, x=x))

    @tf.function
    def step(x: tf.Tensor, path: ChoicePath) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = nll(x, path)
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    def full_nll() -> float:
        total = 0.0
        for start in range(0, n, 1000):
            chunk = tuple(z[start : start + 1000] for z in paths)
            total += float(nll(images[start : start + 1000], chunk)) * min(1000, n - start)
        return total / n

    before = full_nll()
    rng = np.random.default_rng(seed)
    history = []
    t0 = time.time()
    for s in range(steps):
        idx = tf.constant(rng.integers(0, n, size=min(batch_size, n)))
        loss = step(tf.gather(images, idx), tuple(tf.gather(z, idx) for z in paths))
        history.append(float(loss))
        if log_every and (s + 1) % log_every == 0:
            rate = (s + 1) / (time.time() - t0)
            log(
                f"gating {s + 1}/{steps}: -log pi = {np.mean(history[-log_every:]):.3f} nats, "
                f"ETA {(steps - s - 1) / rate:.0f} s"
            )
    return {"loss": history, "nats_before": before, "nats_after": full_nll()}


# ---------------------------------------------------------------------- gating in training runs

#: The `gating:` section of a run config (see `tfdgmm.runs.config`): defaults (gating off).
GATING_DEFAULTS = {
    "enabled": False,
    "hidden": 32,
    "kernel_size": 3,
    "steps": 2000,
    "batch_size": 100,
    "learning_rate": 1e-3,
    "seed": 0,
    "between_steps": 0,
}


def normalize_gating(section: Config | None, where: str = "config") -> Config:
    """The `gating:` section of a run config with defaults filled in (unknown keys: error).

    * `enabled`: fit gating networks after EM on the last E-step's training paths (the paper's
      method) and report bounds with the gated prior.
    * `hidden`, `kernel_size`: the gating networks (`GatingPathPrior`).
    * `steps`, `batch_size`, `learning_rate`, `seed`: Adam on the fixed paths after EM.
    * `between_steps`: when > 0, the model is trained with the gating prior from the start and,
      after every E-step on the training set, the gating networks are fitted to the new paths
      for this many updates before the M-step (`GatingBetweenSteps`); the M-step then also
      updates them, as part of the joint `log pi_p + log p_p(x)`.
    """
    out = dict(GATING_DEFAULTS)
    section = dict(section or {})
    unknown = set(section) - set(GATING_DEFAULTS)
    if unknown:
        raise ValueError(
            f"{where}: unknown gating keys {sorted(unknown)}; expected some of "
            f"{sorted(GATING_DEFAULTS)}"
        )
    out.update(section)
    out["enabled"] = bool(out["enabled"])
    for key in ("hidden", "kernel_size", "steps", "batch_size"):
        value = out[key]
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{where}: gating.{key} must be an int >= 1; got {value!r}")
        out[key] = int(value)
    value = out["between_steps"]
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{where}: gating.between_steps must be an int >= 0; got {value!r}")
    out["between_steps"] = int(value)
    out["seed"] = int(out["seed"])
    lr = out["learning_rate"]
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr <= 0:
        raise ValueError(f"{where}: gating.learning_rate must be > 0; got {lr!r}")
    out["learning_rate"] = float(lr)
    return out


def gating_prior_config(settings: Config) -> Config:
    """The architecture's `path_prior` entry for gating networks with these settings."""
    return {
        "kind": "gating",
        "hidden": int(settings["hidden"]),
        "kernel_size": int(settings["kernel_size"]),
    }


def mean_neg_log_prior(
    model: DeepGMM, images: Images, paths: ChoicePath, chunk: int = 1000
) -> float:
    """Mean `-log pi(path | x)` per image (nats) of fixed paths under `model`'s path prior."""
    images = tf.convert_to_tensor(images, model.dtype)
    paths = tuple(tf.convert_to_tensor(z, tf.int32) for z in paths)
    n = int(images.shape[0])
    total = 0.0
    for start in range(0, n, chunk):
        part = tuple(z[start : start + chunk] for z in paths)
        lp = model.path_log_prob(part, x=images[start : start + chunk])
        total -= float(tf.reduce_sum(tf.cast(lp, tf.float64)))
    return total / n


class GatingBetweenSteps:
    """An `EMTrainer` hook: gating networks fitted between the E- and M-steps.

    When the E-step on the training set finishes (the hook's `'estep'` event with every batch
    searched), the model's gating prior is fitted to the new paths for `steps` Adam updates
    (`fit_gating`, seeded by `(seed, EM iteration)`), before the M-step starts. The model must
    have a `GatingPathPrior`. The first EM iteration's random paths (`first_estep: random`) are
    not searched, so there is nothing to fit then. Results (per EM iteration) are in `history`.

    Resuming is exact: the fit is deterministic and its result is in the checkpoint written at
    the end of the E-step; an interrupted fit is redone from the same weights.
    """

    def __init__(
        self,
        steps: int,
        batch_size: int = 100,
        learning_rate: float = 1e-3,
        seed: int = 0,
        log: Log | None = None,
    ) -> None:
        self.steps = int(steps)
        self.batch_size = int(batch_size)
        self.learning_rate = float(learning_rate)
        self.seed = int(seed)
        self.log = log
        self.history = []

    def __call__(self, trainer: EMTrainer, event: str, info: dict) -> None:
        if event != "estep" or info.get("batches") != info.get("num_batches"):
            return
        t = int(info["em_iteration"])
        search = trainer.train_search
        start = time.time()
        result = fit_gating(
            trainer.model,
            search.data,
            search.path(),
            steps=self.steps,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            seed=[self.seed, t],
        )
        record = {
            "em_iteration": t + 1,
            "nats_before": result["nats_before"],
            "nats_after": result["nats_after"],
            "seconds": time.time() - start,
        }
        self.history.append(record)
        (self.log or trainer.log)(
            f"[EM {t + 1}] gating between E- and M-step: -log pi of the training paths "
            f"{result['nats_before']:.3f} -> {result['nats_after']:.3f} nats/image "
            f"({self.steps} updates, {record['seconds']:.1f} s)"
        )


def gated_copy(model: DeepGMM, settings: Config) -> DeepGMM:
    """`with_gating(model, ...)` with the settings of a `gating:` section; when `model` already
    has gating networks of the same shape, the copy starts from their weights."""
    gated = with_gating(
        model, hidden=settings["hidden"], kernel_size=settings["kernel_size"], seed=settings["seed"]
    )
    old = model.path_prior
    if isinstance(old, path_priors.GatingPathPrior):
        new_vars, old_vars = gated.path_prior.trainable_variables, old.trainable_variables
        if [v.shape for v in new_vars] != [v.shape for v in old_vars]:
            raise ValueError(
                "the model's gating networks differ in shape from the gating "
                "settings (hidden, kernel_size)"
            )
        for a, b in zip(new_vars, old_vars):
            a.assign(b)
    return gated


def gated_search_bounds(
    gated: DeepGMM, searches: Sequence[DatasetSearch], restarts: int = 1, seed: int = 0
) -> list[tuple[float, float]]:
    """Bounds of `gated` on the data of `DatasetSearch`es (e.g. `EMTrainer.train_search`),
    searching from their stored paths (1 pass) plus `restarts` random restarts (2 passes each).

    The search compares candidates exactly and starts from the stored paths, so every
    datapoint's gated lower bound is at least its stored path's gated joint. One traced
    function (dynamic batch size) serves every search; batches are each search's
    `batch_size`. Nothing is stored. Returns one `(mean lower, mean upper)` per search
    (float64 sums).
    """
    from tfdgmm.training.seeds import fold_seed

    searches = list(searches)
    if not searches:
        return []
    first = searches[0]
    image_spec = tf.TensorSpec([None, *gated.image_shape], gated.dtype)
    path_specs = tuple(tf.TensorSpec([None, *v.shape[1:]], tf.int32) for v in first.paths)
    options = dict(
        restarts=int(restarts),
        init_passes=1,
        restart_passes=2,
        location_method=first.location_method,
        location_options=first.location_options or None,
    )

    @tf.function(input_signature=[image_spec, path_specs, tf.TensorSpec([2], tf.int32)])
    def bounds(
        x: tf.Tensor, init: ChoicePath, batch_seed: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor]:
        path, joint = gated.best_path(x, init=init, seed=batch_seed, **options)
        upper = gated.log_prob_upper_bound(x, path=path)
        return tf.cast(joint, tf.float64), tf.cast(upper, tf.float64)

    out = []
    for j, search in enumerate(searches):
        lo_sum = up_sum = 0.0
        n, b = search.num_images, search.batch_size
        for k, lo in enumerate(range(0, n, b)):
            x = search.data[lo : lo + b]
            init = tuple(tf.convert_to_tensor(v[lo : lo + b]) for v in search.paths)
            lower, upper = bounds(x, init, fold_seed(seed, j, k))
            lo_sum += float(tf.reduce_sum(lower))
            up_sum += float(tf.reduce_sum(upper))
        out.append((lo_sum / n, up_sum / n))
    return out
