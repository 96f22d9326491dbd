"""tfdgmm.keras.DeepGMMModel: the DeepGMM's math on Keras weights, online hard EM with `fit`,
standard callbacks, `.keras` round trip, units, M-step on given paths, keras-tuner."""

import copy
import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfdgmm
from tfdgmm import units
from tfdgmm.keras import DeepGMMModel

CONFIG = {
    "image_shape": [8, 8, 3],
    "patch_size": 2,
    "seed": 3,
    "layers": [
        {"type": "half_convolution", "kernel_size": 3},
        {"type": "block_diagonal", "alternatives": 2},
        {"type": "half_convolution", "kernel_size": 3},
        {"type": "diagonal", "alternatives": 2, "selection": "location", "per_location": False},
    ],
}
D = 8 * 8 * 3


def known_model(seed=11):
    """The data-generating DeepGMM: same architecture, other seed, moved off its init."""
    model = tfdgmm.DeepGMM.from_config(dict(CONFIG, seed=seed))
    rng = np.random.default_rng(seed)
    for v in model.trainable_variables:
        v.assign_add(0.3 * rng.standard_normal(v.shape))
    return model


@pytest.fixture(scope="module")
def data():
    truth = known_model()
    x, path = truth.sample_with_path(384, seed=tf.constant([1, 2]))
    x = x.numpy()
    return {
        "truth": truth,
        "train": x[:256],
        "val": x[256:],
        "paths": tuple(p.numpy() for p in path),
    }


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """One `fit` with the standard callbacks (shared by several tests to save tracing time)."""
    tmp = tmp_path_factory.mktemp("fit")
    model = DeepGMMModel(CONFIG)
    model.compile(optimizer=keras.optimizers.Adam(0.02))
    before = model.evaluate(data["val"], batch_size=128, return_dict=True, verbose=0)

    def schedule(epoch, lr):
        return 0.02 * 0.5**epoch

    ckpt = os.path.join(tmp, "best.keras")
    history = model.fit(
        data["train"],
        batch_size=64,
        epochs=3,
        verbose=0,
        validation_data=data["val"],
        callbacks=[
            keras.callbacks.LearningRateScheduler(schedule),
            keras.callbacks.EarlyStopping(
                "val_lower_bound", mode="max", patience=2, restore_best_weights=True
            ),
            keras.callbacks.ModelCheckpoint(
                ckpt, monitor="val_lower_bound", mode="max", save_best_only=True
            ),
            keras.callbacks.TensorBoard(os.path.join(tmp, "logs")),
        ],
    )
    after = model.evaluate(data["val"], batch_size=128, return_dict=True, verbose=0)
    return {
        "model": model,
        "history": history.history,
        "before": before,
        "after": after,
        "tmp": tmp,
        "ckpt": ckpt,
    }


def test_same_math_as_deep_gmm(data):
    """Same initial values as `DeepGMM.from_config`; joint, best path and lower bound equal."""
    model = DeepGMMModel(CONFIG)
    gmm = tfdgmm.DeepGMM.from_config(CONFIG)
    x = data["train"][:16]
    path, score = gmm.best_path(x, seed=tf.constant([5, 6]))
    joint = model({"images": x, "paths": path})
    np.testing.assert_allclose(joint, gmm.joint_log_prob(x, path), rtol=1e-6)
    path_k, score_k = model.best_path(x, seed=tf.constant([5, 6]))
    for a, b in zip(path, path_k):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(score_k, score, rtol=1e-6)
    # bridges: to_deep_gmm / set_from_deep_gmm
    truth = data["truth"]
    model.set_from_deep_gmm(truth)
    np.testing.assert_allclose(
        model({"images": x, "paths": path}), truth.joint_log_prob(x, path), rtol=1e-5
    )
    copy_ = model.to_deep_gmm()
    np.testing.assert_allclose(
        copy_.joint_log_prob(x, path), truth.joint_log_prob(x, path), rtol=1e-5
    )


