"""`tfdgmm.training.checkpointing`: a truncated checkpoint, leftovers, a garbage state file."""

import os

import numpy as np
import pytest
import tensorflow as tf

from tfdgmm.training.checkpointing import CheckpointKeeper, checkpoint_in


def _keeper(directory, log):
    module = tf.Module()
    module.v = tf.Variable(np.zeros(1000, np.float32))
    state = tf.train.Checkpoint(model=module)
    return module, CheckpointKeeper(str(directory), state, module, keep=3, log=log)


def test_a_truncated_latest_checkpoint_falls_back_to_the_newest_readable_one(tmp_path):
    module, keeper = _keeper(tmp_path, print)
    for value in (1.0, 2.0, 3.0):
        module.v.assign(tf.fill([1000], value))
        keeper.save()
    latest = keeper.latest
    data = latest + ".data-00000-of-00001"
    with open(data, "r+b") as f:  # a crash or a full disk: the file is cut short
        f.truncate(os.path.getsize(data) // 2)
    os.makedirs(os.path.join(str(tmp_path), "checkpoints", "ckpt-4_temp"))  # a killed write
    lines = []
    module, keeper = _keeper(tmp_path, lines.append)
    assert not os.path.exists(os.path.join(str(tmp_path), "checkpoints", "ckpt-4_temp"))
    path = keeper.restore_latest()
    assert path.endswith("ckpt-2") and np.all(module.v.numpy() == 2.0)
    assert any("cannot read the checkpoint" in line and "ckpt-3" in line for line in lines)
    assert any("newest readable" in line for line in lines)


def test_no_readable_checkpoint_raises_the_error(tmp_path):
    module, keeper = _keeper(tmp_path, print)
    keeper.save()
    with open(keeper.latest + ".index", "wb") as f:
        f.write(b"garbage")
    _, keeper = _keeper(tmp_path, lambda line: None)
    with pytest.raises((tf.errors.OpError, ValueError)):  # the first reader's own error
        keeper.restore_latest()


@pytest.mark.parametrize("garbage", ["not a state file", ""])
def test_an_unreadable_state_file_is_reported(tmp_path, garbage):
    module, keeper = _keeper(tmp_path, print)
    keeper.save_best()
    best_dir = os.path.join(str(tmp_path), "best")
    with open(os.path.join(best_dir, "checkpoint"), "w") as f:
        f.write(garbage)
    prefix, problem = checkpoint_in(best_dir)
    assert prefix.endswith("ckpt-1") and "state file" in problem
    assert checkpoint_in(str(tmp_path / "nothing")) == (None, None)
