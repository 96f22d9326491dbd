"""`train_run`: one training run into a run directory."""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from typing import TYPE_CHECKING

from tfdgmm import layout
from tfdgmm.runs.config import load_run_config
from tfdgmm.runs.data import bpd_fn, dequantized, load_data, train_images
from tfdgmm.runs.gating import gate_run, gating_hooks
from tfdgmm.runs.io import Tee, dump_json, dump_yaml
from tfdgmm.runs.lock import RunLock

if TYPE_CHECKING:
    from collections.abc import Sequence

    from tfdgmm.deep_gmm import DeepGMM
    from tfdgmm.training.em import EMTrainer
    from tfdgmm.types import Config, Hook, Log, PathLike, Strategy

__all__ = [
    "train_run",
    "check_run",
    "has_checkpoints",
    "model_summary",
    "known_baseline",
    "SCHEDULE_KEYS",
]


def model_summary(model: DeepGMM) -> dict:
    import math

    n = model.num_paths
    return {
        "num_parameters": model.num_parameters(),
        "num_paths": str(n) if n < 10**15 else f"{n:.6e}",
        "log10_num_paths": model.log_num_paths / math.log(10),
        "num_layers": len(model.layers),
        "layer_alternatives": [int(k) for k, _ in model.layer_specs],
        "path_prior": type(model.path_prior).__name__,
    }


#: `training` keys that `--resume` may change (the schedule, and how the E-step searches;
#: recorded in metrics.json): the model and data sections, and every other training key, must
#: match the saved config.
SCHEDULE_KEYS = (
    "em_iterations",
    "learning_rate",
    "lr_em_decay",
    "lr_min_factor",
    "lr_final_updates",
    "lr_final_factor",
    "lr_warmup_updates",
    "hc_learning_rate",
    "nan_lr_factor",
    "divergence_nats",
    "max_rollbacks",
    "early_stopping_patience",
    "early_stopping_min_delta",
    "checkpoint_interval_seconds",
    "progress_interval_seconds",
    "eval_restarts",
    "estep_init_passes",
    "estep_restarts",
    "estep_restart_passes",
    "estep_restart_when",
    "estep_extra_passes",
    "estep_extra_pass_gain",
    "location_method",
    "location_options",
)


def has_checkpoints(out_dir: PathLike) -> bool:
    """True when `out_dir/checkpoints/` holds anything a trainer wrote (without reading it)."""
    directory = layout.path(out_dir, layout.CHECKPOINTS)
    return os.path.isdir(directory) and any(
        name == layout.STATE_FILE or name.startswith("ckpt-") for name in os.listdir(directory)
    )


def check_run(
    config: Config | None,
    out_dir: PathLike,
    data_spec: str | None = None,
    resume: bool = False,
    refuse_existing: bool = True,
) -> tuple[Config, list]:
    """Decide, without writing anything, whether `config` may train into `out_dir`.

    Returns `(config to train, {'training.KEY': (saved, new)} schedule changes)`; raises
    `FileExistsError` / `ValueError` with one line saying what to do instead. On `resume`, the
    saved `config.yaml` is the reference: the model and data sections must match (the data
    source `data.spec` may move), the training section may change only in `SCHEDULE_KEYS`.
    """
    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise FileExistsError(f"--out {out_dir} exists and is not a directory")
    config_path = os.path.join(out_dir, layout.CONFIG)
    changes = {}
    if not resume and refuse_existing and has_checkpoints(out_dir):
        raise FileExistsError(
            f"{out_dir} already holds checkpoints ({layout.CHECKPOINTS}/); resume with "
            "--resume, or choose a new output directory (nothing in it was changed)"
        )
    if resume and os.path.exists(config_path):
        saved = load_run_config(config_path)
        if config is not None:
            if saved["model"] != config["model"]:
                raise ValueError(
                    f"--resume: the model section differs from {config_path}; "
                    "resume with the saved config (omit --config) or train into a "
                    "new directory"
                )
            strip = [{k: v for k, v in c["data"].items() if k != "spec"} for c in (saved, config)]
            if strip[0] != strip[1]:
                keys = sorted(
                    k for k in set(strip[0]) | set(strip[1]) if strip[0].get(k) != strip[1].get(k)
                )
                raise ValueError(
                    f"--resume: the data section differs from {config_path} in "
                    f"{keys}; resume with the saved config (omit --config) or "
                    "train into a new directory"
                )
            old, new = saved["training"], config["training"]
            differ = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            fixed = [k for k in differ if k not in SCHEDULE_KEYS]
            if fixed:
                raise ValueError(
                    f"--resume: training {fixed} differ from {config_path}; only "
                    f"the schedule ({', '.join(SCHEDULE_KEYS)}) may change on "
                    "resume"
                )
            changes = {f"training.{k}": (old.get(k), new.get(k)) for k in differ}
            config = dict(
                saved,
                training=new,
                **{k: config[k] for k in ("gating", "description") if k in config},
            )
        else:
            config = saved
    if config is None:
        raise ValueError("no config: pass --config FILE (or --resume a run directory)")
    if data_spec:
        config = dict(config, data=dict(config["data"], spec=data_spec))
    return config, changes


