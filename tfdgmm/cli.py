"""The `tfdgmm` command line: train, evaluate, sample, baseline.

```none
tfdgmm train --config FILE [--data SPEC] --out DIR [--resume] [--set KEY=VALUE ...]
tfdgmm evaluate RUN_DIR [--split validation|test|train|all] [--data SPEC] [--restarts N]
tfdgmm sample RUN_DIR [--n 64] [--seed 0] [--out PNG]
tfdgmm baseline [--data SPEC] [--out DIR] [--noise-seed 0] [--jitter J]
tfdgmm export RUN_DIR OUT_DIR [--which best|latest] [--restarts 2] [--restart-passes 2]
              [--seed A B] [--overwrite]
tfdgmm tune --config FILE --max-trials N [--tuner random|bayesian|hyperband] [--data SPEC]
            --out DIR [--space YAML] [--max-epochs E] [--factor 3] [--set KEY=VALUE ...]
```

`tfdgmm --help` and `tfdgmm --version` answer without importing TensorFlow; every command
parses its arguments first, then loads TensorFlow with its start-up log lines silenced
(`TFDGMM_VERBOSE_TF=1` shows them).

A run config (YAML or JSON) has three sections:

```yaml
model:      # the architecture dict of tfdgmm.architectures (layers bottom-up)
  image_shape: [32, 32, 3]
  patch_size: 4
  layers: [{type: half_convolution, kernel_size: 5}, {type: block_diagonal, alternatives: 2}]
training:   # tfdgmm.training.EMConfig
  em_iterations: 2
data:       # optional: where the data comes from and how much of it
  spec: tfds              # 'tfds', a directory or a .npz (overridden by --data)
  train_limit: 500        # first k images of each split (small runs)
  validation_limit: 200
  test_limit: 200
  validation_size: 10000  # the last k images of the training file are the validation split
  noise_seed: 0           # fixed dequantization noise
  dequantize: fixed       # fixed | per_iteration (noise redrawn every EM iteration)
  evaluate_test: true     # bounds on the test split at the end
gating:     # optional (default off): gating networks, paper section 3
  enabled: true           # fit them after EM on the last E-step's training paths
  hidden: 32
  kernel_size: 3
  steps: 2000             # Adam updates on the fixed paths
  batch_size: 100
  learning_rate: 1.0e-3
  between_steps: 0        # > 0: train with gating and refit it between every E- and M-step
```

With `gating.enabled`, the final bounds are also computed with the gated prior (searches
warm-started from the last paths; `metrics.json` has a `gating` block) and the gated model is
saved as a run directory of its own, `RUN_DIR/gated/` (`config.yaml` whose model has
`path_prior: {kind: gating, ...}`, `best/`, `metrics.json`, `figures/`), so that
`tfdgmm evaluate|sample|export RUN_DIR/gated` work on it.

A run directory is self-describing: `config.yaml` (the resolved config), `command.txt`,
`train.log`, `checkpoints/`, `best/`, `tensorboard/`, `metrics.json`, `figures/`.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import shlex
import sys
import time

__all__ = ["main", "load_run_config", "train_run", "load_data", "DataLoadError"]

DATA_DEFAULTS = {
    "spec": "tfds",
    "train_limit": None,
    "validation_limit": None,
    "test_limit": None,
    "validation_size": 10_000,
    "noise_seed": 0,
    "dequantize": "fixed",
    "evaluate_test": True,
}
_DEQUANTIZE = ("fixed", "per_iteration")


class DataLoadError(RuntimeError):
    """The data could not be loaded; the message says what to pass instead."""


# ---------------------------------------------------------------------- configs

def _parse_value(text):
    import yaml

    return yaml.safe_load(text)


def apply_overrides(config: dict, overrides) -> dict:
    """`['training.em_iterations=3', 'data.train_limit=1000']` -> a modified copy."""
    config = copy.deepcopy(config)
    for item in overrides or ():
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE (e.g. training.em_iterations=3); "
                             f"got {item!r}")
        key, value = item.split("=", 1)
        node = config
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = _parse_value(value)
    return config


def load_run_config(path, overrides=()) -> dict:
    """Read a YAML/JSON run config, apply `--set` overrides, check and fill in defaults."""
    import yaml

    with open(path) as f:
        raw = yaml.safe_load(f)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a run config must be a mapping with 'model' and 'training'")
    return normalize_run_config(apply_overrides(raw, overrides), where=path)


def normalize_run_config(raw: dict, where="config") -> dict:
    from tfdgmm import architectures
    from tfdgmm.training import EMConfig

    unknown = set(raw) - {"model", "training", "data", "description", "paper", "gating"}
    if unknown:
        raise ValueError(f"{where}: unknown sections {sorted(unknown)}; expected 'model', "
                         "'training', 'data' (and optional 'gating', 'description', 'paper')")
    if "model" not in raw:
        raise ValueError(f"{where}: missing the 'model' section (an architecture dict)")
    out = {k: copy.deepcopy(raw[k]) for k in ("description", "paper") if k in raw}
    out["model"] = architectures.normalize(raw["model"])
    out["training"] = EMConfig.from_dict(raw.get("training")).to_dict()
    data = dict(DATA_DEFAULTS)
    extra = set(raw.get("data") or {}) - set(DATA_DEFAULTS)
    if extra:
        raise ValueError(f"{where}: unknown data keys {sorted(extra)}; expected some of "
                         f"{sorted(DATA_DEFAULTS)}")
    data.update(raw.get("data") or {})
    if data["dequantize"] not in _DEQUANTIZE:
        raise ValueError(f"{where}: data.dequantize must be one of {_DEQUANTIZE}")
    out["data"] = data
    if "gating" in raw:
        out["gating"] = _normalize_gating_section(raw["gating"], out["model"], where)
    return out


def _normalize_gating_section(section, model, where):
    """`gating:` with defaults. With `between_steps > 0` the trained model itself is gated:
    `model['path_prior']` (modified in place) becomes the gating prior."""
    from tfdgmm.training.gating import GATING_DEFAULTS, gating_prior_config, normalize_gating

    gating = normalize_gating(section, where)
    if gating["enabled"] and gating["between_steps"]:
        wanted = gating_prior_config(gating)
        prior = model.get("path_prior", "uniform")
        if isinstance(prior, dict) and prior.get("kind") == "gating":
            have = {k: prior.get(k, GATING_DEFAULTS[k]) for k in ("hidden", "kernel_size")}
            if dict(have, kind="gating") != wanted:
                raise ValueError(f"{where}: model.path_prior {prior} disagrees with the gating "
                                 "section's hidden/kernel_size")
        elif prior not in ("uniform", None):
            raise ValueError(f"{where}: gating.between_steps > 0 trains the model with gating "
                             f"networks as its path prior; model.path_prior is {prior!r}")
        model["path_prior"] = wanted
    return gating


def _dump_yaml(obj, path):
    import yaml

    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        yaml.safe_dump(obj, f, sort_keys=False, default_flow_style=None)
    os.replace(tmp, path)


def _dump_json(obj, path):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=_json_default)
        f.write("\n")
    os.replace(tmp, path)


def _json_default(o):
    import numpy as np

    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


# ---------------------------------------------------------------------- data

def load_data(data_cfg: dict, spec=None):
    """`tfdgmm.data.load_cifar10` with the config's limits; a clear error naming `--data`."""
    from tfdgmm.data import DataError, load_cifar10

    spec = spec or data_cfg.get("spec") or "tfds"
    try:
        return load_cifar10(
            spec, validation_size=int(data_cfg["validation_size"]),
            train_limit=data_cfg.get("train_limit"),
            validation_limit=data_cfg.get("validation_limit"),
            test_limit=data_cfg.get("test_limit"))
    except DataError as e:
        tfds = spec in ("tfds",) or str(spec).startswith("tfds:")
        hint = ("" if not tfds or "--data" in str(e) else
                " Pass a local copy of CIFAR-10 with --data PATH (a directory holding train.npz "
                "+ test.npz, e.g. ../shared/data/cifar10-jpeg75, or the official batches).")
        raise DataLoadError(f"could not load the data ({spec}): {e}{hint}") from e


