"""Hyperparameter search with keras-tuner: every trial is a hard-EM training run.

```python
from tfdgmm.runs import tune as tt

t = tt.tune(base_config, x_train, x_val, max_trials=20, tuner="bayesian",
            directory="tuning/cifar10")          # RandomSearch | BayesianOptimization | Hyperband
tt.best_run_dir(t)                               # the best trial's run directory
model = tt.best_model(t)                         # its DeepGMM, restored from best/
tfdgmm.export.export_run(tt.best_run_dir(t), "saved_models/tuned")
```

* `EMTuner(oracle, base_config, search_space=None, space=None, ...)`: a `keras_tuner.Tuner`
  whose `run_trial(trial, train, validation)` builds a run config from `base_config` and the
  trial's hyperparameters (`search_space(hp, base_config, space)`, by default
  `default_search_space`), trains it with `EMTrainer` into the trial's directory
  (`PROJECT/trial_ID/`: a run directory with `config.yaml`, `checkpoints/`, `best/`,
  `metrics.json`, `train.log`; kept, so interrupted trials resume and any trial can be
  restored, evaluated or exported) and returns `{"val_lower_bound": ..., ...}`. The objective
  is `keras_tuner.Objective("val_lower_bound", "max")`.
* The objective is the mean validation lower bound of the trial's best model (EM's early
  stopping choice) by a **fresh** search with fixed settings: `objective_bounds(model, x_val,
  training_config)`, i.e. `evaluate_bounds` with `eval_restarts` random restarts, batches of
  `estep_batch_size` and the seed `training.seed + EVAL_SEED_OFFSET` (the settings of
  `EMTrainer.evaluate` and `tfdgmm evaluate`). It is therefore recomputable from the restored
  model alone, and comparable across trials (the warm-started bound of the EM history, also
  reported as `val_lower_bound_warm`, depends on the trial's stored paths).
* Hyperband: its budget `tuner/epochs` is the number of **EM iterations** (one E-step, one
  M-step of `updates_first` / `updates_later` updates, validation bounds); see
  `hyperband_budget`. A trial that continues another one (`tuner/trial_id`, successive
  halving) starts from a copy of that trial's checkpoints and runs the remaining EM iterations
  (`tuner/initial_epoch` are already done), with the same schedule as an uninterrupted run.

The default search space (`DEFAULT_SPACE`, each entry overridable through `space=`) covers the
paper's knobs: the number of block-diagonal layers, alternatives per layer, half-convolutions
before each block-diagonal layer (the paper's bottom and intermediate HCs) and their kernel
size, the patch size, the learning rate, and shared (`selection: sample`, a block per location)
or unshared (`selection: location`, the same blocks at every location) blocks.
"""

from __future__ import annotations

import copy
import os
import shutil
import time
from typing import TYPE_CHECKING

import keras_tuner
import numpy as np

from tfdgmm import layout
from tfdgmm.training.evaluation import EVAL_SEED_OFFSET

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

    from tfdgmm.deep_gmm import DeepGMM
    from tfdgmm.types import Config, Images, Log, PathLike

__all__ = [
    "DEFAULT_SPACE",
    "EMTuner",
    "OBJECTIVE",
    "OBJECTIVE_SEED_OFFSET",
    "best_model",
    "best_run_dir",
    "default_search_space",
    "hyperband_budget",
    "make_oracle",
    "normalize_base_config",
    "objective_bounds",
    "train_trial",
    "tune",
]

OBJECTIVE = "val_lower_bound"
#: The objective's search seed is `training.seed + OBJECTIVE_SEED_OFFSET` (as `tfdgmm evaluate`).
OBJECTIVE_SEED_OFFSET = EVAL_SEED_OFFSET
TUNERS = ("random", "bayesian", "hyperband")
#: The oracle's seed when none is given (keras-tuner turns a falsy seed into a random one).
DEFAULT_SEED = 1

