"""Stateless seeds: `fold_seed` derives every seed of a run from one (no global RNG state)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf

if TYPE_CHECKING:
    from tfdgmm.types import Seed

__all__ = ["fold_seed"]


def fold_seed(seed: Seed, *data: int | tf.Tensor) -> tf.Tensor:
    """A stateless seed `int32[2]` derived from `seed` (int or `[2]`) and integers `data`."""
    if isinstance(seed, (int, np.integer)):
        seed = [int(seed) & 0x7FFFFFFF, int(seed) >> 31]
    key = tf.cast(tf.convert_to_tensor(seed), tf.int64)
    for d in data:
        key = tf.random.experimental.stateless_fold_in(key, tf.cast(d, tf.int64))
    return tf.cast(key % 0x7FFFFFFF, tf.int32)  # int32 seeds for every stateless op
