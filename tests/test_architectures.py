"""tfdgmm.architectures and the transform registry: configs -> layers, one table of types.

A new transform is one bijector module (a registered `BankBijector` subclass), one line in
`tests/bijectors/test_bijectors.py`'s `CASES` and one row in docs/DESIGN.md. The toy transform
below is registered the way such a module registers itself, and a model is built from a config
that names it, as a `DeepGMM` and as a Keras `DeepGMMModel`.
"""

import keras
import numpy as np
import pytest

import tfdgmm
from tfdgmm import architectures, bijectors
from tfdgmm import layers as tlayers
from tfdgmm.bijectors import registry
from tfdgmm.keras import DeepGMMModel

IMAGE = [4, 4, 3]


def config(*layers, **kw):
    return dict({"image_shape": IMAGE, "patch_size": 2, "layers": list(layers)}, **kw)


class ToyScale(bijectors.Diagonal):
    """A toy transform: elementwise scales, one set per location, no config options."""

    TYPE = "toy_scale"
    CONFIG_KEYS = ("alternatives",)

    @classmethod
    def normalize_spec(cls, spec, previous):
        return {"alternatives": int(spec.get("alternatives", 1))}

    @classmethod
    def from_spec(cls, spec, patch_shape, seed, dtype, name):
        hp, wp, d = patch_shape
        return cls.new(
            d,
            spatial_shape=(hp, wp),
            num_alternatives=spec["alternatives"],
            seed=seed,
            dtype=dtype,
            name=name,
        )


@keras.saving.register_keras_serializable(package="tfdgmm_tests")
class ToyScaleLayer(tlayers.Diagonal):
    """Its Keras layer (per-location scales, as `ToyScale.from_spec`)."""


@pytest.fixture
def toy():
    registry.register(ToyScale)
    try:
        yield ToyScale
    finally:
        registry.unregister(ToyScale.TYPE)


def test_builtin_types_are_registered():
    assert set(architectures.layer_types()) >= {
        "block_diagonal",
        "diagonal",
        "half_convolution",
        "dense",
    }
    for name in architectures.layer_types():
        cls = registry.lookup(name)
        assert issubclass(cls, bijectors.BankBijector) and cls.TYPE == name
        assert issubclass(registry.keras_layer(name), tlayers.TransformLayer)


def test_every_layer_of_a_config_is_its_registered_class():
    model = tfdgmm.DeepGMM.from_config(
        config(
            {"type": "half_convolution", "kernel_size": 3, "repeat": 2},
            {"type": "block_diagonal", "alternatives": 2},
            {"type": "diagonal"},
            {"type": "dense"},
        )
    )
    kinds = [spec["type"] for spec in model.get_config()["layers"]]
    assert kinds == ["half_convolution"] * 2 + ["block_diagonal", "diagonal", "dense"]
    for layer, kind in zip(model.layers, kinds):
        assert type(layer) is registry.lookup(kind)
    # Half-convolutions alternate which half they update.
    assert [s["update"] for s in model.get_config()["layers"][:2]] == ["second", "first"]


def test_unknown_type_is_an_error_never_a_fallback():
    with pytest.raises(ValueError, match=r"layer 0: unknown type 'conv1x1'.*block_diagonal"):
        tfdgmm.DeepGMM.from_config(config({"type": "conv1x1"}))
    with pytest.raises(ValueError, match="unknown type 'conv1x1'"):
        DeepGMMModel(config({"type": "conv1x1"}))
    with pytest.raises(ValueError, match="unknown transform type"):
        registry.keras_layer("conv1x1")
    with pytest.raises(ValueError, match=r"layer 0 \(diagonal\): unknown keys \['kernel_size'\]"):
        architectures.normalize(config({"type": "diagonal", "kernel_size": 3}))


def test_register_checks_its_argument(toy):
    with pytest.raises(TypeError, match="BankBijector subclass"):
        registry.register(int)
    with pytest.raises(ValueError, match="registered already"):

        class Other(bijectors.Diagonal):
            TYPE = "toy_scale"

        registry.register(Other)
    with pytest.raises(ValueError, match="non-empty string"):

        class Nameless(bijectors.Diagonal):
            TYPE = None

        registry.register(Nameless)


def test_a_registered_transform_builds_models(toy):
    cfg = config(
        {"type": "half_convolution", "kernel_size": 3},
        {"type": "toy_scale", "alternatives": 2},
        seed=5,
    )
    model = tfdgmm.DeepGMM.from_config(cfg)
    assert isinstance(model.layers[1], ToyScale)
    assert model.layers[1].log_scale.shape == (2, 2, 2, 12)
    assert model.get_config()["layers"][1] == {"type": "toy_scale", "alternatives": 2}
    x = model.sample(3, seed=[1, 2])
    lp = model.log_prob(x)  # exact: 2 paths
    assert np.all(np.isfinite(lp.numpy()))

    # The Keras model needs the type's Keras layer: a clear error until it is registered.
    with pytest.raises(ValueError, match="'toy_scale' has no Keras layer"):
        DeepGMMModel(cfg)
    registry.register_layer("toy_scale", ToyScaleLayer)
    keras_model = DeepGMMModel(cfg)
    assert isinstance(keras_model.transforms[1], ToyScaleLayer)
    # Same per-layer seeds: the Keras model starts where DeepGMM.from_config starts.
    for bij, layer in zip(model.layers, keras_model.transforms):
        for name in layer.PARAMETERS:
            np.testing.assert_array_equal(getattr(bij, name).numpy(), getattr(layer, name).numpy())
    np.testing.assert_allclose(
        keras_model.deep_gmm().log_prob(x).numpy(), lp.numpy(), rtol=1e-5, atol=1e-3
    )


def test_layer_seed_is_the_one_formula():
    bd = {"type": "block_diagonal"}
    a = tfdgmm.DeepGMM.from_config(config(bd, bd, seed=2))
    b = bijectors.BlockDiagonal.new(
        12, spatial_shape=(2, 2), seed=architectures.layer_seed(2, 1), name="b"
    )
    np.testing.assert_array_equal(a.layers[1].lower_upper.numpy(), b.lower_upper.numpy())
    assert not np.array_equal(a.layers[0].lower_upper.numpy(), a.layers[1].lower_upper.numpy())
