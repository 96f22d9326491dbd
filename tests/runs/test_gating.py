"""tfdgmm.runs.gating: a run with a gating section, end to end (gated/ beside the ungated run)."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
import yaml

import tfdgmm
from tfdgmm import cli, export, path_priors, runs
from tfdgmm.training import load_model_weights


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
        plain_lb = json.load(f)["splits"]["validation"]["lower_bound_nats"]
    assert np.isfinite(plain_lb)
    # donors: gated/ has no training checkpoint; the paths are those of the EM run it extends
    argv = ["evaluate", gdir, "--split", "validation", "--restarts", "1", "--donors", "1"]
    assert cli.main(argv + ["--rounds", "1", "--out", str(tmp_path / "donors.json")]) == 0
    with open(tmp_path / "donors.json") as f:
        assert json.load(f)["splits"]["validation"]["lower_bound_nats"] >= plain_lb - 1e-6
    out = str(tmp_path / "saved_gated")
    assert cli.main(["export", gdir, out, "--restarts", "1"]) == 0
    loaded = tf.saved_model.load(out)
    assert '"kind": "gating"' in loaded.metadata()["config"].numpy().decode()
    x = loaded.sample(3, tf.constant([1, 2], tf.int32))
    np.testing.assert_array_equal(
        x.numpy(), tf.cast(model.sample(3, seed=[1, 2]), tf.float32).numpy()
    )
    assert np.all(np.isfinite(loaded.log_prob_lower_bound(x).numpy()))


def test_a_finished_ungated_run_resumed_with_a_gating_section_fits_gating_without_more_em(
    npz_32, tmp_path
):
    """Table 3's gated models train the same EM as their ungated twins (`between_steps: 0`):
    `repro/full.sh` copies the finished ungated run and resumes it with the gated config. The
    resumed session must run no EM (same history, same weights, same final bounds) and then fit
    the gating networks."""
    import shutil

    plain_cfg = {k: v for k, v in GATED_CONFIG.items() if k != "gating"}
    paths = {}
    for name, cfg in (("plain", plain_cfg), ("gated", GATED_CONFIG)):
        paths[name] = str(tmp_path / f"{name}.yaml")
        with open(paths[name], "w") as f:
            yaml.safe_dump(cfg, f)
    run = str(tmp_path / "plain")
    args = ["--data", npz_32, "--no-figures"]
    assert cli.main(["train", "--config", paths["plain"], "--out", run, *args]) == 0
    copy = str(tmp_path / "gated")
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("metrics.json"))
    assert cli.main(["train", "--config", paths["gated"], "--out", copy, "--resume", *args]) == 0
    metrics = {}
    for name, d in (("plain", run), ("gated", copy)):
        with open(os.path.join(d, "metrics.json")) as f:
            metrics[name] = json.load(f)
    plain, gated = metrics["plain"], metrics["gated"]
    assert "gating" not in plain and "gating" in gated
    assert gated["em_iterations_run"] == plain["em_iterations_run"] == 2
    assert gated["history"] == plain["history"]
    for split in ("train", "validation"):
        assert gated["splits"][split]["lower_bound_nats"] == pytest.approx(
            plain["splits"][split]["lower_bound_nats"], abs=1e-6
        )
    fit = gated["gating"]["fit"]
    assert fit["train_neg_log_prior_after"] < fit["train_neg_log_prior_before"]
    with open(os.path.join(copy, "train.log")) as f:
        second_session = f.read().split("resumed from")[-1]
    assert "] M-step:" not in second_session and "] E-step on" not in second_session
