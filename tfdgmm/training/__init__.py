"""Hard-EM training of deep GMMs (the paper's section 4.1).

* `EMConfig`: every knob (EM iterations, M-step updates and learning-rate schedule, E-step
  passes and restarts, early stopping, checkpoint and progress intervals, seed).
* `EMTrainer(model, config, train, validation, out_dir)`: `.fit(resume=False)`,
  `.evaluate(x)`, `.refine('train' | 'validation')`, `.history`.
* `DatasetSearch`: a dataset with its per-datapoint paths and bounds, and the E-step over it.
* `evaluate_bounds(model, x)`: lower and upper bounds of a model on images by a fresh search
  (more thorough with `starts`, e.g. `donor_starts`, and `rounds`);
  `bounds_record`, the one record of bounds; `EVAL_SEED_OFFSET` (`training/evaluation.py`).
* `guards.DivergenceGuard`: the M-step's divergence and NaN guard (when to roll back).
* `load_model_weights(model, run_dir)`: the best (or latest) weights of a run.
* `figures`: sample grids and first-layer filters (paper figures 5 and 6).

The training code knows nothing about any data set: it takes preprocessed float images.
"""

from __future__ import annotations

from tfdgmm.training.checkpointing import load_model_weights
from tfdgmm.training.config import EMConfig, learning_rate_at, mstep_updates
from tfdgmm.training.em import EMTrainer, TrainingInterrupted
from tfdgmm.training.evaluation import (
    EVAL_SEED_OFFSET,
    bounds_record,
    donor_starts,
    evaluate_bounds,
)
from tfdgmm.training.search import DatasetSearch, path_usage_entropy

__all__ = [
    "EVAL_SEED_OFFSET",
    "DatasetSearch",
    "EMConfig",
    "EMTrainer",
    "TrainingInterrupted",
    "bounds_record",
    "donor_starts",
    "evaluate_bounds",
    "learning_rate_at",
    "load_model_weights",
    "mstep_updates",
    "path_usage_entropy",
]
