"""The bodies of `tfdgmm evaluate`, `sample`, `baseline`, `export` and `tune`."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from tfdgmm import layout
from tfdgmm.runs.config import DATA_DEFAULTS, apply_overrides, load_run_config
from tfdgmm.runs.data import DataLoadError, bpd_fn, dequantized, load_data, train_images
from tfdgmm.runs.io import dump_json

if TYPE_CHECKING:
    from collections.abc import Sequence

    from tfdgmm.data import Splits
    from tfdgmm.deep_gmm import DeepGMM
    from tfdgmm.types import Config, Log, PathLike, Seed

__all__ = [
    "check_run_dir",
    "run_model",
    "evaluate_run",
    "stored_training_paths",
    "sample_run",
    "baseline_run",
    "export_run",
    "tune_run",
]


def check_run_dir(run_dir: PathLike) -> None:
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(
            f"no run directory at {run_dir} (train one with `tfdgmm train "
            f"--config FILE --out {run_dir}`)"
        )
    if not os.path.isfile(os.path.join(run_dir, layout.CONFIG)):
        raise FileNotFoundError(
            f"{run_dir} is not a run directory: it has no config.yaml (written by `tfdgmm train`)"
        )


def run_model(run_dir: PathLike) -> tuple[Config, DeepGMM, str]:
    """`(run config, model with its best weights, checkpoint prefix)` of a run directory."""
    from tfdgmm.export import load_run_model

    check_run_dir(run_dir)
    config = load_run_config(os.path.join(run_dir, layout.CONFIG))
    model, ckpt = load_run_model(run_dir)
    return config, model, ckpt


def evaluate_run(
    run_dir: PathLike,
    split: str = "validation",
    data_spec: str | None = None,
    restarts: int | None = None,
    batch_size: int | None = None,
    log: Log = print,
    out_path: PathLike | None = None,
    donors: int = 0,
    rounds: int = 0,
    round_tol: float = 0.5,
) -> dict:
    """Bounds of a trained run on one or all splits, by a fresh search; writes
    `RUN_DIR/evaluation-SPLIT.json` (or `out_path`) and returns the results.

    A more thorough search (for a split with no stored paths, scored like one whose paths were
    refined through training; `tfdgmm.training.evaluate_bounds`): `donors` more starts per
    image, the stored training paths of its nearest training images (from the run's latest
    checkpoint), then up to `rounds` warm rounds while a round gains `round_tol` nats/image;
    both with the run's E-step extra passes."""
    from tfdgmm.training import EVAL_SEED_OFFSET, EMConfig, donor_starts, evaluate_bounds

    if restarts is not None and int(restarts) < 0:
        raise ValueError(f"restarts must be >= 0; got {restarts}")
    if batch_size is not None and int(batch_size) < 1:
        raise ValueError(f"batch size must be >= 1; got {batch_size}")
    if int(donors) < 0 or int(rounds) < 0:
        raise ValueError(f"donors and rounds must be >= 0; got {donors} and {rounds}")

    config, model, ckpt = run_model(run_dir)
    em = EMConfig.from_dict(config["training"])
    splits = load_data(config["data"], data_spec)
    names = ["train", "validation", "test"] if split == "all" else [split]
    out = {"checkpoint": ckpt, "data": splits.source, "splits": {}}
    donor_images, donor_paths = (None, None)
    if donors:
        donor_images, donor_paths = stored_training_paths(run_dir, model, config, splits)
        log(
            f"donors: the stored paths of the {donors} nearest of {len(donor_images)} "
            "training images"
        )
    for name in names:
        s = getattr(splits, name)
        if s is None:
            raise DataLoadError(f"{splits.source} has no {name} split")
        log(f"evaluating {name} ({len(s)} images) with {ckpt}")
        x = dequantized(s, config["data"])
        r = evaluate_bounds(
            model,
            x,
            batch_size=batch_size or em.estep_batch_size,
            restarts=em.eval_restarts if restarts is None else restarts,
            location_method=em.location_method,
            location_options=em.location_options,
            seed=em.seed + EVAL_SEED_OFFSET,
            nats_to_bpd=bpd_fn(s.num_dims),
            log=log,
            label=name,
            starts=donor_starts(x, donor_images, donor_paths, k=int(donors)) if donors else (),
            rounds=int(rounds),
            round_tol=float(round_tol),
            extra_passes=em.estep_extra_passes,
            extra_pass_gain=em.estep_extra_pass_gain,
        )
        out["splits"][name] = r
        log(
            f"  {name}: LB {r['lower_bound_nats']:.2f} nats "
            f"({r['lower_bound_bits_per_dim']:.3f} bits/dim), UB* {r['upper_bound_nats']:.2f} "
            f"nats ({r['upper_bound_bits_per_dim']:.3f} bits/dim)"
        )
    path = out_path or os.path.join(run_dir, f"evaluation-{split}.json")
    try:
        dump_json(out, path)
    except OSError as err:
        raise OSError(
            err.errno,
            f"cannot write {path} ({err.strerror}); the bounds are above; "
            "pass --out FILE to write them elsewhere",
        ) from err
    log(f"results: {path}")
    return out


