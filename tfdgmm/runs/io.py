"""Atomic file writing for run directories: a reader never sees half a file."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any

    from tfdgmm.types import PathLike

__all__ = ["dump_yaml", "dump_json", "json_default", "Tee"]


def dump_yaml(obj: Any, path: PathLike) -> None:
    import yaml

    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        yaml.safe_dump(obj, f, sort_keys=False, default_flow_style=None)
    os.replace(tmp, path)


def dump_json(obj: Any, path: PathLike) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=json_default)
        f.write("\n")
    os.replace(tmp, path)


def json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


class Tee:
    """Log lines to stdout and to a file (a run's `train.log`)."""

    def __init__(self, path: PathLike) -> None:
        self._path = path

    def __call__(self, line: str) -> None:
        print(line, flush=True)
        with open(self._path, "a") as f:
            f.write(line + "\n")
