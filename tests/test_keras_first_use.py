"""DeepGMMModel as a Keras user first meets it: loading in a new process, `export`, `summary`,
and input checks (issue 16)."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfdgmm
from tfdgmm.keras import DeepGMMModel

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
CONFIG = {
    "image_shape": [8, 8, 3],
    "patch_size": 2,
    "seed": 3,
    "layers": [
        {"type": "half_convolution", "kernel_size": 3},
        {"type": "block_diagonal", "alternatives": 2},
    ],
}


@pytest.fixture(scope="module")
def model():
    m = DeepGMMModel(CONFIG)
    m.compile(optimizer=keras.optimizers.Adam(1e-3))
    return m


def _images(n=4, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, 8, 8, 3)).astype(np.float32)


def test_load_model_and_subpackages_in_a_new_process_after_import_tfdgmm(model, tmp_path):
    path = str(tmp_path / "m.keras")
    model.save(path)
    x = _images()
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", model(x).numpy())
    code = textwrap.dedent(f"""
        import keras, numpy as np
        import tfdgmm   # registers DeepGMMModel and the layers; nothing else imported
        m = keras.models.load_model({path!r})
        np.testing.assert_array_equal(m(np.load({str(tmp_path / "x.npy")!r})),
                                      np.load({str(tmp_path / "y.npy")!r}))
        for name in ("data", "training", "export", "layers", "keras", "bijectors",
                     "path_priors", "gaussian", "units"):
            getattr(tfdgmm, name)
        tfdgmm.data.load_cifar10, tfdgmm.training.EMTrainer, tfdgmm.export.export_run
        print("ok", type(m).__name__)
    """)
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(tmp_path),
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip() == "ok DeepGMMModel"


def test_export_without_input_signature(model, tmp_path):
    out = str(tmp_path / "exported")
    model.export(out, verbose=False)
    loaded = tf.saved_model.load(out)
    x = _images(seed=1)
    np.testing.assert_allclose(loaded.serve(x).numpy(), model(x).numpy(), rtol=1e-6)


def test_summary_shows_output_shapes(model):
    lines = []
    model.summary(print_fn=lambda line, **kwargs: lines.append(line))
    text = "\n".join(lines)
    assert "?" not in text, text
    assert "(None, 4, 4, 12)" in text  # the patch tensor, 2x2 patches of 8x8x3 images
    assert model.compute_output_shape((None, 8, 8, 3)) == (None,)


def test_raw_pixels_are_refused_with_a_clear_error(model):
    pixels = np.random.default_rng(0).integers(0, 256, (8, 8, 8, 3)).astype(np.uint8)
    with pytest.raises(ValueError, match=r"dequantized float images on \[-1, 1\]; got uint8"):
        model.evaluate(pixels, verbose=0)
    with pytest.raises(ValueError, match=r"got uint8"):
        model(pixels)
    with pytest.raises(ValueError, match=r"expects images \[N, 8, 8, 3\]; got shape"):
        model(np.zeros((2, 8, 8, 1), np.float32))
    # dequantized data passes
    x = tfdgmm.data.dequantize(pixels, np.random.default_rng(1).random(pixels.shape))
    assert np.isfinite(model.evaluate(x.astype(np.float32), verbose=0, return_dict=True)["loss"])