def _dequantized(split, data_cfg):
    return split.dequantized(int(data_cfg["noise_seed"]))


def _train_images(split, data_cfg):
    """Fixed noise: an array. Per-iteration noise: a callable `t -> images` (stateless)."""
    if data_cfg["dequantize"] == "fixed":
        return _dequantized(split, data_cfg)
    import numpy as np

    from tfdgmm.data import dequantize

    seed = int(data_cfg["noise_seed"])

    def images(t):
        rng = np.random.default_rng([seed, 0x17E2, int(t)])
        return dequantize(split.images, rng.random(split.images.shape))

    return images


def _bpd_fn(num_dims):
    from tfdgmm.units import nats_to_bits_per_dim

    return functools.partial(nats_to_bits_per_dim, num_dims=num_dims)


# ---------------------------------------------------------------------- train

class _Tee:
    """Log lines to stdout and to the run's `train.log`."""

    def __init__(self, path):
        self._path = path

    def __call__(self, line):
        print(line, flush=True)
        with open(self._path, "a") as f:
            f.write(line + "\n")


def _model_summary(model):
    import math

    n = model.num_paths
    return {
        "num_parameters": model.num_parameters(),
        "num_paths": str(n) if n < 10 ** 15 else f"{n:.6e}",
        "log10_num_paths": model.log_num_paths / math.log(10),
        "num_layers": len(model.layers),
        "layer_alternatives": [int(k) for k, _ in model.layer_specs],
        "path_prior": type(model.path_prior).__name__,
    }


