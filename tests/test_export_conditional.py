"""The SavedModel's `conditional_sample(x, mask, seed)`: loaded in a process that cannot import
tfdgmm nor TFP, it gives the live model's conditional (search and exact models)."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

import tfdgmm
from tfdgmm import export

# a search model (2^16 * 3 paths, float32) and an exact one (8 paths, float64)
SEARCH = {
    "image_shape": [8, 8, 3],
    "patch_size": 2,
    "layers": [
        {"type": "half_convolution", "kernel_size": 3},
        {"type": "block_diagonal", "alternatives": 2, "selection": "location"},
        {"type": "block_diagonal", "alternatives": 3, "selection": "sample"},
    ],
}
EXACT = {
    "image_shape": [4, 4, 3],
    "patch_size": 2,
    "dtype": "float64",
    "layers": [
        {"type": "half_convolution", "kernel_size": 3},
        {"type": "block_diagonal", "alternatives": 2},
        {"type": "block_diagonal", "alternatives": 4},
    ],
}
SETTINGS = {"restarts": 2, "restart_passes": 1, "seed": [7, 11]}

_LOADER = textwrap.dedent(r"""
    import sys

    class _Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("tfdgmm", "tensorflow_probability"):
                raise ImportError("blocked: " + name)

    sys.meta_path.insert(0, _Block())
    import numpy as np
    import tensorflow as tf

    for name in sys.argv[1:]:
        m = tf.saved_model.load(name + "/saved_model")
        data = np.load(name + "/input.npz")
        out = {k: v.numpy() for k, v in m.conditional_sample(
            data["x"], data["mask"], tf.constant([5, 6])).items()}
        sig = m.signatures["conditional_sample"](
            x=tf.constant(data["x"]), mask=tf.constant(data["mask"]), seed=tf.constant([5, 6]))
        out["signature_sample"] = sig["sample"].numpy()
        try:
            m.conditional_sample(data["x"], 0.5 * data["mask"], tf.constant([5, 6]))
        except tf.errors.InvalidArgumentError as e:
            out["bad_mask_error"] = np.array(str(e.message)[:1000])
        np.savez(name + "/output.npz", **out)
    print("ok")
""")


def _model(config, seed):
    model = tfdgmm.DeepGMM.from_config(config)
    rng = np.random.default_rng(seed)
    for v in model.trainable_variables:
        v.assign_add(0.1 * rng.standard_normal(v.shape).astype(v.dtype.as_numpy_dtype))
    return model


@pytest.mark.slow
def test_conditional_sample_loads_without_tfdgmm_and_matches_the_live_model(tmp_path):
    cases = {"search": _model(SEARCH, 1), "exact": _model(EXACT, 2)}
    live = {}
    for name, model in cases.items():
        h, w, c = model.image_shape
        x = model.sample(3, seed=[1, 2])
        mask = np.ones([h, w, c], np.float32)
        mask[h // 4 : h - h // 4, w // 4 : w - w // 4] = 0.0
        os.makedirs(tmp_path / name)
        np.savez(tmp_path / name / "input.npz", x=tf.cast(x, tf.float32).numpy(), mask=mask)
        export.export_saved_model(model, str(tmp_path / name / "saved_model"), search=SETTINGS)
        cond = model.conditional(
            tf.cast(tf.cast(x, tf.float32), model.dtype),
            mask,
            seed=SETTINGS["seed"],
            restarts=SETTINGS["restarts"],
            search={"restart_passes": SETTINGS["restart_passes"], "location_method": "auto"},
        )
        live[name] = {
            "sample": cond.sample(seed=[5, 6]).numpy(),
            "mean": cond.mean().numpy(),
            "observed_log_prob": cond.observed_log_prob.numpy(),
        }
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [sys.executable, "-c", _LOADER, *cases],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-4000:]
    for name, model in cases.items():
        got = dict(np.load(tmp_path / name / "output.npz"))
        rtol = 1e-4 if model.dtype == tf.float32 else 1e-9
        assert got["sample"].dtype == np.float32 and got["sample"].shape == (3, *model.image_shape)
        for key in ("sample", "mean"):  # float32 outputs
            np.testing.assert_allclose(got[key], live[name][key], rtol=max(rtol, 1e-6), atol=1e-6)
        np.testing.assert_allclose(
            got["observed_log_prob"], live[name]["observed_log_prob"], rtol=rtol
        )
        np.testing.assert_array_equal(got["signature_sample"], got["sample"])
        # observed pixels are the inputs' (float32 round trip)
        x = np.load(tmp_path / name / "input.npz")["x"]
        mask = np.load(tmp_path / name / "input.npz")["mask"] > 0
        np.testing.assert_allclose(got["sample"][:, mask], x[:, mask], rtol=1e-6)
        assert "0 (missing) or 1 (observed)" in str(got["bad_mask_error"])
