r"""Hard EM for deep GMMs: `EMTrainer`.

One EM iteration (paper, section 4.1):

1. **E-step** over the training set: every datapoint's best path, starting from its previous
   path (`estep_init_passes` passes of the layer-wise heuristic), then from random paths
   (`estep_restarts` x `estep_restart_passes` passes), keeping the best (`DatasetSearch`).
   The path prior, when it has a closed-form fit (`factorized`, `table`), is then set to the
   maximum-likelihood prior of the new paths.
2. **M-step**: a Keras optimizer (Adam by default) maximises the mean joint
   `log pi_p + log p_p(x)` over minibatches of `batch_size` datapoints with their E-step paths,
   for `updates_first` / `updates_later` updates, warm-started from the previous M-step, with the
   learning-rate schedule of `tfdgmm.training.config`. Prior variables with a closed-form fit
   are left out of the optimizer.
3. **Bounds**: the training bounds of the new parameters on the E-step paths, then an E-step on
   the validation set (warm-started from its previous paths) for its lower and (approximate)
   upper bound. Early stopping on the validation lower bound keeps the best model.

Everything random is stateless and derived from `config.seed`, the EM iteration and the
position (batch or update number), and the minibatch order is a per-epoch stateless shuffle, so
results do not depend on how the work is chunked: a run interrupted at any point and resumed
from its checkpoint ends with the same parameters as an uninterrupted run.

The E-step and M-step bodies are `tf.function`s that loop (`tf.while_loop`) over many batches
or updates per call with no host round trip, so they run unchanged on a GPU; the host only
decides chunk sizes (from the measured speed), prints progress, writes TensorBoard scalars and
checkpoints. The trainer knows nothing about the data set: it takes preprocessed float images.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf

from tfdgmm.checks import check_float_images
from tfdgmm.training import checkpointing
from tfdgmm.training.config import EMConfig, learning_rate_at, mstep_updates
from tfdgmm.training.evaluation import EVAL_SEED_OFFSET, evaluate_bounds, search_record
from tfdgmm.training.guards import DivergenceGuard
from tfdgmm.training.init import initialize_from_data
from tfdgmm.training.preconditioning import HalfConvolutionKFAC
from tfdgmm.training.search import DatasetSearch, path_usage_entropy
from tfdgmm.training.seeds import fold_seed
from tfdgmm.training.summaries import (
    Clock,
    ProgressLog,
    RateMeter,
    Summaries,
    bpd_text,
    default_log,
    em_eta_text,
    format_duration,
    mstep_progress_text,
    replicas_text,
    search_progress_text,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

    from tfdgmm.deep_gmm import DeepGMM
    from tfdgmm.types import ChoicePath, Hook, Images, Log, NatsToBpd, PathLike, Seed, Strategy

__all__ = ["EMTrainer", "TrainingInterrupted", "evaluate_bounds", "ESTEP", "MSTEP", "BOUNDS"]

# (`evaluate_bounds` lives in tfdgmm.training.evaluation; re-exported here for old imports)

ESTEP, MSTEP, BOUNDS = 0, 1, 2
_STAGE_NAMES = {ESTEP: "E-step", MSTEP: "M-step", BOUNDS: "bounds"}


class TrainingInterrupted(RuntimeError):
    """Raised by hooks (e.g. in tests) to simulate a crash."""


class _State(tf.Module):
    """Scalars of the training loop that a checkpoint must restore."""

    def __init__(self) -> None:
        super().__init__(name="em_state")
        i64 = tf.int64
        self.em_iteration = tf.Variable(0, dtype=i64, trainable=False)
        self.stage = tf.Variable(ESTEP, dtype=i64, trainable=False)
        self.mstep_update = tf.Variable(0, dtype=i64, trainable=False)
        self.lr_scale = tf.Variable(1.0, dtype=tf.float32, trainable=False)
        self.best_validation = tf.Variable(-np.inf, dtype=tf.float64, trainable=False)
        self.best_iteration = tf.Variable(-1, dtype=i64, trainable=False)
        self.bad_iterations = tf.Variable(0, dtype=i64, trainable=False)
        self.rollbacks = tf.Variable(0, dtype=i64, trainable=False)
        self.finished = tf.Variable(0, dtype=i64, trainable=False)
        self.elapsed = tf.Variable(0.0, dtype=tf.float64, trainable=False)
        self.history = tf.Variable("[]", dtype=tf.string, trainable=False)
        self.current = tf.Variable("{}", dtype=tf.string, trainable=False)


def _jget(var: tf.Variable) -> Any:
    return json.loads(var.numpy().decode())


def _jset(var: tf.Variable, value: Any) -> None:
    var.assign(json.dumps(value))


class EMTrainer:
    """Hard-EM training of a `DeepGMM` (see the module docstring).

    Args:
      model: a `tfdgmm.DeepGMM` (its variables are trained in place).
      config: an `EMConfig` (or a dict for `EMConfig.from_dict`).
      train: training images `[N, H, W, C]`, preprocessed floats; or a callable
        `train(em_iteration) -> images` for data that changes between EM iterations (e.g.
        dequantization noise redrawn every iteration); it must return the same images for the
        same iteration (resuming calls it again).
      validation: validation images (fixed), or None (no validation bounds, no early stopping).
      out_dir: the run directory (checkpoints, `tensorboard/`); a temporary directory if None.
      nats_to_bpd: optional callable mapping a mean log-likelihood (nats per image) to bits/dim,
        for the logs and TensorBoard (the data's business, so it is passed in).
      hooks: callables `hook(trainer, event, info)` called after every chunk of work
        (`event` in `'estep'`, `'mstep'`, `'bounds'`) and at the end of each EM iteration
        (`'iteration'`); a hook may raise (e.g. `TrainingInterrupted`) or modify the model.
      log: callable taking one line of text (default: print to stdout).
      strategy: a `tf.distribute` strategy (`tfdgmm.training.distribute.make_strategy`) or None
        (one device: the default). The model must have been built under `strategy.scope()`;
        see `tfdgmm.training.distribute` for what is split across replicas. With a
        multi-worker strategy only the chief writes to `out_dir`.
    """

    def __init__(
        self,
        model: DeepGMM,
        config: EMConfig | dict | None = None,
        train: Images | Callable[[int], Images] | None = None,
        validation: Images | None = None,
        out_dir: PathLike | None = None,
        *,
        nats_to_bpd: NatsToBpd | None = None,
        hooks: Sequence[Hook] = (),
        log: Log | None = None,
        strategy: Strategy | None = None,
    ) -> None:
        from tfdgmm.training import distribute

        if train is None:
            raise ValueError("EMTrainer needs training images")
        distribute.check_model_in_scope(model, strategy)
        self.strategy = strategy
        self.num_replicas = distribute.num_replicas(strategy)
        self.model = model
        self.config = config if isinstance(config, EMConfig) else EMConfig.from_dict(config)
        cfg = self.config
        self.out_dir = out_dir or tempfile.mkdtemp(prefix="tfdgmm-run-")
        os.makedirs(self.out_dir, exist_ok=True)
        # the chief writes into out_dir; other workers into a temporary directory
        self.write_dir = distribute.worker_dir(self.out_dir, strategy)
        self.nats_to_bpd = nats_to_bpd
        self.hooks = list(hooks)
        self.log = log or default_log
        # loop bookkeeping stays a plain (host) module: strings cannot be mirrored across workers
        self.state = _State()
        with strategy.scope() if strategy is not None else contextlib.nullcontext():
            self._init_variables(model, cfg, train, validation)
        if strategy is not None:
            distribute.split_size(self.batch_size, strategy, "batch_size (M-step minibatch)")
            for s in (self.train_search, self.validation_search):
                if s is not None:
                    distribute.split_size(
                        s.batch_size, strategy, f"{s.name}: estep_batch_size (clipped to the data)"
                    )
        self.keeper = checkpointing.CheckpointKeeper(
            self.write_dir, self.checkpoint, model, keep=cfg.keep_checkpoints, log=self.log
        )
        self.summaries = Summaries(os.path.join(self.write_dir, "tensorboard"))
        self._mstep_fn = None
        self._probe_fn = None
        self._clock = Clock()
        # (each meter leaves out its first measurement: the call that traces the tf.function)
        self._rates = {"estep": RateMeter(), "mstep": RateMeter(), "bounds": RateMeter()}
        self._progress_log = ProgressLog(self.log, cfg.progress_interval_seconds, cfg.em_iterations)

    def _init_variables(
        self,
        model: DeepGMM,
        cfg: EMConfig,
        train: Images | Callable[[int], Images],
        validation: Images | None,
    ) -> None:
        self._train_fn = train if callable(train) else None
        self._loaded_iteration = 0 if self._train_fn is not None else None
        x_train = self._train_fn(0) if self._train_fn is not None else train
        check_float_images(x_train, "training images")
        check_float_images(validation, "validation images")

        self.train_search = DatasetSearch(
            model,
            x_train,
            batch_size=cfg.estep_batch_size,
            init_passes=cfg.estep_init_passes,
            restarts=cfg.estep_restarts,
            restart_passes=cfg.estep_restart_passes,
            restart_when=cfg.estep_restart_when,
            extra_passes=cfg.estep_extra_passes,
            extra_pass_gain=cfg.estep_extra_pass_gain,
            location_method=cfg.location_method,
            location_options=cfg.location_options,
            seed=cfg.seed,
            name="train_search",
            strategy=self.strategy,
        )
        del x_train
        self.validation_search = None
        if validation is not None:
            self.validation_search = DatasetSearch(
                model,
                validation,
                batch_size=cfg.estep_batch_size,
                init_passes=cfg.estep_init_passes,
                restarts=cfg.estep_restarts,
                restart_passes=cfg.estep_restart_passes,
                restart_when=cfg.estep_restart_when,
                extra_passes=cfg.estep_extra_passes,
                extra_pass_gain=cfg.estep_extra_pass_gain,
                location_method=cfg.location_method,
                location_options=cfg.location_options,
                seed=cfg.seed + 7919,
                name="validation_search",
                strategy=self.strategy,
            )
        self.batch_size = min(cfg.batch_size, self.train_search.num_images)

        prior = model.path_prior
        self._closed_form_prior = hasattr(prior, "fit") and bool(prior.trainable_variables)
        skip = {v.ref() for v in prior.trainable_variables} if self._closed_form_prior else set()
        self.variables = [v for v in model.trainable_variables if v.ref() not in skip]
        if not self.variables:
            raise ValueError("the model has no trainable variables")
        # half-convolution kernels take K-FAC steps (cfg.hc_optimizer, see
        # tfdgmm.training.preconditioning); every other variable the Keras optimizer's
        self.preconditioner = None
        if cfg.hc_optimizer == "kfac":
            pre = HalfConvolutionKFAC(model, damping=cfg.hc_damping, fisher=cfg.hc_fisher)
            trainable = {v.ref() for v in self.variables}
            if pre and all(k.ref() in trainable for k in pre.kernels):
                self.preconditioner = pre
        hc = {k.ref() for k in self.preconditioner.kernels} if self.preconditioner else set()
        self._hc_index = [i for i, v in enumerate(self.variables) if v.ref() in hc]
        self._main_index = [i for i, v in enumerate(self.variables) if v.ref() not in hc]
        self.optimizer = cfg.make_optimizer()
        self.optimizer.build([self.variables[i] for i in self._main_index])
        items = {}
        if self.preconditioner is not None:
            self.hc_optimizer = cfg.make_hc_optimizer()
            self.hc_optimizer.build([self.variables[i] for i in self._hc_index])
            items.update(hc_optimizer=self.hc_optimizer, hc_kfac=self.preconditioner)

        items.update(
            model=model,
            optimizer=self.optimizer,
            state=self.state,
            train=self.train_search.checkpoint_items(),
        )
        if self.validation_search is not None:
            items["validation"] = self.validation_search.checkpoint_items()
        self.checkpoint = tf.train.Checkpoint(**items)

    # ------------------------------------------------------------------ public API

    @property
    def history(self) -> list[dict]:
        """One dict per completed EM iteration (bounds, learning rate, path entropies, ...)."""
        return _jget(self.state.history)

    @property
    def em_iteration(self) -> int:
        return int(self.state.em_iteration.numpy())

    def fit(self, resume: bool = False) -> list[dict]:
        """Run EM to the end (or to early stopping); returns the history.

        `resume=True` continues from the latest checkpoint in `out_dir` (a fresh start when there
        is none). Without it, an `out_dir` that already holds checkpoints is an error, so that
        work is never overwritten by accident. At the end the best model (validation lower
        bound) is restored.
        """
        cfg = self.config
        if self.num_replicas > 1:
            self.log(f"training on {self.num_replicas} replicas ({type(self.strategy).__name__})")
        if resume:
            path = self._restore_for_resume()
            if path is None:
                self.log(f"resume: no checkpoint in {self.out_dir}; starting from scratch")
            else:
                self.log(
                    f"resumed from {path}: EM iteration {self.em_iteration + 1}, "
                    f"{_STAGE_NAMES[int(self.state.stage.numpy())]}, "
                    f"update {int(self.state.mstep_update.numpy())}"
                )
                self._check_best_model()
        elif self.keeper.latest is not None:
            raise FileExistsError(
                f"{self.out_dir} already holds checkpoints ({self.keeper.latest}); resume with "
                "--resume / fit(resume=True), or choose a new output directory"
            )
        self._clock = Clock(float(self.state.elapsed.numpy()))
        self._check_finite_data()
        if cfg.divergence_nats <= 0:
            self.log(
                "WARNING: training.divergence_nats is 0: the divergence guard is off (only "
                "a NaN or Inf rolls back; a finite blow-up goes through)"
            )
        if self.keeper.latest is None:
            if cfg.data_init:
                initialize_from_data(
                    self.model,
                    self.train_search.data[: cfg.data_init_images],
                    log=self.log,
                    identity_below=cfg.data_init_identity,
                )
            self._save()
        while not int(self.state.finished.numpy()):
            t = self.em_iteration
            if t >= cfg.em_iterations:
                self.state.finished.assign(1)
                self._save()
                break
            self._ensure_train_data(t)
            stage = int(self.state.stage.numpy())
            if stage == ESTEP:
                self._estep(t)
            elif stage == MSTEP:
                self._mstep(t)
            else:
                self._bounds(t)
        best = self.keeper.restore_best()
        if best is not None and int(self.state.best_iteration.numpy()) < 0:
            self.log(f"restored the initial model from {best}: no EM iteration beat it")
        elif best is not None:
            self.log(
                f"restored the best model (validation lower bound "
                f"{float(self.state.best_validation.numpy()):.2f} nats, EM iteration "
                f"{int(self.state.best_iteration.numpy()) + 1}) from {best}"
            )
        self.summaries.flush()
        if self.write_dir != self.out_dir:
            self.close()
        return self.history

    def _check_best_model(self) -> None:
        """On resume: a run past its first E-step has a best model in `best/` (the initial
        model, until an EM iteration beats it). When that directory is gone (a run moved
        without it), the state's record of the best iteration is reset, so that the model
        kept at the end and the best iteration reported are the same one: the best of the
        iterations still to come."""
        past_first_estep = self.em_iteration > 0 or int(self.state.stage.numpy()) != ESTEP
        if self.keeper.best is not None or not past_first_estep:
            return
        lost = int(self.state.best_iteration.numpy())
        what = "the initial model" if lost < 0 else f"the model of EM iteration {lost + 1}"
        self.log(
            f"WARNING: {os.path.join(self.out_dir, checkpointing.BEST_DIR)} holds no model, but "
            f"this run is past its first E-step: the best model so far ({what}, validation "
            f"lower bound {float(self.state.best_validation.numpy()):.2f} nats) is lost. The "
            "run goes on; the best of the EM iterations still to come will be kept. (Move "
            "best/ along with checkpoints/.)"
        )
        self.state.best_validation.assign(-np.inf)
        self.state.best_iteration.assign(-1)

    def _restore_for_resume(self) -> str | None:
        """The latest checkpoint of the run: the chief's (every worker restores it; a
        non-chief worker then saves a copy into its own directory)."""
        if self.write_dir == self.out_dir:
            return self.keeper.restore_latest()
        path = tf.train.latest_checkpoint(os.path.join(self.out_dir, checkpointing.STATE_DIR))
        if path is not None:
            self.checkpoint.read(path).assert_existing_objects_matched()
            self.keeper.save()
        return path

    def close(self) -> None:
        """Remove a non-chief worker's temporary directory (called at the end of `fit`)."""
        from tfdgmm.training import distribute

        self.summaries.close()
        distribute.remove_worker_dir(self.write_dir, self.out_dir)

    def evaluate(
        self,
        x: Images,
        restarts: int | None = None,
        seed: Seed | None = None,
        batch_size: int | None = None,
        label: str = "data",
    ) -> dict:
        """Bounds for images `x` without stored paths (e.g. the test split): a search from a
        random path (1 pass) plus `restarts` random restarts (2 passes each). Returns a dict
        (see `evaluate_bounds`)."""
        cfg = self.config
        return evaluate_bounds(
            self.model,
            x,
            batch_size=batch_size or cfg.estep_batch_size,
            restarts=cfg.eval_restarts if restarts is None else restarts,
            location_method=cfg.location_method,
            location_options=cfg.location_options,
            seed=(cfg.seed + EVAL_SEED_OFFSET) if seed is None else seed,
            nats_to_bpd=self.nats_to_bpd,
            log=self.log,
            label=label,
        )

    def refine(self, which: str = "train", restarts: int | None = None) -> dict:
        """One more E-step on the stored paths of `'train'` or `'validation'` (warm start plus
        `restarts` random restarts) with the current parameters: the final bounds of a run."""
        cfg = self.config
        search = self.train_search if which == "train" else self.validation_search
        if search is None:
            raise ValueError(f"no {which} data")
        saved = search.restarts, search.restart_when
        search.restarts = cfg.eval_restarts if restarts is None else restarts
        search.restart_when = "always"  # (the final bounds restart every datapoint)
        search.clear_traced()
        try:
            search.reset()
            start = time.monotonic()
            search.run(step=1_000_003)
        finally:
            search.restarts, search.restart_when = saved
            search.clear_traced()
            search.reset()
        return search_record(search, self.nats_to_bpd, time.monotonic() - start)

    def path_usage_entropy(self) -> list[float]:
        return path_usage_entropy(self.model, self.train_search.path())

    def elapsed(self) -> float:
        return self._clock.elapsed()

    # ------------------------------------------------------------------ EM stages

    def _ensure_train_data(self, t: int) -> None:
        if self._train_fn is not None and self._loaded_iteration != t:
            x = self._train_fn(t)
            check_float_images(x, "training images")
            self.train_search.set_data(x)
            self._loaded_iteration = t

    def _check_finite_data(self) -> None:
        searches = [self.train_search] + (
            [self.validation_search] if self.validation_search else []
        )
        for s in searches:
            if not bool(tf.reduce_all(tf.math.is_finite(s.data))):
                raise ValueError(f"{s.name}: the images contain NaN or Inf")

    def _chunk(self, meter: RateMeter, per_unit_default: int, remaining: int, unit: int = 1) -> int:
        """How many units of work (updates, or batches of `unit` images for a meter counting
        images) fit in one progress interval (at least 1)."""
        cfg = self.config
        n = (
            per_unit_default
            if meter.rate is None
            else int(meter.rate * cfg.progress_interval_seconds / unit)
        )
        if cfg.max_chunk:
            n = min(n, cfg.max_chunk)
        return max(1, min(remaining, n))

    def _search_stage(self, search: DatasetSearch, t: int, event: str) -> None:
        """Run `search` over its data in chunks, with progress, hooks and checkpoints."""
        meter = self._rates[event if event == "estep" else "bounds"]
        while not search.done:
            remaining = search.num_batches - int(search.position.numpy())
            n = self._chunk(meter, 1, remaining, unit=search.batch_size)
            start = time.monotonic()
            search.run(step=t, max_batches=n)
            meter.update(n * search.batch_size, time.monotonic() - start)
            pos = int(search.position.numpy())
            info = {"em_iteration": t, "batches": pos, "num_batches": search.num_batches}
            self._call_hooks(event, info)
            self._progress(
                t,
                search_progress_text(
                    "E-step" if event == "estep" else "validation E-step",
                    pos,
                    search.num_batches,
                    meter.rate,
                    self._replicas_text(),
                    meter.eta((search.num_batches - pos) * search.batch_size),
                ),
            )
            if self.keeper.seconds_since_save() >= self.config.checkpoint_interval_seconds:
                self._save()

    def _estep(self, t: int) -> None:
        cfg = self.config
        if int(self.train_search.position.numpy()) == 0:
            self.log(
                f"[EM {t + 1}/{cfg.em_iterations}] E-step on {self.train_search.num_images} images"
            )
        start = time.monotonic()
        first = (
            cfg.first_estep
            if cfg.first_estep != "auto"
            else ("search" if cfg.data_init else "random")
        )
        if t == 0 and first == "random":
            # the initial paths are uniformly random (DatasetSearch): train on them first
            self.train_search.position.assign(self.train_search.num_batches)
            self.train_search.lower.assign(
                tf.fill([self.train_search.num_images], tf.constant(np.nan, self.model.dtype))
            )
            self.train_search.upper.assign(self.train_search.lower)
        self._search_stage(self.train_search, t, "estep")
        if self._closed_form_prior:
            self.model.path_prior.fit(self.train_search.path(), pseudo_count=cfg.prior_pseudo_count)
        lower, upper = self.train_search.mean_bounds()
        if not math.isfinite(lower):  # random first paths: score them
            lower, upper = self.train_search.score()
        current = _jget(self.state.current)
        current.update(
            estep_lower_bound=lower,
            estep_upper_bound=upper,
            estep_seconds=current.get("estep_seconds", 0) + time.monotonic() - start,
        )
        _jset(self.state.current, current)
        self.log(
            f"[EM {t + 1}/{cfg.em_iterations}] E-step done: training lower bound "
            f"{lower:.2f} nats{self._bpd_text(lower)}"
        )
        self.summaries.scalars(
            t + 1, {"em/estep_lower_bound": lower, "em/estep_lower_bound_bpd": self._bpd(lower)}
        )
        self.state.stage.assign(MSTEP)
        self.state.mstep_update.assign(0)
        if t == 0 and self.keeper.best is None:
            self.keeper.save_best()  # the initial model, until an EM iteration beats it
        self._save(anchor=True)  # the first rollback target of the M-step

    #: Updates per divergence check: every decision that changes the numbers is taken at
    #: multiples of this many updates, never by the clock, so that a run gives the same
    #: parameters on a fast and a slow machine, and when resumed.
    CHECK_WINDOW = 10
    #: Updates between rollback targets (a multiple of CHECK_WINDOW; the M-step's start and
    #: the state after every rollback are targets too).
    ANCHOR_EVERY = 100

    def _mstep(self, t: int) -> None:
        cfg = self.config
        total = mstep_updates(cfg, t)
        meter = self._rates["mstep"]
        self._ensure_mstep_fn()
        u = int(self.state.mstep_update.numpy())
        if u == 0:
            scale = float(self.state.lr_scale.numpy())
            lr0 = learning_rate_at(cfg, t, 0, total, scale)
            warm = min(cfg.lr_warmup_updates, total)
            if not (t == 0 or cfg.lr_warmup_every_mstep):
                warm = 0
            peak = learning_rate_at(cfg, t, warm - 1, total, scale) if warm > 1 else lr0
            rate = f"{lr0:.2e}" if peak == lr0 else f"{lr0:.2e} warming up to {peak:.2e}"
            self.log(
                f"[EM {t + 1}/{cfg.em_iterations}] M-step: {total} updates of "
                f"{self.batch_size} images, learning rate {rate}"
            )
        start_stage = time.monotonic()
        # The divergence and NaN guard (tfdgmm.training.guards) checks at the end of every
        # window of CHECK_WINDOW updates (chunks never cross a window's end); a problem
        # restores the last rollback target, written every ANCHOR_EVERY updates once the
        # checks passed. Its running values are part of the checkpoint (`state.current`), so a
        # resumed run takes the same decisions as an uninterrupted one.
        start_lower = _jget(self.state.current).get("estep_lower_bound")
        start_loss = float("inf") if start_lower is None else -float(start_lower)
        guard = DivergenceGuard(
            cfg.divergence_nats,
            start_loss,
            probe=self._probe_loss,
            window=self.CHECK_WINDOW,
            anchor_every=self.ANCHOR_EVERY,
            state=_jget(self.state.current).get("mstep_guard"),
        )
        loss = guard.last_window_loss
        while True:
            problem, boundary = None, u >= total
            if u < total:
                n = guard.chunk_size(u, self._chunk(meter, 5, total - u))
                start = time.monotonic()
                done, ok, loss_sum = self._ensure_mstep_fn()(
                    tf.constant(n, tf.int64), tf.constant(total, tf.int64), tf.constant(t, tf.int64)
                )
                done, ok, loss_sum = int(done), bool(ok), float(loss_sum)
                meter.update(done, time.monotonic() - start)
                u = int(self.state.mstep_update.numpy())
                self._call_hooks("mstep", {"em_iteration": t, "update": u, "updates": total})
                problem = guard.add_chunk(loss_sum, done, ok, self._parameters_finite)
                if problem is None:
                    self._mstep_progress(t, u, total, loss_sum / max(done, 1), meter)
                    boundary = guard.is_boundary(u, total)
            if problem is None and boundary:
                problem = guard.end_window(u, total)
                if problem is None and guard.last_window_loss is not None:
                    loss = guard.last_window_loss
            if problem is not None:
                self._rollback(t, u, problem)
                if int(self.state.stage.numpy()) != MSTEP:
                    self._save(anchor=True)
                    return
                u = int(self.state.mstep_update.numpy())
                guard.reset()
                loss = None
                self._store_guard(guard.state)
                self._save(anchor=True)  # the rollback's lowered rate is the new target
                continue
            if u >= total:
                break
            if boundary and guard.is_anchor(u):
                self._store_guard(guard.state)
                self._save(anchor=True)
            elif self.keeper.seconds_since_save() >= cfg.checkpoint_interval_seconds:
                self._store_guard(guard.state)  # a timer checkpoint: for resuming, never a target
                self._save()
        current = _jget(self.state.current)
        current.pop("mstep_guard", None)
        current.update(
            updates=total,
            final_loss=loss,
            mstep_seconds=current.get("mstep_seconds", 0) + time.monotonic() - start_stage,
            learning_rate=learning_rate_at(cfg, t, 0, total, float(self.state.lr_scale.numpy())),
        )
        _jset(self.state.current, current)
        self.state.stage.assign(BOUNDS)
        self._save()

    def _store_guard(self, guard: dict) -> None:
        current = _jget(self.state.current)
        current["mstep_guard"] = guard
        _jset(self.state.current, current)

    def _mstep_progress(self, t: int, u: int, total: int, loss: float, meter: RateMeter) -> None:
        lr = learning_rate_at(self.config, t, u - 1, total, float(self.state.lr_scale.numpy()))
        step = int(self.optimizer.iterations.numpy())
        self.summaries.scalars(
            step,
            {
                "mstep/loss": loss,
                "mstep/learning_rate": lr,
                "mstep/lower_bound_bpd": self._bpd(-loss),
                "mstep/updates_per_second": meter.rate,
            },
        )
        self._progress(
            t,
            mstep_progress_text(
                u, total, loss, lr, meter.rate, self._replicas_text(), meter.eta(total - u)
            ),
        )

    def _bounds(self, t: int) -> None:
        cfg = self.config
        start = time.monotonic()
        record = _jget(self.state.current)
        train_lo, train_up = self.train_search.score()
        record.update(iteration=t + 1, train_lower_bound=train_lo, train_upper_bound=train_up)
        if self.validation_search is not None:
            self._search_stage(self.validation_search, t, "bounds")
            val_lo, val_up = self.validation_search.mean_bounds()
            record.update(validation_lower_bound=val_lo, validation_upper_bound=val_up)
        for key in [k for k in record if k.endswith("_bound")]:
            record[key.replace("_bound", "_bound_bpd")] = self._bpd(record[key])
        record["path_entropy"] = self.path_usage_entropy()
        record["learning_rate_scale"] = float(self.state.lr_scale.numpy())
        record["rollbacks"] = int(self.state.rollbacks.numpy())
        record["replicas"] = self.num_replicas
        record["bounds_seconds"] = time.monotonic() - start
        record["elapsed_seconds"] = self._clock.elapsed()

        improved = False
        # never best below the initial model: the first E-step's training bound (its paths
        # are what the M-steps start from; best/ holds that model until an iteration beats it)
        done = _jget(self.state.history)
        initial = (done[0] if done else record).get("estep_lower_bound")
        below_initial = initial is not None and math.isfinite(initial) and not (train_lo >= initial)
        if below_initial:
            self.log(
                f"WARNING: [EM {t + 1}] the training lower bound {train_lo:.4g} nats is "
                f"below the initial model's {initial:.4g}: not a best model"
            )
        if below_initial:
            self.state.bad_iterations.assign_add(1)
        elif self.validation_search is not None:
            val = record["validation_lower_bound"]
            if val > float(self.state.best_validation.numpy()) + cfg.early_stopping_min_delta:
                improved = True
                self.state.best_validation.assign(val)
                self.state.best_iteration.assign(t)
                self.state.bad_iterations.assign(0)
            else:
                self.state.bad_iterations.assign_add(1)
        else:
            improved = True
            self.state.best_iteration.assign(t)
        record["best"] = improved

        scalars = {
            f"em/{k}": v
            for k, v in record.items()
            if isinstance(v, (int, float))
            and not isinstance(v, bool)
            and ("bound" in k or k in ("final_loss", "learning_rate"))
            and not k.startswith("estep_")
        }  # (written once, after the E-step)
        scalars.update({f"paths/entropy_layer{i}": h for i, h in enumerate(record["path_entropy"])})
        self.summaries.scalars(t + 1, scalars)
        self.summaries.flush()
        text = f"train LB {train_lo:.2f}{self._bpd_text(train_lo)}"
        if self.validation_search is not None:
            text += (
                f", validation LB {record['validation_lower_bound']:.2f}"
                f"{self._bpd_text(record['validation_lower_bound'])}"
                f" UB* {record['validation_upper_bound']:.2f}"
            )
        self.log(
            f"[EM {t + 1}/{cfg.em_iterations}] done: {text} nats"
            f"{' (best)' if improved and self.validation_search else ''}; "
            f"elapsed {format_duration(self._clock.elapsed())}"
            f"{self._eta_text(t)}"
        )

        history = _jget(self.state.history)
        history.append(record)
        _jset(self.state.history, history)
        _jset(self.state.current, {})
        if improved:
            self.keeper.save_best()
        self.state.em_iteration.assign(t + 1)
        self.state.stage.assign(ESTEP)
        self.train_search.reset()
        if self.validation_search is not None:
            self.validation_search.reset()
        patience = cfg.early_stopping_patience
        slow = self._slow_gain(history)
        if slow is not None:
            self.log(slow)
            self.state.finished.assign(1)
        elif patience and int(self.state.bad_iterations.numpy()) >= patience:
            self.log(
                f"early stopping: no better validation lower bound for {patience} EM "
                f"iterations (best {float(self.state.best_validation.numpy()):.2f} nats "
                f"at EM iteration {int(self.state.best_iteration.numpy()) + 1})"
            )
            self.state.finished.assign(1)
        self._call_hooks("iteration", {"em_iteration": t, "record": record})
        self._save()

    def _ensure_mstep_fn(self) -> Callable:
        """The M-step's `tf.function`, built on first use and again after a rollback dropped it
        (with `jit_compile`, a restore invalidates the compiled function)."""
        if self._mstep_fn is None:
            self._mstep_fn = (
                self._build_mstep() if self.strategy is None else self._build_distributed_mstep()
            )
            self._rates["mstep"].skip_next()  # its first call traces it
        return self._mstep_fn

    def _slow_gain(self, history: list) -> str | None:
        """The converged-run message when the last EM iteration's validation gain per 1,000
        M-step updates fell below `early_stopping_min_gain_per_1000_updates`, else None."""
        threshold = self.config.early_stopping_min_gain_per_1000_updates
        if not threshold or self.validation_search is None or len(history) < 2:
            return None
        last, before = history[-1], history[-2]
        updates = last.get("updates") or 0
        if updates <= 0:
            return None
        gain = last["validation_lower_bound"] - before["validation_lower_bound"]
        rate = 1000.0 * gain / updates
        if rate >= threshold:
            return None
        return (
            f"early stopping: EM iteration {last['iteration']} raised the validation lower "
            f"bound by {gain:.2f} nats/image in {updates} updates ({rate:.2f} per 1,000, "
            f"below {threshold:g}): converged"
        )

    # ------------------------------------------------------------------ the M-step graph

    def _build_mstep(self) -> Callable:
        model, variables = self.model, self.variables
        data, paths = self.train_search.data, self.train_search.paths

        def loss_and_grads(x: tf.Tensor, path: ChoicePath) -> tuple[tf.Tensor, list]:
            with tf.GradientTape() as tape:
                loss = -tf.reduce_mean(model.joint_log_prob(x, path))
            return loss, tape.gradient(loss, variables)

        if self.config.jit_compile:
            loss_and_grads = tf.function(loss_and_grads, jit_compile=True)

        def minibatch_step(idx: tf.Tensor) -> tuple[tf.Tensor, list]:
            return loss_and_grads(tf.gather(data, idx), tuple(tf.gather(v, idx) for v in paths))

        return self._mstep_loop(minibatch_step)

    def _build_distributed_mstep(self) -> Callable:
        """The M-step under `self.strategy`: the single-device minibatch (same stateless
        shuffle), each replica's slice of it, gradients of `-sum(joint) / B` summed over the
        replicas, one optimizer step in cross-replica context (see
        `tfdgmm.training.distribute`)."""
        from tfdgmm.training import distribute

        strategy, model, variables = self.strategy, self.model, self.variables
        data, paths = self.train_search.data, self.train_search.paths
        b = self.batch_size
        per = distribute.split_size(b, strategy, "batch_size (M-step minibatch)")
        sum_op = tf.distribute.ReduceOp.SUM

        def replica_loss_and_grads(idx: tf.Tensor) -> tuple[tf.Tensor, list]:
            mine = tf.slice(idx, [distribute.replica_offset(per)], [per])
            x = tf.gather(data, mine)
            path = tuple(tf.gather(v, mine) for v in paths)
            with tf.GradientTape() as tape:
                loss = -tf.reduce_sum(model.joint_log_prob(x, path)) / b
            return loss, tape.gradient(loss, variables)

        if self.config.jit_compile:
            replica_loss_and_grads = tf.function(replica_loss_and_grads, jit_compile=True)

        def replica_step(idx: tf.Tensor) -> list[tf.Tensor]:
            loss, grads = replica_loss_and_grads(idx)
            # one batched all-reduce (sum) of the loss and every gradient
            return tf.distribute.get_replica_context().all_reduce(sum_op, [loss] + list(grads))

        def minibatch_step(idx: tf.Tensor) -> tuple[tf.Tensor, list]:
            loss, *grads = distribute.local_value(strategy, strategy.run(replica_step, args=(idx,)))
            return loss, grads

        return self._mstep_loop(minibatch_step)

    def _mstep_loop(
        self, minibatch_step: Callable[[tf.Tensor], tuple[tf.Tensor, list]]
    ) -> Callable:
        """`run(num, total, em_iteration)`: up to `num` updates in one `tf.function`, stopping
        at the first non-finite loss or gradient; `minibatch_step(idx) -> (loss, grads)` on
        the minibatch of training indices `idx` (a stateless shuffle per epoch)."""
        cfg, state, optimizer, variables = self.config, self.state, self.optimizer, self.variables
        n = self.train_search.num_images
        b = self.batch_size
        per_epoch = n // b
        seed = fold_seed(cfg.seed, 0x3A57E9)
        pre = self.preconditioner
        main_vars = [variables[i] for i in self._main_index]
        hc_vars = [variables[i] for i in self._hc_index]
        data, paths = self.train_search.data, self.train_search.paths
        stats_images = min(cfg.hc_statistics_images, n)
        stats_seed = fold_seed(cfg.seed, 0x4FAC)

        def refresh_statistics(em_iteration: tf.Tensor, u: tf.Tensor) -> tf.Tensor:
            """The K-FAC factors from `stats_images` training images (a stateless draw per
            update count) on their E-step paths."""
            idx = tf.random.experimental.stateless_shuffle(
                tf.range(n), seed=fold_seed(stats_seed, em_iteration, u)
            )[:stats_images]
            pre.update(
                tf.gather(data, idx),
                tuple(tf.gather(v, idx) for v in paths),
                seed=fold_seed(stats_seed, em_iteration, u, 1),
            )
            return tf.constant(0)

        @tf.function
        def run(num: tf.Tensor, total: tf.Tensor, em_iteration: tf.Tensor) -> list[tf.Tensor]:
            def body(
                i: tf.Tensor, ok: tf.Tensor, loss_sum: tf.Tensor
            ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
                u = state.mstep_update.read_value()
                epoch, pos = u // per_epoch, u % per_epoch
                order = tf.random.experimental.stateless_shuffle(
                    tf.range(n), seed=fold_seed(seed, em_iteration, epoch)
                )
                idx = tf.slice(order, [tf.cast(pos, tf.int32) * b], [b])
                if pre is not None:
                    tf.cond(
                        u % cfg.hc_statistics_interval == 0,
                        lambda: refresh_statistics(em_iteration, u),
                        lambda: tf.constant(0),
                    )
                loss, grads = minibatch_step(idx)
                lr = learning_rate_at(cfg, em_iteration, u, total, state.lr_scale)
                if main_vars:
                    optimizer.learning_rate.assign(tf.cast(lr, optimizer.learning_rate.dtype))
                    optimizer.apply_gradients(zip([grads[i] for i in self._main_index], main_vars))
                if pre is not None:
                    hc_lr = lr * (cfg.hc_learning_rate / cfg.learning_rate)
                    self.hc_optimizer.learning_rate.assign(
                        tf.cast(hc_lr, self.hc_optimizer.learning_rate.dtype)
                    )
                    steps = pre.precondition(
                        [grads[i] for i in self._hc_index],
                        learning_rate=hc_lr,
                        max_step_nats=cfg.hc_max_step_nats,
                    )
                    self.hc_optimizer.apply_gradients(zip(steps, hc_vars))
                finite = tf.math.is_finite(loss)
                for g in grads:
                    finite = finite & tf.reduce_all(tf.math.is_finite(g))
                with tf.control_dependencies([finite]):
                    state.mstep_update.assign_add(1)
                return i + 1, finite, loss_sum + tf.cast(loss, tf.float64)

            return tf.while_loop(
                lambda i, ok, s: (i < num) & ok,
                body,
                [tf.constant(0, tf.int64), tf.constant(True), tf.constant(0.0, tf.float64)],
                parallel_iterations=1,
            )

        return run

    # ------------------------------------------------------------------ robustness

    def _probe_loss(self) -> float:
        """Mean loss (nats/image) of a fixed probe minibatch: the first training images with
        their current paths."""
        if self._probe_fn is None:
            data, paths, model = self.train_search.data, self.train_search.paths, self.model
            b = min(self.batch_size, self.train_search.num_images)

            @tf.function
            def probe() -> tf.Tensor:
                path = tuple(v[:b] for v in paths)
                return -tf.reduce_mean(model.joint_log_prob(data[:b], path))

            self._probe_fn = probe
        return float(self._probe_fn())

    def _parameters_finite(self) -> bool:
        return all(
            bool(tf.reduce_all(tf.math.is_finite(v))) for v in self.model.trainable_variables
        )

    def _save(self, anchor: bool = False) -> str:
        if not self._parameters_finite():
            raise FloatingPointError("refusing to checkpoint non-finite parameters")
        self.state.elapsed.assign(self._clock.elapsed())
        return self.keeper.save(anchor=anchor)

    def _rollback(self, t: int, u: int, what: str) -> None:
        cfg = self.config
        rollbacks = int(self.state.rollbacks.numpy()) + 1
        if rollbacks > cfg.max_rollbacks:
            message = (
                f"{what} at EM iteration {t + 1}, update {u}, after "
                f"{cfg.max_rollbacks} rollbacks; giving up (last good checkpoint: "
                f"{self.keeper.anchor or self.keeper.latest}). To go on, resume with a "
                "lower training.learning_rate or a higher training.max_rollbacks "
                "(e.g. --resume --set training.learning_rate=...)"
            )
            self.log(f"ERROR: {message}")
            raise FloatingPointError(message)
        step = int(self.optimizer.iterations.numpy())  # (the restore may reset it)
        path = self.keeper.restore_anchor()  # chosen by update count, never by the timer
        # the checkpoint's scale already includes earlier rollbacks (saved after each one)
        scale = float(self.state.lr_scale.numpy()) * cfg.nan_lr_factor
        self.state.lr_scale.assign(scale)
        self.state.rollbacks.assign(rollbacks)
        self._mstep_fn = None if cfg.jit_compile else self._mstep_fn
        self.log(
            f"WARNING: {what} in the M-step of EM iteration {t + 1} near update "
            f"{u}: rolled back to the last good checkpoint {path} (EM iteration "
            f"{self.em_iteration + 1}, {_STAGE_NAMES[int(self.state.stage.numpy())]}, "
            f"update {int(self.state.mstep_update.numpy())}) and lowered the learning rate "
            f"by {cfg.nan_lr_factor} (scale now {scale:.3g}); rollback {rollbacks} of at "
            f"most {cfg.max_rollbacks}"
        )
        self.summaries.scalars(step, {"mstep/rollback_lr_scale": scale})

    def _call_hooks(self, event: str, info: dict) -> None:
        for hook in self.hooks:
            hook(self, event, info)

    # ------------------------------------------------------------------ text

    def _bpd(self, nats: float | None) -> float | None:
        return None if self.nats_to_bpd is None or nats is None else float(self.nats_to_bpd(nats))

    def _replicas_text(self) -> str:
        return replicas_text(self.num_replicas)

    def _bpd_text(self, nats: float | None) -> str:
        return bpd_text(self._bpd(nats))

    def _progress(self, t: int, text: str) -> None:
        self._progress_log(t, text)

    def _eta_text(self, t: int) -> str:
        """Rough time left for the remaining EM iterations, from the measured rates."""
        cfg = self.config
        left = cfg.em_iterations - (t + 1)
        if left <= 0:
            return ""
        e, m, v = (self._rates[k] for k in ("estep", "mstep", "bounds"))
        parts = [
            e.eta(left * self.train_search.num_images),
            m.eta(sum(mstep_updates(cfg, s) for s in range(t + 1, cfg.em_iterations))),
        ]
        if self.validation_search is not None:
            parts.append(v.eta(left * self.validation_search.num_images))
        return em_eta_text(left, parts)
