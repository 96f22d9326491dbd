"""Gating networks in a run: the between-steps hook and `gate_run` (after EM)."""

from __future__ import annotations

import copy
import os
import time
from typing import TYPE_CHECKING

from tfdgmm import layout
from tfdgmm.runs.io import dump_json, dump_yaml

if TYPE_CHECKING:
    from collections.abc import Sequence

    from tfdgmm.deep_gmm import DeepGMM
    from tfdgmm.training.em import EMTrainer
    from tfdgmm.types import Config, Hook, Images, Log, NatsToBpd, PathLike

__all__ = ["gating_hooks", "gate_run"]


def gating_hooks(config: Config, log: Log) -> tuple:
    """`(GatingBetweenSteps,)` when the config asks for gating between E- and M-steps."""
    gating = config.get("gating") or {}
    if not (gating.get("enabled") and gating.get("between_steps")):
        return ()
    from tfdgmm.training.gating import GatingBetweenSteps

    return (
        GatingBetweenSteps(
            gating["between_steps"],
            gating["batch_size"],
            gating["learning_rate"],
            gating["seed"],
            log=log,
        ),
    )


def gate_run(
    config: Config,
    model: DeepGMM,
    trainer: EMTrainer,
    results: dict,
    out_dir: PathLike,
    test_images: Images | None = None,
    nats_to_bpd: NatsToBpd | None = None,
    figures: bool = True,
    between: Sequence[Hook] = (),
    log: Log = print,
) -> dict:
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

    from tfdgmm.training import EVAL_SEED_OFFSET, bounds_record, evaluate_bounds, gating
    from tfdgmm.training import figures as figs

    settings = config["gating"]
    em = trainer.config
    train, val = trainer.train_search, trainer.validation_search
    gated = gating.gated_copy(model, settings)
    block = {"settings": dict(settings), "run_dir": layout.GATED, "fit": {}}
    fit_info = block["fit"]
    if val is not None:
        fit_info["validation_neg_log_prior_before"] = gating.mean_neg_log_prior(
            gated, val.data, val.path()
        )
    log(
        f"gating: fitting gating networks (hidden {settings['hidden']}, kernel "
        f"{settings['kernel_size']}) on the last E-step's paths of {train.num_images} training "
        f"images: {settings['steps']} updates of {settings['batch_size']}"
    )
    start = time.monotonic()
    fit = gating.fit_gating(
        gated,
        train.data,
        train.path(),
        steps=settings["steps"],
        batch_size=settings["batch_size"],
        learning_rate=settings["learning_rate"],
        seed=settings["seed"],
        log_every=max(1, settings["steps"] // 5),
        log=log,
    )
    tail = fit["loss"][-min(len(fit["loss"]), 100) :]
    fit_info.update(
        steps=settings["steps"],
        seconds=time.monotonic() - start,
        train_neg_log_prior_before=fit["nats_before"],
        train_neg_log_prior_after=fit["nats_after"],
        loss_first=fit["loss"][0],
        loss_last_mean=sum(tail) / len(tail),
    )
    if val is not None:
        fit_info["validation_neg_log_prior_after"] = gating.mean_neg_log_prior(
            gated, val.data, val.path()
        )
    log(
        f"gating: -log pi of the training paths {fit['nats_before']:.3f} -> "
        f"{fit['nats_after']:.3f} nats/image"
        + (
            f", validation {fit_info['validation_neg_log_prior_before']:.3f} -> "
            f"{fit_info['validation_neg_log_prior_after']:.3f}"
            if val is not None
            else ""
        )
        + f" ({fit_info['seconds']:.1f} s)"
    )
    for hook in between:
        block.setdefault("between_steps_this_session", []).extend(hook.history)

    splits = {}
    named = [(name, s) for name, s in (("train", train), ("validation", val)) if s is not None]
    t0 = time.monotonic()
    found = gating.gated_search_bounds(
        gated, [s for _, s in named], restarts=em.eval_restarts, seed=em.seed + 611953
    )
    block["bounds_seconds"] = time.monotonic() - t0  # training and validation together
    for (name, search), (lower, upper) in zip(named, found):
        splits[name] = bounds_record(lower, upper, search.num_images, None, nats_to_bpd)
    if test_images is not None:
        log(
            f"gating: test bounds ({len(test_images)} images, fresh search with "
            f"{em.eval_restarts} restarts)"
        )
        splits["test"] = evaluate_bounds(
            gated,
            test_images,
            batch_size=em.estep_batch_size,
            restarts=em.eval_restarts,
            location_method=em.location_method,
            location_options=em.location_options,
            seed=em.seed + EVAL_SEED_OFFSET,
            nats_to_bpd=nats_to_bpd,
            log=log,
            label="test (gated)",
        )
    block["splits"] = splits
    block["lower_bound_gain_nats"] = {
        name: r["lower_bound_nats"] - results[name]["lower_bound_nats"]
        for name, r in splits.items()
        if name in results
    }
    for name, r in splits.items():
        bpd = (
            f" ({r['lower_bound_bits_per_dim']:.3f} bits/dim)"
            if "lower_bound_bits_per_dim" in r
            else ""
        )
        log(
            f"  gated {name:10s} LB {r['lower_bound_nats']:9.2f} nats{bpd}  UB* "
            f"{r['upper_bound_nats']:9.2f} nats  (LB gain "
            f"{block['lower_bound_gain_nats'].get(name, float('nan')):+.2f})"
        )

    gated_dir = os.path.join(out_dir, layout.GATED)
    os.makedirs(gated_dir, exist_ok=True)
    gated_config = copy.deepcopy(config)
    gated_config["model"]["path_prior"] = gating.gating_prior_config(settings)
    gated_config["gating"] = dict(settings, enabled=False, between_steps=0)
    gated_config["description"] = (
        (config.get("description") or "deep GMM") + "; gating networks fitted after EM on the "
        "last E-step's paths (the run directory above, its metrics.json 'gating' block)"
    )
    dump_yaml(gated_config, os.path.join(gated_dir, layout.CONFIG))
    manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(model=gated), os.path.join(gated_dir, layout.BEST), max_to_keep=1
    )
    block["checkpoint"] = manager.save()
    if figures:
        fig = os.path.join(gated_dir, layout.FIGURES, "samples.png")
        os.makedirs(os.path.dirname(fig), exist_ok=True)
        figs.save_samples(gated, fig, n=64, seed=0, title="samples with gating networks")
        block["figures"] = {"samples": fig}
    dump_json(
        {
            "source_run": os.path.abspath(out_dir),
            "config": gated_config,
            "splits": splits,
            "gating": block,
        },
        os.path.join(gated_dir, layout.METRICS),
    )
    log(f"gating: gated model in {gated_dir} (tfdgmm evaluate|sample|export {gated_dir})")
    return block