def train_run(config: dict, out_dir: str, data_spec=None, resume=False, argv=None,
              figures=True, hooks=(), log=None, strategy="default"):
    """Train from a normalised run config into `out_dir`; returns the metrics dict.

    `strategy`: `'default' | 'mirrored' | 'multiworker'` or a `tf.distribute` strategy (see
    `tfdgmm.training.distribute`); the model is built under its scope.

    Steps: load the data, build the model, `EMTrainer.fit` (resumable), final bounds (train and
    validation: one more warm-started E-step; test: a fresh search), `metrics.json`, figures.
    """
    import tensorflow as tf

    import tfdgmm
    from tfdgmm.training import EMConfig, EMTrainer, figures as figs

    wall_start = time.monotonic()
    os.makedirs(out_dir, exist_ok=True)
    log = log or _Tee(os.path.join(out_dir, "train.log"))
    config_path = os.path.join(out_dir, "config.yaml")
    if resume and os.path.exists(config_path):
        saved = load_run_config(config_path)
        if config is not None and (saved["model"] != config["model"]
                                   or saved["training"] != config["training"]):
            raise ValueError(f"--resume: {config_path} differs from the given config in its "
                             "model or training section; resume with the saved config (omit "
                             "--config) or train into a new directory")
        config = saved
    if config is None:
        raise ValueError("no config: pass --config FILE (or --resume a run directory)")
    data_cfg = config["data"]
    if data_spec:
        data_cfg = dict(data_cfg, spec=data_spec)
        config = dict(config, data=data_cfg)
    _dump_yaml(config, config_path)
    command = " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv))
    with open(os.path.join(out_dir, "command.txt"), "a") as f:
        f.write(command + "\n")

    splits = load_data(data_cfg)
    log(f"data: {splits.describe()}")
    train_split, val_split, test_split = splits.train, splits.validation, splits.test
    num_dims = train_split.num_dims
    to_bpd = _bpd_fn(num_dims)

    from tfdgmm.training import distribute

    if strategy is None or isinstance(strategy, str):
        strategy = distribute.make_strategy(strategy)
    from tfdgmm.training.summaries import device_report

    log(device_report(strategy))
    with distribute.scope(strategy):
        model = tfdgmm.DeepGMM.from_config(config["model"])
    summary = _model_summary(model)
    log(f"model: {summary['num_layers']} layers, {summary['num_parameters']:,} parameters, "
        f"{summary['num_paths']} paths")
    em_cfg = EMConfig.from_dict(config["training"])
    gating_hooks = _gating_hooks(config, log)
    hooks = tuple(hooks) + gating_hooks
    trainer = EMTrainer(model, em_cfg, _train_images(train_split, data_cfg),
                        _dequantized(val_split, data_cfg), out_dir, nats_to_bpd=to_bpd,
                        hooks=hooks, log=log, strategy=strategy)
    train_start = time.monotonic()
    history = trainer.fit(resume=resume)
    train_seconds = time.monotonic() - train_start

    log("final bounds: training and validation (one more E-step from the stored paths)")
    eval_start = time.monotonic()
    results = {"train": trainer.refine("train"), "validation": trainer.refine("validation")}
    if test_split is not None and data_cfg.get("evaluate_test", True):
        log(f"final bounds: test ({len(test_split)} images, fresh search with "
            f"{em_cfg.eval_restarts} restarts)")
        results["test"] = trainer.evaluate(_dequantized(test_split, data_cfg), label="test")
    eval_seconds = time.monotonic() - eval_start
    for name, r in results.items():
        log(f"  {name:10s} LB {r['lower_bound_nats']:9.2f} nats ({r['lower_bound_bits_per_dim']:.3f}"
            f" bits/dim)  UB* {r['upper_bound_nats']:9.2f} nats "
            f"({r['upper_bound_bits_per_dim']:.3f} bits/dim)")

    figure_paths = {}
    if figures:
        fig_dir = os.path.join(out_dir, "figures")
        os.makedirs(fig_dir, exist_ok=True)
        p = os.path.join(fig_dir, "samples.png")
        figs.save_samples(model, p, n=64, seed=0,
                          title=f"samples ({config.get('description') or 'deep GMM'})")
        figure_paths["samples"] = p
        p = os.path.join(fig_dir, "filters.png")
        figs.save_filters(model, p)
        figure_paths["filters"] = p
        baseline = _known_baseline(out_dir, data_cfg)
        p = os.path.join(fig_dir, "training_curve.png")
        figs.save_training_curve(history, p, nats_to_bpd=to_bpd, baseline=baseline,
                                 title=f"training curve ({config.get('description') or 'deep GMM'})")
        figure_paths["training_curve"] = p
        log(f"figures: {', '.join(figure_paths.values())}")
        if trainer.write_dir == out_dir:  # the chief: the figures in TensorBoard's Images tab
            from tfdgmm.training.summaries import Summaries

            images = Summaries(os.path.join(out_dir, "tensorboard"))
            for name, fig_path in figure_paths.items():
                images.image(len(history), f"figures/{name}", fig_path)
            images.close()

    gating_block = None
    if (config.get("gating") or {}).get("enabled"):
        gating_block = gate_run(
            config, model, trainer, results, out_dir,
            test_images=(_dequantized(test_split, data_cfg) if "test" in results else None),
            nats_to_bpd=to_bpd, figures=figures, between=gating_hooks, log=log)

    state = trainer.state
    metrics = {
        "command": command,
        "config": config,
        "data": {"source": splits.source, "notes": list(splits.notes),
                 "num_images": {n: len(s) for n, s in splits.items()}, "num_dims": num_dims,
                 "noise_seed": data_cfg["noise_seed"], "dequantize": data_cfg["dequantize"]},
        "model": summary,
        "splits": results,
        "best_em_iteration": int(state.best_iteration.numpy()) + 1,
        "em_iterations_run": trainer.em_iteration,
        "rollbacks": int(state.rollbacks.numpy()),
        "replicas": trainer.num_replicas,
        "history": history,
        "wall_time_seconds": {
            "training_total": trainer.elapsed(),
            "training_this_session": train_seconds,
            "final_evaluation": eval_seconds,
            "session_total": time.monotonic() - wall_start,
        },
        "figures": figure_paths,
        "versions": {"tfdgmm": tfdgmm.__version__, "tensorflow": tf.__version__,
                     "tensorflow_probability": _tfp_version()},
        "units": "mean log-likelihood per image in nats on the data scale; bits/dim = "
                 "-log2(bin width) - LL / (D ln 2)",
    }
    if gating_block is not None:
        metrics["gating"] = gating_block
    path = os.path.join(out_dir, "metrics.json")
    _dump_json(metrics, path)
    log(f"metrics: {path}")
    return metrics


