"""tfdgmm.training.gating: fitting the gating networks after EM and between the E- and M-steps."""

import math

import numpy as np
import tensorflow as tf

import tfdgmm
from tfdgmm.training import EMConfig, EMTrainer
from tfdgmm.training.gating import GatingBetweenSteps, fit_gating, with_gating

IMAGE = [4, 4, 3]


HC = {"type": "half_convolution", "kernel_size": 3}


def make(layers, prior, seed=0):
    model = tfdgmm.DeepGMM.from_config(
        {
            "image_shape": IMAGE,
            "patch_size": 2,
            "layers": layers,
            "path_prior": prior,
            "seed": seed,
        },
        dtype=tf.float64,
    )
    rng = np.random.default_rng(seed)
    for v in model.trainable_variables:
        v.assign_add(0.3 * rng.standard_normal(v.shape))
    return model


def test_gating_raises_the_lower_bound_when_the_best_path_depends_on_the_sample():
    # Two layers with 2 alternatives each; data use only the paths (0, 0) and (1, 1). The top
    # layer's shift tells which one, so a gating network on the partial sample can predict the
    # bottom choice, while a uniform prior pays log 4 per image.
    layers = [
        {"type": "block_diagonal", "alternatives": 2},
        {"type": "diagonal", "alternatives": 2, "per_location": False},
    ]
    truth = make(layers, "table", seed=2)
    top = truth.layers[1]
    top.shift.assign(tf.constant([[3.0] * 12, [-3.0] * 12], tf.float64))
    truth.path_prior.table.assign(tf.math.log(tf.constant([0.5, 1e-9, 1e-9, 0.5], tf.float64)))
    x, _ = truth.sample_with_path(600, seed=tf.constant([1, 1]))
    uniform = tfdgmm.DeepGMM(truth.layers, IMAGE, 2, path_prior="uniform")
    path, lower_uniform = uniform.best_path(x, restarts=2, seed=tf.constant([2, 2]))
    gated = with_gating(uniform, hidden=8, seed=0)
    untrained = gated.joint_log_prob(x, path).numpy().mean()
    np.testing.assert_allclose(untrained, lower_uniform.numpy().mean(), rtol=1e-9)
    result = fit_gating(gated, x, path, steps=300, batch_size=100, learning_rate=1e-2)
    assert result["nats_after"] < result["nats_before"] - 0.5 * math.log(2)
    _, lower_gated = gated.best_path(x, init=path, restarts=1, seed=tf.constant([3, 3]))
    gain = lower_gated.numpy().mean() - lower_uniform.numpy().mean()
    # ideal gain: log 2 (bottom choice predicted; the top layer sees z and stays ~uniform)
    assert gain > 0.5 * math.log(2), gain


def test_gating_between_e_and_m_steps_hook(tmp_path):
    """The hook fits the gating networks after every searched E-step; EM still runs."""
    arch = {
        "image_shape": [4, 4, 3],
        "patch_size": 2,
        "path_prior": {"kind": "gating", "hidden": 4},
        "layers": [
            {"type": "block_diagonal", "alternatives": 2},
            {"type": "block_diagonal", "alternatives": 3},
        ],
    }
    model = tfdgmm.DeepGMM.from_config(arch)
    x = np.random.default_rng(0).normal(size=(120, 4, 4, 3)).astype(np.float32)
    lines = []
    hook = GatingBetweenSteps(steps=20, batch_size=60, learning_rate=1e-2, log=lines.append)
    cfg = EMConfig(
        em_iterations=1,
        updates_first=5,
        learning_rate=1e-2,
        lr_final_updates=2,
        estep_batch_size=120,
        early_stopping_patience=0,
        first_estep="search",
        progress_interval_seconds=1000,
    )
    trainer = EMTrainer(model, cfg, x, None, str(tmp_path), hooks=[hook], log=lambda s: None)
    history = trainer.fit()
    assert len(history) == 1 and [r["em_iteration"] for r in hook.history] == [1]
    for r in hook.history:
        assert r["nats_after"] < r["nats_before"], r
    assert any("gating between E- and M-step" in line for line in lines)
