"""The `tfdgmm` command line end to end on the tiny config and a small .npz."""

import json
import os

import numpy as np
import pytest

from tfdgmm import cli
from tfdgmm.runs.train import known_baseline

HERE = os.path.dirname(os.path.abspath(__file__))
TINY = os.path.join(HERE, "..", "configs", "tiny.yaml")


@pytest.fixture(scope="module")
def small_npz(tmp_path_factory):
    """160 smooth random 32x32x3 uint8 images (the last 40 are the validation split)."""
    rng = np.random.default_rng(0)
    low = rng.normal(size=(160, 8, 8, 3))
    images = np.repeat(np.repeat(low, 4, axis=1), 4, axis=2)
    images += 0.3 * rng.normal(size=images.shape)
    images = np.clip(128 + 40 * images, 0, 255).astype(np.uint8)
    path = tmp_path_factory.mktemp("data") / "small.npz"
    np.savez(path, images=images, labels=np.zeros(160, np.int64))
    return str(path)


def _tensorboard_tags(logdir):
    import tensorflow as tf

    tags = set()
    for name in os.listdir(logdir):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(logdir, name)):
            tags.update(v.tag for v in event.summary.value)
    return tags


FAST = [
    "--set",
    "data.validation_size=40",
    "--set",
    "data.train_limit=null",
    "--set",
    "data.validation_limit=null",
    "--set",
    "data.test_limit=null",
    "--set",
    "training.updates_first=30",
    "--set",
    "training.updates_later=15",
    "--set",
    "training.lr_final_updates=5",
    "--set",
    "training.estep_batch_size=60",
]


def test_train_evaluate_sample_end_to_end(small_npz, tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "run")
    assert cli.main(["train", "--config", TINY, "--data", small_npz, "--out", out] + FAST) == 0
    for name in (
        "config.yaml",
        "command.txt",
        "train.log",
        "metrics.json",
        "figures/samples.png",
        "figures/filters.png",
        "figures/training_curve.png",
    ):
        assert os.path.exists(os.path.join(out, name)), name
    tags = _tensorboard_tags(os.path.join(out, "tensorboard"))
    for tag in (
        "mstep/loss",
        "mstep/learning_rate",
        "em/validation_lower_bound",
        "em/validation_upper_bound",
        "em/validation_lower_bound_bpd",
        "em/train_lower_bound",
        "paths/entropy_layer1",
        "figures/samples",
        "figures/filters",
        "figures/training_curve",
    ):
        assert tag in tags, (tag, sorted(tags))
    with open(os.path.join(out, "metrics.json")) as f:
        metrics = json.load(f)
    assert set(metrics["splits"]) == {"train", "validation"}  # a single .npz has no test split
    for r in metrics["splits"].values():
        assert np.isfinite(r["lower_bound_nats"]) and np.isfinite(r["lower_bound_bits_per_dim"])
        assert r["upper_bound_nats"] == pytest.approx(r["lower_bound_nats"] + np.log(2), abs=1e-3)
        assert r["lower_bound_bits_per_dim"] == pytest.approx(
            7 - r["lower_bound_nats"] / (3072 * np.log(2))
        )
    assert metrics["model"]["num_parameters"] > 0 and metrics["model"]["num_paths"] == "2"
    assert metrics["data"]["num_images"] == {"train": 120, "validation": 40}
    assert len(metrics["history"]) == 2 and metrics["wall_time_seconds"]["training_total"] > 0
    assert "train" in metrics["command"] and metrics["config"]["training"]["updates_first"] == 30
    text = capsys.readouterr().out
    assert "[EM 2/2] done" in text and "metrics:" in text
    assert text.count("devices: ") == 1 and "replica" in text.split("devices: ")[1].split("\n")[0]

    assert cli.main(["evaluate", out, "--split", "validation", "--restarts", "1"]) == 0
    with open(os.path.join(out, "evaluation-validation.json")) as f:
        ev = json.load(f)
    assert ev["splits"]["validation"]["num_images"] == 40
    # a thorough search: starts at the stored paths of the nearest training images, and rounds
    thorough = str(tmp_path / "thorough.json")
    argv = ["evaluate", out, "--restarts", "1", "--donors", "2", "--rounds", "2", "--out", thorough]
    assert cli.main(argv) == 0
    with open(thorough) as f:
        deep = json.load(f)["splits"]["validation"]
    assert deep["search"]["starts"] == 2 and 3 <= len(deep["search"]["trace"]) <= 5
    assert deep["lower_bound_nats"] >= ev["splits"]["validation"]["lower_bound_nats"] - 1e-6
    assert "donors: the stored paths of the 2 nearest of 120 training images" in (
        capsys.readouterr().out
    )

    png = str(tmp_path / "s.png")
    assert cli.main(["sample", out, "--n", "4", "--seed", "1", "--out", png]) == 0
    assert os.path.getsize(png) > 0

    # training into a run directory with checkpoints needs --resume; resuming a finished run
    # only recomputes the final bounds
    assert cli.main(["train", "--config", TINY, "--data", small_npz, "--out", out] + FAST) == 2
    assert "--resume" in capsys.readouterr().err
    assert cli.main(["train", "--out", out, "--resume", "--no-figures"]) == 0

    # --resume may change the schedule of the run's own config (recorded), not its model
    assert (
        cli.main(
            [
                "train",
                "--out",
                out,
                "--resume",
                "--no-figures",
                "--set",
                "training.learning_rate=0.001",
            ]
        )
        == 0
    )
    with open(os.path.join(out, "metrics.json")) as f:
        changes = json.load(f)["resume_changes"]
    assert changes[-1]["changes"] == {"training.learning_rate": [0.003, 0.001]}
    capsys.readouterr()
    assert cli.main(["train", "--out", out, "--resume", "--set", "model.patch_size=8"]) == 2
    assert "model section differs" in capsys.readouterr().err

    # counts are checked before anything runs
    for argv in (
        ["sample", out, "--n", "0"],
        ["sample", out, "--n", "-3"],
        ["evaluate", out, "--restarts", "-1"],
        ["evaluate", out, "--batch-size", "0"],
    ):
        with pytest.raises(SystemExit) as exit_:
            cli.main(argv)
        assert exit_.value.code == 2 and "must be at least" in capsys.readouterr().err, argv

    # a read-only run directory: the bounds are printed, then one line says where to write
    from tfdgmm.runs import commands

    real_dump = commands.dump_json

    def read_only(obj, path):
        if path.startswith(out):
            raise PermissionError(13, "Permission denied", path)
        return real_dump(obj, path)

    monkeypatch.setattr(commands, "dump_json", read_only)
    assert cli.main(["evaluate", out, "--restarts", "0"]) == 2
    captured = capsys.readouterr()
    assert "LB" in captured.out
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "Permission denied" in err and "--out" in err
    elsewhere = str(tmp_path / "eval.json")
    assert cli.main(["evaluate", out, "--restarts", "0", "--out", elsewhere]) == 0
    assert os.path.isfile(elsewhere)