def _known_baseline(out_dir, data_cfg):
    """The Gaussian baseline's nats per split, when `tfdgmm baseline --out RUN_DIR` wrote a
    `baseline.json` into the run directory for the same noise seed; else None."""
    path = os.path.join(out_dir, "baseline.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            result = json.load(f)
        if result.get("noise_seed", 0) != data_cfg.get("noise_seed", 0):
            return None
        return {name: float(r["nats"]) for name, r in result["splits"].items()}
    except (OSError, ValueError, KeyError, TypeError):
        return None


# ---------------------------------------------------------------------- gating

GATED_DIR = "gated"


def _gating_hooks(config, log):
    """`(GatingBetweenSteps,)` when the config asks for gating between E- and M-steps."""
    gating = config.get("gating") or {}
    if not (gating.get("enabled") and gating.get("between_steps")):
        return ()
    from tfdgmm.training.gating import GatingBetweenSteps

    return (GatingBetweenSteps(gating["between_steps"], gating["batch_size"],
                               gating["learning_rate"], gating["seed"], log=log),)


def _bounds_record(lower, upper, num_images, seconds, nats_to_bpd):
    out = {"num_images": num_images, "lower_bound_nats": lower, "upper_bound_nats": upper,
           "seconds": seconds}
    if nats_to_bpd is not None:
        out["lower_bound_bits_per_dim"] = float(nats_to_bpd(lower))
        out["upper_bound_bits_per_dim"] = float(nats_to_bpd(upper))
    return out


def gate_run(config, model, trainer, results, out_dir, test_images=None, nats_to_bpd=None,
             figures=True, between=(), log=print):
    """Gating networks after EM (paper, section 3): the paper's method, on a trained run.

    1. `gated = with_gating(model)` (sharing the trained layers; warm-started from the model's
       own gating networks when it has some), fitted by `fit_gating` on the training images
       and their paths from the last E-step (`trainer.train_search`, refined by
       `trainer.refine('train')` with the final model) with the layers frozen.
    2. Bounds with the gated prior: training and validation by a search warm-started from the
       stored paths (1 pass, then `eval_restarts` random restarts), so each image's gated
       lower bound is at least its stored path's gated joint; test (`test_images`) by a fresh
       search with the settings of the ungated test bounds.
    3. The gated model as a run directory `out_dir/gated/`: `config.yaml` (the run config with
       `model.path_prior: {kind: gating, hidden, kernel_size}`), `best/` (its checkpoint),
       `metrics.json`, `figures/samples.png`.

    Returns the `gating` block of the run's `metrics.json`.
    """
    import tensorflow as tf

    from tfdgmm.training import evaluate_bounds
    from tfdgmm.training import figures as figs
    from tfdgmm.training import gating

    settings = config["gating"]
    em = trainer.config
    train, val = trainer.train_search, trainer.validation_search
    gated = gating.gated_copy(model, settings)
    block = {"settings": dict(settings), "run_dir": GATED_DIR, "fit": {}}
    fit_info = block["fit"]
    if val is not None:
        fit_info["validation_neg_log_prior_before"] = gating.mean_neg_log_prior(
            gated, val.data, val.path())
    log(f"gating: fitting gating networks (hidden {settings['hidden']}, kernel "
        f"{settings['kernel_size']}) on the last E-step's paths of {train.num_images} training "
        f"images: {settings['steps']} updates of {settings['batch_size']}")
    start = time.monotonic()
    fit = gating.fit_gating(gated, train.data, train.path(), steps=settings["steps"],
                            batch_size=settings["batch_size"],
                            learning_rate=settings["learning_rate"], seed=settings["seed"],
                            log_every=max(1, settings["steps"] // 5), log=log)
    tail = fit["loss"][-min(len(fit["loss"]), 100):]
    fit_info.update(steps=settings["steps"], seconds=time.monotonic() - start,
                    train_neg_log_prior_before=fit["nats_before"],
                    train_neg_log_prior_after=fit["nats_after"],
                    loss_first=fit["loss"][0], loss_last_mean=sum(tail) / len(tail))
    if val is not None:
        fit_info["validation_neg_log_prior_after"] = gating.mean_neg_log_prior(
            gated, val.data, val.path())
    log(f"gating: -log pi of the training paths {fit['nats_before']:.3f} -> "
        f"{fit['nats_after']:.3f} nats/image"
        + (f", validation {fit_info['validation_neg_log_prior_before']:.3f} -> "
           f"{fit_info['validation_neg_log_prior_after']:.3f}" if val is not None else "")
        + f" ({fit_info['seconds']:.1f} s)")
    for hook in between:
        block.setdefault("between_steps_this_session", []).extend(hook.history)

    splits = {}
    named = [(name, s) for name, s in (("train", train), ("validation", val)) if s is not None]
    t0 = time.monotonic()
    found = gating.gated_search_bounds(gated, [s for _, s in named], restarts=em.eval_restarts,
                                       seed=em.seed + 611953)
    block["bounds_seconds"] = time.monotonic() - t0  # training and validation together
    for (name, search), (lower, upper) in zip(named, found):
        splits[name] = _bounds_record(lower, upper, search.num_images, None, nats_to_bpd)
    if test_images is not None:
        log(f"gating: test bounds ({len(test_images)} images, fresh search with "
            f"{em.eval_restarts} restarts)")
        splits["test"] = evaluate_bounds(
            gated, test_images, batch_size=em.estep_batch_size, restarts=em.eval_restarts,
            location_method=em.location_method, location_options=em.location_options,
            seed=em.seed + 104729, nats_to_bpd=nats_to_bpd, log=log, label="test (gated)")
    block["splits"] = splits
    block["lower_bound_gain_nats"] = {
        name: r["lower_bound_nats"] - results[name]["lower_bound_nats"]
        for name, r in splits.items() if name in results}
    for name, r in splits.items():
        bpd = (f" ({r['lower_bound_bits_per_dim']:.3f} bits/dim)"
               if "lower_bound_bits_per_dim" in r else "")
        log(f"  gated {name:10s} LB {r['lower_bound_nats']:9.2f} nats{bpd}  UB* "
            f"{r['upper_bound_nats']:9.2f} nats  (LB gain "
            f"{block['lower_bound_gain_nats'].get(name, float('nan')):+.2f})")

    gated_dir = os.path.join(out_dir, GATED_DIR)
    os.makedirs(gated_dir, exist_ok=True)
    gated_config = copy.deepcopy(config)
    gated_config["model"]["path_prior"] = gating.gating_prior_config(settings)
    gated_config["gating"] = dict(settings, enabled=False, between_steps=0)
    gated_config["description"] = (
        (config.get("description") or "deep GMM") + "; gating networks fitted after EM on the "
        "last E-step's paths (the run directory above, its metrics.json 'gating' block)")
    _dump_yaml(gated_config, os.path.join(gated_dir, "config.yaml"))
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=gated),
                                         os.path.join(gated_dir, "best"), max_to_keep=1)
    block["checkpoint"] = manager.save()
    if figures:
        fig = os.path.join(gated_dir, "figures", "samples.png")
        os.makedirs(os.path.dirname(fig), exist_ok=True)
        figs.save_samples(gated, fig, n=64, seed=0, title="samples with gating networks")
        block["figures"] = {"samples": fig}
    _dump_json({"source_run": os.path.abspath(out_dir), "config": gated_config,
                "splits": splits, "gating": block}, os.path.join(gated_dir, "metrics.json"))
    log(f"gating: gated model in {gated_dir} (tfdgmm evaluate|sample|export {gated_dir})")
    return block


def _tfp_version():
    import tensorflow_probability as tfp

    return tfp.__version__


# ---------------------------------------------------------------------- other commands

def _check_run_dir(run_dir):
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"no run directory at {run_dir} (train one with `tfdgmm train "
                                f"--config FILE --out {run_dir}`)")
    if not os.path.isfile(os.path.join(run_dir, "config.yaml")):
        raise FileNotFoundError(f"{run_dir} is not a run directory: it has no config.yaml "
                                "(written by `tfdgmm train`)")