def train_run(
    config: dict,
    out_dir: str,
    data_spec: str | None = None,
    resume: bool = False,
    argv: Sequence[str] | None = None,
    figures: bool = True,
    hooks: Sequence[Hook] = (),
    log: Log | None = None,
    strategy: str = "default",
) -> dict:
    """Train from a normalised run config into `out_dir`; returns the metrics dict.

    `strategy`: `'default' | 'mirrored' | 'multiworker'` or a `tf.distribute` strategy (see
    `tfdgmm.training.distribute`); the model is built under its scope.

    Steps: load the data, build the model, `EMTrainer.fit` (resumable), final bounds (train and
    validation: one more warm-started E-step; test: a fresh search), `metrics.json`, figures.
    """
    wall_start = time.monotonic()
    # check first (nothing in out_dir is written by a refused run), lock, check again under
    # the lock, and only then write
    # the chief owns the run directory; the other workers of a multi-worker run write to
    # temporary directories of their own (tfdgmm.training.distribute.worker_dir)
    owner = _owns_run_dir(strategy)
    config, changes = check_run(
        config, out_dir, data_spec=data_spec, resume=resume, refuse_existing=owner
    )
    os.makedirs(out_dir, exist_ok=True)
    lock = RunLock(out_dir, what="train", log=log or print)
    if owner:
        lock.acquire()
    try:
        config, changes = check_run(
            config, out_dir, data_spec=data_spec, resume=resume, refuse_existing=owner
        )
        return _train_locked(
            config, changes, out_dir, resume, argv, figures, hooks, log, strategy, wall_start, owner
        )
    finally:
        lock.release()


def _owns_run_dir(strategy: str | Strategy) -> bool:
    """False only for a non-chief worker of `strategy='multiworker'` (from TF_CONFIG)."""
    if strategy != "multiworker":
        return True
    try:
        cfg = json.loads(os.environ.get("TF_CONFIG") or "{}")
        task, cluster = cfg.get("task") or {}, cfg.get("cluster") or {}
        kind, index = task.get("type"), int(task.get("index", 0))
    except (ValueError, TypeError, AttributeError):
        return True  # an invalid TF_CONFIG is reported when the strategy is made
    return kind in (None, "chief") or (kind == "worker" and index == 0 and "chief" not in cluster)


