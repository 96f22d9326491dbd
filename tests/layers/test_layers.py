"""tfdgmm.layers: each Keras layer is its bijector on Keras weights (values, log-dets,
gradients, initial values, serialisation)."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfdgmm import bijectors
from tfdgmm import layers as L

N, HP, WP, D = 6, 4, 4, 12  # 8x8x3 images, 2x2 patches
RTOL, ATOL = 1e-5, 1e-4


def _choice(k, selection, seed=0):
    """Choices that use every alternative (so every alternative's weights get gradients)."""
    if k == 1:
        return None
    rng = np.random.default_rng(seed)
    if selection == "sample":
        return (np.arange(N) % k).astype(np.int32)
    c = rng.integers(0, k, size=(N, HP, WP)).astype(np.int32)
    c.reshape(-1)[:k] = np.arange(k)
    return c


# (layer factory, bijector factory from (layer, weights), `new(...)` equivalent, choice)
CASES = {
    "block_diagonal_sample": (
        lambda: L.BlockDiagonal(num_alternatives=3, selection="sample", seed=1),
        lambda w: bijectors.BlockDiagonal(
            w["lower_upper"], w["permutation"], w["shift"], selection="sample"
        ),
        lambda: bijectors.BlockDiagonal.new(
            D, 3, spatial_shape=(HP, WP), selection="sample", seed=1
        ),
        _choice(3, "sample"),
    ),
    "block_diagonal_location_shared": (
        lambda: L.BlockDiagonal(num_alternatives=2, selection="location", seed=2),
        lambda w: bijectors.BlockDiagonal(
            w["lower_upper"], w["permutation"], w["shift"], selection="location"
        ),
        lambda: bijectors.BlockDiagonal.new(D, 2, spatial_shape=None, selection="location", seed=2),
        _choice(2, "location"),
    ),
    "diagonal_location": (
        lambda: L.Diagonal(num_alternatives=2, selection="location", seed=3),
        lambda w: bijectors.Diagonal(w["log_scale"], w["shift"], selection="location"),
        lambda: bijectors.Diagonal.new(D, 2, spatial_shape=(HP, WP), selection="location", seed=3),
        _choice(2, "location"),
    ),
    "diagonal_single": (
        lambda: L.Diagonal(seed=4, per_location=False),
        lambda w: bijectors.Diagonal(w["log_scale"], w["shift"]),
        lambda: bijectors.Diagonal.new(D, 1, seed=4),
        None,
    ),
    "half_convolution": (
        lambda: L.HalfConvolution(
            kernel_size=3, num_alternatives=2, update="first", selection="sample", seed=5
        ),
        lambda w: bijectors.HalfConvolution(w["kernel"], update="first", selection="sample"),
        lambda: bijectors.HalfConvolution.new(D, 3, 2, update="first", selection="sample", seed=5),
        _choice(2, "sample"),
    ),
    "half_convolution_location": (
        lambda: L.HalfConvolution(kernel_size=3, num_alternatives=2, selection="location", seed=6),
        lambda w: bijectors.HalfConvolution(w["kernel"], selection="location"),
        lambda: bijectors.HalfConvolution.new(D, 3, 2, selection="location", seed=6),
        _choice(2, "location"),
    ),
    "dense": (
        lambda: L.Dense(num_alternatives=2, seed=7),
        lambda w: bijectors.Dense(w["lower_upper"], w["permutation"], w["shift"]),
        lambda: bijectors.Dense.new((HP, WP, D), 2, seed=7),
        _choice(2, "sample"),
    ),
}


def _patches(seed=0):
    return tf.constant(np.random.default_rng(seed).standard_normal((N, HP, WP, D)), tf.float32)


def _perturb(layer, seed=0):
    """Move the trainable weights off their (structured) initial values."""
    rng = np.random.default_rng(seed + 10)
    for w in layer.trainable_weights:
        # matrices: off-diagonal noise scaled to keep them well conditioned
        scale = 0.2 / np.sqrt(w.shape[-1]) if "lower_upper" in w.path else 0.2
        w.assign(w.numpy() + scale * rng.standard_normal(w.shape).astype(np.float32))


def _weights(layer):
    return {name: getattr(layer, name).numpy() for name in layer.PARAMETERS}


def _kw(choice):
    return {} if choice is None else {"choice": choice}


@pytest.mark.parametrize("case", sorted(CASES))
def test_layer_equals_bijector_on_same_weights(case):
    make_layer, make_bijector, _, choice = CASES[case]
    layer = make_layer()
    x = _patches()
    layer(x, **_kw(choice))
    _perturb(layer)
    bij = make_bijector(_weights(layer))  # an independent bijector on plain numpy values
    z, log_det = layer(x, **_kw(choice))
    z_ref = bij.inverse(x, **_kw(choice))
    ld_ref = bij.inverse_log_det_jacobian(x, event_ndims=3, **_kw(choice))
    assert z.dtype == tf.float32 and log_det.dtype == tf.float32
    assert log_det.shape == (N,)
    np.testing.assert_allclose(z, z_ref, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(log_det, np.broadcast_to(ld_ref, [N]), rtol=RTOL, atol=ATOL)
    assert np.abs(log_det).max() > 0 or case.startswith("half_convolution")
    # the generative direction too
    x_back, fldj = layer.forward(z, **_kw(choice))
    np.testing.assert_allclose(x_back, bij.forward(z_ref, **_kw(choice)), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(x_back, x, rtol=RTOL, atol=1e-3)
    np.testing.assert_allclose(fldj, -log_det, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("case", sorted(CASES))
def test_initial_values_come_from_the_bijector_factory(case):
    make_layer, _, make_new, choice = CASES[case]
    layer = make_layer()
    layer.build((None, HP, WP, D))
    ref = make_new()
    for name in layer.PARAMETERS:
        w = getattr(layer, name)
        np.testing.assert_array_equal(w.numpy(), getattr(ref, name).numpy())
        if name == "permutation":
            assert not w.trainable and w.dtype == "int32"
        else:
            assert w.trainable and w.dtype == "float32"


@pytest.mark.parametrize("case", sorted(CASES))
def test_gradients_reach_every_trainable_weight(case):
    make_layer, _, _, choice = CASES[case]
    layer = make_layer()
    x = _patches(1)
    layer(x, **_kw(choice))
    _perturb(layer, 1)
    r = tf.constant(np.random.default_rng(2).standard_normal((N, HP, WP, D)), tf.float32)
    with tf.GradientTape() as tape:
        z, log_det = layer(x, **_kw(choice))
        loss = tf.reduce_sum(r * z) + tf.reduce_sum(log_det)
    weights = layer.trainable_weights
    assert weights
    grads = tape.gradient(loss, weights)
    for w, g in zip(weights, grads):
        assert g is not None, w.name
        g = tf.convert_to_tensor(g)
        assert np.all(np.isfinite(g)), w.name
        # every alternative (leading axis) receives gradient
        per_alt = np.abs(g.numpy()).reshape(g.shape[0], -1).sum(axis=1)
        assert np.all(per_alt > 0), (w.name, per_alt)


@pytest.mark.parametrize("case", sorted(CASES))
def test_config_round_trip(case):
    make_layer, _, _, choice = CASES[case]
    layer = make_layer()
    layer.build((None, HP, WP, D))
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    clone.build((None, HP, WP, D))
    for a, b in zip(layer.get_weights(), clone.get_weights()):
        np.testing.assert_array_equal(a, b)  # same seed: same initial values
    # registered: deserialisable by name
    serialized = keras.saving.serialize_keras_object(layer)
    assert serialized["registered_name"] == f"tfdgmm>{type(layer).__name__}"
    again = keras.saving.deserialize_keras_object(serialized)
    assert type(again) is type(layer) and again.get_config() == config


def test_batch_form_matches_bijector():
    """`choice=None` with K > 1: the bijector's batch form (all alternatives)."""
    layer = L.BlockDiagonal(num_alternatives=3, seed=0)
    x = _patches()
    z, log_det = layer(x[:, None])
    bij = layer.bijector()
    assert z.shape == (N, 3, HP, WP, D) and log_det.shape == (N, 3)
    np.testing.assert_allclose(z, bij.inverse(x[:, None]), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(
        log_det,
        np.broadcast_to(bij.inverse_log_det_jacobian(x[:, None], event_ndims=3), [N, 3]),
        rtol=RTOL,
        atol=ATOL,
    )


def test_patchify_layer():
    images = tf.random.normal([N, 8, 8, 3])
    layer = L.Patchify(2)
    patches, log_det = layer(images)
    np.testing.assert_array_equal(patches, bijectors.Patchify(2).forward(images))
    np.testing.assert_array_equal(log_det, np.zeros(N))
    back, fldj = layer.forward(patches)
    np.testing.assert_array_equal(back, images)
    np.testing.assert_array_equal(fldj, np.zeros(N))
    assert L.Patchify.from_config(layer.get_config()).patch_size == 2
    with pytest.raises(ValueError, match="not divisible"):
        L.Patchify(3)(images)


def test_functional_model_save_load(tmp_path):
    """The layers compose in a functional model; `.keras` round trip gives identical outputs."""
    images = keras.Input((8, 8, 3))
    choice = keras.Input((), dtype="int32")
    h, ld0 = L.Patchify(2)(images)
    h, ld1 = L.HalfConvolution(kernel_size=3, seed=0)(h)
    z, ld2 = L.BlockDiagonal(num_alternatives=2, seed=1)(h, choice=choice)
    model = keras.Model([images, choice], [z, ld0 + ld1 + ld2])
    for layer in model.layers:
        if layer.trainable_weights:
            _perturb(layer)
    x = np.random.default_rng(0).standard_normal((N, 8, 8, 3)).astype(np.float32)
    c = _choice(2, "sample")
    out = model([x, c])
    path = os.path.join(tmp_path, "layers.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    for a, b in zip(out, loaded([x, c])):
        np.testing.assert_array_equal(a, b)