def _run_model(run_dir):
    """`(run config, model with its best weights, checkpoint prefix)` of a run directory."""
    from tfdgmm.export import load_run_model

    _check_run_dir(run_dir)
    config = load_run_config(os.path.join(run_dir, "config.yaml"))
    model, ckpt = load_run_model(run_dir)
    return config, model, ckpt


def evaluate_run(run_dir, split="validation", data_spec=None, restarts=None, batch_size=None,
                 log=print):
    """Bounds of a trained run on one or all splits, by a fresh search; writes
    `RUN_DIR/evaluation-SPLIT.json` and returns the results."""
    from tfdgmm.training import EMConfig, evaluate_bounds

    config, model, ckpt = _run_model(run_dir)
    em = EMConfig.from_dict(config["training"])
    splits = load_data(config["data"], data_spec)
    names = ["train", "validation", "test"] if split == "all" else [split]
    out = {"checkpoint": ckpt, "data": splits.source, "splits": {}}
    for name in names:
        s = getattr(splits, name)
        if s is None:
            raise DataLoadError(f"{splits.source} has no {name} split")
        log(f"evaluating {name} ({len(s)} images) with {ckpt}")
        r = evaluate_bounds(
            model, _dequantized(s, config["data"]), batch_size=batch_size or em.estep_batch_size,
            restarts=em.eval_restarts if restarts is None else restarts,
            location_method=em.location_method, location_options=em.location_options,
            seed=em.seed + 104729, nats_to_bpd=_bpd_fn(s.num_dims), log=log, label=name)
        out["splits"][name] = r
        log(f"  {name}: LB {r['lower_bound_nats']:.2f} nats "
            f"({r['lower_bound_bits_per_dim']:.3f} bits/dim), UB* {r['upper_bound_nats']:.2f} "
            f"nats ({r['upper_bound_bits_per_dim']:.3f} bits/dim)")
    _dump_json(out, os.path.join(run_dir, f"evaluation-{split}.json"))
    return out


