"""Run orchestration: what a `tfdgmm` command does, as a library.

`tfdgmm.cli` (argparse only), `tfdgmm.main_job`, the tuner, `bench/` and `repro/` call these;
nothing imports `tfdgmm.cli`.

* `layout`: the names of a run directory's files (`tfdgmm.layout`, one definition, imports
  nothing, so training and export use it too; re-exported here).
* `config`: the run-config schema (`load_run_config`, `normalize_run_config`, `apply_overrides`).
* `data`: the data policy (`load_data`, dequantisation, `DataLoadError`).
* `io`: atomic writes (`dump_yaml`, `dump_json`) and the log tee.
* `lock`: the exclusive lock of a run directory (`RunLock`, `RunLockedError`).
* `errors`: one-line messages (a full disk says that `--resume` continues).
* `train`: `train_run`; `gating`: `gate_run`; `commands`: evaluate, sample, baseline,
  export, tune; `inpaint`: inpaint and score.

Importing this package does not import TensorFlow (the modules import it where they need it).
"""

from __future__ import annotations

from tfdgmm import layout
from tfdgmm.runs.commands import baseline_run, evaluate_run, export_run, sample_run, tune_run
from tfdgmm.runs.config import DATA_DEFAULTS, apply_overrides, load_run_config, normalize_run_config
from tfdgmm.runs.data import DataLoadError, load_data
from tfdgmm.runs.errors import is_disk_full, one_line
from tfdgmm.runs.gating import gate_run
from tfdgmm.runs.inpaint import inpaint_run, score_run
from tfdgmm.runs.lock import RunLock, RunLockedError
from tfdgmm.runs.quiet import quiet_tensorflow
from tfdgmm.runs.train import train_run

__all__ = [
    "layout",
    "DATA_DEFAULTS",
    "apply_overrides",
    "load_run_config",
    "normalize_run_config",
    "DataLoadError",
    "load_data",
    "train_run",
    "gate_run",
    "evaluate_run",
    "sample_run",
    "baseline_run",
    "export_run",
    "tune_run",
    "inpaint_run",
    "score_run",
    "quiet_tensorflow",
    "RunLock",
    "RunLockedError",
    "is_disk_full",
    "one_line",
]
