"""Type aliases used in the annotations of the orchestration code (`runs/`, `training/`,
`export.py`, `keras.py`, `cli.py`).

Modules import them under `typing.TYPE_CHECKING` only (with `from __future__ import
annotations`), so importing a module never imports this one, nor TensorFlow through it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

__all__ = [
    "ChoicePath",
    "Config",
    "Hook",
    "Images",
    "Log",
    "NatsToBpd",
    "PathLike",
    "Seed",
    "Strategy",
]

#: Images `[N, H, W, C]` (or one image), as a numpy array or a tensor.
Images = np.ndarray | tf.Tensor
#: A path: one int32 choice tensor per layer (`[N]` or `[N, Hp, Wp]`), see docs/DESIGN.md.
ChoicePath = Sequence[tf.Tensor]
#: A stateless seed: an int, or an int32 `[2]` (list or tensor).
Seed = int | Sequence[int] | tf.Tensor
#: A callable that prints one line of text.
Log = Callable[[str], None]
#: Mean nats per image -> bits per dimension.
NatsToBpd = Callable[[float], float]
#: A file or directory name.
PathLike = str | os.PathLike
#: A config (or a section of one) as plain dicts, lists and scalars.
Config = dict[str, Any]
#: An `EMTrainer` hook: `hook(trainer, event, info)`.
Hook = Callable[[Any, str, dict], None]
#: A `tf.distribute` strategy.
Strategy = tf.distribute.Strategy