def sample_run(run_dir, n=64, seed=0, out=None):
    from tfdgmm.training import figures

    _, model, ckpt = _run_model(run_dir)
    out = out or os.path.join(run_dir, "figures", f"samples-seed{seed}.png")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    figures.save_samples(model, out, n=n, seed=seed)
    return out


def baseline_run(data_spec=None, out_dir=None, noise_seed=0, train_limit=None,
                 validation_limit=None, test_limit=None, validation_size=10_000, jitter=0.0,
                 log=print):
    """The closed-form full-covariance Gaussian on the same data and protocol."""
    from tfdgmm.gaussian import run_gaussian_baseline

    data_cfg = dict(DATA_DEFAULTS, train_limit=train_limit, validation_limit=validation_limit,
                    test_limit=test_limit, validation_size=validation_size,
                    noise_seed=noise_seed)
    splits = load_data(data_cfg, data_spec)
    log(f"data: {splits.describe()}")
    result = run_gaussian_baseline(splits, noise_seed=noise_seed, jitter=jitter)
    result["data"] = splits.source
    for name, r in result["splits"].items():
        log(f"  {name:10s} {r['nats']:9.1f} nats  {r['bits_per_dim']:.3f} bits/dim  "
            f"({r['num_images']} images)")
    log(f"  ({result['seconds']:.1f} s)")
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        _dump_json(result, os.path.join(out_dir, "baseline.json"))
    return result


def export_command(run_dir, out_dir, which="best", restarts=2, restart_passes=2, seed=(0, 0),
                   location_method="auto", overwrite=False, log=print):
    """`tfdgmm export`: `tfdgmm.export.export_run` with the E-step settings of the exported
    `best_path` / bounds functions (see `tfdgmm.export.search_settings`). Returns `out_dir`."""
    from tfdgmm import export

    search = export.search_settings(restarts=restarts, restart_passes=restart_passes,
                                    location_method=location_method, seed=list(seed))
    try:
        path = export.export_run(run_dir, out_dir, which=which, search=search,
                                 overwrite=overwrite)
    except FileExistsError as err:
        raise FileExistsError(str(err).replace("pass overwrite=True", "pass --overwrite")) \
            from err
    log(f"exported {run_dir} ({which}) to {path} (search: {restarts} restarts x "
        f"{restart_passes} passes, seed {list(seed)})")
    return path


