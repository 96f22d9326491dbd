"""keras-tuner: trials are hard-EM runs; the best trial can be restored, re-evaluated, exported."""

import json
import os

import keras_tuner
import numpy as np
import pytest
import tensorflow as tf

import tfdgmm
from tfdgmm import export
from tfdgmm.runs import tune as tt

# 8x8x3 images, 2x2 patches (4 x 4 x 12 patch tensors); one EM iteration of a few updates.
BASE = {
    "model": {"image_shape": [8, 8, 3], "patch_size": 2, "layers": []},
    "training": {
        "em_iterations": 1,
        "updates_first": 8,
        "updates_later": 4,
        "learning_rate": 1e-2,
        "lr_final_updates": 2,
        "estep_batch_size": 100,
        "eval_restarts": 1,
        "early_stopping_patience": 0,
        "progress_interval_seconds": 1000,
    },
}
# a small corner of the default space: per-sample (shared) blocks trace fast
SPACE = {
    "bd_layers": [1],
    "alternatives": [2, 3],
    "hc_layers": [0, 1],
    "hc_kernel_size": [3],
    "patch_size": [2],
    "blocks": ["shared"],
    "learning_rate": (3e-3, 3e-2),
}


@pytest.fixture(scope="module")
def images():
    """Smooth random 8x8x3 images in [-1, 1]: 100 for training, 40 for validation."""
    rng = np.random.default_rng(0)
    low = rng.normal(size=(140, 4, 4, 3))
    x = np.repeat(np.repeat(low, 2, axis=1), 2, axis=2) + 0.3 * rng.normal(size=(140, 8, 8, 3))
    x = np.clip(x / 3, -1, 1).astype(np.float32)
    return x[:100], x[100:]


def test_default_search_space_builds_valid_models():
    base = tt.normalize_base_config(dict(BASE, model={"image_shape": [16, 16, 3]}))
    hp = keras_tuner.HyperParameters()
    tt.default_search_space(hp, base)
    assert {p.name for p in hp.space} == set(tt.DEFAULT_SPACE)
    assert [p for p in hp.space if p.name == "patch_size"][0].values == [2, 4, 8]
    for values in (
        {
            "bd_layers": 3,
            "alternatives": 4,
            "hc_layers": 3,
            "hc_kernel_size": 5,
            "patch_size": 4,
            "learning_rate": 1e-3,
            "blocks": "unshared",
        },
        {
            "bd_layers": 2,
            "alternatives": 8,
            "hc_layers": 0,
            "hc_kernel_size": 3,
            "patch_size": 2,
            "learning_rate": 1e-4,
            "blocks": "shared",
        },
    ):
        hp.values.update(values)
        config = tt.default_search_space(hp, base)
        model = tfdgmm.DeepGMM.from_config(config["model"])
        assert config["training"]["learning_rate"] == values["learning_rate"]
        assert model.patch_size == values["patch_size"]
        assert [k for k, _ in model.layer_specs if k > 1] == [values["alternatives"]] * values[
            "bd_layers"
        ]
        assert len(model.layers) == values["bd_layers"] * (1 + values["hc_layers"])
        shape = () if values["blocks"] == "shared" else tuple(model.patch_shape[:2])
        assert model.layer_specs[-1] == (values["alternatives"], shape)
    with pytest.raises(ValueError, match="unknown search space"):
        tt.default_search_space(keras_tuner.HyperParameters(), base, {"layerz": [1]})
    with pytest.raises(ValueError, match="image_shape"):
        tt.normalize_base_config({"model": {}})


def test_hyperband_budget_mapping():
    assert tt.hyperband_budget({"learning_rate": 1e-3}) is None
    assert tt.hyperband_budget(
        {"tuner/epochs": 3, "tuner/initial_epoch": 0, "tuner/bracket": 1, "tuner/round": 0}
    ) == {"em_iterations": 3, "initial_em_iterations": 0, "continue_trial": None}
    assert (
        tt.hyperband_budget(
            {"tuner/epochs": 9, "tuner/initial_epoch": 3, "tuner/trial_id": "0004"}
        )["continue_trial"]
        == "0004"
    )
    with pytest.raises(ValueError, match="tuner must be"):
        tt.make_oracle("grid")
    assert isinstance(
        tt.make_oracle("bayesian" if _has_bayesian() else "random", 2), keras_tuner.Oracle
    )


def _has_bayesian():
    try:
        import scipy  # noqa: F401
        import sklearn  # noqa: F401
    except ImportError:
        return False
    return True


