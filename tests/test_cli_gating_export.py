"""`tfdgmm export` and gating networks in training runs (`gating:` config section)."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
import yaml

import tfdgmm
from tfdgmm import cli, export, path_priors, runs
from tfdgmm.training import EMConfig, EMTrainer, load_model_weights
from tfdgmm.training.gating import GatingBetweenSteps, normalize_gating

TINY_ARCH = {
    "image_shape": [4, 4, 1],
    "patch_size": 2,
    "layers": [{"type": "block_diagonal", "alternatives": 2}],
}


def _write_run(run_dir, model):
    """A run directory as the trainer leaves it (config.yaml, best/), without training."""
    os.makedirs(run_dir)
    with open(os.path.join(run_dir, "config.yaml"), "w") as f:
        yaml.safe_dump({"model": TINY_ARCH, "training": {"em_iterations": 1}}, f)
    ckpt = tf.train.Checkpoint(model=model)
    tf.train.CheckpointManager(ckpt, os.path.join(run_dir, "best"), max_to_keep=1).save()


# ---------------------------------------------------------------------- export


def test_export_command(tmp_path, capsys):
    model = tfdgmm.DeepGMM.from_config(TINY_ARCH)
    for v in model.trainable_variables:
        v.assign_add(0.1 * tf.ones_like(v))
    run, out = str(tmp_path / "run"), str(tmp_path / "saved" / "tiny")
    _write_run(run, model)
    assert (
        cli.main(
            ["export", run, out, "--restarts", "1", "--restart-passes", "1", "--seed", "3", "4"]
        )
        == 0
    )
    assert "exported" in capsys.readouterr().out
    loaded = tf.saved_model.load(out)
    search = json.loads(loaded.metadata()["search_config"].numpy().decode())
    assert search["restarts"] == 1 and search["restart_passes"] == 1 and search["seed"] == [3, 4]
    x = model.sample(5, seed=[1, 1])
    _, lower = model.best_path(
        x, **export.search_settings(restarts=1, restart_passes=1, seed=[3, 4])
    )
    np.testing.assert_allclose(loaded.log_prob_lower_bound(x).numpy(), lower.numpy(), rtol=1e-6)

    # errors: one line on stderr, exit code 2
    for argv, text in (
        ([run, out], "pass --overwrite"),
        ([str(tmp_path / "nope"), str(tmp_path / "o2")], "does not exist"),
        ([run, str(tmp_path / "o3"), "--restarts", "0"], "restarts"),
        ([run, str(tmp_path / "o4"), "--which", "latest"], "no checkpoint"),
    ):
        assert cli.main(["export"] + argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("tfdgmm export: error:") and text in err and "\n" not in err, err
    assert cli.main(["export", run, out, "--overwrite"]) == 0


# ---------------------------------------------------------------------- gating configs


def test_gating_section_is_checked_and_sets_the_prior_for_between_steps():
    base = {"model": TINY_ARCH, "training": {}}
    assert "gating" not in runs.normalize_run_config(base)  # no section: unchanged configs
    cfg = runs.normalize_run_config(dict(base, gating={"enabled": True, "steps": 10}))
    assert cfg["gating"]["steps"] == 10 and cfg["gating"]["hidden"] == 32
    assert cfg["model"]["path_prior"] == "uniform"  # after EM only: the trained model is not
    cfg = runs.normalize_run_config(
        dict(base, gating={"enabled": True, "between_steps": 5, "hidden": 8})
    )
    assert cfg["model"]["path_prior"] == {"kind": "gating", "hidden": 8, "kernel_size": 3}
    assert runs.normalize_run_config(cfg) == cfg  # idempotent (config.yaml is read back)
    for bad, text in (
        ({"enabled": True, "stpes": 3}, "unknown gating keys"),
        ({"steps": 0}, "gating.steps"),
        ({"learning_rate": -1}, "learning_rate"),
    ):
        with pytest.raises(ValueError, match=text):
            runs.normalize_run_config(dict(base, gating=bad))
    with pytest.raises(ValueError, match="path_prior"):
        runs.normalize_run_config(
            {
                "model": dict(TINY_ARCH, path_prior="factorized"),
                "gating": {"enabled": True, "between_steps": 1},
            }
        )
    assert normalize_gating(None)["enabled"] is False


def test_table3_gating_configs():
    here = os.path.dirname(os.path.abspath(__file__))
    for suffix in ("", "_cpu"):
        for layers in (1, 3):
            path = os.path.join(here, "..", "configs", f"table3_gating_L{layers}{suffix}.yaml")
            cfg = runs.load_run_config(path)
            inter = runs.load_run_config(path.replace("gating", "intermediate"))
            assert cfg["gating"]["enabled"] and cfg["gating"]["between_steps"] == 0
            assert cfg["model"] == inter["model"] and cfg["training"] == inter["training"]
            assert cfg["paper"]["table"] == 3


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


# ---------------------------------------------------------------------- a gated run end to end


@pytest.fixture(scope="module")
def npz_32(tmp_path_factory):
    """100 32x32x3 uint8 images whose two halves differ in brightness (the last 30 are the
    validation split)."""
    rng = np.random.default_rng(1)
    low = (
        rng.normal(size=(100, 8, 8, 3))
        + np.where(np.arange(100) % 2, 1.0, -1.0)[:, None, None, None]
    )
    images = np.repeat(np.repeat(low, 4, axis=1), 4, axis=2) + 0.3 * rng.normal(
        size=(100, 32, 32, 3)
    )
    path = tmp_path_factory.mktemp("data") / "small.npz"
    np.savez(
        path,
        images=np.clip(128 + 40 * images, 0, 255).astype(np.uint8),
        labels=np.zeros(100, np.int64),
    )
    return str(path)


GATED_CONFIG = {
    "description": "tiny gated run",
    "model": {
        "image_shape": [32, 32, 3],
        "patch_size": 4,
        "layers": [
            {"type": "half_convolution", "kernel_size": 3},
            {"type": "block_diagonal", "alternatives": 2},
            {"type": "block_diagonal", "alternatives": 2},
        ],
    },
    "training": {
        "em_iterations": 2,
        "updates_first": 20,
        "updates_later": 10,
        "learning_rate": 0.01,
        "lr_final_updates": 4,
        "estep_batch_size": 70,
        "eval_restarts": 1,
        "early_stopping_patience": 0,
        "progress_interval_seconds": 1000,
    },
    "data": {"validation_size": 30},
    "gating": {"enabled": True, "hidden": 8, "steps": 60, "batch_size": 70, "learning_rate": 0.01},
}


def test_gated_run_end_to_end(npz_32, tmp_path, capsys):
    config_path = str(tmp_path / "gated.yaml")
    with open(config_path, "w") as f:
        yaml.safe_dump(GATED_CONFIG, f)
    run = str(tmp_path / "run")
    assert (
        cli.main(["train", "--config", config_path, "--data", npz_32, "--out", run, "--no-figures"])
        == 0
    )
    with open(os.path.join(run, "metrics.json")) as f:
        metrics = json.load(f)
    block = metrics["gating"]
    fit = block["fit"]
    # untrained gating = uniform over the 4 paths
    assert fit["train_neg_log_prior_before"] == pytest.approx(np.log(4), rel=1e-5)
    assert fit["train_neg_log_prior_after"] < fit["train_neg_log_prior_before"]
    assert set(block["splits"]) == {"train", "validation"}
    ungated, gated = metrics["splits"]["train"], block["splits"]["train"]
    # the fit maximises the prior term on the fixed training paths, and the gated search
    # starts from them: the gated training bound cannot be lower (up to float32 sums)
    assert gated["lower_bound_nats"] >= ungated["lower_bound_nats"] - 1e-2
    assert block["lower_bound_gain_nats"]["train"] == pytest.approx(
        gated["lower_bound_nats"] - ungated["lower_bound_nats"]
    )
    assert (
        gated["lower_bound_nats"] - ungated["lower_bound_nats"]
        >= (fit["train_neg_log_prior_before"] - fit["train_neg_log_prior_after"]) - 1e-2
    )
    print(
        f"train LB ungated {ungated['lower_bound_nats']:.3f}, gated "
        f"{gated['lower_bound_nats']:.3f}; validation {metrics['splits']['validation']}"
        f" -> {block['splits']['validation']}; -log pi {fit}"
    )

    # the gated model is a run directory of its own
    gdir = os.path.join(run, "gated")
    gcfg = runs.load_run_config(os.path.join(gdir, "config.yaml"))
    assert gcfg["model"]["path_prior"] == {"kind": "gating", "hidden": 8, "kernel_size": 3}
    model, _ = export.load_run_model(gdir)
    assert isinstance(model.path_prior, path_priors.GatingPathPrior)
    # the ungated run is untouched: its model has the uniform prior
    plain = tfdgmm.DeepGMM.from_config(
        runs.load_run_config(os.path.join(run, "config.yaml"))["model"]
    )
    load_model_weights(plain, run)
    for a, b in zip(plain.layers[1].variables, model.layers[1].variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    capsys.readouterr()
    assert cli.main(["evaluate", gdir, "--split", "validation", "--restarts", "1"]) == 0
    with open(os.path.join(gdir, "evaluation-validation.json")) as f:
        assert np.isfinite(json.load(f)["splits"]["validation"]["lower_bound_nats"])
    out = str(tmp_path / "saved_gated")
    assert cli.main(["export", gdir, out, "--restarts", "1"]) == 0
    loaded = tf.saved_model.load(out)
    assert '"kind": "gating"' in loaded.metadata()["config"].numpy().decode()
    x = loaded.sample(3, tf.constant([1, 2], tf.int32))
    np.testing.assert_array_equal(
        x.numpy(), tf.cast(model.sample(3, seed=[1, 2]), tf.float32).numpy()
    )
    assert np.all(np.isfinite(loaded.log_prob_lower_bound(x).numpy()))
