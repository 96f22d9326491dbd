"""Never lose work: rolling checkpoints of the whole training state, and the best model.

Layout of a run directory:

```none
checkpoints/ckpt-N.*   model, optimizer, E-step paths and bounds, positions, schedule state
best/ckpt-N.*          the model with the best validation lower bound so far
```

Both are `tf.train.Checkpoint`s whose model lives under the key `model`, so
`load_model_weights(model, run_dir)` can read either.
"""

from __future__ import annotations

import os
import time

import tensorflow as tf

from tfdgmm.runs import layout

__all__ = ["CheckpointKeeper", "load_model_weights", "has_checkpoint"]

STATE_DIR = layout.CHECKPOINTS
BEST_DIR = layout.BEST


class CheckpointKeeper:
    """Saves and restores `state` (a `tf.train.Checkpoint`) and the best `model`."""

    def __init__(self, directory, state: tf.train.Checkpoint, model, keep=2):
        self.directory = directory
        self._state = state
        self._manager = tf.train.CheckpointManager(
            state, os.path.join(directory, STATE_DIR), max_to_keep=int(keep))
        self._best = tf.train.Checkpoint(model=model)
        self._best_manager = tf.train.CheckpointManager(
            self._best, os.path.join(directory, BEST_DIR), max_to_keep=1)
        self._last_save = time.monotonic()

    @property
    def latest(self):
        return self._manager.latest_checkpoint

    @property
    def best(self):
        return self._best_manager.latest_checkpoint

    def seconds_since_save(self):
        return time.monotonic() - self._last_save

    def save(self):
        path = self._manager.save()
        self._last_save = time.monotonic()
        return path

    def restore_latest(self):
        """Restore the latest checkpoint; returns its path, or None when there is none."""
        path = self._manager.latest_checkpoint
        if path is None:
            return None
        self._state.read(path).assert_existing_objects_matched()
        self._last_save = time.monotonic()
        return path

    def save_best(self):
        return self._best_manager.save()

    def restore_best(self):
        path = self._best_manager.latest_checkpoint
        if path is None:
            return None
        self._best.read(path).assert_existing_objects_matched()
        return path


def has_checkpoint(run_dir) -> bool:
    return tf.train.latest_checkpoint(os.path.join(run_dir, STATE_DIR)) is not None


def load_model_weights(model, run_dir, which="best"):
    """Load a trained model's weights from a run directory: `which='best'` (falls back to the
    latest state checkpoint) or `'latest'`. Returns the checkpoint path read."""
    candidates = [BEST_DIR, STATE_DIR] if which == "best" else [STATE_DIR]
    for sub in candidates:
        path = tf.train.latest_checkpoint(os.path.join(run_dir, sub))
        if path is not None:
            tf.train.Checkpoint(model=model).read(path).assert_existing_objects_matched() \
                .expect_partial()
            return path
    raise FileNotFoundError(f"{run_dir}: no checkpoint found under {' or '.join(candidates)}/")
