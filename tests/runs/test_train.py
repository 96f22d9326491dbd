"""`tfdgmm.runs.train`: check first, write second; the lock; what `--resume` may change."""

import copy
import os

import pytest

from tfdgmm import cli, layout, runs
from tfdgmm.runs.lock import RunLock
from tfdgmm.runs.train import check_run

HERE = os.path.dirname(os.path.abspath(__file__))
TINY = os.path.join(HERE, "..", "..", "configs", "tiny.yaml")


def _snapshot(run):
    out = {}
    for root, _, files in os.walk(run):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, run)] = (f.read(), os.stat(path).st_mtime_ns)
    return out


@pytest.fixture
def existing_run(tmp_path):
    """A run directory as `tfdgmm train` leaves it (files that must not change)."""
    run = str(tmp_path / "run")
    os.makedirs(os.path.join(run, layout.CHECKPOINTS))
    config = runs.load_run_config(TINY, ["data.validation_limit=100"])
    runs.io.dump_yaml(config, os.path.join(run, layout.CONFIG))
    for name, text in (
        (layout.COMMAND, "tfdgmm train ...\n"),
        (layout.LOG, "EM 1 done\n"),
        (os.path.join(layout.CHECKPOINTS, layout.STATE_FILE), 'model_checkpoint_path: "ckpt-3"\n'),
    ):
        with open(os.path.join(run, name), "w") as f:
            f.write(text)
    return run, config


def test_a_refused_train_does_not_touch_the_run(existing_run, capsys):
    run, config = existing_run
    before = _snapshot(run)
    other = runs.load_run_config(TINY, ["data.validation_limit=50"])
    with pytest.raises(FileExistsError, match="already holds checkpoints.*--resume"):
        runs.train_run(other, run, data_spec="/nonexistent")
    # the command line too: one line, nothing written
    assert (
        cli.main(
            [
                "train",
                "--config",
                TINY,
                "--out",
                run,
                "--set",
                "data.validation_limit=50",
                "--no-figures",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "already holds checkpoints" in err and len(err.strip().splitlines()) == 1
    assert _snapshot(run) == before


def test_a_refused_resume_does_not_touch_the_run(existing_run):
    run, config = existing_run
    before = _snapshot(run)
    bigger = copy.deepcopy(config)
    bigger["model"]["layers"][0]["kernel_size"] = 3
    with pytest.raises(ValueError, match="model section differs"):
        runs.train_run(bigger, run, resume=True)
    other_data = runs.load_run_config(TINY, ["data.validation_limit=50"])
    with pytest.raises(ValueError, match=r"data section differs .*validation_limit"):
        runs.train_run(other_data, run, resume=True)
    other_optimizer = copy.deepcopy(config)
    other_optimizer["training"]["batch_size"] = 7
    with pytest.raises(ValueError, match=r"training \['batch_size'\] differ"):
        runs.train_run(other_optimizer, run, resume=True)
    assert _snapshot(run) == before


def test_resume_may_change_the_schedule_and_says_what_changed(existing_run):
    run, config = existing_run
    slower = copy.deepcopy(config)
    slower["training"]["learning_rate"] = 0.0005
    slower["training"]["max_rollbacks"] = 20
    slower["data"]["spec"] = "/elsewhere"  # the source is the run's (or --data), not compared
    resolved, changes = check_run(slower, run, data_spec="/moved/data", resume=True)
    assert changes == {"training.learning_rate": (0.003, 0.0005), "training.max_rollbacks": (8, 20)}
    assert resolved["training"]["learning_rate"] == 0.0005
    assert resolved["model"] == config["model"] and resolved["data"]["spec"] == "/moved/data"
    # without --config the saved config is used as it is
    saved, changes = check_run(None, run, resume=True)
    assert saved == config and changes == {}


def test_a_locked_run_is_refused_in_one_line_and_left_alone(existing_run, capsys):
    run, _ = existing_run
    with RunLock(run, what="train"):  # a live owner (this process)
        before = _snapshot(run)
        assert cli.main(["train", "--out", run, "--resume", "--no-figures"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "in use by PID" in err
        assert _snapshot(run) == before


def test_only_the_chief_of_a_multi_worker_run_owns_the_run_directory(existing_run, monkeypatch):
    import json

    from tfdgmm.runs.train import _owns_run_dir

    run, config = existing_run
    cluster = {"worker": ["a:1", "b:2"]}
    for task, owns in (
        ({"type": "worker", "index": 0}, True),
        ({"type": "worker", "index": 1}, False),
    ):
        monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": task}))
        assert _owns_run_dir("multiworker") is owns
    assert _owns_run_dir("default") is True
    # another worker joins a run whose chief has already written checkpoints
    resolved, _ = check_run(config, run, refuse_existing=False)
    assert resolved == config
