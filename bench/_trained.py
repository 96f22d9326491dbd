"""Loading a trained run for the E-step benchmarks: its model, training images and stored paths.

`load(run_dir, checkpoint=None)` rebuilds the model of a `tfdgmm train` run directory from a
checkpoint of `RUN_DIR/checkpoints/` (the newest by default) together with the training
images exactly as the run saw them (same limits, same fixed dequantization noise) and the
E-step paths stored with them: the state an E-step of that run starts from.
"""

import os

import numpy as np
import tensorflow as tf

import tfdgmm
from tfdgmm.runs.config import load_run_config
from tfdgmm.runs.data import load_data, train_images
from tfdgmm.training import EMConfig
from tfdgmm.training.search import DatasetSearch


def load(run_dir, checkpoint=None, data_spec=None):
    """`(config, model, em_config, images [N, 32, 32, 3], paths tuple, lower bounds [N],
    checkpoint prefix)`."""
    config = load_run_config(os.path.join(run_dir, "config.yaml"))
    model = tfdgmm.DeepGMM.from_config(config["model"])
    em = EMConfig.from_dict(config["training"])
    splits = load_data(config["data"], data_spec)
    x = train_images(splits.train, config["data"])
    if callable(x):
        x = x(0)
    x = np.asarray(x, np.float32)
    if checkpoint is None:
        checkpoint = tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints"))
        if checkpoint is None:
            raise FileNotFoundError(f"{run_dir}/checkpoints has no checkpoint")
    search = DatasetSearch(model, x, batch_size=min(500, len(x)), name="train_search")
    status = tf.train.Checkpoint(model=model, train=search.checkpoint_items()).read(checkpoint)
    status.expect_partial()
    return config, model, em, x, search.path(), search.lower.numpy(), checkpoint
