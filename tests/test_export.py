"""SavedModel export: a round trip through a clean process that cannot import tfdgmm (nor TFP)
gives the live model's results, and run directories are loaded defensively."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

import tfdgmm
from tfdgmm import export

# 8x8x3 images, 2x2 patches: a half-convolution, unshared blocks (2 alternatives, chosen per
# location) and shared blocks (3 alternatives, chosen per sample) above them, so the E-step
# uses the seeded 'ranked' per-location scheme. 2^16 * 3 paths: no exact log_prob.
MAIN = {
    "image_shape": [8, 8, 3],
    "patch_size": 2,
    "layers": [
        {"type": "half_convolution", "kernel_size": 3},
        {"type": "block_diagonal", "alternatives": 2, "selection": "location"},
        {"type": "block_diagonal", "alternatives": 3, "selection": "sample"},
    ],
}
MAIN_SEARCH = {"restarts": 2, "restart_passes": 1, "location_options": {"top": 6}, "seed": [7, 11]}

# A float64 model with gating networks (a prior that depends on x), shared blocks below a
# per-location diagonal, 3 * 2^4 = 48 paths: exact log_prob is exported too.
TINY = {
    "image_shape": [4, 4, 1],
    "patch_size": 2,
    "dtype": "float64",
    "path_prior": {"kind": "gating", "hidden": 4},
    "layers": [
        {"type": "block_diagonal", "alternatives": 3},
        {"type": "diagonal", "alternatives": 2, "selection": "location"},
    ],
}

TINY_SEARCH = {"restarts": 1, "restart_passes": 2}  # the default seed

N_SAMPLES, SAMPLE_SEED = 5, [3, 4]

_LOADER = textwrap.dedent(r"""
    import json, os, sys, time

    class _Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("tfdgmm", "tensorflow_probability"):
                raise ImportError("blocked: " + name)

    sys.meta_path.insert(0, _Block())
    for blocked in ("tfdgmm", "tensorflow_probability"):
        try:
            __import__(blocked)
        except ImportError:
            pass
        else:
            raise SystemExit(blocked + " could be imported")

    import numpy as np
    import tensorflow as tf

    for name in sys.argv[1:]:
        start = time.monotonic()
        while not os.path.exists(name + "/ready"):  # the test process is still exporting it
            if time.monotonic() - start > 600:
                raise SystemExit("timed out waiting for " + name)
            time.sleep(0.05)
        m = tf.saved_model.load(name + "/saved_model")
        x = np.load(name + "/input.npz")["x"]
        out = {"sample": m.sample(%(n)d, %(seed)s).numpy(),
               "sample_keyword": m.sample(%(n)d, seed=%(seed)s).numpy(),
               "sample_unseeded": m.sample(%(n)d).numpy(),
               "sample_unseeded_again": m.sample(%(n)d).numpy(),
               "bits_per_dim": m.bits_per_dim(x).numpy(),
               "sample_signature": m.signatures["sample"](
                   n=tf.constant(%(n)d), seed=tf.constant(%(seed)s))["images"].numpy(),
               "lower": m.log_prob_lower_bound(x).numpy(),
               "lower_again": m.log_prob_lower_bound(x).numpy(),
               "upper": m.log_prob_upper_bound(x).numpy(),
               "image_shape": m.image_shape.numpy(),
               "patch_size": m.patch_size.numpy()}
        for key, value in m.best_path(x).items():
            out["best_path/" + key] = value.numpy()
        if hasattr(m, "log_prob"):
            out["log_prob"] = m.log_prob(x).numpy()
        meta = {k: v.numpy().decode() for k, v in m.metadata().items()}
        out["metadata"] = np.array(json.dumps(meta))
        out["num_paths_variable"] = np.array(m.num_paths.numpy().decode())
        np.savez(name + "/output.npz", **out)
    print("ok")