def test_missing_data_is_a_clear_error(tmp_path, capsys):
    code = cli.main(
        [
            "train",
            "--config",
            TINY,
            "--data",
            str(tmp_path / "nope"),
            "--out",
            str(tmp_path / "run"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "nope" in err and "error" in err


# ---------------------------------------------------------------------- issue 16: first use


def _run_cli(*args, env_extra=None, timeout=300):
    import subprocess
    import sys

    root = os.path.normpath(os.path.join(HERE, ".."))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # as a user's shell has it
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, cwd=root, timeout=timeout
    )


def test_help_and_version_do_not_import_tensorflow(tmp_path):
    import tfdgmm

    res = _run_cli("-X", "importtime", "-m", "tfdgmm", "--help")
    assert res.returncode == 0 and "usage: tfdgmm" in res.stdout
    imported = {
        line.split("|")[-1].strip()
        for line in res.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "argparse" in imported
    assert not {"tensorflow", "keras", "tensorflow_probability"} & imported
    # the console script pip writes (`tfdgmm`): `from tfdgmm.cli import main`
    script = os.path.join(str(tmp_path), "tfdgmm")
    with open(script, "w") as f:
        f.write("import sys\nfrom tfdgmm.cli import main\nsys.exit(main())\n")
    res = _run_cli("-X", "importtime", script, "--help")
    assert res.returncode == 0 and "usage: tfdgmm" in res.stdout
    imported = {
        line.split("|")[-1].strip()
        for line in res.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "tfdgmm.cli" in imported and "tensorflow" not in imported
    res = _run_cli("-m", "tfdgmm", "train", "--help")
    assert res.returncode == 0 and "--no-figures" in res.stdout and res.stderr == ""
    res = _run_cli("-m", "tfdgmm", "--version")
    assert res.returncode == 0 and res.stdout.strip() == f"tfdgmm {tfdgmm.__version__}"


def test_errors_after_tensorflow_loads_are_one_line(tmp_path):
    """TensorFlow is imported (quietly) after parsing: its C++ start-up lines do not leak."""
    missing = str(tmp_path / "no_such_run")
    res = _run_cli("-m", "tfdgmm", "evaluate", missing)
    assert res.returncode == 2
    assert (
        res.stderr.strip() == f"tfdgmm evaluate: error: no run directory at {missing} "
        f"(train one with `tfdgmm train --config FILE --out {missing}`)"
    )


def test_every_option_has_help():
    parser = cli._parser()
    sub = next(a for a in parser._actions if a.choices and "train" in a.choices)
    missing = []
    for name, p in sub.choices.items():
        for action in p._actions:
            if action.option_strings and action.dest != "help" and not action.help:
                missing.append(f"{name} {action.option_strings[0]}")
    assert not missing, missing


def test_missing_run_directory_messages(tmp_path, capsys):
    nope = str(tmp_path / "nope")
    for argv in (["evaluate", nope], ["sample", nope]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"tfdgmm {argv[0]}: error: no run directory at {nope}"), err
    os.makedirs(tmp_path / "empty")
    assert cli.main(["evaluate", str(tmp_path / "empty")]) == 2
    assert "has no config.yaml" in capsys.readouterr().err


def test_baseline_jitter(small_npz, tmp_path, capsys):
    # 20 training images in 3072 dimensions: the ML covariance is singular
    args = [
        "baseline",
        "--data",
        small_npz,
        "--validation-size",
        "40",
        "--train-limit",
        "20",
        "--validation-limit",
        "10",
    ]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "--jitter" in err and "not positive definite" in err
    assert cli.main(args + ["--jitter", "0.01", "--out", str(tmp_path)]) == 0
    with open(tmp_path / "baseline.json") as f:
        result = json.load(f)
    assert result["jitter"] == 0.01
    assert all(np.isfinite(r["nats"]) for r in result["splits"].values())


def test_training_curve_uses_a_baseline_of_the_same_noise(tmp_path):
    assert known_baseline(str(tmp_path), {"noise_seed": 0}) is None
    with open(tmp_path / "baseline.json", "w") as f:
        json.dump(
            {"noise_seed": 0, "splits": {"train": {"nats": 100.5}, "validation": {"nats": 90.0}}}, f
        )
    assert known_baseline(str(tmp_path), {"noise_seed": 0}) == {"train": 100.5, "validation": 90.0}
    assert known_baseline(str(tmp_path), {"noise_seed": 1}) is None