def tune_command(config_path, out_dir, max_trials, tuner="random", data_spec=None,
                 overrides=(), space=None, max_epochs=None, factor=3, seed=0, overwrite=False,
                 verbose=True, log=print):
    """`tfdgmm tune`: a keras-tuner search (`tfdgmm.training.tuner.tune`) whose trials train
    the config's model family on the config's data; `out_dir` is the tuner's project
    directory (trials in `out_dir/trial_ID/`, each a run directory; `out_dir/best.json`).
    Returns the summary of the best trial."""
    import yaml

    from tfdgmm.training import tuner as tuning

    with open(config_path) as f:
        raw = yaml.safe_load(f)
    if not isinstance(raw, dict):
        raise ValueError(f"{config_path}: a run config must be a mapping")
    base = tuning.normalize_base_config(apply_overrides(raw, overrides))
    if isinstance(space, str):
        space = yaml.safe_load(space)
    if space is not None and not isinstance(space, dict):
        raise ValueError("--space expects a YAML mapping, e.g. '{bd_layers: [1, 2]}'")
    space = {k: tuple(v) if k == "learning_rate" and isinstance(v, list) and len(v) == 2
             else v for k, v in (space or {}).items()}  # [low, high]: a log-uniform range
    if data_spec:
        base["data"] = dict(base["data"], spec=data_spec)
    splits = load_data(base["data"])
    log(f"data: {splits.describe()}")
    out_dir = os.path.abspath(out_dir)
    t = tuning.tune(base, _train_images(splits.train, base["data"]),
                    _dequantized(splits.validation, base["data"]), max_trials=max_trials,
                    tuner=tuner, directory=os.path.dirname(out_dir),
                    project_name=os.path.basename(out_dir), space=space, seed=seed,
                    max_epochs=max_epochs, factor=factor, overwrite=overwrite, verbose=verbose)
    summary = t.write_summary()
    if summary is None:
        raise ValueError(f"{out_dir}: no trial completed (see the trials' train.log)")
    log(f"best trial {summary['trial_id']}: validation lower bound "
        f"{summary['val_lower_bound']:.2f} nats; run directory {summary['run_dir']}")
    log(f"export it with: tfdgmm export {summary['run_dir']} saved_models/NAME")
    return summary


# ---------------------------------------------------------------------- argparse

def _version():
    from tfdgmm import __version__

    return __version__


def _parser():
    p = argparse.ArgumentParser(
        prog="tfdgmm", description="Deep GMMs with locally-connected transformations.")
    p.add_argument("--version", action="version", version=f"tfdgmm {_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a deep GMM by hard EM")
    t.add_argument("--config", help="run config (YAML or JSON); optional with --resume")
    t.add_argument("--data", help="data spec: 'tfds', a directory (train.npz + test.npz, or "
                                  "the official batches) or a .npz (overrides data.spec)")
    t.add_argument("--out", required=True, help="run directory")
    t.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set training.em_iterations=3")
    t.add_argument("--no-figures", action="store_true",
                   help="skip the PNG figures (samples, filters, training curve) at the end")
    t.add_argument("--strategy", default="default", choices=["default", "mirrored", "multiworker"],
                   help="tf.distribute: one device (default), all local GPUs (mirrored) or "
                        "the workers of TF_CONFIG (multiworker)")

    e = sub.add_parser("evaluate", help="bounds of a trained run by a fresh E-step")
    e.add_argument("run_dir")
    e.add_argument("--split", default="validation",
                   choices=["train", "validation", "test", "all"],
                   help="which split of the run's data to evaluate (default: validation)")
    e.add_argument("--data", help="data spec (default: the run's)")
    e.add_argument("--restarts", type=int, help="random restarts (default: eval_restarts)")
    e.add_argument("--batch-size", type=int,
                   help="images per E-step batch (default: the run's estep_batch_size)")

    s = sub.add_parser("sample", help="a PNG grid of samples from a trained run")
    s.add_argument("run_dir")
    s.add_argument("--n", type=int, default=64, help="number of samples (default 64)")
    s.add_argument("--seed", type=int, default=0,
                   help="sampling seed; the same seed gives the same images (default 0)")
    s.add_argument("--out", help="PNG path (default RUN_DIR/figures/samples-seedS.png)")

    b = sub.add_parser("baseline", help="closed-form full-covariance Gaussian baseline")
    b.add_argument("--data", help="data spec (default 'tfds')")
    b.add_argument("--out", help="directory for baseline.json")
    b.add_argument("--noise-seed", type=int, default=0,
                   help="seed of the fixed dequantization noise (default 0, as training runs)")
    b.add_argument("--train-limit", type=int, help="use only the first N training images")
    b.add_argument("--validation-limit", type=int,
                   help="use only the first N validation images")
    b.add_argument("--test-limit", type=int, help="use only the first N test images")
    b.add_argument("--validation-size", type=int, default=10_000,
                   help="the last N images of the training file are the validation split "
                        "(default 10000, the paper's protocol)")
    b.add_argument("--jitter", type=float, default=0.0,
                   help="added to the covariance diagonal; > 0 when there are fewer training "
                        "images than dimensions (default 0: the exact ML fit)")

    x = sub.add_parser("export", help="write a run's model as a TensorFlow SavedModel "
                                      "(usable without tfdgmm)")
    x.add_argument("run_dir")
    x.add_argument("out_dir", help="SavedModel directory, e.g. saved_models/NAME")
    x.add_argument("--which", default="best", choices=["best", "latest"],
                   help="best/ (default; falls back to the latest checkpoint) or latest")
    x.add_argument("--restarts", type=int, default=2,
                   help="random starts of the exported E-step search")
    x.add_argument("--restart-passes", type=int, default=2,
                   help="coordinate-ascent passes per start")
    x.add_argument("--location-method", default="auto",
                   help="per-location search scheme (tfdgmm.path_search.LOCATION_METHODS)")
    x.add_argument("--seed", type=int, nargs=2, default=[0, 0], metavar=("A", "B"),
                   help="the fixed stateless seed of the exported search")
    x.add_argument("--overwrite", action="store_true", help="replace an existing SavedModel")

    u = sub.add_parser("tune", help="keras-tuner hyperparameter search of EM-trained models")
    u.add_argument("--config", required=True,
                   help="base run config (model.image_shape, training, data; the search space "
                        "sets the layers, patch size and learning rate)")
    u.add_argument("--max-trials", type=int, required=True,
                   help="number of trials (an upper bound for hyperband)")
    u.add_argument("--tuner", default="random", choices=["random", "bayesian", "hyperband"],
                   help="keras-tuner oracle (default random; bayesian needs the tune extra)")
    u.add_argument("--data", help="data spec (overrides data.spec)")
    u.add_argument("--out", required=True, help="project directory (trials, best.json)")
    u.add_argument("--space", help="YAML mapping overriding the default search space, e.g. "
                                   "'{bd_layers: [1, 2], blocks: [unshared], "
                                   "learning_rate: [1.0e-4, 1.0e-2]}'")
    u.add_argument("--max-epochs", type=int,
                   help="hyperband: EM iterations of the longest trials (default: "
                        "training.em_iterations)")
    u.add_argument("--factor", type=int, default=3, help="hyperband's reduction factor")
    u.add_argument("--seed", type=int, default=0, help="the oracle's seed")
    u.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a base config value")
    u.add_argument("--overwrite", action="store_true",
                   help="start a new search in an existing project directory")
    u.add_argument("--quiet", action="store_true", help="no training logs of the trials")
    return p