def test_fit_raises_the_lower_bound(data, trained):
    before, after = trained["before"], trained["after"]
    hist = trained["history"]
    assert set(hist) >= {
        "loss",
        "lower_bound",
        "bits_per_dim",
        "val_loss",
        "val_lower_bound",
        "val_bits_per_dim",
        "learning_rate",
    }
    truth = data["truth"]
    true_lb = float(np.mean(truth.best_path(data["val"], seed=tf.constant([0, 1]))[1]))
    # most of the gap to the generating model's bound is closed in 3 epochs
    gap = true_lb - before["lower_bound"]
    assert gap > 1000.0
    assert after["lower_bound"] > before["lower_bound"] + 0.6 * gap, (before, after, true_lb)
    assert hist["lower_bound"][-1] > hist["lower_bound"][0]
    np.testing.assert_allclose(after["loss"], -after["lower_bound"], rtol=1e-6)
    print(
        f"\nval lower bound (nats/image): before {before['lower_bound']:.1f}, after "
        f"{after['lower_bound']:.1f}, generating model {true_lb:.1f}"
    )


def test_standard_callbacks(trained):
    hist, tmp = trained["history"], trained["tmp"]
    # LearningRateScheduler drove the optimizer
    np.testing.assert_allclose(
        hist["learning_rate"], [0.02 * 0.5**e for e in range(len(hist["loss"]))], rtol=1e-6
    )
    np.testing.assert_allclose(
        float(trained["model"].optimizer.learning_rate),
        0.02 * 0.5 ** (len(hist["loss"]) - 1),
        rtol=1e-6,
    )
    # ModelCheckpoint wrote a loadable model
    assert os.path.exists(trained["ckpt"])
    assert isinstance(keras.models.load_model(trained["ckpt"]), DeepGMMModel)
    # TensorBoard wrote event files for training and validation
    logs = os.path.join(tmp, "logs")
    for split in ("train", "validation"):
        files = os.listdir(os.path.join(logs, split))
        assert any(f.startswith("events.out.tfevents") for f in files), (split, files)


def test_early_stopping_stops():
    """EarlyStopping on a monitored metric that cannot improve (lr 0) stops after patience."""
    model = DeepGMMModel(CONFIG)
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    x = tfdgmm.DeepGMM.from_config(CONFIG).sample(32, seed=tf.constant([3, 4])).numpy()
    history = model.fit(
        x,
        batch_size=32,
        epochs=10,
        verbose=0,
        callbacks=[
            keras.callbacks.EarlyStopping("lower_bound", mode="max", patience=1, min_delta=1e-3)
        ],
    )
    assert len(history.history["loss"]) == 2


def test_save_load_round_trip(data, trained, tmp_path):
    model = trained["model"]
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, DeepGMMModel)
    assert loaded.get_config() == model.get_config()
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    x = data["val"][:32]
    np.testing.assert_array_equal(model(x), loaded(x))  # best paths + lower bound
    given = {"images": x, "paths": tuple(p[:32] for p in data["paths"])}
    np.testing.assert_array_equal(model(given), loaded(given))
    np.testing.assert_array_equal(
        model.sample(4, seed=tf.constant([7, 8]))[0], loaded.sample(4, seed=tf.constant([7, 8]))[0]
    )
    # the optimizer state came along
    assert int(loaded.optimizer.iterations) == int(model.optimizer.iterations) > 0


