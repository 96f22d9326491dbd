"""`EMConfig`: every knob of hard-EM training, with the paper's protocol as defaults.

The paper (section 4.1): Adam on minibatches of 100; about 50,000 updates in the first M-steps
and 5,000-10,000 later; the learning rate lowered for the last 4,000 updates of each M-step and
towards later M-steps; every M-step warm-starts from the previous parameters. E-step: start from
the previous paths for 1 pass, then a random start for 2 passes, keep the better path per
datapoint. 20 EM iterations.

Learning-rate schedule (`learning_rate_at`) for update `u` of an M-step of `U` updates in EM
iteration `t` (0-based):

```none
lr = learning_rate * max(lr_em_decay ** t, lr_min_factor)
                   * (lr_final_factor  if u >= U - min(lr_final_updates, U // 2)  else 1)
                     [lr_decay='cosine': f + (1 - f) (1 + cos(pi u / U)) / 2, f = lr_final_factor]
                   * min(1, (u + 1) / lr_warmup_updates)   (every M-step; only t = 0 without
                                                            lr_warmup_every_mstep)
                   * lr_scale          (1, lowered by nan_lr_factor at every NaN/divergence
                                        rollback)
```
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import tensorflow as tf

if TYPE_CHECKING:
    from typing import Any

    import keras

__all__ = ["EMConfig", "learning_rate_at", "mstep_updates"]

_OPTIMIZERS = ("adam", "sgd", "rmsprop", "adamax")
_HC_OPTIMIZERS = ("kfac", "optimizer")


@dataclasses.dataclass
class EMConfig:
    """Hard-EM training configuration (`from_dict` / `to_dict` for YAML and JSON)."""

    # --- EM
    em_iterations: int = 20
    """Number of EM iterations (E-step, closed-form prior fit, M-step, validation)."""
    seed: int = 0
    """Seed of every random choice (E-step restarts, minibatch order): runs are reproducible."""

    # --- M-step
    updates_first: int = 50_000
    """Gradient updates in each of the first `first_iterations` M-steps."""
    updates_later: int = 7_500
    """Gradient updates in every later M-step."""
    first_iterations: int = 1
    batch_size: int = 100
    optimizer: str = "adam"
    optimizer_kwargs: dict = dataclasses.field(default_factory=dict)
    """Extra keyword arguments of the Keras optimizer (e.g. `beta_2`, `epsilon`)."""
    learning_rate: float = 1e-3
    lr_em_decay: float = 0.8
    """Multiplicative decay of the learning rate per EM iteration ..."""
    lr_min_factor: float = 0.1
    """... down to at most this factor of `learning_rate`."""
    lr_final_updates: int = 4_000
    """The last updates of every M-step run at a lower rate (at most half of the M-step)."""
    lr_final_factor: float = 0.01
    lr_decay: str = "cosine"
    """Within an M-step: `'cosine'` (from 1 down to `lr_final_factor` along a half cosine over
    the M-step's updates; on the Table-1 benchmark it ends 7 nats/image above the paper's
    schedule after 20,000 updates, BENCHMARKS.md) or `'final'` (the paper's: the last
    `lr_final_updates` updates at `lr_final_factor`, 0.1 in the paper)."""
    lr_warmup_every_mstep: bool = True
    """Ramp the rate up at the start of every M-step, not only the first. After an E-step has
    moved datapoints to other paths, the first full-rate steps of Adam (block-diagonal layers)
    and of K-FAC (half-convolutions) together blew up the Table-3 model (3 HC + 3 x (unshared
    BD x 4, 3 HC), `_cpu` config, M-step 2: -7,342 to +10^5 nats/image within 20 updates),
    although either alone was stable from the same checkpoint (BENCHMARKS.md)."""
    lr_warmup_updates: int = 100
    """Ramp the rate up linearly over the first updates of every M-step (of the first only
    without `lr_warmup_every_mstep`): from a good, data-dependent start, full-size first Adam
    steps can throw the model far off."""
    hc_optimizer: str = "kfac"
    """How half-convolution kernels are stepped: `'kfac'`, momentum SGD on Kronecker-factored
    Gauss-Newton steps (`tfdgmm.training.preconditioning`; Adam on these kernels is what made
    training diverge from its data-dependent start); `'optimizer'`: the same Keras optimizer as
    every other variable (the behaviour before 2026-11-30)."""
    hc_learning_rate: float = 0.05
    """With `hc_optimizer='kfac'`: the fraction of a (Kronecker-model) Newton step per update,
    scaled by the same schedule as `learning_rate` (warm-up, final factor, EM decay,
    rollbacks)."""
    hc_momentum: float = 0.9
    hc_damping: float = 1e-3
    """Relative damping of the Kronecker factors (times the mean of each factor's diagonal)."""
    hc_max_step_nats: float = 1000.0
    """Trust region of the K-FAC steps: an update's predicted decrease of the loss
    (`lr * <P, G>`, nats per image) is at most this (0: no limit), the scale of
    `divergence_nats`. Far from the quadratic model (a loss blown up by another variable's
    step) it keeps steps finite; see BENCHMARKS.md for a check that it does not bind in
    ordinary training."""
    hc_fisher: str = "sampled"
    """Curvature of the layers above a half-convolution: `'sampled'` (Gauss-Newton by
    standard-normal latent probes) or `'empirical'` (the datapoints' own gradients; see
    `tfdgmm.training.preconditioning`)."""
    hc_statistics_interval: int = 50
    """Recompute the Kronecker factors every this many updates (by update count)."""
    hc_statistics_images: int = 500
    """Training images (with their E-step paths) the factors are estimated from."""
    jit_compile: bool = False
    """XLA-compile the M-step's loss and gradient (slower on CPU; try it on a GPU)."""

    # --- initialisation
    data_init: bool = True
    """Start the lowest block-diagonal layer as a whitening of the training data, one
    energy-quantile group per alternative (`tfdgmm.training.init`); False: the layers'
    own (data-independent) initialisation."""
    data_init_images: int = 5000
    data_init_identity: bool = True
    """With `data_init`, the single-alternative half-convolutions below the whitened layer start
    as the identity, so the model starts as the whitening Gaussian itself (their small random
    kernels cost ~2,000 nats per image for 3 of them on CIFAR-10; see
    `tfdgmm.training.init.initialize_from_data`)."""

    # --- E-step
    first_estep: str = "auto"
    """Paths of the first M-step. `'search'`: a real E-step; `'random'`: uniformly random paths
    (every alternative sees data; better for a data-independent start, where a search sends
    all data down the same alternatives); `'auto'`: `'search'` with `data_init`, else
    `'random'`."""
    estep_batch_size: int = 500
    estep_init_passes: int = 1
    estep_restarts: int = 1
    estep_restart_passes: int = 2
    estep_restart_when: str = "unsearched"
    """Which E-step batches get the `estep_restarts` random restarts: `'unsearched'` (since issue
    15) only batches holding a datapoint whose stored path was never searched (the first
    E-step); later E-steps search from the stored paths alone (on trained models the restart
    beat the warm pass for 1% of the images, by 0.07 nats/image on average, at twice the cost
    of the warm pass; BENCHMARKS.md). `'always'`: every batch (the setting before)."""
    estep_extra_passes: int = 2
    """After the `estep_init_passes` from the stored paths, up to this many more passes, each
    for the datapoints whose previous pass raised their joint by more than
    `estep_extra_pass_gain` nats (since 2026-12-01: after a long M-step one pass leaves 10-20
    nats/image behind; BENCHMARKS.md, "E-step, exact Gram steps and adaptive passes")."""
    estep_extra_pass_gain: float = 20.0
    location_method: str = "auto"
    """Search method for per-location layers (see `tfdgmm.path_search.LOCATION_METHODS`)."""
    location_options: dict = dataclasses.field(
        default_factory=lambda: {"threshold": 0.0, "alternatives": 1}
    )
    """Options of the per-location search (e.g. `{"top": 32}` for `'ranked'`). The default
    (since 2026-12-01) visits only the locations whose predicted gain is positive (the extra
    passes make up for what that misses), and there (since 2026-12-02) evaluates only the
    best-predicted other alternative (`path_search.SEARCH_SETTINGS["adaptive1"]`: 1.25-1.35
    times as fast at the same joint; BENCHMARKS.md); `{"threshold": 0.0}` is the default of
    2026-12-01, `{"bound": True}` skips only the locations whose
    linear bound proves that no alternative improves (the default of 2026-11-30), `{}` is
    the search before issue 15."""
    prior_pseudo_count: float = 1.0
    """Pseudo-count of the closed-form path-prior fit (factorized and table priors)."""

    # --- evaluation and early stopping
    eval_restarts: int = 2
    """Random restarts (2 passes each) when bounds are computed for data without stored
    paths (e.g. the test split), after one pass from a random path."""
    early_stopping_patience: int = 3
    """Stop after this many EM iterations without a better validation lower bound (0: never)."""
    early_stopping_min_delta: float = 0.0
    """Improvement (nats per image) that counts as better."""
    early_stopping_min_gain_per_1000_updates: float = 0.0
    """Stop once an EM iteration raised the validation lower bound by less than this many
    nats/image per 1,000 of its M-step updates (a converged run; 0: never). The full-budget
    configs use 5, the rule of the paper-budget reproduction."""

    # --- robustness and visibility
    checkpoint_interval_seconds: float = 180.0
    """Checkpoint inside long E- and M-steps at least this often (and after every step)."""
    keep_checkpoints: int = 2
    progress_interval_seconds: float = 15.0
    """A progress line (and TensorBoard scalars) at about this interval; the work per
    `tf.function` call (updates or E-step batches) is sized from the measured speed to fit it."""
    max_chunk: int = 0
    """At most this many updates (M-step) or batches (E-step) per call; 0: no limit."""
    nan_lr_factor: float = 0.5
    """A NaN/Inf loss rolls back to the last good checkpoint and multiplies the rate by this."""
    divergence_nats: float = 1000.0
    """A diverging M-step rolls back like a NaN: a chunk of updates whose mean loss is more than
    this many nats per image above the best of the same M-step (its starting loss, minus the
    E-step's training lower bound, or a better chunk mean since) (e.g. a deep model
    whose loss jumps from -4,700 to +10^6 after an Adam step). 0 disables the check."""
    max_rollbacks: int = 8

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ (de)serialisation

    @classmethod
    def from_dict(cls, d: dict | None) -> EMConfig:
        """Build from a plain dict; unknown keys are an error (a typo must not pass silently)."""
        d = dict(d or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(
                f"unknown training config keys {unknown}; expected some of {sorted(names)}"
            )
        return cls(**d)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> EMConfig:
        return dataclasses.replace(self, **changes)

    def validate(self) -> None:
        def positive(name: str, allow_zero: bool = False) -> None:
            v = getattr(self, name)
            if (
                isinstance(v, bool)
                or not isinstance(v, (int, float))
                or v < 0
                or (v == 0 and not allow_zero)
            ):
                raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}; got {v!r}")

        for name in (
            "em_iterations",
            "updates_first",
            "updates_later",
            "batch_size",
            "learning_rate",
            "estep_batch_size",
            "progress_interval_seconds",
            "keep_checkpoints",
            "lr_final_factor",
            "lr_min_factor",
            "nan_lr_factor",
            "hc_learning_rate",
            "hc_statistics_interval",
            "hc_statistics_images",
        ):
            positive(name)
        for name in (
            "first_iterations",
            "lr_final_updates",
            "estep_init_passes",
            "estep_restarts",
            "estep_restart_passes",
            "eval_restarts",
            "early_stopping_patience",
            "early_stopping_min_delta",
            "early_stopping_min_gain_per_1000_updates",
            "checkpoint_interval_seconds",
            "prior_pseudo_count",
            "max_rollbacks",
            "max_chunk",
            "data_init_images",
            "lr_warmup_updates",
            "lr_em_decay",
            "divergence_nats",
            "hc_momentum",
            "hc_damping",
            "hc_max_step_nats",
        ):
            positive(name, allow_zero=True)
        if self.estep_init_passes + self.estep_restarts * self.estep_restart_passes < 1:
            raise ValueError(
                "the E-step needs at least one pass (estep_init_passes or "
                "estep_restarts x estep_restart_passes)"
            )
        if self.optimizer.lower() not in _OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {_OPTIMIZERS}; got {self.optimizer!r}")
        if self.hc_optimizer not in _HC_OPTIMIZERS:
            raise ValueError(
                f"hc_optimizer must be one of {_HC_OPTIMIZERS}; got {self.hc_optimizer!r}"
            )
        if self.lr_decay not in ("final", "cosine"):
            raise ValueError(f"lr_decay must be 'final' or 'cosine'; got {self.lr_decay!r}")
        if self.hc_fisher not in ("sampled", "empirical"):
            raise ValueError(f"hc_fisher must be 'sampled' or 'empirical'; got {self.hc_fisher!r}")
        if self.hc_momentum >= 1:
            raise ValueError(f"hc_momentum must be in [0, 1); got {self.hc_momentum!r}")
        if self.first_estep not in ("auto", "random", "search"):
            raise ValueError(
                f"first_estep must be 'auto', 'random' or 'search'; got {self.first_estep!r}"
            )
        from tfdgmm.path_search import LOCATION_METHODS

        if self.location_method not in LOCATION_METHODS:
            raise ValueError(
                f"location_method must be one of {LOCATION_METHODS}; got {self.location_method!r}"
            )
        if self.estep_extra_passes < 0:
            raise ValueError(f"estep_extra_passes must be >= 0; got {self.estep_extra_passes}")
        if self.estep_restart_when not in ("always", "unsearched"):
            raise ValueError(
                "estep_restart_when must be 'always' or 'unsearched'; got "
                f"{self.estep_restart_when!r}"
            )
        for name in ("optimizer_kwargs", "location_options"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"{name} must be a dict")

    def make_optimizer(self) -> keras.optimizers.Optimizer:
        """A fresh Keras optimizer (its learning rate is set at every update by the trainer)."""
        import keras

        cls = {
            "adam": keras.optimizers.Adam,
            "sgd": keras.optimizers.SGD,
            "rmsprop": keras.optimizers.RMSprop,
            "adamax": keras.optimizers.Adamax,
        }[self.optimizer.lower()]
        return cls(learning_rate=self.learning_rate, **self.optimizer_kwargs)

    def make_hc_optimizer(self) -> keras.optimizers.Optimizer:
        """The momentum SGD that applies the half-convolutions' K-FAC steps."""
        import keras

        return keras.optimizers.SGD(learning_rate=self.hc_learning_rate, momentum=self.hc_momentum)


def mstep_updates(config: EMConfig, em_iteration: int) -> int:
    """Number of gradient updates of the M-step of EM iteration `em_iteration` (0-based)."""
    return config.updates_first if em_iteration < config.first_iterations else config.updates_later


def learning_rate_at(
    config: EMConfig,
    em_iteration: int | tf.Tensor,
    update: int | tf.Tensor,
    num_updates: int | tf.Tensor,
    lr_scale: float = 1.0,
) -> float | tf.Tensor:
    """The scheduled learning rate (see the module docstring); works on Python numbers and
    on tensors (inside the M-step's `tf.function`)."""
    warm = config.lr_warmup_updates
    if all(isinstance(v, (int, float)) for v in (em_iteration, update, num_updates, lr_scale)):
        em = max(config.lr_em_decay**em_iteration, config.lr_min_factor)
        if config.lr_decay == "cosine":
            f = config.lr_final_factor
            fin = f + (1 - f) * 0.5 * (1 + math.cos(math.pi * update / max(num_updates, 1)))
        else:
            final = min(config.lr_final_updates, num_updates // 2)
            fin = config.lr_final_factor if update >= num_updates - final else 1.0
        if warm and (em_iteration == 0 or config.lr_warmup_every_mstep) and update < warm:
            fin *= (update + 1) / warm
        return config.learning_rate * em * fin * lr_scale
    em_iteration = tf.cast(em_iteration, tf.float32)
    update = tf.cast(update, tf.int64)
    num_updates = tf.cast(num_updates, tf.int64)
    em = tf.maximum(
        tf.pow(tf.constant(config.lr_em_decay, tf.float32), em_iteration), config.lr_min_factor
    )
    if config.lr_decay == "cosine":
        f = config.lr_final_factor
        frac = tf.cast(update, tf.float32) / tf.cast(tf.maximum(num_updates, 1), tf.float32)
        fin = f + (1 - f) * 0.5 * (1 + tf.cos(math.pi * frac))
    else:
        final = tf.minimum(tf.constant(config.lr_final_updates, tf.int64), num_updates // 2)
        fin = tf.where(
            update >= num_updates - final,
            tf.constant(config.lr_final_factor, tf.float32),
            tf.constant(1.0, tf.float32),
        )
    if warm:
        ramp = tf.minimum(tf.cast(update + 1, tf.float32) / warm, 1.0)
        if not config.lr_warmup_every_mstep:
            ramp = tf.where(em_iteration == 0, ramp, tf.constant(1.0, tf.float32))
        fin *= ramp
    return config.learning_rate * em * fin * tf.cast(lr_scale, tf.float32)
