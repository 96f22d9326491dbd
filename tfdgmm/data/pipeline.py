"""`tf.data` input pipeline: float32 batches on [-1, 1) plus each datapoint's index.

Everything is stateless (derived from the given seeds, not from TensorFlow's global seed), so
the stream of batches is identical on every run with the same arguments.

* Order: epoch `e` visits every datapoint exactly once, in the order
  `tf.random.experimental.stateless_shuffle(range(N), seed=fold_in([seed, 0], e))` (or in
  index order when `shuffle=False`). Batches never straddle epochs; the last batch of an epoch
  is smaller unless `drop_remainder=True`.
* `dequantize='fixed'`: the reference noise of `tfdgmm.data.dequantize`, drawn once;
  the dataset is materialised as float32 in memory (N x 12 KiB).
* `dequantize='epoch'`: fresh noise every epoch, drawn per batch with
  `stateless_uniform(seed=fold_in(fold_in(fold_in([noise_seed, 1], noise_start), e), b),
  alg='philox')` for batch `b` of epoch `e`, `noise_start` being the split's place in the
  fixed-noise stream (so splits get independent noise). Reproducible for the same seeds and batch
  size; a datapoint's noise depends on which batch it lands in. (Per-datapoint keys cost ~60 us
  per image in tf.data, 5 s per 40k epoch on 2 cores, so the vectorised per-batch draw is used.)
* `dequantize='midpoint'`: no noise, `(pixel + 0.5) / 128 - 1`.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfdgmm.data.splits import Split

DEQUANTIZE_MODES = ("fixed", "epoch", "midpoint")


def _epochs(repeat) -> tf.data.Dataset:
    if repeat is True:
        return tf.data.Dataset.counter()
    if repeat is False or repeat is None:
        return tf.data.Dataset.range(1)
    if isinstance(repeat, (int, np.integer)) and repeat >= 1:
        return tf.data.Dataset.range(int(repeat))
    raise ValueError(
        f"repeat must be True (forever), False/None (one epoch) or an int >= 1, got {repeat!r}"
    )


def make_dataset(
    data,
    batch_size: int,
    seed: int = 0,
    shuffle: bool = True,
    repeat=False,
    dequantize: str = "fixed",
    with_index: bool = True,
    noise_seed: int = 0,
    drop_remainder: bool = False,
) -> tf.data.Dataset:
    """Batches of dequantized images `float32 [B, H, W, C]` (and `int64 [B]` indices).

    Args:
      data: a `tfdgmm.data.Split` or a uint8 array `[N, H, W, C]` (e.g. CIFAR-10's
        `[N, 32, 32, 3]`; treated as a training file: stream positions `0 .. N-1`).
      batch_size: images per batch.
      seed: shuffling seed.
      shuffle: reshuffle every epoch (deterministically from `seed` and the epoch number).
      repeat: `False` one epoch, an int `k` for `k` epochs, `True` forever.
      dequantize: `'fixed'` (noise fixed once per dataset, the reference layout),
        `'epoch'` (redrawn every epoch) or `'midpoint'` (no noise).
      with_index: yield `(x, index)` where `index` is each image's position in `data`
        (to look up per-datapoint state such as an EM path); otherwise yield `x` only.
      noise_seed: the noise seed (the README's "noise seed 0" is `noise_seed=0`).
      drop_remainder: drop each epoch's last, smaller batch.
    """
    if dequantize not in DEQUANTIZE_MODES:
        raise ValueError(f"dequantize must be one of {DEQUANTIZE_MODES}, got {dequantize!r}")
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, (int, np.integer))
        or batch_size < 1
    ):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(data, Split):
        split = data
    else:
        images = np.asarray(data)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(
                f"data must be a Split or uint8 [N, H, W, C] images, got "
                f"{images.dtype} {tuple(images.shape)}"
            )
        split = Split("array", images, np.full(len(images), -1, np.int64), "array")
    n = len(split)
    if n == 0 or (drop_remainder and n < batch_size):
        raise ValueError(
            f"{split.source} {split.name}: {n} images give no batch of "
            f"{batch_size}{' (drop_remainder=True)' if drop_remainder else ''}"
        )

    if dequantize == "fixed":
        store = tf.constant(split.dequantized(noise_seed, np.float32))
    elif dequantize == "midpoint":
        store = tf.constant(split.dequantized(None, np.float32))
    else:
        store = tf.constant(split.images)
    noise_key = tf.constant([noise_seed, 1], tf.int64)
    shuffle_key = tf.constant([seed, 0], tf.int64)

    def fold(key, data):
        return tf.random.experimental.stateless_fold_in(key, data, alg="philox")

    split_noise_key = fold(noise_key, tf.constant(split.noise_start, tf.int64))

    def load(epoch, batch_number, index):
        if dequantize != "epoch":
            x = tf.gather(store, index)
        else:
            key = fold(fold(split_noise_key, epoch), batch_number)
            shape = tf.concat([tf.shape(index), split.images.shape[1:]], axis=0)
            u = tf.random.stateless_uniform(shape, seed=key, alg="philox")
            pixels = tf.cast(tf.gather(store, index), tf.float32)
            upper = (pixels + 1.0) / 128.0 - 1.0  # the bin's upper edge, exact
            # keep x inside the pixel's bin (float32 rounding can land on the edge)
            x = tf.minimum((pixels + u) / 128.0 - 1.0, tf.math.nextafter(upper, -2.0))
        return (x, index) if with_index else x

    def one_epoch(epoch):
        order = tf.range(n, dtype=tf.int64)
        if shuffle:
            order = tf.random.experimental.stateless_shuffle(
                order, seed=fold(shuffle_key, epoch), alg="philox"
            )
        ds = tf.data.Dataset.from_tensor_slices(order)
        ds = ds.batch(batch_size, drop_remainder=drop_remainder).enumerate()
        return ds.map(
            lambda b, i: load(epoch, b, i), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
        )

    ds = _epochs(repeat).flat_map(one_epoch)
    return ds.prefetch(tf.data.AUTOTUNE)