def stored_training_paths(
    run_dir: PathLike, model: DeepGMM, config: Config, splits: Splits
) -> tuple[np.ndarray, tuple]:
    """`(training images [N, H, W, C], their stored paths)` of a run: the images as its E-steps
    saw them (fixed dequantization noise; with per-iteration noise, iteration 0's) and the paths
    in its latest training checkpoint (for `RUN/gated`, which has none, `RUN`'s)."""
    import tensorflow as tf

    from tfdgmm.training.search import DatasetSearch

    x = train_images(splits.train, config["data"])
    x = np.asarray(x(0) if callable(x) else x, np.float32)
    prefix = tf.train.latest_checkpoint(os.path.join(run_dir, layout.CHECKPOINTS))
    parent = os.path.dirname(os.path.abspath(run_dir))
    if prefix is None and os.path.isfile(os.path.join(parent, layout.CONFIG)):
        # a gated model (RUN/gated: best/ only) searches the paths of the EM run it was fitted on
        prefix = tf.train.latest_checkpoint(os.path.join(parent, layout.CHECKPOINTS))
    if prefix is None:
        raise FileNotFoundError(
            f"{run_dir}/{layout.CHECKPOINTS} has no checkpoint: no stored training paths to "
            "start from (evaluate without donors)"
        )
    search = DatasetSearch(model, x, batch_size=min(500, len(x)), name="train_search")
    try:
        tf.train.Checkpoint(train=search.checkpoint_items()).read(prefix).expect_partial()
        paths = search.path()
    except Exception as err:  # (a checkpoint of other data: the shapes differ)
        raise ValueError(
            f"{prefix}: cannot read the stored training paths for {len(x)} images: "
            f"{type(err).__name__}: {err}"
        ) from err
    return x, paths


def sample_run(run_dir: PathLike, n: int = 64, seed: int = 0, out: PathLike | None = None) -> str:
    from tfdgmm.training import figures

    if isinstance(n, bool) or int(n) < 1:
        raise ValueError(f"the number of samples must be >= 1; got {n}")
    _, model, ckpt = run_model(run_dir)
    out = out or os.path.join(run_dir, layout.FIGURES, f"samples-seed{seed}.png")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    figures.save_samples(model, out, n=n, seed=seed)
    return out


def baseline_run(
    data_spec: str | None = None,
    out_dir: PathLike | None = None,
    noise_seed: int = 0,
    train_limit: int | None = None,
    validation_limit: int | None = None,
    test_limit: int | None = None,
    validation_size: int = 10_000,
    jitter: float = 0.0,
    log: Log = print,
) -> dict:
    """The closed-form full-covariance Gaussian on the same data and protocol."""
    from tfdgmm.gaussian import run_gaussian_baseline

    data_cfg = dict(
        DATA_DEFAULTS,
        train_limit=train_limit,
        validation_limit=validation_limit,
        test_limit=test_limit,
        validation_size=validation_size,
        noise_seed=noise_seed,
    )
    splits = load_data(data_cfg, data_spec)
    log(f"data: {splits.describe()}")
    result = run_gaussian_baseline(splits, noise_seed=noise_seed, jitter=jitter)
    result["data"] = splits.source
    for name, r in result["splits"].items():
        log(
            f"  {name:10s} {r['nats']:9.1f} nats  {r['bits_per_dim']:.3f} bits/dim  "
            f"({r['num_images']} images)"
        )
    log(f"  ({result['seconds']:.1f} s)")
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        dump_json(result, os.path.join(out_dir, layout.BASELINE))
    return result