#: Choices of the default search space. A list is a `hp.Choice` (a single value: `hp.Fixed`);
#: a `(low, high)` tuple a log-uniform `hp.Float`; `patch_size: None` means every r in
#: (2, 4, 8) that divides the image's height and width (and leaves at least 2 x 2 patches).
DEFAULT_SPACE = {
    "bd_layers": [1, 2, 3],
    "alternatives": [2, 4, 8],
    "hc_layers": [0, 1, 2, 3],
    "hc_kernel_size": [3, 5],
    "patch_size": None,
    "learning_rate": (1e-4, 1e-2),
    "blocks": ["unshared", "shared"],
}


def _declare(hp: keras_tuner.HyperParameters, name: str, choices: Any) -> Any:
    if isinstance(choices, tuple):
        low, high = choices
        return hp.Float(name, float(low), float(high), sampling="log")
    choices = list(choices)
    if not choices:
        raise ValueError(f"search space: {name} has no choices")
    if len(choices) == 1:
        return hp.Fixed(name, choices[0])
    return hp.Choice(name, choices)


def _patch_sizes(image_shape: Sequence[int]) -> list[int]:
    h, w = int(image_shape[0]), int(image_shape[1])
    sizes = [r for r in (2, 4, 8) if h % r == 0 and w % r == 0 and h // r >= 2 and w // r >= 2]
    return sizes or [1]


def default_search_space(
    hp: keras_tuner.HyperParameters, base: Config, space: Config | None = None
) -> Config:
    """Declare the default hyperparameters on `hp` and return the trial's run config.

    Args:
      hp: `keras_tuner.HyperParameters` (the trial's: values already chosen, or the oracle's
        space while it is populated).
      base: the base run config (normalised; `model.image_shape`, `path_prior`, `dtype` and
        every other section are kept).
      space: overrides of `DEFAULT_SPACE` entries.

    The architecture, bottom-up: `bd_layers` times (`hc_layers` half-convolutions of
    `hc_kernel_size`, then a block-diagonal layer with `alternatives` alternatives, shared or
    unshared `blocks`), on `patch_size` patches; `training.learning_rate` from the trial.
    """
    choices = dict(DEFAULT_SPACE, **(space or {}))
    unknown = set(choices) - set(DEFAULT_SPACE)
    if unknown:
        raise ValueError(
            f"unknown search space entries {sorted(unknown)}; expected some of "
            f"{sorted(DEFAULT_SPACE)}"
        )
    if choices["patch_size"] is None:
        choices["patch_size"] = _patch_sizes(base["model"]["image_shape"])
    v = {name: _declare(hp, name, c) for name, c in choices.items()}
    if v["blocks"] not in ("shared", "unshared"):
        raise ValueError(f"blocks must be 'shared' or 'unshared'; got {v['blocks']!r}")
    hc = {
        "type": "half_convolution",
        "kernel_size": int(v["hc_kernel_size"]),
        "repeat": int(v["hc_layers"]),
    }
    bd = {
        "type": "block_diagonal",
        "alternatives": int(v["alternatives"]),
        "selection": "sample" if v["blocks"] == "shared" else "location",
    }
    layers = []
    for _ in range(int(v["bd_layers"])):
        layers += ([dict(hc)] if v["hc_layers"] else []) + [dict(bd)]
    config = copy.deepcopy(base)
    model = {k: val for k, val in config["model"].items() if k not in ("layers", "patch_size")}
    config["model"] = dict(model, patch_size=int(v["patch_size"]), layers=layers)
    config["training"] = dict(config["training"], learning_rate=float(v["learning_rate"]))
    return config


def hyperband_budget(values: dict) -> dict | None:
    """Hyperband's budget of a trial, from its hyperparameter values.

    Returns None when the trial has no `tuner/epochs` (RandomSearch, BayesianOptimization);
    otherwise `{"em_iterations": tuner/epochs, "initial_em_iterations": tuner/initial_epoch,
    "continue_trial": tuner/trial_id or None}`: the trial runs EM to `em_iterations` EM
    iterations in all, the first `initial_em_iterations` of which were run by the trial it
    continues (whose checkpoints it starts from).
    """
    if "tuner/epochs" not in values:
        return None
    return {
        "em_iterations": int(values["tuner/epochs"]),
        "initial_em_iterations": int(values.get("tuner/initial_epoch", 0) or 0),
        "continue_trial": values.get("tuner/trial_id"),
    }


def objective_bounds(
    model: DeepGMM, validation: Images, training: Config, log: Log | None = None
) -> dict:
    """The trials' objective: bounds of `model` on `validation` by a fresh search with fixed
    settings from the run's `training` config (`EMConfig` or dict). Returns the
    `evaluate_bounds` dict (`lower_bound_nats` is the objective)."""
    from tfdgmm.training.config import EMConfig
    from tfdgmm.training.evaluation import evaluate_bounds

    em = training if isinstance(training, EMConfig) else EMConfig.from_dict(training)
    return evaluate_bounds(
        model,
        validation,
        batch_size=em.estep_batch_size,
        restarts=em.eval_restarts,
        location_method=em.location_method,
        location_options=em.location_options,
        seed=em.seed + OBJECTIVE_SEED_OFFSET,
        log=log,
        label="validation",
    )


def normalize_base_config(base: Config) -> Config:
    """Check a base config and fill in defaults (`tfdgmm.runs.normalize_run_config`); its model
    needs `image_shape` (and whatever the search space keeps, e.g. `path_prior`), not
    `layers` or `patch_size`, which the search space sets."""
    from tfdgmm.runs.config import normalize_run_config

    if (
        not isinstance(base, dict)
        or not isinstance(base.get("model"), dict)
        or ("image_shape" not in base["model"])
    ):
        raise ValueError("base config: needs a 'model' section with 'image_shape'")
    model = copy.deepcopy(base["model"])
    probe = dict(
        model,
        layers=model.get("layers") or [{"type": "diagonal"}],
        patch_size=model.get("patch_size", 1),
    )
    out = normalize_run_config(dict(base, model=probe), where="base config")
    out["model"] = model
    return out


def _has_checkpoint(run_dir: PathLike) -> bool:
    import tensorflow as tf

    return tf.train.latest_checkpoint(layout.path(run_dir, layout.CHECKPOINTS)) is not None


def train_trial(
    config: Config,
    train: Images,
    validation: Images,
    run_dir: PathLike,
    continue_from: PathLike | None = None,
    log: Log | None = None,
    extra_metrics: dict | None = None,
) -> dict:
    """Train a (normalised) run config on in-memory images into `run_dir`; returns metrics.

    Resumable: a `run_dir` with checkpoints continues from them. `continue_from`: a run
    directory whose checkpoints a fresh `run_dir` starts from (Hyperband); when its training
    had finished (its EM budget, or early stopping) it is reopened for the EM iterations of
    `config` still to run. Writes `config.yaml` and `metrics.json` (with the objective), holding
    the run directory's lock (`tfdgmm.runs.lock`) meanwhile.
    """
    from tfdgmm.runs.lock import RunLock

    os.makedirs(run_dir, exist_ok=True)
    with RunLock(run_dir, what="tune trial", log=log or print):
        return _train_trial_locked(
            config, train, validation, run_dir, continue_from, log, extra_metrics
        )


def _train_trial_locked(
    config: Config,
    train: Images,
    validation: Images,
    run_dir: PathLike,
    continue_from: PathLike | None,
    log: Log | None,
    extra_metrics: dict | None,
) -> dict:
    from tfdgmm.deep_gmm import DeepGMM
    from tfdgmm.runs.gating import gating_hooks  # gating.between_steps (post-EM: not run)
    from tfdgmm.runs.io import dump_json, dump_yaml
    from tfdgmm.runs.train import model_summary, run_record
    from tfdgmm.training.config import EMConfig
    from tfdgmm.training.em import EMTrainer

    start = time.monotonic()
    os.makedirs(run_dir, exist_ok=True)
    log_path = layout.path(run_dir, layout.LOG)

    def write_log(line: str) -> None:
        with open(log_path, "a") as f:
            f.write(line + "\n")
        if log is not None:
            log(line)

    dump_yaml(config, layout.path(run_dir, layout.CONFIG))
    if continue_from and not _has_checkpoint(run_dir):
        for sub in (layout.CHECKPOINTS, layout.BEST):
            src = os.path.join(continue_from, sub)
            if os.path.isdir(src):
                shutil.copytree(src, os.path.join(run_dir, sub), dirs_exist_ok=True)
        write_log(f"continuing the training of {continue_from}")
    em_cfg = EMConfig.from_dict(config["training"])
    model = DeepGMM.from_config(config["model"])
    trainer = EMTrainer(
        model,
        em_cfg,
        train,
        validation,
        run_dir,
        log=write_log,
        hooks=gating_hooks(config, write_log),
    )
    if _has_checkpoint(run_dir):
        trainer.keeper.restore_latest()
        state = trainer.state
        if int(state.finished.numpy()) and trainer.em_iteration < em_cfg.em_iterations:
            state.finished.assign(0)  # a larger budget: reopen the finished run
            state.bad_iterations.assign(0)
            trainer.keeper.save()
    history = trainer.fit(resume=True)
    objective = objective_bounds(model, validation, em_cfg)
    best = max(
        (r for r in history if "validation_lower_bound" in r),
        key=lambda r: r["validation_lower_bound"],
        default=None,
    )
    metrics = {
        OBJECTIVE: objective["lower_bound_nats"],
        "val_upper_bound": objective["upper_bound_nats"],
        "val_lower_bound_warm": best["validation_lower_bound"] if best else float("nan"),
        "train_lower_bound": history[-1]["train_lower_bound"] if history else float("nan"),
        "em_iterations": float(len(history)),
    }
    report = run_record(
        trainer,
        config,
        model_summary(model),
        {"validation": objective},
        history,
        wall_time={
            "training_total": trainer.elapsed(),
            "session_total": time.monotonic() - start,
        },
        data={"num_images": {"train": len(train), "validation": len(validation)}},
    )
    report["tuner"] = dict(
        extra_metrics or {},
        metrics=metrics,
        objective={
            "name": OBJECTIVE,
            "direction": "max",
            "value": metrics[OBJECTIVE],
            "search": {
                "batch_size": em_cfg.estep_batch_size,
                "restarts": em_cfg.eval_restarts,
                "location_method": em_cfg.location_method,
                "location_options": em_cfg.location_options,
                "seed": em_cfg.seed + OBJECTIVE_SEED_OFFSET,
            },
        },
        checkpoint=trainer.keeper.best,
    )
    dump_json(report, layout.path(run_dir, layout.METRICS))
    write_log(
        f"trial objective: validation lower bound {metrics[OBJECTIVE]:.3f} nats "
        f"(fresh search), warm-started {metrics['val_lower_bound_warm']:.3f}"
    )
    return metrics


class EMTuner(keras_tuner.Tuner):
    """A keras-tuner `Tuner` whose trials are hard-EM runs (see the module docstring).

    Args:
      oracle: a keras-tuner oracle (`make_oracle`) with objective `OBJECTIVE` (max).
      base_config: the base run config (sections `model`, `training`, optional `data`,
        `description`; normalised here).
      search_space: `fn(hp, base_config, space) -> run config` (default
        `default_search_space`); it declares the hyperparameters on `hp` and returns the run
        config of their values.
      space: overrides of the default space's choices (`DEFAULT_SPACE`).
      verbose: print the trials' training logs (they are always in `trial_ID/train.log`).
      **kwargs: `keras_tuner.Tuner` arguments: `directory`, `project_name`, `overwrite`, ...

    `search(train, validation)` runs the search on preprocessed float images (`train` may also
    be a callable `em_iteration -> images`, as for `EMTrainer`).
    """

    def __init__(
        self,
        oracle: keras_tuner.Oracle,
        base_config: Config,
        search_space: Callable | None = None,
        space: Config | None = None,
        verbose: bool = True,
        **kwargs: Any,
    ) -> None:
        # set before Tuner.__init__, which populates the space through `search_space`
        self.base_config = normalize_base_config(base_config)
        self.search_space = search_space or default_search_space
        self.space = dict(space or {})
        self.verbose = verbose
        super().__init__(oracle=oracle, hypermodel=None, **kwargs)

    def _populate_initial_space(self) -> None:
        hp = self.oracle.get_space()
        self.search_space(hp, self.base_config, self.space)
        self.oracle.update_space(hp)

    def trial_config(self, hp: keras_tuner.HyperParameters) -> Config:
        """The normalised run config of hyperparameters `hp` (with Hyperband's budget)."""
        from tfdgmm.runs.config import normalize_run_config

        config = self.search_space(hp, self.base_config, self.space)
        budget = hyperband_budget(hp.values)
        if budget is not None:
            config = dict(
                config, training=dict(config["training"], em_iterations=budget["em_iterations"])
            )
        return normalize_run_config(config, where="trial config")

    def run_trial(
        self,
        trial: keras_tuner.engine.trial.Trial,
        train: Images,
        validation: Images,
        **kwargs: Any,
    ) -> dict:
        hp = trial.hyperparameters
        config = self.trial_config(hp)
        budget = hyperband_budget(hp.values)
        parent = budget and budget["continue_trial"]
        run_dir = self.get_trial_dir(trial.trial_id)
        values = {k: (v.item() if hasattr(v, "item") else v) for k, v in hp.values.items()}
        log = print if self.verbose else None
        return train_trial(
            config,
            train,
            validation,
            run_dir,
            continue_from=self.get_trial_dir(parent) if parent else None,
            log=log,
            extra_metrics={
                "trial_id": trial.trial_id,
                "hyperparameters": values,
                "hyperband": budget,
            },
        )

    def load_model(self, trial: keras_tuner.engine.trial.Trial) -> DeepGMM:
        """The trial's model (a `DeepGMM`), restored from its run directory's `best/`."""
        from tfdgmm.export import load_run_model

        return load_run_model(self.get_trial_dir(trial.trial_id))[0]

    def best_run_dir(self) -> str:
        trials = self.oracle.get_best_trials(1)
        if not trials:
            raise ValueError(f"{self.project_dir}: no completed trial")
        return self.get_trial_dir(trials[0].trial_id)

    def write_summary(self, path: PathLike | None = None) -> dict | None:
        """`PROJECT/best.json`: the best trial, its run directory, objective and values."""
        trials = self.oracle.get_best_trials(1)
        if not trials:
            return None
        best = trials[0]
        summary = {
            "trial_id": best.trial_id,
            "run_dir": self.get_trial_dir(best.trial_id),
            OBJECTIVE: best.score,
            "hyperparameters": {
                k: (v.item() if hasattr(v, "item") else v)
                for k, v in best.hyperparameters.values.items()
            },
            "trials": len(self.oracle.trials),
            "oracle_seed": self.oracle.seed,
        }
        path = path or os.path.join(self.project_dir, "best.json")
        from tfdgmm.runs.io import dump_json

        dump_json(summary, path)
        return summary


def make_oracle(
    tuner: str = "random",
    max_trials: int = 10,
    seed: int = DEFAULT_SEED,
    max_epochs: int | None = None,
    factor: int = 3,
    hyperband_iterations: int = 1,
    **kwargs: Any,
) -> keras_tuner.Oracle:
    """A keras-tuner oracle maximising `OBJECTIVE`: `'random'` (RandomSearchOracle),
    `'bayesian'` (BayesianOptimizationOracle; needs scipy and scikit-learn) or `'hyperband'`
    (HyperbandOracle with `max_epochs` EM iterations, stopped after `max_trials` trials).

    `seed` must be a positive integer: keras-tuner replaces a falsy seed (0, None) by
    `random.randint`, so that two runs of one command would search different values."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 1:
        raise ValueError(
            f"seed must be a positive integer (keras-tuner replaces 0 or None by a "
            f"random seed); got {seed!r}"
        )
    if (
        isinstance(max_trials, bool)
        or not isinstance(max_trials, (int, np.integer))
        or max_trials < 1
    ):
        raise ValueError(f"max_trials must be a positive integer; got {max_trials!r}")
    seed = int(seed)
    objective = keras_tuner.Objective(OBJECTIVE, "max")
    oracles = keras_tuner.oracles
    if tuner == "random":
        return oracles.RandomSearchOracle(
            objective=objective, max_trials=max_trials, seed=seed, **kwargs
        )
    if tuner == "bayesian":
        try:
            import scipy  # noqa: F401
            import sklearn  # noqa: F401
        except ImportError as err:
            raise ValueError(
                "the bayesian tuner needs scipy and scikit-learn (pip install scipy scikit-learn)"
            ) from err
        return oracles.BayesianOptimizationOracle(
            objective=objective, max_trials=max_trials, seed=seed, **kwargs
        )
    if tuner == "hyperband":
        if not max_epochs or max_epochs < 1:
            raise ValueError("hyperband needs max_epochs (EM iterations) >= 1")
        oracle = oracles.HyperbandOracle(
            objective=objective,
            max_epochs=int(max_epochs),
            factor=factor,
            hyperband_iterations=hyperband_iterations,
            seed=seed,
            **kwargs,
        )
        oracle.max_trials = max_trials  # Hyperband ends when its brackets do, or here
        return oracle
    raise ValueError(f"tuner must be one of {TUNERS}; got {tuner!r}")


def tune(
    base_config: Config,
    train: Images,
    validation: Images,
    *,
    max_trials: int = 10,
    tuner: str = "random",
    directory: str = "tuning",
    project_name: str = "tfdgmm",
    search_space: Callable | None = None,
    space: Config | None = None,
    seed: int = DEFAULT_SEED,
    max_epochs: int | None = None,
    factor: int = 3,
    overwrite: bool = False,
    verbose: bool = True,
    oracle_kwargs: dict | None = None,
) -> EMTuner:
    """Run a keras-tuner search of deep GMM hyperparameters; returns the `EMTuner`.

    Args:
      base_config: run config (`model`, `training`, optional `data`) the trials start from.
      train, validation: preprocessed float images (`train` may be a callable, see
        `EMTrainer`).
      max_trials: number of trials (an upper bound for Hyperband).
      tuner: `'random'`, `'bayesian'` or `'hyperband'`.
      directory, project_name: the project directory `directory/project_name` (trials in
        `trial_ID/`; an existing project is resumed unless `overwrite`).
      search_space, space: see `EMTuner`.
      seed: the oracle's seed, a positive integer (trials use the base config's
        `training.seed`); recorded in `best.json`.
      max_epochs, factor: Hyperband's budget in EM iterations (default: the base config's
        `training.em_iterations`) and its reduction factor.
    """
    base = normalize_base_config(base_config)
    if max_epochs is None:
        max_epochs = base["training"]["em_iterations"]
    oracle = make_oracle(
        tuner,
        max_trials=max_trials,
        seed=seed,
        max_epochs=max_epochs,
        factor=factor,
        **(oracle_kwargs or {}),
    )
    t = EMTuner(
        oracle,
        base,
        search_space=search_space,
        space=space,
        verbose=verbose,
        directory=directory,
        project_name=project_name,
        overwrite=overwrite,
    )
    t.search(train, validation)
    t.write_summary()
    return t


def best_run_dir(tuner: EMTuner) -> str:
    """The run directory of the best completed trial (for `tfdgmm.export.export_run`,
    `tfdgmm evaluate`, ...)."""
    return tuner.best_run_dir()


def best_model(tuner: EMTuner) -> DeepGMM:
    """The best trial's `DeepGMM`, restored from its run directory."""
    trials = tuner.oracle.get_best_trials(1)
    if not trials:
        raise ValueError(f"{tuner.project_dir}: no completed trial")
    return tuner.load_model(trials[0])
