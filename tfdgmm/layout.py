"""The layout of a run directory: the one place its file and folder names are spelled.

```none
RUN_DIR/
  config.yaml        the resolved run config (written once the run is accepted)
  command.txt        every command that trained into this directory, one a line
  train.log          the training log
  metrics.json       final bounds, history, timings
  checkpoints/       rolling checkpoints of the whole training state
    anchor/          the last checkpoint at an update-count boundary (the rollback target)
  best/              the model with the best validation lower bound so far
  gated/             a run directory of the model with gating networks (gating.enabled)
  figures/           PNGs
  tensorboard/       summaries
  .lock              held by the process that writes the directory (`tfdgmm.runs.lock`)
```

This module imports nothing, so every layer (training, export, the runs package) can use it.
"""

from __future__ import annotations

import os

CONFIG = "config.yaml"
#: Config file names looked up in a run directory, in this order.
CONFIG_NAMES = (CONFIG, "config.yml", "config.json")
COMMAND = "command.txt"
LOG = "train.log"
METRICS = "metrics.json"
CHECKPOINTS = "checkpoints"
#: Inside CHECKPOINTS/: the rollback target, saved only at update-count boundaries.
ANCHOR = "anchor"
BEST = "best"
GATED = "gated"
FIGURES = "figures"
TENSORBOARD = "tensorboard"
BASELINE = "baseline.json"
LOCK = ".lock"
#: The checkpoint manager's state file inside CHECKPOINTS/ and BEST/.
STATE_FILE = "checkpoint"


def path(run_dir, *names) -> str:
    """`os.path.join(run_dir, *names)`, spelled with the names above."""
    return os.path.join(os.fspath(run_dir), *names)