def test_random_search_best_trial_is_reproducible_and_exportable(images, tmp_path):
    x_train, x_val = images
    t = tt.tune(
        BASE,
        x_train,
        x_val,
        max_trials=2,
        tuner="random",
        directory=str(tmp_path),
        project_name="search",
        space=SPACE,
        seed=1,
        verbose=False,
    )
    trials = [
        tr
        for tr in t.oracle.trials.values()
        if tr.status == keras_tuner.engine.trial.TrialStatus.COMPLETED
    ]
    assert len(trials) == 2
    run_dir = tt.best_run_dir(t)
    best = t.oracle.get_best_trials(1)[0]
    assert best.score == max(tr.score for tr in trials)
    for name in ("config.yaml", "metrics.json", "train.log", "best", "checkpoints"):
        assert os.path.exists(os.path.join(run_dir, name)), name  # trial checkpoints kept
    with open(os.path.join(tmp_path, "search", "best.json")) as f:
        assert json.load(f)["run_dir"] == run_dir

    # the reported objective equals the bound recomputed from the restored best model
    model = tt.best_model(t)
    config = t.trial_config(best.hyperparameters)
    recomputed = tt.objective_bounds(model, x_val, config["training"])["lower_bound_nats"]
    print(
        f"best trial {best.trial_id}: reported {best.score:.6f}, recomputed {recomputed:.6f}; "
        f"scores {[round(tr.score, 3) for tr in trials]}"
    )
    assert recomputed == pytest.approx(best.score, rel=1e-6, abs=1e-4)
    hp = best.hyperparameters.values
    assert [k for k, _ in model.layer_specs if k > 1] == [hp["alternatives"]]

    out = str(tmp_path / "saved")
    export.export_run(run_dir, out, search={"restarts": 1})
    loaded = tf.saved_model.load(out)
    assert tuple(loaded.sample(2, tf.constant([1, 2])).shape) == (2, 8, 8, 3)


def test_hyperband_continues_trials_in_em_iterations(images, tmp_path):
    """max_epochs=2, factor=2: two trials of 1 EM iteration, then the better one continued to
    2 EM iterations from its checkpoints (the search is cut after these 3 trials)."""
    x_train, x_val = images
    base = dict(BASE, training=dict(BASE["training"], em_iterations=2))
    t = tt.tune(
        base,
        x_train,
        x_val,
        max_trials=3,
        tuner="hyperband",
        max_epochs=2,
        factor=2,
        directory=str(tmp_path),
        project_name="hb",
        space=dict(SPACE, hc_layers=[0], alternatives=[2]),
        verbose=False,
    )
    trials = sorted(t.oracle.trials.values(), key=lambda tr: tr.trial_id)
    assert len(trials) == 3
    epochs = [tr.hyperparameters.values["tuner/epochs"] for tr in trials]
    assert epochs == [1, 1, 2]
    third = trials[2].hyperparameters.values
    parent = third["tuner/trial_id"]
    assert parent in (trials[0].trial_id, trials[1].trial_id)
    with open(os.path.join(t.get_trial_dir(trials[2].trial_id), "metrics.json")) as f:
        record = json.load(f)
    history = record["history"]
    # one metrics.json schema: a trial's is a run's (runs.train.run_record) plus its tuner block
    for key in ("config", "data", "model", "splits", "best_em_iteration", "em_iterations_run"):
        assert key in record, key
    for key in ("rollbacks", "replicas", "wall_time_seconds", "versions", "units"):
        assert key in record, key
    assert set(record["splits"]["validation"]) >= {"lower_bound_nats", "upper_bound_nats"}
    assert record["tuner"]["objective"]["value"] == record["tuner"]["metrics"]["val_lower_bound"]
    with open(os.path.join(t.get_trial_dir(parent), "metrics.json")) as f:
        parent_history = json.load(f)["history"]
    # the continued trial's first EM iteration is its parent's (copied checkpoints)
    assert [r["iteration"] for r in history] == [1, 2]
    assert history[0]["train_lower_bound"] == parent_history[0]["train_lower_bound"]


def test_tune_command_line(tmp_path, capsys):
    from tfdgmm import cli

    rng = np.random.default_rng(2)
    images = np.clip(128 + 40 * rng.normal(size=(60, 32, 32, 3)), 0, 255).astype(np.uint8)
    npz = str(tmp_path / "small.npz")
    np.savez(npz, images=images, labels=np.zeros(60, np.int64))
    config = str(tmp_path / "base.yaml")
    with open(config, "w") as f:
        json.dump(
            {
                "model": {"image_shape": [32, 32, 3]},
                "training": dict(BASE["training"], estep_batch_size=40),
                "data": {"validation_size": 20},
            },
            f,
        )
    out = str(tmp_path / "search")
    space = (
        "{bd_layers: [1], alternatives: [2], hc_layers: [0], patch_size: [8], "
        "blocks: [shared], learning_rate: [1.0e-3, 1.0e-2]}"
    )
    assert (
        cli.main(
            [
                "tune",
                "--config",
                config,
                "--max-trials",
                "1",
                "--data",
                npz,
                "--out",
                out,
                "--space",
                space,
                "--quiet",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "best trial" in text and "tfdgmm export" in text
    with open(os.path.join(out, "best.json")) as f:
        best = json.load(f)
    assert np.isfinite(best["val_lower_bound"]) and best["hyperparameters"]["patch_size"] == 8
    # a trial directory is a run directory: tfdgmm evaluate reproduces the objective
    assert cli.main(["evaluate", best["run_dir"], "--split", "validation"]) == 0
    with open(os.path.join(best["run_dir"], "evaluation-validation.json")) as f:
        evaluated = json.load(f)["splits"]["validation"]["lower_bound_nats"]
    assert evaluated == pytest.approx(best["val_lower_bound"], rel=1e-6, abs=1e-4)

    assert (
        cli.main(
            ["tune", "--config", config, "--max-trials", "1", "--out", out, "--space", "[1, 2]"]
        )
        == 2
    )
    assert "--space" in capsys.readouterr().err