""") % {"n": N_SAMPLES, "seed": SAMPLE_SEED}


def _perturbed(config, seed):
    """A model from `config` with every trainable variable moved off its initial value."""
    model = tfdgmm.DeepGMM.from_config(config)
    rng = np.random.default_rng(seed)
    for v in model.trainable_variables:
        v.assign_add(0.1 * rng.standard_normal(v.shape).astype(v.dtype.as_numpy_dtype))
    return model


@pytest.fixture(scope="module")
def round_trip(tmp_path_factory):
    """Both models exported (the tiny one from a run directory by `export_run`), loaded and
    evaluated in a clean subprocess: `{name: (live model, search settings, input x, outputs)}`.
    """
    root = tmp_path_factory.mktemp("export")
    main, tiny = _perturbed(MAIN, 1), _perturbed(TINY, 2)
    rng = np.random.default_rng(3)
    cases = {"main": (main, MAIN_SEARCH, (6, 8, 8, 3)), "tiny": (tiny, TINY_SEARCH, (7, 4, 4, 1))}
    for name, (_, _, shape) in cases.items():
        os.makedirs(root / name)
        np.savez(root / name / "input.npz", x=rng.uniform(-1.5, 1.5, shape).astype(np.float32))
    # The clean process starts at once and evaluates each model as soon as it is exported
    # (marked by a 'ready' file), while this process exports the next and computes the live side.
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    with open(root / "stdout.txt", "w") as stdout, open(root / "stderr.txt", "w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-c", _LOADER, *cases], cwd=root, env=env, stdout=stdout, stderr=stderr
        )
    try:
        out_dir = str(root / "main" / "saved_model")
        assert export.export_saved_model(main, out_dir, search=MAIN_SEARCH) == out_dir
        (root / "main" / "ready").touch()
        run_dir = str(root / "tiny_run")
        _write_run(run_dir, {"model": TINY, "training": {"em_iterations": 2}}, tiny)
        out_dir = str(root / "tiny" / "saved_model")
        assert export.export_run(run_dir, out_dir, search=TINY_SEARCH) == out_dir
        (root / "tiny" / "ready").touch()

        out = {}
        for name, (model, search, _) in cases.items():  # the live side
            settings = export.search_settings(**search)
            x = np.load(root / name / "input.npz")["x"]
            xm = tf.cast(x, model.dtype)
            path, joint = model.best_path(xm, **settings)
            live = {
                "sample": tf.cast(model.sample(N_SAMPLES, seed=SAMPLE_SEED), tf.float32).numpy(),
                "path": [z.numpy() for z in path],
                "lower": joint.numpy(),
                # the same as without `path` (which would search again: slow in eager)
                "upper": model.log_prob_upper_bound(xm, path=path, **settings).numpy(),
            }
            if model.num_paths <= model.exact_limit:
                live["log_prob"] = model.log_prob(xm).numpy()
            out[name] = (model, settings, x, live)
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stdout, stderr = ((root / f).read_text() for f in ("stdout.txt", "stderr.txt"))
    assert proc.returncode == 0 and stdout.strip().endswith("ok"), stderr[-4000:]
    return {name: (*out[name], dict(np.load(root / name / "output.npz"))) for name in cases}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["main", "tiny"])
def test_sample_is_bit_identical(round_trip, name):
    model, _, _, live, got = round_trip[name]
    assert got["sample"].dtype == np.float32 and got["sample"].shape == (
        N_SAMPLES,
        *model.image_shape,
    )
    np.testing.assert_array_equal(got["sample"], live["sample"])
    np.testing.assert_array_equal(got["sample_signature"], live["sample"])
    # the seed as a keyword, and no seed (a fresh one, as TFP's seed=None)
    np.testing.assert_array_equal(got["sample_keyword"], live["sample"])
    assert got["sample_unseeded"].shape == (N_SAMPLES, *model.image_shape)
    assert np.all(np.isfinite(got["sample_unseeded"]))
    assert not np.array_equal(got["sample_unseeded"], got["sample_unseeded_again"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["main", "tiny"])
def test_search_matches_live_model(round_trip, name):
    model, _, x, live, got = round_trip[name]
    rtol = 1e-5 if model.dtype == tf.float32 else 1e-12
    for i, z in enumerate(live["path"]):
        np.testing.assert_array_equal(got[f"best_path/path_{i}"], z)
        assert got[f"best_path/path_{i}"].dtype == np.int32
    assert sorted(k for k in got if k.startswith("best_path/")) == sorted(
        [f"best_path/path_{i}" for i in range(len(live["path"]))]
        + ["best_path/bits_per_dim", "best_path/lower_bound"]
    )
    bpd = 7.0 - live["lower"] / (np.prod(model.image_shape) * np.log(2.0))  # bin width 2/256
    np.testing.assert_allclose(got["bits_per_dim"], bpd, rtol=max(rtol, 1e-10))
    np.testing.assert_allclose(got["best_path/bits_per_dim"], bpd, rtol=max(rtol, 1e-10))
    np.testing.assert_allclose(got["best_path/lower_bound"], live["lower"], rtol=rtol)
    np.testing.assert_allclose(got["lower"], live["lower"], rtol=rtol)
    np.testing.assert_array_equal(got["lower"], got["lower_again"])  # deterministic
    np.testing.assert_allclose(got["upper"], live["upper"], rtol=rtol)
    assert np.all(got["upper"] >= got["lower"])
    # the lower bound is the joint of the returned path
    path = tuple(got[f"best_path/path_{i}"] for i in range(len(live["path"])))
    np.testing.assert_allclose(
        model.joint_log_prob(tf.cast(x, model.dtype), path), got["lower"], rtol=rtol
    )


@pytest.mark.slow
def test_exact_log_prob_for_small_models(round_trip):
    *_, live, got = round_trip["tiny"]
    assert "log_prob" not in round_trip["main"][-1]  # 196608 paths > exact_limit
    np.testing.assert_allclose(got["log_prob"], live["log_prob"], rtol=1e-12)
    assert np.all(got["lower"] <= got["log_prob"] + 1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["main", "tiny"])
def test_metadata(round_trip, name):
    model, settings, _, _, got = round_trip[name]
    meta = json.loads(str(got["metadata"]))
    assert json.loads(meta["image_shape"]) == list(model.image_shape)
    assert list(got["image_shape"]) == list(model.image_shape)
    assert int(got["patch_size"]) == model.patch_size == int(meta["patch_size"])
    assert int(meta["num_paths"]) == model.num_paths == int(str(got["num_paths_variable"]))
    assert meta["dtype"] == model.dtype.name
    assert int(meta["num_dims"]) == model.num_dims and float(meta["bin_width"]) == 2 / 256
    assert "bits_per_dim" in json.loads(meta["functions"])
    assert json.loads(meta["search_config"]) == settings
    assert json.loads(meta["config"]) == export._plain(model.get_config())
    assert ("log_prob" in json.loads(meta["functions"])) == (name == "tiny")


# ---------------------------------------------------------------------- settings and errors


def test_search_settings():
    assert export.search_settings() == {
        "restarts": 2,
        "restart_passes": 2,
        "location_method": "auto",
        "location_options": None,
        "seed": [0, 0],
    }
    s = export.search_settings(restarts=1, location_options={"top": 4}, seed=np.array([1, 2]))
    assert s["seed"] == [1, 2] and s["location_options"] == {"top": 4}
    with pytest.raises(ValueError, match="seed"):
        export.search_settings(seed=3)
    with pytest.raises(ValueError, match="restarts"):
        export.search_settings(restarts=0)
    with pytest.raises(ValueError, match="location_method"):
        export.search_settings(location_method="nope")
    with pytest.raises(TypeError):
        export.search_settings(init_passes=1)


def test_export_refuses_non_empty_directory(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        export.export_saved_model(tfdgmm.DeepGMM.from_config(TINY), str(tmp_path))
    with pytest.raises(FileExistsError, match="not a SavedModel"):
        export.export_saved_model(tfdgmm.DeepGMM.from_config(TINY), str(tmp_path), overwrite=True)
    assert (tmp_path / "keep.txt").read_text() == "x"
    with pytest.raises(TypeError, match="DeepGMM"):
        export.export_saved_model(object(), str(tmp_path / "new"))


def _write_run(run_dir, config, model, sub="checkpoints", fmt="json"):
    os.makedirs(run_dir, exist_ok=True)
    if fmt == "json":
        with open(os.path.join(run_dir, "config.json"), "w") as f:
            json.dump(config, f)
    else:
        import yaml

        with open(os.path.join(run_dir, "config.yaml"), "w") as f:
            yaml.safe_dump(config, f)
    # like the trainer: the model under the key 'model', beside other training state
    ckpt = tf.train.Checkpoint(model=model, step=tf.Variable(3, dtype=tf.int64))
    return tf.train.CheckpointManager(ckpt, os.path.join(run_dir, sub), max_to_keep=2).save()


def _values(model):
    return [v.numpy() for v in model.variables]


def test_load_run_model_best_latest_and_yaml(tmp_path):
    run = str(tmp_path / "run")
    latest, best = _perturbed(TINY, 6), _perturbed(TINY, 7)
    _write_run(run, TINY, latest, fmt="yaml")  # the architecture itself as config.yaml
    model, prefix = export.load_run_model(run)  # no best/: falls back to checkpoints/
    assert prefix.startswith(os.path.join(run, "checkpoints"))
    for a, b in zip(_values(model), _values(latest)):
        np.testing.assert_array_equal(a, b)
    _write_run(run, TINY, best, sub="best", fmt="yaml")
    model, prefix = export.load_run_model(run)
    assert prefix.startswith(os.path.join(run, "best"))
    for a, b in zip(_values(model), _values(best)):
        np.testing.assert_array_equal(a, b)
    model, prefix = export.load_run_model(run, which="latest")
    assert prefix.startswith(os.path.join(run, "checkpoints"))


def test_run_dir_errors_name_the_path(tmp_path):
    run = str(tmp_path / "run")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export.load_run_model(run)
    os.makedirs(run)
    with pytest.raises(FileNotFoundError, match="no run config"):
        export.load_run_model(run)
    with open(os.path.join(run, "config.json"), "w") as f:
        json.dump({"training": {}}, f)
    with pytest.raises(ValueError, match="no architecture"):
        export.load_run_model(run)
    with open(os.path.join(run, "config.json"), "w") as f:
        f.write("{not json")
    with pytest.raises(ValueError, match="config.json"):
        export.load_run_model(run)
    with open(os.path.join(run, "config.json"), "w") as f:
        json.dump({"model": TINY}, f)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        export.load_run_model(run)

    # a checkpoint of another architecture
    other = dict(TINY, layers=[{"type": "block_diagonal", "alternatives": 2}])
    prefix = _write_run(str(tmp_path / "other"), other, tfdgmm.DeepGMM.from_config(other))
    os.rename(str(tmp_path / "other" / "checkpoints"), os.path.join(run, "checkpoints"))
    with pytest.raises(ValueError, match="cannot restore") as info:
        export.load_run_model(run)
    assert os.path.basename(prefix) in str(info.value)

    # a corrupt checkpoint (data file overwritten with garbage)
    import shutil

    shutil.rmtree(os.path.join(run, "checkpoints"))
    prefix = _write_run(run, TINY, tfdgmm.DeepGMM.from_config(TINY))
    data = [p for p in os.listdir(os.path.dirname(prefix)) if ".data-" in p]
    for p in data:
        with open(os.path.join(os.path.dirname(prefix), p), "wb") as f:
            f.write(b"garbage")
    with pytest.raises(ValueError, match="cannot restore") as info:
        export.load_run_model(run)
    assert prefix in str(info.value)
    with pytest.raises(ValueError, match="cannot restore"):
        export.export_run(run, str(tmp_path / "never"))
    assert not os.path.exists(tmp_path / "never")
