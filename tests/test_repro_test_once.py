"""repro/test_once.py (Table 4): the best validation run is scored on the test split once, by the
thorough search, with the validation split scored by the same search beside it."""

import json
import os

import numpy as np
from repo_scripts import ROOT, load_script
from test_cli import FAST  # (the fast schedule of the tiny config)

from tfdgmm import cli

TINY = os.path.join(ROOT, "configs", "tiny.yaml")


def _images(rng, n):
    low = rng.normal(size=(n, 8, 8, 3))
    images = np.repeat(np.repeat(low, 4, axis=1), 4, axis=2) + 0.3 * rng.normal(size=(n, 32, 32, 3))
    return np.clip(128 + 40 * images, 0, 255).astype(np.uint8)


def test_the_test_split_is_scored_once_by_the_thorough_search(tmp_path, capsys):
    rng = np.random.default_rng(2)
    data = tmp_path / "data"
    data.mkdir()
    for name, n in (("train", 120), ("test", 30)):
        np.savez(data / f"{name}.npz", images=_images(rng, n), labels=np.zeros(n, np.int64))
    runs_dir = tmp_path / "runs"
    for name, updates in (("short", "10"), ("long", "30")):
        argv = ["train", "--config", TINY, "--data", str(data), "--out", str(runs_dir / name)]
        argv += FAST + ["--set", f"training.updates_first={updates}", "--no-figures"]
        assert cli.main(argv) == 0
    capsys.readouterr()
    vals = {}
    for name in ("short", "long"):
        with open(runs_dir / name / "metrics.json") as f:
            vals[name] = json.load(f)["splits"]["validation"]["lower_bound_nats"]
    best = max(vals, key=vals.get)

    script = load_script("repro/test_once.py")
    argv = ["--runs", str(runs_dir), "--restarts", "1", "--donors", "2", "--rounds", "2"]
    assert script.main(argv) == 0
    with open(runs_dir / "test-selection.json") as f:
        sel = json.load(f)
    assert sel["run"] == best and sel["validation_lower_bound"] == vals[best]
    assert sel["search"] == {"restarts": 1, "donors": 2, "rounds": 2}
    assert sel["test"]["num_images"] == 30 and sel["test"]["search"]["starts"] == 2
    same = sel["validation_same_search"]
    assert same["num_images"] == 40 and same["search"]["starts"] == 2
    for split in ("test", "validation"):
        assert os.path.isfile(runs_dir / best / f"evaluation-{split}-thorough.json")
    assert "validation by the same search" in capsys.readouterr().out
    # the test split is touched once
    assert script.main(["--runs", str(runs_dir)]) == 0
    assert "already used" in capsys.readouterr().out
