"""The data policy of a run: which images, how many, and how they are dequantised."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy as np

    from tfdgmm.data import Split, Splits
    from tfdgmm.types import Config, NatsToBpd

__all__ = ["DataLoadError", "load_data", "dequantized", "train_images", "bpd_fn"]


class DataLoadError(RuntimeError):
    """The data could not be loaded; the message says what to pass instead."""


def load_data(data_cfg: dict, spec: str | None = None) -> Splits:
    """`tfdgmm.data.load_cifar10` with the config's limits; a clear error naming `--data`."""
    from tfdgmm.data import DataError, load_cifar10

    spec = spec or data_cfg.get("spec") or "tfds"
    try:
        return load_cifar10(
            spec,
            validation_size=int(data_cfg["validation_size"]),
            train_limit=data_cfg.get("train_limit"),
            validation_limit=data_cfg.get("validation_limit"),
            test_limit=data_cfg.get("test_limit"),
        )
    except DataError as e:
        tfds = spec in ("tfds",) or str(spec).startswith("tfds:")
        hint = (
            ""
            if not tfds or "--data" in str(e)
            else " Pass a local copy of CIFAR-10 with --data PATH (a directory holding train.npz "
            "+ test.npz, e.g. ../shared/data/cifar10-jpeg75, or the official batches)."
        )
        raise DataLoadError(f"could not load the data ({spec}): {e}{hint}") from e


def dequantized(split: Split, data_cfg: Config) -> np.ndarray:
    return split.dequantized(int(data_cfg["noise_seed"]))


def train_images(split: Split, data_cfg: Config) -> np.ndarray | Callable[[int], np.ndarray]:
    """Fixed noise: an array. Per-iteration noise: a callable `t -> images` (stateless)."""
    if data_cfg["dequantize"] == "fixed":
        return dequantized(split, data_cfg)
    import numpy as np

    from tfdgmm.data import dequantize

    seed = int(data_cfg["noise_seed"])

    def images(t: int) -> np.ndarray:
        rng = np.random.default_rng([seed, 0x17E2, int(t)])
        return dequantize(split.images, rng.random(split.images.shape))

    return images


def bpd_fn(num_dims: int) -> NatsToBpd:
    from tfdgmm.units import nats_to_bits_per_dim

    return functools.partial(nats_to_bits_per_dim, num_dims=num_dims)