def test_evaluate_units(data, trained):
    """`bits_per_dim = 7 - LL / (D ln 2)` for data on [-1, 1] (bin width 2/256)."""
    after = trained["after"]
    np.testing.assert_allclose(
        after["bits_per_dim"], 7.0 - after["lower_bound"] / (D * math.log(2.0)), rtol=1e-5
    )
    np.testing.assert_allclose(
        after["bits_per_dim"], units.nats_to_bits_per_dim(after["lower_bound"], D), rtol=1e-5
    )
    # evaluate on given paths: the mean joint at those paths
    model = trained["model"]
    x = data["val"]
    paths = tuple(p[256:] for p in data["paths"])
    res = model.evaluate({"images": x, "paths": paths}, batch_size=128, return_dict=True, verbose=0)
    expected = float(np.mean(model.deep_gmm().joint_log_prob(x, paths)))
    np.testing.assert_allclose(res["lower_bound"], expected, rtol=1e-5)


def test_mstep_on_given_paths_and_estep(data):
    """Batch hard EM with the Keras model: estep -> mstep_fit -> estep (warm start)."""
    model = DeepGMMModel(CONFIG)
    model.compile(optimizer=keras.optimizers.Adam(0.02))
    x = data["train"]
    paths, lb0 = model.estep(x, batch_size=128)
    assert [p.shape for p in paths] == [(256,), (256,), (256,), (256, 4, 4)]
    np.testing.assert_allclose(lb0, model({"images": x, "paths": paths}), rtol=1e-5)
    joint0 = float(np.mean(lb0))
    model.mstep_fit(x, paths, batch_size=64, epochs=2, verbose=0)
    joint1 = float(np.mean(model({"images": x, "paths": paths})))
    assert joint1 > joint0 + 0.5 * abs(joint0)  # the M-step raises the objective on the fixed paths
    paths2, lb2 = model.estep(x, init=paths, batch_size=128)
    assert np.all(lb2 >= model({"images": x, "paths": paths}).numpy() - 1e-2)  # warm start


def test_keras_tuner_random_search(data, tmp_path):
    keras_tuner = pytest.importorskip("keras_tuner")

    class Hyper(keras_tuner.HyperModel):
        def build(self, hp):
            config = copy.deepcopy(CONFIG)
            config["layers"][1]["alternatives"] = hp.Choice("alternatives", [1, 2])
            model = DeepGMMModel(config)
            model.compile(
                optimizer=keras.optimizers.Adam(
                    hp.Float("learning_rate", 1e-3, 3e-2, sampling="log")
                )
            )
            return model

    tuner = keras_tuner.RandomSearch(
        Hyper(),
        objective=keras_tuner.Objective("lower_bound", direction="max"),
        max_trials=2,
        directory=str(tmp_path),
        project_name="dgmm",
        overwrite=True,
        seed=0,
    )
    tuner.search(data["train"][:128], batch_size=64, epochs=1, verbose=0)
    trials = tuner.oracle.get_best_trials(num_trials=2)
    assert len(trials) == 2
    assert all(t.status == "COMPLETED" and np.isfinite(t.score) for t in trials)
    best = tuner.get_best_models(1)[0]
    assert isinstance(best, DeepGMMModel)


def test_rejects_unsupported_prior():
    with pytest.raises(ValueError, match="uniform"):
        DeepGMMModel(dict(CONFIG, path_prior="factorized"))
    with pytest.raises(ValueError, match="estep_options"):
        DeepGMMModel(CONFIG, estep_options={"passes": 3})


# ------------------------------------------------------------------ issue 12: adapt, stability

TABLE1 = {
    "image_shape": [8, 8, 3],
    "patch_size": 2,
    "seed": 0,
    "layers": [
        {"type": "half_convolution", "kernel_size": 3, "repeat": 2},
        {"type": "block_diagonal", "alternatives": 1, "selection": "sample", "per_location": True},
    ],
}


