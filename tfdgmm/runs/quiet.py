"""Importing TensorFlow without its start-up noise (for the command line and scripts)."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import logging

__all__ = ["quiet_tensorflow"]


class _NoRetracingWarning:
    """Drop TensorFlow's retracing warning: evaluation searches are traced on purpose."""

    @staticmethod
    def filter(record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


def _import_tensorflow_quietly() -> None:
    """Import TensorFlow with its start-up log lines silenced.

    `TF_CPP_MIN_LOG_LEVEL` must be set before TensorFlow is imported, and some C++ lines
    (absl's "All log messages before absl::InitializeLog()", oneDNN and CUDA notices, a failed
    `cuInit` without a GPU) ignore it: stderr is redirected while TensorFlow loads and lists
    its devices (Python errors still show: they are raised after it is restored).
    `TFDGMM_VERBOSE_TF=1` keeps everything.
    """
    if "tensorflow" in sys.modules or os.environ.get("TFDGMM_VERBOSE_TF") == "1":
        import tensorflow  # noqa: F401

        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (e.g. captured): nothing to silence
        import tensorflow  # noqa: F401

        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            import tensorflow as tf
            import tensorflow_probability  # noqa: F401

            # the first device query initialises CUDA, which logs an error on machines
            # without a GPU; the run's device report says what was found
            tf.config.list_physical_devices()
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def quiet_tensorflow() -> None:
    _import_tensorflow_quietly()
    import tensorflow as tf

    logger = tf.get_logger()
    if not any(isinstance(f, _NoRetracingWarning) for f in logger.filters):
        logger.addFilter(_NoRetracingWarning())
