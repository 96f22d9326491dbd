"""What TensorBoard shows of a training run: each scalar once per step, rollbacks at their
step, images; the one-line device report (issue 16)."""

import collections
import os

import numpy as np
import tensorflow as tf

from tfdgmm.training import EMConfig, EMTrainer
from tfdgmm.training.summaries import Summaries, device_report

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
