"""Never lose work: resume after a crash gives the same result; NaN rollback."""

import dataclasses
import os

import numpy as np
import pytest
import tensorflow as tf

from tfdgmm.training import EMConfig, EMTrainer, TrainingInterrupted, load_model_weights

CONFIG = EMConfig(
    em_iterations=2,
    updates_first=40,
    updates_later=20,
    learning_rate=1e-2,
    lr_final_updates=10,
    estep_batch_size=100,
    early_stopping_patience=0,
    checkpoint_interval_seconds=0,
    max_chunk=7,
    progress_interval_seconds=1000,
    seed=3,
)


def _data(synthetic):
    _, x_train, x_val = synthetic
    return x_train[:300], x_val[:100]


def _crash_at(event, em_iteration, position_key, position):
    def hook(trainer, ev, info):
        if ev == event and info["em_iteration"] == em_iteration and info[position_key] >= position:
            raise TrainingInterrupted(f"simulated crash: {ev} {info}")

    return hook


def _state(trainer):
    values = [v.numpy() for v in trainer.model.variables]
    values += [v.numpy() for v in trainer.train_search.paths]
    values += [v.numpy() for v in trainer.optimizer.variables]
    return values


def test_interrupted_and_resumed_run_equals_uninterrupted_run(synthetic, make_model, tmp_path):
    x_train, x_val = _data(synthetic)
    quiet = dict(log=lambda s: None)
    ref = EMTrainer(make_model(seed=1), CONFIG, x_train, x_val, str(tmp_path / "a"), **quiet)
    ref_history = ref.fit()

    out = str(tmp_path / "b")
    # crash 1: in the middle of the first M-step (after a few checkpointed chunks)
    first = EMTrainer(
        make_model(seed=1),
        CONFIG,
        x_train,
        x_val,
        out,
        hooks=[_crash_at("mstep", 0, "update", 15)],
        **quiet,
    )
    with pytest.raises(TrainingInterrupted):
        first.fit()
    assert first.em_iteration == 0 and int(first.state.mstep_update.numpy()) >= 15
    with pytest.raises(FileExistsError):  # never overwrite a run by accident
        EMTrainer(make_model(seed=1), CONFIG, x_train, x_val, out, **quiet).fit()
    # crash 2: in the middle of the second E-step (batch 2 of 3), after resuming
    second = EMTrainer(
        make_model(seed=1),
        CONFIG,
        x_train,
        x_val,
        out,
        hooks=[_crash_at("estep", 1, "batches", 2)],
        **quiet,
    )
    with pytest.raises(TrainingInterrupted):
        second.fit(resume=True)
    lines = []
    third = EMTrainer(make_model(seed=1), CONFIG, x_train, x_val, out, log=lines.append)
    history = third.fit(resume=True)
    assert any(line.startswith("resumed from") for line in lines)

    assert len(history) == len(ref_history) == 2
    for a, b in zip(_state(ref), _state(third)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(ref_history, history):
        for key in ("train_lower_bound", "validation_lower_bound", "estep_lower_bound"):
            assert a[key] == b[key]
    assert int(third.optimizer.iterations.numpy()) == 40 + 20

    # the best weights can be loaded into a fresh model from the run directory
    fresh = make_model(seed=7)
    load_model_weights(fresh, out)
    for a, b in zip(fresh.variables, third.model.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_a_run_resumed_without_its_best_model_keeps_the_model_it_reports(
    synthetic, make_model, tmp_path
):
    """A run moved without `best/` (its best model, saved after every improving EM iteration):
    the resume says so, and the best iteration is chosen again among the iterations still to
    come, so the model at the end is the one `best_em_iteration` names. A resume with `best/`
    in place says nothing."""
    import shutil

    x_train, x_val = _data(synthetic)
    out = str(tmp_path / "run")
    quiet = dict(log=lambda s: None)
    # (only a first best counts: without the reset, EM iteration 2 could never be the best)
    config = dataclasses.replace(CONFIG, early_stopping_min_delta=1e9)
    for crash in (("mstep", 0, "update", 15), ("mstep", 1, "update", 5)):
        trainer = EMTrainer(
            make_model(seed=1), config, x_train, x_val, out, hooks=[_crash_at(*crash)], **quiet
        )
        with pytest.raises(TrainingInterrupted):
            trainer.fit(resume=crash[1] > 0)
    assert int(trainer.state.best_iteration.numpy()) == 0  # EM iteration 1 was the best so far
    lines = []
    shutil.copytree(out, str(tmp_path / "copy"))
    EMTrainer(
        make_model(seed=1), config, x_train, x_val, str(tmp_path / "copy"), log=lines.append
    ).fit(resume=True)
    assert not [line for line in lines if "holds no model" in line]

    shutil.rmtree(os.path.join(out, "best"))
    lines = []
    resumed = EMTrainer(make_model(seed=1), config, x_train, x_val, out, log=lines.append)
    history = resumed.fit(resume=True)
    warnings = [line for line in lines if "holds no model" in line]
    assert len(warnings) == 1 and "EM iteration 1" in warnings[0], lines
    assert history[-1]["best"] and int(resumed.state.best_iteration.numpy()) == 1
    fresh = make_model(seed=7)
    load_model_weights(fresh, out)
    for a, b in zip(fresh.variables, resumed.model.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_non_finite_values_roll_back_with_a_lower_learning_rate(synthetic, make_model, tmp_path):
    """Two injected failures: parameters set to NaN by a hook (caught after the chunk), then a
    learning rate blown up by a hook, which makes the loss non-finite inside a chunk (caught by
    the loop). No periodic checkpoints here, so the blown-up rate is never saved: each rollback
    goes to a checkpoint with a good rate and halves it."""
    x_train, x_val = _data(synthetic)
    events = []

    def inject(trainer, event, info):
        if event != "mstep" or info["em_iteration"] != 0:
            return
        if not events and info["update"] >= 14:
            v = trainer.model.trainable_variables[0]
            v.assign(tf.fill(v.shape, np.float32(np.nan)))
            events.append("nan parameters")
        elif events == ["nan parameters"] and int(trainer.state.rollbacks.numpy()) == 1:
            trainer.state.lr_scale.assign(1e30)
            events.append("huge learning rate")

    lines = []
    cfg = CONFIG.replace(em_iterations=1, checkpoint_interval_seconds=3600)
    trainer = EMTrainer(
        make_model(seed=1), cfg, x_train, x_val, str(tmp_path), hooks=[inject], log=lines.append
    )
    history = trainer.fit()
    assert events == ["nan parameters", "huge learning rate"]
    assert int(trainer.state.rollbacks.numpy()) == 2
    assert float(trainer.state.lr_scale.numpy()) == pytest.approx(CONFIG.nan_lr_factor**2)
    rolled = [line for line in lines if "rolled back" in line]
    assert len(rolled) == 2
    assert "non-finite parameters" in rolled[0] and "non-finite loss" in rolled[1]
    assert len(history) == 1 and np.isfinite(history[0]["train_lower_bound"])
    assert all(np.all(np.isfinite(v.numpy())) for v in trainer.model.trainable_variables)


def test_a_diverging_loss_rolls_back_like_a_nan(synthetic, make_model, tmp_path):
    """A finite blow-up (a hook shifts a layer by 100: the loss jumps by ~10^5 nats but stays
    finite, so the NaN checks cannot see it) is caught by `divergence_nats` at the end of its
    check window and rolled back to the rollback target before it, with a halved learning
    rate; with the check off it goes through."""
    x_train, x_val = _data(synthetic)

    def make_hook(fired):
        def hook(trainer, event, info):
            if (
                event == "mstep"
                and info["em_iteration"] == 0
                and info["update"] >= 14
                and not fired
            ):
                v = next(v for v in trainer.model.trainable_variables if "shift" in v.name)
                v.assign_add(tf.fill(v.shape, np.float32(100.0)))
                fired.append(info["update"])

        return hook

    cfg = CONFIG.replace(em_iterations=1, checkpoint_interval_seconds=0)
    fired, lines = [], []
    trainer = EMTrainer(
        make_model(seed=1),
        cfg,
        x_train,
        x_val,
        str(tmp_path / "on"),
        hooks=[make_hook(fired)],
        log=lines.append,
    )
    trainer.fit()
    assert fired and int(trainer.state.rollbacks.numpy()) == 1
    assert float(trainer.state.lr_scale.numpy()) == pytest.approx(CONFIG.nan_lr_factor)
    rolled = [line for line in lines if "rolled back" in line]
    assert len(rolled) == 1 and "diverging loss" in rolled[0]
    shift = next(v for v in trainer.model.trainable_variables if "shift" in v.name)
    assert float(tf.reduce_max(tf.abs(shift))) < 50.0  # the shifted values were rolled back

    fired_off, lines_off = [], []
    off = EMTrainer(
        make_model(seed=1),
        cfg.replace(divergence_nats=0.0),
        x_train,
        x_val,
        str(tmp_path / "off"),
        hooks=[make_hook(fired_off)],
        log=lines_off.append,
    )
    off.fit()
    # with the check off only a NaN can roll back, and the run says that its guard is off
    assert fired_off and not any("diverging loss" in line for line in lines_off)
    assert any("divergence_nats is 0" in line for line in lines_off)


def test_rollbacks_do_not_depend_on_machine_speed(synthetic, make_model, tmp_path):
    """The same run on a fast and an artificially slowed step (a hook that sleeps, so chunk
    sizes from the measured speed and the timer's checkpoints fall elsewhere) gives identical
    parameters, although the learning rate makes it diverge (as it warms up) and roll back."""
    import time

    x_train, x_val = _data(synthetic)
    cfg = CONFIG.replace(
        em_iterations=1,
        updates_first=60,
        learning_rate=1.0,
        lr_warmup_updates=40,
        lr_decay="final",
        hc_optimizer="optimizer",
        max_chunk=0,
        checkpoint_interval_seconds=0.0,
        progress_interval_seconds=1000,
    )

    def slow(trainer, event, info):
        if event == "mstep":
            time.sleep(0.03)

    runs = {}
    for name, hooks, changes in (
        ("fast", [], {}),
        ("slow", [slow], {"progress_interval_seconds": 0.05, "checkpoint_interval_seconds": 0.07}),
    ):
        lines = []
        trainer = EMTrainer(
            make_model(seed=1),
            cfg.replace(**changes),
            x_train,
            x_val,
            str(tmp_path / name),
            hooks=hooks,
            log=lines.append,
        )
        history = trainer.fit()
        runs[name] = (trainer, history, [line for line in lines if "rolled back" in line])
    (fast, fast_history, fast_rolled), (slow_t, slow_history, slow_rolled) = runs.values()
    assert len(fast_rolled) >= 1 and len(fast_rolled) == len(slow_rolled)
    assert all("diverging loss" in line for line in fast_rolled + slow_rolled)
    for a, b in zip(_state(fast), _state(slow_t)):
        np.testing.assert_array_equal(a, b)
    for key in ("train_lower_bound", "validation_lower_bound", "final_loss", "learning_rate"):
        assert fast_history[0][key] == slow_history[0][key], key


def test_divergence_within_a_single_chunk_m_step_is_caught(synthetic, make_model, tmp_path):
    """An M-step that runs in long chunks (a long progress interval) still checks every
    window of `CHECK_WINDOW` updates; its first window is compared with the loss it started from
    (minus the E-step's
    training lower bound). A hook at the end of EM iteration 1 raises the learning rate 300x,
    so the second M-step blows up (finite losses) within its only chunk."""
    x_train, x_val = _data(synthetic)
    lines = []

    def boost(trainer, event, info):
        if event == "iteration" and info["em_iteration"] == 0:
            trainer.state.lr_scale.assign(300.0)

    cfg = CONFIG.replace(
        em_iterations=2,
        updates_later=30,
        max_chunk=0,
        progress_interval_seconds=1000,
        checkpoint_interval_seconds=3600,
        hc_optimizer="optimizer",  # (K-FAC steps NaN at once at 300x)
        lr_warmup_every_mstep=False,
    )  # full rate from the M-step's start
    trainer = EMTrainer(
        make_model(seed=1), cfg, x_train, x_val, str(tmp_path), hooks=[boost], log=lines.append
    )
    history = trainer.fit()
    rolled = [line for line in lines if "rolled back" in line]
    assert rolled and "diverging loss" in rolled[0] and "(its start)" in rolled[0], lines
    assert "over updates 0-10" in rolled[0]  # the first check window of the M-step
    assert float(trainer.state.lr_scale.numpy()) <= 300.0 * CONFIG.nan_lr_factor
    assert len(history) == 2
    # the rollbacks kept the second M-step from ending far below where it started
    assert history[1]["train_lower_bound"] > history[1]["estep_lower_bound"] - cfg.divergence_nats


def test_an_iteration_below_the_initial_model_is_never_best(synthetic, make_model, tmp_path):
    """With the divergence guard off (and a warning saying so), a learning rate that blows the
    model up ends far below where it started: that iteration is not marked best, and the run
    ends with the initial model rather than the blown-up one."""
    x_train, x_val = _data(synthetic)
    cfg = CONFIG.replace(
        em_iterations=1,
        updates_first=30,
        learning_rate=1.0,
        lr_warmup_updates=1,
        hc_optimizer="optimizer",
        divergence_nats=0.0,
        max_chunk=0,
        checkpoint_interval_seconds=3600,
    )
    lines = []
    model = make_model(seed=1)
    trainer = EMTrainer(model, cfg, x_train, x_val, str(tmp_path), log=lines.append)
    history = trainer.fit()
    assert any("divergence guard is off" in line for line in lines)
    initial = history[0]["estep_lower_bound"]
    assert history[0]["train_lower_bound"] < initial - 100, history[0]
    assert history[0]["best"] is False and int(trainer.state.best_iteration.numpy()) == -1
    assert any("not a best model" in line for line in lines)
    assert any("restored the initial model" in line for line in lines)
    restored = float(tf.reduce_mean(trainer.model.log_prob_lower_bound(x_train)))
    assert restored > history[0]["train_lower_bound"] + 100


def test_a_rollback_with_jit_compile_rebuilds_the_m_step(synthetic, make_model, tmp_path):
    """With `jit_compile`, a rollback drops the compiled M-step (the restore invalidates it); the
    M-step loop rebuilds it instead of calling None (it used to raise a TypeError)."""
    x_train, x_val = _data(synthetic)
    events = []

    def inject(trainer, event, info):
        if event == "mstep" and info["em_iteration"] == 0 and not events and info["update"] >= 14:
            v = trainer.model.trainable_variables[0]
            v.assign(tf.fill(v.shape, np.float32(np.nan)))
            events.append("nan parameters")

    cfg = CONFIG.replace(em_iterations=1, checkpoint_interval_seconds=3600, jit_compile=True)
    trainer = EMTrainer(
        make_model(seed=1), cfg, x_train, x_val, str(tmp_path), hooks=[inject], log=lambda _: None
    )
    history = trainer.fit()
    assert events == ["nan parameters"] and int(trainer.state.rollbacks.numpy()) == 1
    assert len(history) == 1 and np.isfinite(history[0]["train_lower_bound"])