def export_run(
    run_dir: PathLike,
    out_dir: PathLike,
    which: str = "best",
    restarts: int = 2,
    restart_passes: int = 2,
    seed: Seed = (0, 0),
    location_method: str = "auto",
    overwrite: bool = False,
    log: Log = print,
) -> str:
    """`tfdgmm export`: `tfdgmm.export.export_run` with the E-step settings of the exported
    `best_path` / bounds functions (see `tfdgmm.export.search_settings`). Returns `out_dir`."""
    from tfdgmm import export

    search = export.search_settings(
        restarts=restarts,
        restart_passes=restart_passes,
        location_method=location_method,
        seed=list(seed),
    )
    notes = []
    try:
        model, prefix = export.load_run_model(run_dir, which=which, notes=notes)
    except ValueError as err:
        raise ValueError(str(err).replace("which='latest' / ", "")) from err
    for note in notes:
        log(f"WARNING: {note}")
    try:
        path = export.export_saved_model(model, out_dir, search=search, overwrite=overwrite)
    except FileExistsError as err:
        raise FileExistsError(str(err).replace("pass overwrite=True", "pass --overwrite")) from err
    kind = export.checkpoint_kind(run_dir, prefix)
    log(
        f"exported {run_dir} ({kind}: {prefix}) to {path} (search: {restarts} restarts x "
        f"{restart_passes} passes, seed {list(seed)})"
    )
    return path


def tune_run(
    config_path: PathLike,
    out_dir: PathLike,
    max_trials: int,
    tuner: str = "random",
    data_spec: str | None = None,
    overrides: Sequence[str] = (),
    space: Config | None = None,
    max_epochs: int | None = None,
    factor: int = 3,
    seed: int | None = None,
    overwrite: bool = False,
    verbose: bool = True,
    log: Log = print,
) -> dict | None:
    """`tfdgmm tune`: a keras-tuner search (`tfdgmm.runs.tune.tune`) whose trials train
    the config's model family on the config's data; `out_dir` is the tuner's project
    directory (trials in `out_dir/trial_ID/`, each a run directory; `out_dir/best.json`).
    Returns the summary of the best trial (with the oracle's seed, `oracle_seed`).

    `seed=None` is `tfdgmm.runs.tune.DEFAULT_SEED`: the same command searches the same
    hyperparameters."""
    import yaml

    from tfdgmm.runs import tune as tuning

    seed = tuning.DEFAULT_SEED if seed is None else seed
    if max_trials is None or int(max_trials) < 1:
        raise ValueError(f"--max-trials must be at least 1; got {max_trials}")
    if int(seed) < 1:
        raise ValueError(
            f"--seed must be a positive integer (keras-tuner replaces 0 by a "
            f"random seed); got {seed}"
        )

    with open(config_path) as f:
        raw = yaml.safe_load(f)
    if not isinstance(raw, dict):
        raise ValueError(f"{config_path}: a run config must be a mapping")
    base = tuning.normalize_base_config(apply_overrides(raw, overrides))
    if isinstance(space, str):
        space = yaml.safe_load(space)
    if space is not None and not isinstance(space, dict):
        raise ValueError("--space expects a YAML mapping, e.g. '{bd_layers: [1, 2]}'")
    space = {
        k: tuple(v) if k == "learning_rate" and isinstance(v, list) and len(v) == 2 else v
        for k, v in (space or {}).items()
    }  # [low, high]: a log-uniform range
    if data_spec:
        base["data"] = dict(base["data"], spec=data_spec)
    splits = load_data(base["data"])
    log(f"data: {splits.describe()}")
    out_dir = os.path.abspath(out_dir)
    t = tuning.tune(
        base,
        train_images(splits.train, base["data"]),
        dequantized(splits.validation, base["data"]),
        max_trials=max_trials,
        tuner=tuner,
        directory=os.path.dirname(out_dir),
        project_name=os.path.basename(out_dir),
        space=space,
        seed=seed,
        max_epochs=max_epochs,
        factor=factor,
        overwrite=overwrite,
        verbose=verbose,
    )
    summary = t.write_summary()
    if summary is None:
        raise ValueError(f"{out_dir}: no trial completed (see the trials' train.log)")
    log(
        f"best trial {summary['trial_id']}: validation lower bound "
        f"{summary['val_lower_bound']:.2f} nats; run directory {summary['run_dir']} "
        f"(oracle seed {summary['oracle_seed']})"
    )
    log(f"export it with: tfdgmm export {summary['run_dir']} saved_models/NAME")
    return summary
