"""The Keras face of tfdgmm: `DeepGMMModel`, a deep GMM you can `compile` and `fit`.

```python
import keras
from tfdgmm.keras import DeepGMMModel

model = DeepGMMModel({
    "image_shape": [32, 32, 3], "patch_size": 4,
    "layers": [{"type": "half_convolution", "kernel_size": 5, "repeat": 3},
               {"type": "block_diagonal", "alternatives": 4}]})
model.compile(optimizer=keras.optimizers.Adam(1e-3))
model.fit(x_train, batch_size=64, epochs=10, validation_data=x_val,
          callbacks=[keras.callbacks.EarlyStopping("val_lower_bound", mode="max")])
model.evaluate(x_test, return_dict=True)   # {'loss', 'lower_bound', 'bits_per_dim'}
model.save("dgmm.keras"); keras.models.load_model("dgmm.keras")
```

**Training is online hard EM.** Each `train_step` runs, on its batch,

1. the E-step: the best path of every image under the current parameters,
   `DeepGMM.best_path` (random restarts from a stateless seed that changes every step; no
   gradient), then
2. the M-step: one optimizer step on `loss = -mean_n [log pi_p + log p_p(x_n)]` (nats per
   image), `DeepGMM.joint_log_prob` on those paths.

The math is not reimplemented here: every step builds a `tfdgmm.DeepGMM` from the current
values of the Keras weights (the `tfdgmm.layers` layers' `bijector()`s), inside the traced step
and inside the gradient tape, and calls its methods.

**M-step on given paths** (classic batch hard EM, or any paths you computed yourself): feed a
dict `{"images": x, "paths": (z_0, ..., z_{n-1})}` instead of images (`mstep_fit(x, paths)` does
this for you); `estep(x, init=paths)` computes paths for a whole data set, warm-started.

**Metrics** (`fit` / `evaluate`): `loss` (the minimised `-mean joint`), `lower_bound` (mean
`log pi_p + log p_p(x)` at the paths used, nats per image; `<= log p(x)`) and `bits_per_dim`
(`-log2(bin_width) - lower_bound / (D ln 2)`, `D = H W C`; with the default `bin_width = 2/256`
for data on the [-1, 1] scale, `7 - LL / (D ln 2)`, see `tfdgmm.units`). `model(x)` /
`predict` give the per-image lower bound at the best path found with a fixed seed (so outputs
are deterministic).

Limitations: the path prior must be `'uniform'` (a learned factorized prior would need its own
closed-form update; use `tfdgmm.training` for it); no XLA (`jit_compile` resolves to False).
"""

import copy
import math

import keras
import numpy as np
import tensorflow as tf

from tfdgmm import architectures
from tfdgmm import layers as tlayers
from tfdgmm.deep_gmm import DeepGMM

__all__ = ["DeepGMMModel", "ESTEP_OPTIONS"]

#: Keys of `estep_options` (passed on to `DeepGMM.best_path`).
ESTEP_OPTIONS = ("restarts", "init_passes", "restart_passes", "location_method",
                 "location_options")


