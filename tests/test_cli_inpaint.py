"""`tfdgmm inpaint` and `tfdgmm score` end to end on a tiny trained run."""

import csv
import os

import numpy as np
import pytest
import tensorflow as tf

from tfdgmm import cli, runs
from tfdgmm.data import dequantize
from tfdgmm.data.dequantize import reference_noise

HERE = os.path.dirname(os.path.abspath(__file__))
TINY = os.path.join(HERE, "..", "configs", "tiny.yaml")
FAST = [
    "--set",
    "data.validation_size=20",
    "--set",
    "data.train_limit=null",
    "--set",
    "data.validation_limit=null",
    "--set",
    "data.test_limit=null",
    "--set",
    "training.em_iterations=1",
    "--set",
    "training.updates_first=10",
    "--set",
    "training.lr_final_updates=2",
    "--set",
    "training.estep_batch_size=40",
    "--set",
    "training.data_init_images=60",
    "--no-figures",
]


def _images(n, seed):
    rng = np.random.default_rng(seed)
    low = rng.normal(size=(n, 8, 8, 3))
    images = np.repeat(np.repeat(low, 4, axis=1), 4, axis=2) + 0.3 * rng.normal(size=(n, 32, 32, 3))
    return np.clip(128 + 40 * images, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A run of configs/tiny.yaml (2 paths: conditionals are exact) trained for 10 updates."""
    root = tmp_path_factory.mktemp("inpaint")
    npz = str(root / "small.npz")
    np.savez(npz, images=_images(80, 0), labels=np.zeros(80, np.int64))
    run = str(root / "run")
    assert cli.main(["train", "--config", TINY, "--data", npz, "--out", run] + FAST) == 0
    return run, npz, root


def _model(run):
    return runs.commands.run_model(run)[1]


def _png_dir(path, images):
    os.makedirs(path, exist_ok=True)
    for i, img in enumerate(images):
        tf.io.write_file(os.path.join(path, f"img{i:02d}.png"), tf.io.encode_png(img))
    return str(path)


def test_inpaint_writes_the_grid_and_reports_exact_conditionals(tiny_run, tmp_path, capsys):
    run, npz, _ = tiny_run
    out = str(tmp_path / "grid.png")
    args = ["inpaint", run, "--mask", "center", "--n", "3", "--images", "2", "--data", npz]
    assert cli.main(args + ["--split", "train", "--out", out]) == 0
    printed = capsys.readouterr().out
    assert os.path.isfile(out) and out in printed
    png = tf.io.decode_png(tf.io.read_file(out)).numpy()
    assert png.shape[1] > 2 * png.shape[0]  # 6 columns (original, masked, mean, 3 samples), 2 rows
    lines = [ln for ln in printed.splitlines() if "log p(x_m | x_o)" in ln]
    assert len(lines) == 2 and "PSNR" in lines[0]
    # the printed conditional log-likelihood is the library's (first training image)
    model = _model(run)
    pixels = np.load(npz)["images"][:1]
    x = dequantize(pixels, reference_noise(0, 0, 1, (32, 32, 3)))
    mask = runs.inpaint.make_mask("center", (32, 32, 3))
    c = model.conditional(x, mask, seed=tf.constant([0, 17]))
    assert c.log_weights.shape == [1, 2]  # exact: every path
    want = float(c.log_prob(x)[0])
    assert f"log p(x_m | x_o) {want:.1f} nats" in lines[0]


@pytest.mark.parametrize("kind", ["left", "random:0.5", "png", "npy"])
def test_inpaint_masks(tiny_run, tmp_path, kind):
    run, npz, _ = tiny_run
    spec = kind
    if kind in ("png", "npy"):
        m = np.full((32, 32, 1), 255, np.uint8)
        m[8:20, 4:30] = 0
        spec = str(tmp_path / f"mask.{kind}")
        if kind == "png":
            tf.io.write_file(spec, tf.io.encode_png(m))
        else:
            np.save(spec, (m[..., 0] > 0).astype(np.float32))
        want = np.broadcast_to(m > 0, (32, 32, 3))
        np.testing.assert_array_equal(runs.inpaint.make_mask(spec, (32, 32, 3)) > 0, want)
    out = str(tmp_path / "g.png")
    args = ["inpaint", run, "--mask", spec, "--n", "1", "--images", "1", "--data", npz]
    assert cli.main(args + ["--split", "train", "--out", out]) == 0
    assert os.path.isfile(out)


def test_inpaint_bad_masks_are_clear_errors(tiny_run, tmp_path, capsys):
    run, npz, _ = tiny_run
    white = str(tmp_path / "white.png")
    tf.io.write_file(white, tf.io.encode_png(np.full((32, 32, 1), 255, np.uint8)))
    small = str(tmp_path / "small.png")
    tf.io.write_file(small, tf.io.encode_png(np.zeros((16, 32, 1), np.uint8)))
    grey = str(tmp_path / "grey.npy")
    np.save(grey, np.full((32, 32), 0.5))
    cases = {
        "random:1.5": "0 < P < 1",
        "middle": "expected one of center, left",
        small: "does not fit the model's images",
        white: "no pixel is missing",
        grey: "values must be 0 (missing) or 1 (observed)",
        str(tmp_path / "none.png"): "no such file",
    }
    for spec, message in cases.items():
        args = ["inpaint", run, "--mask", spec, "--data", npz, "--split", "train"]
        assert cli.main(args + ["--out", str(tmp_path / "x.png")]) == 2, spec
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_score_png_folder_npz_and_errors(tiny_run, tmp_path, capsys):
    run, npz, root = tiny_run
    pixels = _images(5, 9)
    folder = _png_dir(tmp_path / "pngs", pixels)
    out = str(tmp_path / "scores.csv")
    assert cli.main(["score", run, "--data", folder, "--out", out]) == 0
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == [f"img{i:02d}.png" for i in range(5)]
    bpd = np.array([float(r["bits_per_dim"]) for r in rows])
    # the run's evaluation search on the same dequantised images (noise seed 0, from image 0)
    model = _model(run)
    x = dequantize(pixels, reference_noise(0, 0, 5, (32, 32, 3)))
    lower = model.log_prob_lower_bound(x, restarts=1, seed=[0, 104729]).numpy()
    np.testing.assert_allclose(bpd, 7.0 - lower / (3072 * np.log(2.0)), rtol=1e-5)
    assert "bits/dim over 5 images" in capsys.readouterr().out
    # a .npz (all its images, or the first --limit)
    assert cli.main(["score", run, "--data", npz, "--limit", "3", "--out", out]) == 0
    with open(out) as f:
        assert len(list(csv.DictReader(f))) == 3
    capsys.readouterr()
    # errors: a split the data does not have, images of the wrong shape
    assert cli.main(["score", run, "--data", str(root / "none"), "--out", out]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    bad = _png_dir(tmp_path / "bad", np.zeros((1, 16, 16, 3), np.uint8))
    assert cli.main(["score", run, "--data", bad, "--out", out]) == 2
    assert "the model takes [32, 32, 3]" in capsys.readouterr().err
