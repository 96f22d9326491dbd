"""Visibility: TensorBoard scalars and periodic progress lines with an ETA."""

from __future__ import annotations

import math
import sys
import time

import tensorflow as tf

__all__ = ["Summaries", "format_duration", "default_log", "RateMeter"]


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
        self.rate = r if self.rate is None else (1 - self._smoothing) * self.rate + \
            self._smoothing * r

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

    def flush(self):
        if self._writer is not None:
            self._writer.flush()

    def close(self):
        if self._writer is not None:
            self._writer.close()


class Clock:
    """Monotonic wall clock with an accumulated offset (so resumed runs keep counting)."""

    def __init__(self, offset=0.0):
        self._offset = float(offset)
        self._start = time.monotonic()

    def elapsed(self):
        return self._offset + time.monotonic() - self._start
