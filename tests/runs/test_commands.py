"""`tfdgmm.runs.commands`: atomic export, an unreadable `best/checkpoint`, tune's seed."""

import errno
import json
import os

import numpy as np
import pytest
import tensorflow as tf
import yaml

import tfdgmm
from tfdgmm import cli, export, layout, runs

ARCH = {
    "image_shape": [4, 4, 1],
    "patch_size": 2,
    "layers": [{"type": "block_diagonal", "alternatives": 2}],
}


def _model(shift):
    model = tfdgmm.DeepGMM.from_config(ARCH)
    for v in model.trainable_variables:
        v.assign_add(shift * tf.ones_like(v))
    return model


def _lower(path, x):
    loaded = tf.saved_model.load(path)  # (kept alive while its function runs)
    return loaded.log_prob_lower_bound(x).numpy()


def _siblings(path):
    parent, name = os.path.split(path)
    return [e for e in os.listdir(parent) if e.startswith(f".{name}.")]


def test_overwrite_keeps_the_old_model_until_the_new_one_is_complete(tmp_path, monkeypatch):
    out = str(tmp_path / "saved")
    old, new = _model(0.1), _model(0.2)
    export.export_saved_model(old, out)
    x = old.sample(3, seed=[1, 2])
    want_old = _lower(out, x)
    real_save = tf.saved_model.save
    seen = {}

    def save_then_fill_the_disk(module, path, signatures=None):
        real_save(module, path, signatures=signatures)
        seen["old model still in place"] = export._target_state(out) == "savedmodel"
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tf.saved_model, "save", save_then_fill_the_disk)
    with pytest.raises(OSError, match="No space"):
        export.export_saved_model(new, out, overwrite=True)
    assert seen == {"old model still in place": True}
    np.testing.assert_array_equal(_lower(out, x), want_old)
    assert _siblings(out) == []  # the partial copy is gone
    monkeypatch.setattr(tf.saved_model, "save", real_save)
    export.export_saved_model(new, out, overwrite=True)
    assert not np.allclose(_lower(out, x), want_old) and _siblings(out) == []


def test_an_interrupted_exports_leftovers_are_recognised_and_replaced(tmp_path):
    out = tmp_path / "saved"
    (out / "variables").mkdir(parents=True)  # what a killed direct write left behind
    partial = tmp_path / f".saved{export._PARTIAL}99999"
    (partial / "variables").mkdir(parents=True)
    export.export_saved_model(_model(0.1), str(out))  # no --overwrite needed: not a model
    assert export._target_state(str(out)) == "savedmodel" and not partial.exists()


def test_an_overwrite_killed_between_its_renames_gets_the_old_model_back(tmp_path):
    out = str(tmp_path / "saved")
    model = _model(0.1)
    export.export_saved_model(model, out)
    x = model.sample(2, seed=[3, 4])
    want = _lower(out, x)
    os.rename(out, os.path.join(str(tmp_path), f".saved{export._OLD}4242"))  # moved aside
    with pytest.raises(FileExistsError, match="holds a SavedModel.*overwrite"):
        export.export_saved_model(model, out)
    np.testing.assert_array_equal(_lower(out, x), want)
    assert _siblings(out) == []


def _run_dir(run, best_model, latest_model):
    os.makedirs(run)
    with open(os.path.join(run, layout.CONFIG), "w") as f:
        yaml.safe_dump({"model": ARCH, "training": {"em_iterations": 1}}, f)
    for sub, model in ((layout.BEST, best_model), (layout.CHECKPOINTS, latest_model)):
        tf.train.CheckpointManager(
            tf.train.Checkpoint(model=model), os.path.join(run, sub), max_to_keep=1
        ).save()


@pytest.mark.parametrize("garbage", ["this is not a state file", "", "\x00\xff{{"])
def test_a_garbage_best_state_file_is_reported_and_the_best_model_still_used(
    tmp_path, garbage, capsys
):
    run = str(tmp_path / "run")
    best, latest = _model(0.1), _model(0.3)
    _run_dir(run, best, latest)
    with open(os.path.join(run, layout.BEST, layout.STATE_FILE), "w", encoding="latin-1") as f:
        f.write(garbage)
    out = str(tmp_path / "saved")
    assert cli.main(["export", run, out, "--restarts", "1"]) == 0
    text = capsys.readouterr().out
    assert "WARNING" in text and "best/checkpoint" in text and "(best: " in text
    model, prefix = export.load_run_model(run)  # the best's own files, not the latest
    assert os.path.dirname(prefix).endswith(layout.BEST)
    np.testing.assert_array_equal(
        model.trainable_variables[0].numpy(), best.trainable_variables[0].numpy()
    )


def test_no_readable_best_is_an_error_and_never_exported_as_best(tmp_path, capsys):
    run = str(tmp_path / "run")
    _run_dir(run, _model(0.1), _model(0.3))
    for name in os.listdir(os.path.join(run, layout.BEST)):
        if name.startswith("ckpt-"):
            os.remove(os.path.join(run, layout.BEST, name))
    with open(os.path.join(run, layout.BEST, layout.STATE_FILE), "w") as f:
        f.write("garbage")
    assert cli.main(["export", run, str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "best/checkpoint" in err and "--which latest" in err and "\n" not in err.strip()
    assert cli.main(["export", run, str(tmp_path / "b"), "--which", "latest"]) == 0
    assert "(latest: " in capsys.readouterr().out
    # a run without best/ falls back to the latest and says so
    import shutil

    shutil.rmtree(os.path.join(run, layout.BEST))
    assert cli.main(["export", run, str(tmp_path / "c")]) == 0
    text = capsys.readouterr().out
    assert "(latest: " in text and "(best" not in text and "has no best" in text


def test_tune_refuses_zero_trials_and_a_falsy_seed(tmp_path, capsys):
    config = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "tiny.yaml")
    out = str(tmp_path / "t")
    with pytest.raises(SystemExit) as exit_:  # before TensorFlow loads
        cli.main(["tune", "--config", config, "--out", out, "--max-trials", "0"])
    assert exit_.value.code == 2 and "must be at least 1" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--max-trials must be at least 1"):
        runs.tune_run(config, out, max_trials=0)
    assert (
        cli.main(
            [
                "tune",
                "--config",
                config,
                "--out",
                out,
                "--data",
                "/nonexistent",
                "--max-trials",
                "1",
                "--seed",
                "0",
            ]
        )
        == 2
    )
    assert "--seed must be a positive" in capsys.readouterr().err
    assert not os.path.exists(out)


def test_the_oracle_seed_is_deterministic_by_default():
    from tfdgmm.runs import tune as tuner

    oracles = [tuner.make_oracle("random", max_trials=2) for _ in range(2)]
    assert oracles[0].seed == oracles[1].seed == tuner.DEFAULT_SEED
    with pytest.raises(ValueError, match="positive"):
        tuner.make_oracle("random", max_trials=2, seed=0)
    with pytest.raises(ValueError, match="max_trials"):
        tuner.make_oracle("random", max_trials=0)


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
