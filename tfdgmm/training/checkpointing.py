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
from typing import TYPE_CHECKING

import tensorflow as tf

from tfdgmm import layout

if TYPE_CHECKING:
    from tfdgmm.deep_gmm import DeepGMM
    from tfdgmm.types import Log, PathLike

__all__ = ["CheckpointKeeper", "load_model_weights", "has_checkpoint"]

STATE_DIR = layout.CHECKPOINTS
BEST_DIR = layout.BEST


class CheckpointKeeper:
    """Saves and restores `state` (a `tf.train.Checkpoint`) and the best `model`."""

    def __init__(
        self,
        directory: PathLike,
        state: tf.train.Checkpoint,
        model: DeepGMM,
        keep: int = 2,
        log: Log | None = None,
    ) -> None:
        self.directory = directory
        self._state = state
        self.log = log or print
        for sub in (STATE_DIR, os.path.join(STATE_DIR, layout.ANCHOR), BEST_DIR):
            remove_temp_leftovers(os.path.join(directory, sub))
        self._manager = tf.train.CheckpointManager(
            state, os.path.join(directory, STATE_DIR), max_to_keep=int(keep)
        )
        # the rollback target: written only at update-count boundaries (never by the timer),
        # so that which state a rollback restores does not depend on the machine's speed
        self._anchor_manager = tf.train.CheckpointManager(
            state, os.path.join(directory, STATE_DIR, layout.ANCHOR), max_to_keep=1
        )
        self._best = tf.train.Checkpoint(model=model)
        self._best_manager = tf.train.CheckpointManager(
            self._best, os.path.join(directory, BEST_DIR), max_to_keep=1
        )
        self._last_save = time.monotonic()

    @property
    def latest(self) -> str | None:
        return self._manager.latest_checkpoint

    @property
    def best(self) -> str | None:
        return self._best_manager.latest_checkpoint

    def seconds_since_save(self) -> float:
        return time.monotonic() - self._last_save

    def save(self, anchor: bool = False) -> str:
        """A rolling checkpoint; `anchor=True` (at an update-count boundary) also makes it the
        rollback target (`restore_anchor`)."""
        path = self._manager.save()
        if anchor:
            self._anchor_manager.save()
        self._last_save = time.monotonic()
        return path

    @property
    def anchor(self) -> str | None:
        return self._anchor_manager.latest_checkpoint

    def restore_anchor(self) -> str | None:
        """Restore the rollback target (the latest checkpoint when there is none); returns its
        path."""
        path = self._anchor_manager.latest_checkpoint
        if path is None:
            return self.restore_latest()
        self._state.read(path).assert_existing_objects_matched()
        self._last_save = time.monotonic()
        return path

    def restore_latest(self) -> str | None:
        """Restore the newest readable checkpoint; returns its path, or None when there is none.

        A checkpoint that cannot be read (truncated by a crash or a full disk) is skipped for
        the one before it, and the log says so; when none can be read, the first error is
        raised."""
        directory = os.path.join(self.directory, STATE_DIR)
        candidates = []
        for path in (
            [self._manager.latest_checkpoint]
            + list(reversed(self._manager.checkpoints))
            + [prefix for _, prefix in (_numbered(directory) if os.path.isdir(directory) else [])]
        ):
            if path is not None and path not in candidates:
                candidates.append(path)
        first_error = None
        for path in candidates:
            try:
                self._state.read(path).assert_existing_objects_matched()
            except Exception as err:  # noqa: BLE001  (IndexError, OpError, DataLossError, ...)
                first_error = first_error or err
                self.log(
                    f"WARNING: cannot read the checkpoint {path} ({type(err).__name__}: "
                    f"{' '.join(str(err).split())[:200]}); trying the one before it"
                )
                continue
            if first_error is not None:
                self.log(f"resumed from {path}, the newest readable checkpoint")
            self._last_save = time.monotonic()
            return path
        if first_error is not None:
            raise first_error
        return None

    def save_best(self) -> str:
        return self._best_manager.save()

    def restore_best(self) -> str | None:
        path = self._best_manager.latest_checkpoint
        if path is None:
            return None
        self._best.read(path).assert_existing_objects_matched()
        return path


def remove_temp_leftovers(directory: PathLike) -> list[str]:
    """Delete the `ckpt-N_temp*` directories a checkpoint write killed midway leaves behind
    (TensorFlow writes there, then renames); returns their names."""
    import shutil

    if not os.path.isdir(directory):
        return []
    removed = []
    for name in os.listdir(directory):
        if name.startswith("ckpt-") and "_temp" in name:
            path = os.path.join(directory, name)
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.remove(path)
            removed.append(name)
    return removed


def _numbered(directory: PathLike) -> list:
    """`[(N, prefix)]` of the `ckpt-N` checkpoints in `directory` with an index file, newest
    first (read from the file names, not from the state file)."""
    out = []
    for name in os.listdir(directory):
        stem, ext = os.path.splitext(name)
        if ext == ".index" and stem.startswith("ckpt-") and stem[5:].isdigit():
            out.append((int(stem[5:]), os.path.join(directory, stem)))
    return sorted(out, reverse=True)


def checkpoint_in(directory: PathLike) -> tuple[str | None, str | None]:
    """`(prefix, problem)`: the checkpoint a directory's state file names, or, when the state
    file is unreadable or names missing files, the newest `ckpt-N` found by its files with
    `problem` saying so (never silently). `(None, None)`: no checkpoint there."""
    if not os.path.isdir(directory):
        return None, None
    state = os.path.join(directory, "checkpoint")
    try:
        prefix = tf.train.latest_checkpoint(directory)
        reason = "names no checkpoint that exists"
    except (ValueError, tf.errors.OpError) as err:  # garbage: UnicodeDecodeError, parse errors
        prefix, reason = None, f"cannot be read ({type(err).__name__})"
    if prefix is not None:
        return prefix, None
    found = _numbered(directory)
    if not os.path.exists(state):
        return (found[0][1], f"{state} is missing; using {found[0][1]}") if found else (None, None)
    if found:
        return found[0][1], f"the state file {state} {reason}; using {found[0][1]}"
    return None, f"the state file {state} {reason}, and {directory} holds no checkpoint files"


def has_checkpoint(run_dir: PathLike) -> bool:
    return tf.train.latest_checkpoint(os.path.join(run_dir, STATE_DIR)) is not None


def load_model_weights(model: DeepGMM, run_dir: PathLike, which: str = "best") -> str:
    """Load a trained model's weights from a run directory: `which='best'` (falls back to the
    latest state checkpoint) or `'latest'`. Returns the checkpoint path read."""
    candidates = [BEST_DIR, STATE_DIR] if which == "best" else [STATE_DIR]
    for sub in candidates:
        path, problem = checkpoint_in(os.path.join(run_dir, sub))
        if path is None and problem is not None:  # never skip an unreadable best/ silently
            raise ValueError(problem)
        if path is not None:
            tf.train.Checkpoint(model=model).read(
                path
            ).assert_existing_objects_matched().expect_partial()
            return path
    raise FileNotFoundError(f"{run_dir}: no checkpoint found under {' or '.join(candidates)}/")
