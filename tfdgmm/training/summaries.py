"""Visibility: TensorBoard scalars and images, periodic progress lines with an ETA, and the
one-line device report at the start of a run."""

from __future__ import annotations

import math
import sys
import time

import tensorflow as tf

__all__ = ["Summaries", "format_duration", "default_log", "RateMeter", "device_report"]


def default_log(message: str):
    """Print a line to stdout immediately (progress must be visible when piped to a file)."""
    print(message, file=sys.stdout, flush=True)


def format_duration(seconds) -> str:
    """`'1h02m'`, `'3m05s'`, `'12s'`; `'?'` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


class RateMeter:
    """Work units per second, smoothed (exponential moving average over measured chunks)."""

    def __init__(self, smoothing=0.3):
        self.rate = None
        self._smoothing = smoothing

    def update(self, units, seconds):
        if units <= 0 or seconds <= 0:
            return
        r = units / seconds
        self.rate = (
            r if self.rate is None else (1 - self._smoothing) * self.rate + self._smoothing * r
        )

    def eta(self, units):
        return None if not self.rate else units / self.rate


class Summaries:
    """Scalars for TensorBoard under `logdir` (or nothing when `logdir` is None)."""

    def __init__(self, logdir=None):
        self._writer = tf.summary.create_file_writer(logdir) if logdir else None

    def scalars(self, step, values: dict):
        if self._writer is None:
            return
        with self._writer.as_default(step=int(step)):
            for name, value in values.items():
                if value is None:
                    continue
                tf.summary.scalar(name, float(value))

    def image(self, step, name, image):
        """An image for TensorBoard's Images tab: a PNG file path, or an array `[H, W, C]`
        (uint8, or floats in [0, 1])."""
        if self._writer is None:
            return
        if isinstance(image, (str, bytes)) or hasattr(image, "__fspath__"):
            image = tf.io.decode_png(tf.io.read_file(str(image)), channels=0)
        image = tf.convert_to_tensor(image)
        if image.dtype != tf.uint8:
            image = tf.image.convert_image_dtype(
                tf.clip_by_value(tf.cast(image, tf.float32), 0.0, 1.0), tf.uint8
            )
        if image.shape[-1] == 4:  # RGBA PNGs from matplotlib
            image = image[..., :3]
        with self._writer.as_default(step=int(step)):
            tf.summary.image(name, image[None])

    def flush(self):
        if self._writer is not None:
            self._writer.flush()

    def close(self):
        if self._writer is not None:
            self._writer.close()


def device_report(strategy=None) -> str:
    """One line: where the run computes, e.g. `devices: CPU only (2 cores); strategy
    _DefaultDistributionStrategy, 1 replica` or `devices: 2 GPUs (...); strategy
    MirroredStrategy, 2 replicas`."""
    import os

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        names = []
        for g in gpus:
            try:
                names.append(
                    tf.config.experimental.get_device_details(g).get("device_name") or g.name
                )
            except (ValueError, RuntimeError):
                names.append(g.name)
        where = f"{len(gpus)} GPU{'s' if len(gpus) > 1 else ''} ({', '.join(names)})"
    else:
        where = f"CPU only ({os.cpu_count() or '?'} cores; no GPU visible to TensorFlow)"
    strategy = strategy or tf.distribute.get_strategy()
    replicas = int(getattr(strategy, "num_replicas_in_sync", 1))
    return (
        f"devices: {where}; strategy {type(strategy).__name__}, {replicas} "
        f"replica{'s' if replicas > 1 else ''}"
    )


class Clock:
    """Monotonic wall clock with an accumulated offset (so resumed runs keep counting)."""

    def __init__(self, offset=0.0):
        self._offset = float(offset)
        self._start = time.monotonic()

    def elapsed(self):
        return self._offset + time.monotonic() - self._start