def _noisy_images(n, seed=0):
    """Smooth images plus uniform noise of a bin's width: the dequantised-pixel structure
    (small noise variances) that made Adam on half-convolution kernels diverge."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n, 3, 3, 3))
    smooth = tf.image.resize(base, [8, 8], method="bicubic").numpy() * 0.3
    x = np.round((smooth + 1) * 128) + rng.random(smooth.shape)
    return np.clip(x / 128 - 1, -1, 1).astype(np.float32)


def test_adapt_starts_where_the_command_line_starts(data):
    """`adapt` is the trainer's data-dependent init: the same parameters, so the same bound."""
    from tfdgmm.training.init import initialize_from_data

    x = _noisy_images(600)
    model = DeepGMMModel(TABLE1)
    assert model.adapt(x) == 2
    reference = tfdgmm.DeepGMM.from_config(TABLE1)
    initialize_from_data(reference, x)
    path = (np.zeros(600, np.int32),) * 3
    keras_start = float(tf.reduce_mean(model.to_deep_gmm().joint_log_prob(x, path)))
    cli_start = float(tf.reduce_mean(reference.joint_log_prob(x, path)))
    untrained = float(tf.reduce_mean(DeepGMMModel(TABLE1).to_deep_gmm().joint_log_prob(x, path)))
    np.testing.assert_allclose(keras_start, cli_start, rtol=1e-5)
    assert keras_start > untrained + 100
    with pytest.raises(ValueError, match="integers"):
        model.adapt((x * 128 + 128).astype(np.uint8))


@pytest.mark.parametrize("hc_optimizer", ["kfac", "optimizer"])
def test_default_recipe_is_stable_from_adapt(shared_data_dir, hc_optimizer):
    """3 HC + BD (Table 1) on 500 CIFAR-10 images from `adapt`: Adam at 1e-3 on every
    weight (the old README recipe) gains far less in 50 updates than the default (K-FAC steps
    for the kernels, Adam with the warm-up for the rest). (Fewer images than dimensions make the
    maximum-likelihood problem degenerate: trained much longer, any optimizer runs off to an
    unbounded training likelihood, which `DivergenceGuard` catches.)"""
    from tfdgmm.data import load_cifar10

    split = load_cifar10(
        os.path.join(shared_data_dir, "cifar10-jpeg75"),
        train_limit=500,
        validation_limit=1,
        test_limit=1,
    ).train
    x = split.dequantized(0).astype(np.float32)
    arch = {
        "image_shape": [32, 32, 3],
        "patch_size": 4,
        "seed": 0,
        "layers": [
            {"type": "half_convolution", "kernel_size": 5, "repeat": 3},
            {
                "type": "block_diagonal",
                "alternatives": 1,
                "selection": "sample",
                "per_location": True,
            },
        ],
    }
    model = DeepGMMModel(arch, hc_optimizer=hc_optimizer)
    model.adapt(x)
    model.compile(optimizer=keras.optimizers.Adam(1e-3) if hc_optimizer == "optimizer" else "adam")
    start = model.evaluate(x, batch_size=500, return_dict=True, verbose=0)["lower_bound"]
    model.fit(x, batch_size=100, epochs=10, verbose=0)
    end = model.evaluate(x, batch_size=500, return_dict=True, verbose=0)["lower_bound"]
    print(hc_optimizer, start, end)
    if hc_optimizer == "kfac":
        assert end > start + 250
    else:
        assert end < start + 150


def test_divergence_guard_rolls_back():
    from tfdgmm.keras import DivergenceGuard

    x = _noisy_images(400)
    model = DeepGMMModel(TABLE1, hc_optimizer="optimizer")
    model.adapt(x)
    model.compile(optimizer=keras.optimizers.Adam(0.3))  # far too large: diverges
    guard = DivergenceGuard(x, check_every=2, divergence_nats=50.0, max_rollbacks=3, verbose=0)
    before = -float(np.mean(model(x[:100])))
    model.fit(x, batch_size=50, epochs=2, verbose=0, callbacks=[guard])
    after = -float(np.mean(model(x[:100])))
    assert guard.rollbacks >= 1
    assert float(model.optimizer.learning_rate.numpy()) < 0.3
    assert math.isfinite(after) and after <= before + 50.0
