"""What TensorBoard shows of a training run: each scalar once per step, rollbacks at their
step, images; the one-line device report (issue 16)."""

import collections
import os

import numpy as np
import pytest
import tensorflow as tf

from tfdgmm.training import EMConfig, EMTrainer
from tfdgmm.training.summaries import (
    ProgressLog,
    RateMeter,
    Summaries,
    bpd_text,
    device_report,
    em_eta_text,
    format_duration,
    mstep_progress_text,
    replicas_text,
    search_progress_text,
)

CONFIG = EMConfig(
    em_iterations=2,
    updates_first=40,
    updates_later=20,
    learning_rate=1e-2,
    lr_final_updates=10,
    estep_batch_size=100,
    early_stopping_patience=0,
    checkpoint_interval_seconds=3600,
    max_chunk=7,
    progress_interval_seconds=1000,
    seed=3,
)


def _events(logdir):
    """`{tag: [(step, value or image), ...]}` of every event file under `logdir`."""
    out = collections.defaultdict(list)
    for name in sorted(n for n in os.listdir(logdir) if n.startswith("events.")):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(logdir, name)):
            for v in event.summary.value:
                value = tf.make_ndarray(v.tensor) if v.HasField("tensor") else v.simple_value
                out[v.tag].append((event.step, value))
    return out


def test_each_em_scalar_is_written_once_per_step_and_rollbacks_at_their_step(
    synthetic, make_model, tmp_path
):
    _, x_train, x_val = synthetic
    fired = []

    def inject(trainer, event, info):  # NaN parameters late in the first M-step: a rollback
        if event == "mstep" and info["em_iteration"] == 0 and info["update"] >= 14 and not fired:
            v = trainer.model.trainable_variables[0]
            v.assign(tf.fill(v.shape, np.float32(np.nan)))
            fired.append(int(trainer.optimizer.iterations.numpy()))

    trainer = EMTrainer(
        make_model(seed=1),
        CONFIG,
        x_train[:300],
        x_val[:100],
        str(tmp_path),
        hooks=[inject],
        log=lambda line: None,
    )
    trainer.fit()
    events = _events(os.path.join(str(tmp_path), "tensorboard"))
    for tag, points in events.items():
        if tag.startswith("em/"):
            steps = [s for s, _ in points]
            assert len(steps) == len(set(steps)), (tag, steps)
    assert [s for s, _ in events["em/estep_lower_bound"]] == [1, 2]
    rollbacks = events["mstep/rollback_lr_scale"]
    assert len(fired) == 1 and len(rollbacks) == 1
    step, scale = rollbacks[0]
    assert step == fired[0] > 0  # the update where it happened, not step 0
    assert float(scale) == CONFIG.nan_lr_factor


def test_images_and_device_report(tmp_path):
    s = Summaries(str(tmp_path))
    s.image(3, "figures/grid", np.full((5, 7, 3), 0.5))
    png = str(tmp_path / "x.png")
    tf.io.write_file(png, tf.io.encode_png(tf.fill([4, 6, 4], tf.constant(200, tf.uint8))))
    s.image(3, "figures/png", png)
    s.close()
    events = _events(str(tmp_path))
    for tag, shape in (("figures/grid", (5, 7, 3)), ("figures/png", (4, 6, 3))):
        ((step, value),) = events[tag]
        assert step == 3
        # image summaries hold [width, height, encoded PNG]
        assert [int(value[0]), int(value[1])] == [shape[1], shape[0]]
    line = device_report()
    assert line.startswith("devices: ") and "\n" not in line
    gpus = tf.config.list_physical_devices("GPU")
    assert line.startswith(f"devices: {len(gpus)} GPU" if gpus else "devices: CPU only"), line
    assert "1 replica" in line or "replicas" in line


def test_rate_meter_leaves_out_the_traced_first_call():
    # A 1-minute M-step of 600 updates whose first 5-update call spends 35 s tracing: counting
    # that call gave "ETA 57m57s" at first; the rate starts after it.
    meter = RateMeter()
    meter.update(5, 35.0)  # the first call: tracing
    assert meter.rate is None and meter.eta(595) is None
    assert format_duration(meter.eta(595)) == "?"
    meter.update(50, 5.0)  # 10 updates/s
    assert meter.rate == pytest.approx(10.0)
    assert format_duration(meter.eta(545)) == "54s"
    meter.skip_next()  # traced again (e.g. rebuilt after a rollback)
    meter.update(5, 100.0)
    assert meter.rate == pytest.approx(10.0)
    meter.update(20, 1.0)  # smoothed: 0.7 * 10 + 0.3 * 20
    assert meter.rate == pytest.approx(13.0)
    counted = RateMeter(warmup=0)
    counted.update(5, 35.0)
    assert counted.rate == pytest.approx(5 / 35)


def test_progress_text():
    assert format_duration(3725) == "1h02m" and format_duration(185) == "3m05s"
    assert bpd_text(None) == "" and bpd_text(4.0183) == " (4.018 bits/dim)"
    assert replicas_text(1) == "" and replicas_text(2) == " on 2 replicas"
    assert mstep_progress_text(110, 150, -6364.912, 4.36e-4, 35.71, "", 1.1) == (
        "M-step 110/150 (73%), loss -6364.91 nats/image, lr 4.36e-04, 35.7 updates/s, ETA 1s"
    )
    assert search_progress_text("E-step", 1, 2, None, "", None) == (
        "E-step 1/2 batches, ? img/s, ETA ?"
    )
    assert em_eta_text(2, [10.0, 20.0, 5.0]) == ", ETA for 2 more EM iterations 35s"
    assert em_eta_text(2, [10.0, None]) == "" and em_eta_text(0, [1.0]) == ""
    lines = []
    progress = ProgressLog(lines.append, interval=1000, em_iterations=3)
    progress(0, "first")
    progress(0, "too soon")
    assert lines == ["[EM 1/3] first"]