def _train_locked(
    config: Config,
    changes: list,
    out_dir: PathLike,
    resume: bool,
    argv: Sequence[str] | None,
    figures: bool,
    hooks: Sequence[Hook],
    log: Log,
    strategy: str | Strategy,
    wall_start: float,
    owner: bool = True,
) -> dict:

    import tfdgmm
    from tfdgmm.training import EMConfig, EMTrainer
    from tfdgmm.training import figures as figs

    log = log or Tee(os.path.join(out_dir, layout.LOG))
    config_path = os.path.join(out_dir, layout.CONFIG)
    data_cfg = config["data"]
    command = " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv))
    if owner:  # (the chief's; another worker only reads the run directory)
        dump_yaml(config, config_path)
        with open(os.path.join(out_dir, layout.COMMAND), "a") as f:
            f.write(command + "\n")
    for key, (old, new) in changes.items():
        log(f"resume: {key} changed from {old!r} to {new!r}")

    splits = load_data(data_cfg)
    log(f"data: {splits.describe()}")
    train_split, val_split, test_split = splits.train, splits.validation, splits.test
    num_dims = train_split.num_dims
    to_bpd = bpd_fn(num_dims)

    from tfdgmm.training import distribute

    if strategy is None or isinstance(strategy, str):
        strategy = distribute.make_strategy(strategy)
    from tfdgmm.training.summaries import device_report

    log(device_report(strategy))
    with distribute.scope(strategy):
        model = tfdgmm.DeepGMM.from_config(config["model"])
    summary = model_summary(model)
    log(
        f"model: {summary['num_layers']} layers, {summary['num_parameters']:,} parameters, "
        f"{summary['num_paths']} paths"
    )
    em_cfg = EMConfig.from_dict(config["training"])
    between_hooks = gating_hooks(config, log)
    hooks = tuple(hooks) + between_hooks
    trainer = EMTrainer(
        model,
        em_cfg,
        train_images(train_split, data_cfg),
        dequantized(val_split, data_cfg),
        out_dir,
        nats_to_bpd=to_bpd,
        hooks=hooks,
        log=log,
        strategy=strategy,
    )
    train_start = time.monotonic()
    history = trainer.fit(resume=resume)
    train_seconds = time.monotonic() - train_start

    log("final bounds: training and validation (one more E-step from the stored paths)")
    eval_start = time.monotonic()
    results = {"train": trainer.refine("train"), "validation": trainer.refine("validation")}
    if test_split is not None and data_cfg.get("evaluate_test", True):
        log(
            f"final bounds: test ({len(test_split)} images, fresh search with "
            f"{em_cfg.eval_restarts} restarts)"
        )
        results["test"] = trainer.evaluate(dequantized(test_split, data_cfg), label="test")
    eval_seconds = time.monotonic() - eval_start
    for name, r in results.items():
        log(
            f"  {name:10s} LB {r['lower_bound_nats']:9.2f} nats "
            f"({r['lower_bound_bits_per_dim']:.3f}"
            f" bits/dim)  UB* {r['upper_bound_nats']:9.2f} nats "
            f"({r['upper_bound_bits_per_dim']:.3f} bits/dim)"
        )

    figure_paths = {}
    if figures:
        fig_dir = os.path.join(out_dir, layout.FIGURES)
        os.makedirs(fig_dir, exist_ok=True)
        p = os.path.join(fig_dir, "samples.png")
        figs.save_samples(
            model, p, n=64, seed=0, title=f"samples ({config.get('description') or 'deep GMM'})"
        )
        figure_paths["samples"] = p
        p = os.path.join(fig_dir, "filters.png")
        figs.save_filters(model, p)
        figure_paths["filters"] = p
        baseline = known_baseline(out_dir, data_cfg)
        p = os.path.join(fig_dir, "training_curve.png")
        figs.save_training_curve(
            history,
            p,
            nats_to_bpd=to_bpd,
            baseline=baseline,
            title=f"training curve ({config.get('description') or 'deep GMM'})",
        )
        figure_paths["training_curve"] = p
        log(f"figures: {', '.join(figure_paths.values())}")
        if trainer.write_dir == out_dir:  # the chief: the figures in TensorBoard's Images tab
            from tfdgmm.training.summaries import Summaries

            images = Summaries(os.path.join(out_dir, layout.TENSORBOARD))
            for name, fig_path in figure_paths.items():
                images.image(len(history), f"figures/{name}", fig_path)
            images.close()

    gating_block = None
    if (config.get("gating") or {}).get("enabled"):
        gating_block = gate_run(
            config,
            model,
            trainer,
            results,
            out_dir,
            test_images=(dequantized(test_split, data_cfg) if "test" in results else None),
            nats_to_bpd=to_bpd,
            figures=figures,
            between=between_hooks,
            log=log,
        )

    metrics = run_record(
        trainer,
        config,
        summary,
        results,
        history,
        wall_time={
            "training_total": trainer.elapsed(),
            "training_this_session": train_seconds,
            "final_evaluation": eval_seconds,
            "session_total": time.monotonic() - wall_start,
        },
        command=command,
        data={
            "source": splits.source,
            "notes": list(splits.notes),
            "num_images": {n: len(s) for n, s in splits.items()},
            "num_dims": num_dims,
            "noise_seed": data_cfg["noise_seed"],
            "dequantize": data_cfg["dequantize"],
        },
        figures=figure_paths,
    )
    if gating_block is not None:
        metrics["gating"] = gating_block
    previous = _previous_resume_changes(out_dir)
    if changes or previous:
        metrics["resume_changes"] = previous + [
            {"session_command": command, "changes": {k: list(v) for k, v in changes.items()}}
        ]
    path = os.path.join(out_dir, layout.METRICS)
    dump_json(metrics, path)
    log(f"metrics: {path}")
    return metrics