class _NoRetracingWarning:
    """Drop TensorFlow's retracing warning: evaluation searches are traced on purpose."""

    @staticmethod
    def filter(record):
        return "triggered tf.function retracing" not in record.getMessage()


def _import_tensorflow_quietly():
    """Import TensorFlow with its start-up log lines silenced.

    `TF_CPP_MIN_LOG_LEVEL` must be set before TensorFlow is imported, and some C++ lines
    (absl's "All log messages before absl::InitializeLog()", oneDNN and CUDA notices, a failed
    `cuInit` without a GPU) ignore it: stderr is redirected while TensorFlow loads and lists
    its devices (Python errors still show: they are raised after it is restored).
    `TFDGMM_VERBOSE_TF=1` keeps everything.
    """
    if "tensorflow" in sys.modules or os.environ.get("TFDGMM_VERBOSE_TF") == "1":
        import tensorflow  # noqa: F401
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (e.g. captured): nothing to silence
        import tensorflow  # noqa: F401
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            import tensorflow as tf
            import tensorflow_probability  # noqa: F401

            # the first device query initialises CUDA, which logs an error on machines
            # without a GPU; the run's device report says what was found
            tf.config.list_physical_devices()
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _quiet_tensorflow():
    _import_tensorflow_quietly()
    import tensorflow as tf

    logger = tf.get_logger()
    if not any(isinstance(f, _NoRetracingWarning) for f in logger.filters):
        logger.addFilter(_NoRetracingWarning())


def main(argv=None):
    """Entry point of the `tfdgmm` command (and `python -m tfdgmm`). Returns an exit code.

    Arguments are parsed before TensorFlow is imported (`--help` and `--version` are
    instant, and TensorFlow's log level is set before it loads)."""
    args = _parser().parse_args(argv)
    full_argv = ["tfdgmm"] + list(sys.argv[1:] if argv is None else argv)
    _quiet_tensorflow()
    import tfdgmm

    tfdgmm.load_all()
    try:
        if args.command == "train":
            config = load_run_config(args.config, args.set) if args.config else None
            if config is None and not args.resume:
                raise ValueError("train needs --config FILE (or --resume with an existing run)")
            if config is None and args.set:
                raise ValueError("--set needs --config")
            train_run(config, args.out, data_spec=args.data, resume=args.resume,
                      argv=full_argv, figures=not args.no_figures, strategy=args.strategy)
        elif args.command == "evaluate":
            evaluate_run(args.run_dir, args.split, args.data, args.restarts, args.batch_size)
        elif args.command == "sample":
            print(sample_run(args.run_dir, args.n, args.seed, args.out))
        elif args.command == "baseline":
            baseline_run(args.data, args.out, args.noise_seed, args.train_limit,
                         args.validation_limit, args.test_limit, args.validation_size,
                         args.jitter)
        elif args.command == "export":
            export_command(args.run_dir, args.out_dir, args.which, args.restarts,
                           args.restart_passes, args.seed, args.location_method, args.overwrite)
        elif args.command == "tune":
            tune_command(args.config, args.out, args.max_trials, args.tuner, args.data, args.set,
                         args.space, args.max_epochs, args.factor, args.seed, args.overwrite,
                         verbose=not args.quiet)
    except (DataLoadError, FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"tfdgmm {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
