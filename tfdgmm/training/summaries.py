"""Visibility: TensorBoard scalars and images, periodic progress lines with an ETA, and the
one-line device report at the start of a run.

Progress text lives here too: `RateMeter` (the speed, measured after the traced first call),
`format_duration` and `ProgressText` (the trainer's progress and ETA lines).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import tensorflow as tf

if TYPE_CHECKING:
    import numpy as np

    from tfdgmm.types import PathLike, Strategy

__all__ = [
    "ProgressLog",
    "RateMeter",
    "Summaries",
    "bpd_text",
    "default_log",
    "device_report",
    "em_eta_text",
    "format_duration",
    "mstep_progress_text",
    "replicas_text",
    "search_progress_text",
]


def default_log(message: str) -> None:
    """Print a line to stdout immediately (progress must be visible when piped to a file)."""
    print(message, file=sys.stdout, flush=True)


def format_duration(seconds: float | None) -> str:
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
    """Work units per second, smoothed (exponential moving average over measured chunks).

    The first `warmup` measurements (and the next one after `skip_next()`) are not counted:
    the first call of a `tf.function` traces it (a 1-minute M-step used to begin with
    "ETA 57m57s"), so the rate, and every ETA from it, starts after the traced call. Until a
    counted measurement exists `rate` is None and `eta` says so (None).
    """

    def __init__(self, smoothing: float = 0.3, warmup: int = 1) -> None:
        self.rate = None
        self._smoothing = smoothing
        self._skip = int(warmup)

    def skip_next(self) -> None:
        """Leave the next measurement out (e.g. the function is traced again)."""
        self._skip = max(self._skip, 1)

    def update(self, units: float, seconds: float) -> None:
        """Count `units` of work done in `seconds` (skipped while warming up)."""
        if units <= 0 or seconds <= 0:
            return
        if self._skip > 0:
            self._skip -= 1
            return
        r = units / seconds
        self.rate = (
            r if self.rate is None else (1 - self._smoothing) * self.rate + self._smoothing * r
        )

    def eta(self, units: float) -> float | None:
        """Seconds for `units` more at the current rate; None while unknown."""
        return None if not self.rate else units / self.rate


class Summaries:
    """Scalars for TensorBoard under `logdir` (or nothing when `logdir` is None)."""

    def __init__(self, logdir: PathLike | None = None) -> None:
        self._writer = tf.summary.create_file_writer(logdir) if logdir else None

    def scalars(self, step: int, values: dict) -> None:
        if self._writer is None:
            return
        with self._writer.as_default(step=int(step)):
            for name, value in values.items():
                if value is None:
                    continue
                tf.summary.scalar(name, float(value))

    def image(self, step: int, name: str, image: PathLike | np.ndarray | tf.Tensor) -> None:
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

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def device_report(strategy: Strategy | None = None) -> str:
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

    def __init__(self, offset: float = 0.0) -> None:
        self._offset = float(offset)
        self._start = time.monotonic()

    def elapsed(self) -> float:
        return self._offset + time.monotonic() - self._start


# ---------------------------------------------------------------------- progress text


class ProgressLog:
    """Progress lines `[EM t/T] text`, at most one per `interval` seconds (the first at once)."""

    def __init__(self, log: Callable[[str], None], interval: float, em_iterations: int) -> None:
        self.log = log
        self.interval = float(interval)
        self.em_iterations = int(em_iterations)
        self._last = 0.0

    def __call__(self, t: int, text: str) -> None:
        """Log `text` for EM iteration `t` (0-based) unless a line went out < `interval` ago."""
        now = time.monotonic()
        if now - self._last < self.interval:
            return
        self._last = now
        self.log(f"[EM {t + 1}/{self.em_iterations}] {text}")


def replicas_text(num_replicas: int) -> str:
    """`' on N replicas'` for more than one replica, else `''`."""
    return f" on {num_replicas} replicas" if num_replicas > 1 else ""


def bpd_text(bpd: float | None) -> str:
    """`' (4.018 bits/dim)'`, or `''` without a bits/dim value."""
    return "" if bpd is None else f" ({bpd:.3f} bits/dim)"


def _rate(rate: float | None, spec: str) -> str:
    """A measured rate, or `'?'` before the first counted measurement."""
    return "?" if rate is None else format(rate, spec)


def search_progress_text(
    label: str,
    position: int,
    num_batches: int,
    rate: float | None,
    replicas: str,
    eta: float | None,
) -> str:
    """An E-step progress line: batches done, images per second, ETA."""
    return (
        f"{label} {position}/{num_batches} batches, {_rate(rate, '.0f')} img/s{replicas}, "
        f"ETA {format_duration(eta)}"
    )


def mstep_progress_text(
    update: int,
    total: int,
    loss: float,
    learning_rate: float,
    rate: float | None,
    replicas: str,
    eta: float | None,
) -> str:
    """An M-step progress line: updates done, loss, learning rate, speed, ETA."""
    return (
        f"M-step {update}/{total} ({100 * update / total:.0f}%), loss {loss:.2f} "
        f"nats/image, lr {learning_rate:.2e}, {_rate(rate, '.1f')} updates/s{replicas}, "
        f"ETA {format_duration(eta)}"
    )


def em_eta_text(left: int, parts: list[float | None]) -> str:
    """`', ETA for N more EM iterations 3m05s'` from the stages' ETAs; `''` when none is left
    or a stage's speed is not measured yet."""
    if left <= 0 or any(p is None for p in parts):
        return ""
    return f", ETA for {left} more EM iterations {format_duration(sum(parts))}"