@keras.saving.register_keras_serializable(package="tfdgmm")
class DeepGMMModel(keras.Model):
    """A deep GMM as a `keras.Model` trained by online hard EM (see the module docstring).

    Args:
      architecture: an architecture dict as for `tfdgmm.DeepGMM.from_config` (see
        `tfdgmm.architectures`); `path_prior` must be `'uniform'`. The layers are built as
        `tfdgmm.layers` Keras layers with the same initial values as `DeepGMM.from_config`
        (same per-layer seeds), in the config's `dtype`.
      estep_options: dict for `DeepGMM.best_path` in every E-step (keys `ESTEP_OPTIONS`);
        default `{"restarts": 1}` (one random start, 2 passes of coordinate ascent).
      bin_width: width of one quantisation bin in data units, for bits/dim (default `2/256`:
        8-bit images scaled to [-1, 1]).
      seed: int seed of the E-step's random restarts (default: the architecture's seed).
      **kwargs: `keras.Model` arguments (`name`, ...).
    """

    def __init__(self, architecture, estep_options=None, bin_width=2.0 / 256.0, seed=None,
                 **kwargs):
        kwargs.setdefault("dtype", None)
        cfg = architectures.normalize(architecture)
        if cfg["path_prior"] != "uniform":
            raise ValueError(
                f"DeepGMMModel supports path_prior='uniform' only; got {cfg['path_prior']!r} "
                "(train factorized/table priors with tfdgmm.training).")
        if kwargs["dtype"] is None:
            kwargs["dtype"] = cfg["dtype"]
        super().__init__(**kwargs)
        self.supports_jit = False
        self.architecture = cfg
        options = dict({"restarts": 1} if estep_options is None else estep_options)
        unknown = set(options) - set(ESTEP_OPTIONS)
        if unknown:
            raise ValueError(f"unknown estep_options {sorted(unknown)}; expected some of "
                             f"{list(ESTEP_OPTIONS)}")
        self.estep_options = options
        self.bin_width = float(bin_width)
        self.seed = int(cfg["seed"] if seed is None else seed)

        h, w, c = cfg["image_shape"]
        r = cfg["patch_size"]
        if h % r or w % r:
            raise ValueError(f"image size {h}x{w} is not divisible by the patch size {r}")
        self.image_shape = (h, w, c)
        self.patch_shape = (h // r, w // r, r * r * c)
        self.num_dims = h * w * c
        self.patchify = tlayers.Patchify(r, name="patchify", dtype=self.dtype_policy)
        self.transforms = [self._make_layer(i, spec) for i, spec in enumerate(cfg["layers"])]

        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.lower_bound_tracker = keras.metrics.Mean(name="lower_bound")
        self.bits_per_dim_tracker = keras.metrics.Mean(name="bits_per_dim")
        self._estep_function = None
        self.build(None)

    def _make_layer(self, i, spec):
        kind = spec["type"]
        common = dict(num_alternatives=spec["alternatives"],
                      seed=self.architecture["seed"] * 1009 + i,  # as architectures.build
                      name=f"layer{i}_{kind}", dtype=self.dtype_policy)
        if kind == "block_diagonal":
            return tlayers.BlockDiagonal(selection=spec["selection"],
                                         per_location=spec["per_location"], **common)
        if kind == "diagonal":
            return tlayers.Diagonal(selection=spec["selection"],
                                    per_location=spec["per_location"], **common)
        if kind == "half_convolution":
            return tlayers.HalfConvolution(kernel_size=spec["kernel_size"],
                                           update=spec["update"], selection=spec["selection"],
                                           **common)
        return tlayers.Dense(**common)

    def build(self, input_shape=None):
        """Creates every weight (the shapes follow from the architecture; inputs are ignored)."""
        if not self.patchify.built:
            self.patchify.build((None,) + self.image_shape)
        for layer in self.transforms:
            if not layer.built:
                layer.build((None,) + self.patch_shape)

    # ---------------------------------------------------------------- the distribution

    def deep_gmm(self):
        """A `tfdgmm.DeepGMM` on the current values of the Keras weights.

        Its parameters are tensors read now: build it inside a `GradientTape` to differentiate
        (as `train_step` does). For a standalone copy with its own variables, `to_deep_gmm()`.
        """
        return DeepGMM([layer.bijector() for layer in self.transforms], self.image_shape,
                       self.architecture["patch_size"], path_prior="uniform",
                       exact_limit=self.architecture["exact_limit"])

    def to_deep_gmm(self):
        """A new `DeepGMM` (own `tf.Variable`s, `DeepGMM.from_config`) with these values."""
        gmm = DeepGMM.from_config(copy.deepcopy(self.architecture))
        for bij, layer in zip(gmm.layers, self.transforms):
            for name in layer._PARAMETERS:
                getattr(bij, name).assign(getattr(layer, name).numpy())
        return gmm

    def set_from_deep_gmm(self, gmm):
        """Copy the parameter values of a `DeepGMM` of the same architecture into the weights."""
        if len(gmm.layers) != len(self.transforms):
            raise ValueError(f"the DeepGMM has {len(gmm.layers)} layers, this model "
                             f"{len(self.transforms)}")
        for i, (bij, layer) in enumerate(zip(gmm.layers, self.transforms)):
            for name in layer._PARAMETERS:
                weight = getattr(layer, name)
                value = np.asarray(tf.convert_to_tensor(getattr(bij, name, None)))
                if tuple(value.shape) != tuple(weight.shape):
                    raise ValueError(f"layer {i} ({layer.name}) `{name}`: shape "
                                     f"{value.shape} != {tuple(weight.shape)}")
                weight.assign(value.astype(weight.dtype))

    # ---------------------------------------------------------------- inputs and units

    def _unpack(self, data):
        """`(images, paths or None, sample_weight or None)` from a batch (a `y` is ignored)."""
        x, _, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        paths = None
        if isinstance(x, dict):
            if "images" not in x:
                raise ValueError("a dict input needs the key 'images' (and optionally 'paths'); "
                                 f"got keys {sorted(x)}")
            paths = x.get("paths")
            x = x["images"]
            if paths is not None:
                paths = tuple(tf.cast(p, tf.int32) for p in paths)
        x = self._check_images(x)
        return x, paths, sample_weight

    def _check_images(self, x):
        """Float images `[N, H, W, C]` on the model's scale, or a clear error: raw pixels
        (uint8 or any integer dtype) are refused, since the model is a density of dequantized
        data on [-1, 1] (`tfdgmm.data.dequantize`; bits/dim assume that scale)."""
        dtype = getattr(x, "dtype", None)
        if dtype is not None and tf.as_dtype(dtype).is_integer:
            raise ValueError(
                f"DeepGMMModel expects dequantized float images on [-1, 1]; got "
                f"{tf.as_dtype(dtype).name} (raw pixels?). Dequantize them first, e.g. "
                "tfdgmm.data.dequantize(pixels, np.random.default_rng(0).random(pixels.shape))"
                " or split.dequantized(seed) of tfdgmm.data.load_cifar10.")
        x = tf.cast(x, self.compute_dtype)
        if x.shape.rank is not None:
            shape = x.shape.as_list()
            if len(shape) != 4 or any(s is not None and s != e
                                      for s, e in zip(shape[1:], self.image_shape)):
                expected = ", ".join(map(str, self.image_shape))
                raise ValueError(f"DeepGMMModel expects images [N, {expected}]; got shape "
                                 f"{shape}")
        return x

    def bits_per_dim(self, lower_bound):
        """`-log2(bin_width) - LL / (D ln 2)`, elementwise (`7 - LL/(D ln 2)` by default)."""
        return (-math.log2(self.bin_width)
                - lower_bound / (self.num_dims * math.log(2.0)))

    def _estep_seed(self, salt):
        return tf.stack([tf.constant(self.seed, tf.int32), tf.cast(salt, tf.int32)])

    # ---------------------------------------------------------------- Keras API

    def compile(self, optimizer="adam", jit_compile=False, **kwargs):
        """`keras.Model.compile` without a loss (the loss is the hard-EM objective).

        The optimizer is built on the model's trainable weights at once, so that its slots
        exist before any `fit` and `load_weights` / `load_model` restore them.
        """
        for key in ("loss", "metrics", "loss_weights", "weighted_metrics"):
            if kwargs.get(key) is not None:
                raise ValueError(f"DeepGMMModel.compile: `{key}` is not supported; the loss is "
                                 "-mean(log pi_p + log p_p(x)) and the metrics are built in.")
        super().compile(optimizer=optimizer, jit_compile=jit_compile, **kwargs)
        if not self.optimizer.built:
            self.optimizer.build(self.trainable_variables)

    def compile_from_config(self, config):
        """Re-compiles on `keras.models.load_model` (the optimizer's state is then restored)."""
        self.compile(**keras.saving.deserialize_keras_object(config))

    def call(self, inputs, training=None):
        """Per-image lower bound `log pi_p + log p_p(x)` (nats), `[N]`.

        `inputs`: images `[N, H, W, C]` (best paths searched with a fixed seed) or a dict
        `{"images": ..., "paths": ...}` (evaluated at the given paths).
        """
        x, paths, _ = self._unpack(inputs)
        gmm = self.deep_gmm()
        if paths is not None:
            return gmm.joint_log_prob(x, paths)
        return gmm.best_path(x, seed=self._estep_seed(-1), **self.estep_options)[1]

    def compute_output_shape(self, input_shape):
        """`[N]`: one lower bound per image."""
        if isinstance(input_shape, dict):
            input_shape = input_shape["images"]
        return (tuple(input_shape)[0],)

    def export(self, filepath, format="tf_saved_model", verbose=None, input_signature=None,
               **kwargs):
        """`keras.Model.export`; the default `input_signature` is float images
        `[None, H, W, C]` (the serving endpoint returns the per-image lower bound, `call`)."""
        if input_signature is None and format == "tf_saved_model":
            input_signature = [tf.TensorSpec([None, *self.image_shape], self.compute_dtype,
                                             name="images")]
        if verbose is not None:
            kwargs["verbose"] = verbose
        return super().export(filepath, format=format, input_signature=input_signature,
                              **kwargs)

    @property
    def metrics(self):
        return [self.loss_tracker, self.lower_bound_tracker, self.bits_per_dim_tracker]

    def _update_metrics(self, loss, joint, sample_weight):
        self.loss_tracker.update_state(loss, sample_weight=tf.shape(joint)[0])
        self.lower_bound_tracker.update_state(joint, sample_weight=sample_weight)
        self.bits_per_dim_tracker.update_state(self.bits_per_dim(joint),
                                               sample_weight=sample_weight)
        return {m.name: m.result() for m in self.metrics}

    @staticmethod
    def _mean(joint, sample_weight):
        if sample_weight is None:
            return tf.reduce_mean(joint)
        w = tf.cast(tf.reshape(sample_weight, [-1]), joint.dtype)
        return tf.reduce_sum(w * joint) / tf.maximum(tf.reduce_sum(w), 1e-12)

    def train_step(self, data):
        """Online hard EM on one batch: E-step (best paths, no gradient), then one M-step."""
        x, paths, sample_weight = self._unpack(data)
        if paths is None:
            paths, _ = self.deep_gmm().best_path(
                x, seed=self._estep_seed(self.optimizer.iterations), **self.estep_options)
            paths = tuple(tf.stop_gradient(p) for p in paths)
        variables = self.trainable_variables
        with tf.GradientTape() as tape:
            joint = self.deep_gmm().joint_log_prob(x, paths)
            loss = -self._mean(joint, sample_weight)
            scaled = self.optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, variables)
        self.optimizer.apply_gradients(zip(grads, variables))
        return self._update_metrics(loss, joint, sample_weight)

    def test_step(self, data):
        """Lower bound at the best paths (fixed seed) or at the given paths."""
        x, paths, sample_weight = self._unpack(data)
        gmm = self.deep_gmm()
        if paths is None:
            joint = gmm.best_path(x, seed=self._estep_seed(-1), **self.estep_options)[1]
        else:
            joint = gmm.joint_log_prob(x, paths)
        return self._update_metrics(-self._mean(joint, sample_weight), joint, sample_weight)

    # ---------------------------------------------------------------- batch hard EM helpers

    def best_path(self, x, init=None, seed=None, **options):
        """`DeepGMM.best_path` with the current weights (defaults from `estep_options`)."""
        opts = dict(self.estep_options)
        opts.update(options)
        x = tf.cast(tf.convert_to_tensor(x), self.compute_dtype)
        return self.deep_gmm().best_path(x, init=init, seed=seed, **opts)

    def estep(self, x, init=None, batch_size=256, seed=0):
        """E-step over a data set: `(paths, lower_bounds)` as numpy arrays.

        `x`: images `[N, H, W, C]`; `init`: previous paths (warm start, e.g. the last
        E-step's) or None. Runs `best_path` batch by batch in a compiled function; the random
        restarts use a stateless seed derived from `seed` and the batch index.
        """
        x = np.asarray(x)
        if self._estep_function is None:
            def fn(xb, init_b, seed_b):
                init_b = None if len(init_b) == 0 else tuple(init_b)
                return self.best_path(xb, init=init_b, seed=seed_b)
            self._estep_function = tf.function(fn, reduce_retracing=True)
        paths, scores = [], []
        for b, start in enumerate(range(0, len(x), batch_size)):
            sl = slice(start, start + batch_size)
            init_b = () if init is None else tuple(
                tf.constant(np.asarray(p)[sl], tf.int32) for p in init)
            p, s = self._estep_function(tf.constant(x[sl], self.compute_dtype), init_b,
                                        tf.constant([int(seed), b], tf.int32))
            paths.append([np.asarray(z) for z in p])
            scores.append(np.asarray(s))
        paths = tuple(np.concatenate(z, axis=0) for z in zip(*paths))
        return paths, np.concatenate(scores, axis=0)

    def mstep_fit(self, x, paths, **fit_kwargs):
        """`fit` on given paths (no E-step): the M-step of batch hard EM.

        `paths`: one int array per layer, `[N]` or `[N, Hp, Wp]` (as from `estep`). Other
        arguments go to `fit` (`batch_size`, `epochs`, `callbacks`, ...).
        """
        paths = tuple(np.asarray(p, np.int32) for p in paths)
        if len(paths) != len(self.transforms):
            raise ValueError(f"paths need one array per layer ({len(self.transforms)}); got "
                             f"{len(paths)}")
        return self.fit({"images": np.asarray(x), "paths": paths}, **fit_kwargs)

    def sample(self, n, seed=None):
        """`n` images from the model (`DeepGMM.sample_with_path`): `(images, paths)`."""
        return self.deep_gmm().sample_with_path(n, seed=seed)

    # ---------------------------------------------------------------- serialisation

    def get_config(self):
        config = {"architecture": copy.deepcopy(self.architecture),
                  "estep_options": copy.deepcopy(self.estep_options),
                  "bin_width": self.bin_width, "seed": self.seed, "name": self.name}
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)