def run_record(
    trainer: EMTrainer,
    config: Config,
    model_summary: dict,
    splits: dict,
    history: list[dict],
    wall_time: dict,
    command: str | None = None,
    data: dict | None = None,
    figures: dict | None = None,
) -> dict:
    """The one `metrics.json` schema of a run directory (`train_run`, and each tuner trial,
    which adds its `tuner` block): `command`, `config`, `data`, `model`, `splits` (one
    `tfdgmm.training.bounds_record` per split), `best_em_iteration`, `em_iterations_run`,
    `rollbacks`, `replicas`, `history`, `wall_time_seconds`, `figures`, `versions`, `units`
    (`command`, `data` and `figures` only when given)."""
    import tensorflow as tf

    import tfdgmm

    state = trainer.state
    record = {} if command is None else {"command": command}
    record["config"] = config
    if data is not None:
        record["data"] = data
    record.update(
        {
            "model": model_summary,
            "splits": splits,
            "best_em_iteration": int(state.best_iteration.numpy()) + 1,
            "em_iterations_run": trainer.em_iteration,
            "rollbacks": int(state.rollbacks.numpy()),
            "replicas": trainer.num_replicas,
            "history": history,
            "wall_time_seconds": wall_time,
        }
    )
    if figures is not None:
        record["figures"] = figures
    record["versions"] = {
        "tfdgmm": tfdgmm.__version__,
        "tensorflow": tf.__version__,
        "tensorflow_probability": _tfp_version(),
    }
    record["units"] = (
        "mean log-likelihood per image in nats on the data scale; bits/dim = "
        "-log2(bin width) - LL / (D ln 2)"
    )
    return record


def _previous_resume_changes(out_dir: PathLike) -> list:
    try:
        with open(os.path.join(out_dir, layout.METRICS)) as f:
            return list(json.load(f).get("resume_changes") or [])
    except (OSError, ValueError, AttributeError):
        return []


def known_baseline(out_dir: PathLike, data_cfg: Config) -> dict[str, float] | None:
    """The Gaussian baseline's nats per split, when `tfdgmm baseline --out RUN_DIR` wrote a
    `baseline.json` into the run directory for the same noise seed; else None."""
    path = os.path.join(out_dir, layout.BASELINE)
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


def _tfp_version() -> str:
    import tensorflow_probability as tfp

    return tfp.__version__
