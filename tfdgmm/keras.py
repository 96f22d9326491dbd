"""The Keras face of tfdgmm: `DeepGMMModel`, a deep GMM you can `compile` and `fit`.

```python
import keras
from tfdgmm.keras import DeepGMMModel, DivergenceGuard

model = DeepGMMModel({
    "image_shape": [32, 32, 3], "patch_size": 4,
    "layers": [{"type": "half_convolution", "kernel_size": 5, "repeat": 3},
               {"type": "block_diagonal", "alternatives": 4}]})
model.adapt(x_train)        # the command line's data-dependent init
model.compile()             # Adam(WarmUp(1e-3, 100)); K-FAC steps for half-convolution kernels
model.fit(x_train, batch_size=100, epochs=10, validation_data=x_val,
          callbacks=[DivergenceGuard(x_train),
                     keras.callbacks.EarlyStopping("val_lower_bound", mode="max")])
model.evaluate(x_test, return_dict=True)   # {'loss', 'lower_bound', 'bits_per_dim'}
model.save("dgmm.keras"); keras.models.load_model("dgmm.keras")
```

**Training is online hard EM.** Each `train_step` runs, on its batch,

1. the E-step: the best path of every image under the current parameters,
   `DeepGMM.best_path` (random restarts from a stateless seed that changes every step; no
   gradient), then
2. the M-step: one optimizer step on `loss = -mean_n [log pi_p + log p_p(x_n)]` (nats per
   image), `DeepGMM.joint_log_prob` on those paths. With `hc_optimizer="kfac"` (the default)
   the half-convolution kernels take K-FAC steps instead (Kronecker factors from the batch every
   `hc_statistics_interval` updates, momentum SGD at `hc_learning_rate` of a Newton step with
   the same warm-up; `tfdgmm.training.preconditioning`): Adam on them destroys the fit that
   `adapt` starts from (see the README's "Why training used to diverge").

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

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING

import keras
import numpy as np
import tensorflow as tf

from tfdgmm import architectures
from tfdgmm import layers as tlayers
from tfdgmm.bijectors import registry
from tfdgmm.deep_gmm import DeepGMM

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

    from tfdgmm.types import ChoicePath, Config, Images, PathLike, Seed

__all__ = ["DeepGMMModel", "DivergenceGuard", "ESTEP_OPTIONS", "WarmUp", "check_image_range"]

#: Keys of `estep_options` (passed on to `DeepGMM.best_path`).
ESTEP_OPTIONS = ("restarts", "init_passes", "restart_passes", "location_method", "location_options")


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

    def __init__(
        self,
        architecture: Config,
        estep_options: dict | None = None,
        bin_width: float = 2.0 / 256.0,
        seed: int | None = None,
        hc_optimizer: str = "kfac",
        hc_learning_rate: float = 0.05,
        hc_momentum: float = 0.9,
        hc_damping: float = 1e-3,
        hc_statistics_interval: int = 50,
        hc_max_step_nats: float = 1000.0,
        warmup_updates: int = 100,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("dtype", None)
        cfg = architectures.normalize(architecture)
        if cfg["path_prior"] != "uniform":
            raise ValueError(
                f"DeepGMMModel supports path_prior='uniform' only; got {cfg['path_prior']!r} "
                "(train factorized/table priors with tfdgmm.training)."
            )
        if kwargs["dtype"] is None:
            kwargs["dtype"] = cfg["dtype"]
        super().__init__(**kwargs)
        self.supports_jit = False
        self.architecture = cfg
        options = dict({"restarts": 1} if estep_options is None else estep_options)
        unknown = set(options) - set(ESTEP_OPTIONS)
        if unknown:
            raise ValueError(
                f"unknown estep_options {sorted(unknown)}; expected some of {list(ESTEP_OPTIONS)}"
            )
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

        if hc_optimizer not in ("kfac", "optimizer"):
            raise ValueError(f"hc_optimizer must be 'kfac' or 'optimizer'; got {hc_optimizer!r}")
        self.hc_options = {
            "hc_optimizer": hc_optimizer,
            "hc_learning_rate": float(hc_learning_rate),
            "hc_momentum": float(hc_momentum),
            "hc_damping": float(hc_damping),
            "hc_statistics_interval": int(hc_statistics_interval),
            "hc_max_step_nats": float(hc_max_step_nats),
            "warmup_updates": int(warmup_updates),
        }
        self._kfac = None
        if hc_optimizer == "kfac" and any(s["type"] == "half_convolution" for s in cfg["layers"]):
            self._kfac = _KerasKFAC(hc_damping)

        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.lower_bound_tracker = keras.metrics.Mean(name="lower_bound")
        self.bits_per_dim_tracker = keras.metrics.Mean(name="bits_per_dim")
        self._estep_function = None
        self.build(None)
        if self._kfac is not None:  # the factors' shapes; values come from the data
            self._kfac.build(self.to_deep_gmm())

    def _make_layer(self, i: int, spec: Config) -> tlayers.TransformLayer:
        kind = spec["type"]
        return registry.keras_layer(kind).from_spec(
            spec,
            seed=architectures.layer_seed(self.architecture["seed"], i),
            name=f"layer{i}_{kind}",
            dtype=self.dtype_policy,
        )

    def build(self, input_shape: Any = None) -> None:
        """Creates every weight (the shapes follow from the architecture; inputs are ignored)."""
        if not self.patchify.built:
            self.patchify.build((None,) + self.image_shape)
        for layer in self.transforms:
            if not layer.built:
                layer.build((None,) + self.patch_shape)

    # ---------------------------------------------------------------- the distribution

    def deep_gmm(self) -> DeepGMM:
        """A `tfdgmm.DeepGMM` on the current values of the Keras weights.

        Its parameters are tensors read now: build it inside a `GradientTape` to differentiate
        (as `train_step` does). For a standalone copy with its own variables, `to_deep_gmm()`.
        """
        return DeepGMM(
            [layer.bijector() for layer in self.transforms],
            self.image_shape,
            self.architecture["patch_size"],
            path_prior="uniform",
            exact_limit=self.architecture["exact_limit"],
        )

    def to_deep_gmm(self) -> DeepGMM:
        """A new `DeepGMM` (own `tf.Variable`s, `DeepGMM.from_config`) with these values."""
        gmm = DeepGMM.from_config(copy.deepcopy(self.architecture))
        for bij, layer in zip(gmm.layers, self.transforms):
            for name in layer.PARAMETERS:
                getattr(bij, name).assign(getattr(layer, name).numpy())
        return gmm

    def set_from_deep_gmm(self, gmm: DeepGMM) -> None:
        """Copy the parameter values of a `DeepGMM` of the same architecture into the weights."""
        if len(gmm.layers) != len(self.transforms):
            raise ValueError(
                f"the DeepGMM has {len(gmm.layers)} layers, this model {len(self.transforms)}"
            )
        for i, (bij, layer) in enumerate(zip(gmm.layers, self.transforms)):
            for name in layer.PARAMETERS:
                weight = getattr(layer, name)
                value = np.asarray(tf.convert_to_tensor(getattr(bij, name, None)))
                if tuple(value.shape) != tuple(weight.shape):
                    raise ValueError(
                        f"layer {i} ({layer.name}) `{name}`: shape "
                        f"{value.shape} != {tuple(weight.shape)}"
                    )
                weight.assign(value.astype(weight.dtype))

    # ---------------------------------------------------------------- inputs and units

    def _unpack(self, data: Any) -> tuple:
        """`(images, paths or None, sample_weight or None)` from a batch (a `y` is ignored)."""
        x, _, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        paths = None
        if isinstance(x, dict):
            if "images" not in x:
                raise ValueError(
                    "a dict input needs the key 'images' (and optionally 'paths'); "
                    f"got keys {sorted(x)}"
                )
            paths = x.get("paths")
            x = x["images"]
            if paths is not None:
                paths = tuple(tf.cast(p, tf.int32) for p in paths)
        x = self._check_images(x)
        return x, paths, sample_weight

    def _check_images(self, x: Images) -> tf.Tensor:
        """Float images `[N, H, W, C]` on the model's scale, or a clear error: raw pixels
        (uint8 or any integer dtype) are refused, since the model is a density of dequantized
        data on [-1, 1] (`tfdgmm.data.dequantize`; bits/dim assume that scale)."""
        dtype = getattr(x, "dtype", None)
        if dtype is not None and tf.as_dtype(dtype).is_integer:
            raise ValueError(
                f"DeepGMMModel expects dequantized float images on [-1, 1]; got "
                f"{tf.as_dtype(dtype).name} (raw pixels?). Dequantize them first, e.g. "
                "tfdgmm.data.dequantize(pixels, np.random.default_rng(0).random(pixels.shape))"
                " or split.dequantized(seed) of tfdgmm.data.load_cifar10."
            )
        x = tf.cast(x, self.compute_dtype)
        if x.shape.rank is not None:
            shape = x.shape.as_list()
            if len(shape) != 4 or any(
                s is not None and s != e for s, e in zip(shape[1:], self.image_shape)
            ):
                expected = ", ".join(map(str, self.image_shape))
                raise ValueError(f"DeepGMMModel expects images [N, {expected}]; got shape {shape}")
        return x

    def bits_per_dim(self, lower_bound: float | tf.Tensor) -> float | tf.Tensor:
        """`-log2(bin_width) - LL / (D ln 2)`, elementwise (`7 - LL/(D ln 2)` by default)."""
        return -math.log2(self.bin_width) - lower_bound / (self.num_dims * math.log(2.0))

    def _estep_seed(self, salt: int | tf.Tensor) -> tf.Tensor:
        return tf.stack([tf.constant(self.seed, tf.int32), tf.cast(salt, tf.int32)])

    # ---------------------------------------------------------------- Keras API

    def compile(self, optimizer: str = "adam", jit_compile: bool = False, **kwargs: Any) -> None:
        """`keras.Model.compile` without a loss (the loss is the hard-EM objective).

        `optimizer="adam"` (the default) is Adam at 1e-3 with a linear warm-up over
        `warmup_updates` updates (`WarmUp`), the command line's schedule; pass an optimizer to
        choose your own. With `hc_optimizer="kfac"` (the default) it steps every weight but the
        half-convolution kernels, which take K-FAC steps (see the class docstring).

        The optimizer is built on the weights it steps at once, so that its slots exist before
        any `fit` and `load_weights` / `load_model` restore them.
        """
        if isinstance(optimizer, str) and optimizer.lower() == "adam":
            optimizer = keras.optimizers.Adam(WarmUp(1e-3, self.hc_options["warmup_updates"]))
        for key in ("loss", "metrics", "loss_weights", "weighted_metrics"):
            if kwargs.get(key) is not None:
                raise ValueError(
                    f"DeepGMMModel.compile: `{key}` is not supported; the loss is "
                    "-mean(log pi_p + log p_p(x)) and the metrics are built in."
                )
        super().compile(optimizer=optimizer, jit_compile=jit_compile, **kwargs)
        if not self.optimizer.built:
            self.optimizer.build(self._optimizer_variables())

    def _hc_kernels(self) -> list:
        return [self.transforms[i].kernel for i in self._kfac.indices] if self._kfac else []

    def _optimizer_variables(self) -> list:
        """The variables the Keras optimizer steps (all but K-FAC's kernels)."""
        hc = {id(v) for v in self._hc_kernels()}
        return [v for v in self.trainable_variables if id(v) not in hc]

    def adapt(
        self, data: Images, max_images: int = 5000, identity_below: bool = True
    ) -> int | None:
        """The command line's data-dependent initialisation (`tfdgmm.training.init`), the Keras
        way (like a preprocessing layer's `adapt`): the lowest block-diagonal (or dense) layer
        becomes a whitening of `data` as it arrives there, and the single-alternative
        half-convolutions below it start as the identity. Call it before `fit`: the model then
        starts as the per-location Gaussian of the data (4.2-4.8 bits/dim on CIFAR-10 subsets,
        against 8.4 for the default start).

        `data`: images `[N, H, W, C]` (numpy or tensor, on the model's [-1, 1] scale) or a
        `tf.data.Dataset` of such batches (or of `{"images": ...}` dicts); at most `max_images`
        are used. Returns the index of the layer initialised (None when there is none)."""
        from tfdgmm.training.init import initialize_from_data

        if isinstance(data, tf.data.Dataset):
            chunks, count = [], 0
            for batch in data:
                x, _, _ = self._unpack(batch)
                chunks.append(np.asarray(x))
                count += len(chunks[-1])
                if count >= max_images:
                    break
            data = np.concatenate(chunks, axis=0)
        x = np.asarray(data)[:max_images]
        check_image_range(x)
        gmm = self.to_deep_gmm()
        layer = initialize_from_data(gmm, x, max_images=max_images, identity_below=identity_below)
        self.set_from_deep_gmm(gmm)
        return layer

    def compile_from_config(self, config: dict) -> None:
        """Re-compiles on `keras.models.load_model` (the optimizer's state is then restored)."""
        self.compile(**keras.saving.deserialize_keras_object(config))

    def call(self, inputs: Any, training: bool | None = None) -> tf.Tensor:
        """Per-image lower bound `log pi_p + log p_p(x)` (nats), `[N]`.

        `inputs`: images `[N, H, W, C]` (best paths searched with a fixed seed) or a dict
        `{"images": ..., "paths": ...}` (evaluated at the given paths).
        """
        x, paths, _ = self._unpack(inputs)
        gmm = self.deep_gmm()
        if paths is not None:
            return gmm.joint_log_prob(x, paths)
        return gmm.best_path(x, seed=self._estep_seed(-1), **self.estep_options)[1]

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> tuple:
        """`[N]`: one lower bound per image."""
        if isinstance(input_shape, dict):
            input_shape = input_shape["images"]
        return (tuple(input_shape)[0],)

    def export(
        self,
        filepath: PathLike,
        format: str = "tf_saved_model",
        verbose: bool | None = None,
        input_signature: Any = None,
        **kwargs: Any,
    ) -> Any:
        """`keras.Model.export`; the default `input_signature` is float images
        `[None, H, W, C]` (the serving endpoint returns the per-image lower bound, `call`)."""
        if input_signature is None and format == "tf_saved_model":
            input_signature = [
                tf.TensorSpec([None, *self.image_shape], self.compute_dtype, name="images")
            ]
        if verbose is not None:
            kwargs["verbose"] = verbose
        return super().export(filepath, format=format, input_signature=input_signature, **kwargs)

    @property
    def metrics(self) -> list:
        return [self.loss_tracker, self.lower_bound_tracker, self.bits_per_dim_tracker]

    def _update_metrics(
        self, loss: tf.Tensor, joint: tf.Tensor, sample_weight: tf.Tensor | None
    ) -> dict:
        self.loss_tracker.update_state(loss, sample_weight=tf.shape(joint)[0])
        self.lower_bound_tracker.update_state(joint, sample_weight=sample_weight)
        self.bits_per_dim_tracker.update_state(
            self.bits_per_dim(joint), sample_weight=sample_weight
        )
        return {m.name: m.result() for m in self.metrics}

    @staticmethod
    def _mean(joint: tf.Tensor, sample_weight: tf.Tensor | None) -> tf.Tensor:
        if sample_weight is None:
            return tf.reduce_mean(joint)
        w = tf.cast(tf.reshape(sample_weight, [-1]), joint.dtype)
        return tf.reduce_sum(w * joint) / tf.maximum(tf.reduce_sum(w), 1e-12)

    def train_step(self, data: Any) -> dict:
        """Online hard EM on one batch: E-step (best paths, no gradient), then one M-step."""
        x, paths, sample_weight = self._unpack(data)
        if paths is None:
            paths, _ = self.deep_gmm().best_path(
                x, seed=self._estep_seed(self.optimizer.iterations), **self.estep_options
            )
            paths = tuple(tf.stop_gradient(p) for p in paths)
        main = self._optimizer_variables()
        kernels = self._hc_kernels()
        with tf.GradientTape() as tape:
            joint = self.deep_gmm().joint_log_prob(x, paths)
            loss = -self._mean(joint, sample_weight)
            scaled = self.optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, main + kernels)
        if kernels:
            step = self.optimizer.iterations
            opts = self.hc_options
            self._kfac.step(
                kernels,
                grads[len(main) :],
                step,
                x,
                paths,
                self.deep_gmm,
                interval=opts["hc_statistics_interval"],
                learning_rate=WarmUp(opts["hc_learning_rate"], opts["warmup_updates"])(step),
                momentum=opts["hc_momentum"],
                max_step_nats=opts["hc_max_step_nats"],
            )
        self.optimizer.apply_gradients(zip(grads[: len(main)], main))
        return self._update_metrics(loss, joint, sample_weight)

    def test_step(self, data: Any) -> dict:
        """Lower bound at the best paths (fixed seed) or at the given paths."""
        x, paths, sample_weight = self._unpack(data)
        gmm = self.deep_gmm()
        if paths is None:
            joint = gmm.best_path(x, seed=self._estep_seed(-1), **self.estep_options)[1]
        else:
            joint = gmm.joint_log_prob(x, paths)
        return self._update_metrics(-self._mean(joint, sample_weight), joint, sample_weight)

    # ---------------------------------------------------------------- batch hard EM helpers

    def best_path(
        self, x: Images, init: ChoicePath | None = None, seed: Seed | None = None, **options: Any
    ) -> tuple:
        """`DeepGMM.best_path` with the current weights (defaults from `estep_options`)."""
        opts = dict(self.estep_options)
        opts.update(options)
        x = tf.cast(tf.convert_to_tensor(x), self.compute_dtype)
        return self.deep_gmm().best_path(x, init=init, seed=seed, **opts)

    def estep(
        self, x: Images, init: ChoicePath | None = None, batch_size: int = 256, seed: int = 0
    ) -> tuple:
        """E-step over a data set: `(paths, lower_bounds)` as numpy arrays.

        `x`: images `[N, H, W, C]`; `init`: previous paths (warm start, e.g. the last
        E-step's) or None. Runs `best_path` batch by batch in a compiled function; the random
        restarts use a stateless seed derived from `seed` and the batch index.
        """
        x = np.asarray(x)
        if self._estep_function is None:

            def fn(xb: tf.Tensor, init_b: Sequence[tf.Tensor], seed_b: tf.Tensor) -> tuple:
                init_b = None if len(init_b) == 0 else tuple(init_b)
                return self.best_path(xb, init=init_b, seed=seed_b)

            self._estep_function = tf.function(fn, reduce_retracing=True)
        paths, scores = [], []
        for b, start in enumerate(range(0, len(x), batch_size)):
            sl = slice(start, start + batch_size)
            init_b = (
                ()
                if init is None
                else tuple(tf.constant(np.asarray(p)[sl], tf.int32) for p in init)
            )
            p, s = self._estep_function(
                tf.constant(x[sl], self.compute_dtype),
                init_b,
                tf.constant([int(seed), b], tf.int32),
            )
            paths.append([np.asarray(z) for z in p])
            scores.append(np.asarray(s))
        paths = tuple(np.concatenate(z, axis=0) for z in zip(*paths))
        return paths, np.concatenate(scores, axis=0)

    def mstep_fit(self, x: Images, paths: ChoicePath, **fit_kwargs: Any) -> keras.callbacks.History:
        """`fit` on given paths (no E-step): the M-step of batch hard EM.

        `paths`: one int array per layer, `[N]` or `[N, Hp, Wp]` (as from `estep`). Other
        arguments go to `fit` (`batch_size`, `epochs`, `callbacks`, ...).
        """
        paths = tuple(np.asarray(p, np.int32) for p in paths)
        if len(paths) != len(self.transforms):
            raise ValueError(
                f"paths need one array per layer ({len(self.transforms)}); got {len(paths)}"
            )
        return self.fit({"images": np.asarray(x), "paths": paths}, **fit_kwargs)

    def sample(self, n: int, seed: Seed | None = None) -> tuple:
        """`n` images from the model (`DeepGMM.sample_with_path`): `(images, paths)`."""
        return self.deep_gmm().sample_with_path(n, seed=seed)

    # ---------------------------------------------------------------- serialisation

    def get_config(self) -> dict:
        config = {
            "architecture": copy.deepcopy(self.architecture),
            "estep_options": copy.deepcopy(self.estep_options),
            "bin_width": self.bin_width,
            "seed": self.seed,
            "name": self.name,
            **self.hc_options,
        }
        return config

    @classmethod
    def from_config(cls, config: dict) -> DeepGMMModel:
        return cls(**config)


# -------------------------------------------------------------------- schedule and policies


@keras.saving.register_keras_serializable(package="tfdgmm")
class WarmUp(keras.optimizers.schedules.LearningRateSchedule):
    """`learning_rate * min(1, (step + 1) / warmup_updates)`: the command line's warm-up.

    From the data-dependent start (`DeepGMMModel.adapt`) full-size first Adam steps throw the
    model far off; a short linear ramp lets Adam's moment estimates settle first."""

    def __init__(self, learning_rate: float, warmup_updates: int = 100) -> None:
        self.learning_rate = float(learning_rate)
        self.warmup_updates = int(warmup_updates)

    def __call__(self, step: tf.Tensor) -> tf.Tensor:
        if self.warmup_updates <= 0:
            return tf.constant(self.learning_rate, tf.float32)
        ramp = tf.cast(step + 1, tf.float32) / float(self.warmup_updates)
        return self.learning_rate * tf.minimum(ramp, 1.0)

    def get_config(self) -> dict:
        return {"learning_rate": self.learning_rate, "warmup_updates": self.warmup_updates}


class _KerasKFAC(tf.Module):
    """K-FAC steps for the half-convolution kernels of a `DeepGMMModel`
    (`tfdgmm.training.preconditioning`, the command line's `hc_optimizer: kfac`): factors from
    the current minibatch on its E-step paths every `interval` updates, momentum SGD on the
    preconditioned gradients."""

    def __init__(self, damping: float) -> None:
        super().__init__(name="keras_kfac")
        self.damping = damping
        self.pre = None
        self.velocity = []

    def build(self, gmm: DeepGMM) -> None:
        from tfdgmm.training.preconditioning import HalfConvolutionKFAC

        self.pre = HalfConvolutionKFAC(gmm, damping=self.damping)
        self.velocity = [
            tf.Variable(tf.zeros_like(k), trainable=False, name="velocity")
            for k in self.pre.kernels
        ]

    @property
    def indices(self) -> list[int]:
        return self.pre.indices

    def step(
        self,
        kernels: Sequence[Any],
        grads: Sequence[tf.Tensor],
        iteration: tf.Tensor,
        x: tf.Tensor,
        paths: ChoicePath,
        make_gmm: Callable[[], DeepGMM],
        interval: int,
        learning_rate: tf.Tensor,
        momentum: float,
        max_step_nats: float,
    ) -> None:
        pre = self.pre

        def refresh() -> tf.Tensor:
            pre.update(
                tf.stop_gradient(x),
                paths,
                model=make_gmm(),
                seed=tf.stack([tf.constant(0x4FAC, tf.int32), tf.cast(iteration, tf.int32)]),
            )
            return tf.constant(0)

        tf.cond(
            (iteration % interval == 0) | tf.logical_not(pre.ready), refresh, lambda: tf.constant(0)
        )
        steps = pre.precondition(grads, learning_rate=learning_rate, max_step_nats=max_step_nats)
        for v, p, kernel in zip(self.velocity, steps, kernels):
            v.assign(momentum * v + tf.cast(p, v.dtype))
            kernel.assign_sub(tf.cast(learning_rate, v.dtype) * v)


class DivergenceGuard(keras.callbacks.Callback):
    """Roll back a diverging `DeepGMMModel.fit`, like the command line's M-step guard.

    Every `check_every` batches the loss of a fixed probe batch (the first `probe_images` of
    `probe_data`, at their best paths with a fixed seed: `-mean(model(x))`) is compared with
    the best so far: if it is not finite, or more than `divergence_nats` nats per image worse,
    the weights (and optimizer state) go back to the last good snapshot and the learning rate
    is multiplied by `lr_factor`; otherwise the snapshot moves to the current weights. After
    `max_rollbacks` rollbacks training stops (`model.stop_training`).

    The learning rate is lowered through `optimizer.learning_rate` when it is a variable, and
    through a `WarmUp` schedule's `learning_rate` otherwise.
    """

    def __init__(
        self,
        probe_data: Images,
        probe_images: int = 100,
        check_every: int = 25,
        divergence_nats: float = 1000.0,
        lr_factor: float = 0.5,
        max_rollbacks: int = 8,
        verbose: int = 1,
    ) -> None:
        super().__init__()
        x = probe_data["images"] if isinstance(probe_data, dict) else probe_data
        self.probe = np.asarray(x)[:probe_images]
        self.check_every = int(check_every)
        self.divergence_nats = float(divergence_nats)
        self.lr_factor = float(lr_factor)
        self.max_rollbacks = int(max_rollbacks)
        self.verbose = verbose
        self.rollbacks = 0
        self.best = float("inf")
        self._snapshot = None

    def _probe_loss(self) -> float:
        return -float(np.mean(np.asarray(self.model(self.probe))))

    def _take_snapshot(self) -> None:
        self._snapshot = (
            [v.numpy() for v in self.model.variables],
            [v.numpy() for v in self.model.optimizer.variables],
        )

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.best = self._probe_loss()
        self._take_snapshot()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if (batch + 1) % self.check_every:
            return
        loss = self._probe_loss()
        if math.isfinite(loss) and loss <= self.best + self.divergence_nats:
            self.best = min(self.best, loss)
            self._take_snapshot()
            return
        self.rollbacks += 1
        weights, slots = self._snapshot
        for v, value in zip(self.model.variables, weights):
            v.assign(value)
        for v, value in zip(self.model.optimizer.variables, slots):
            v.assign(value)
        opt = self.model.optimizer
        lr = opt._learning_rate if hasattr(opt, "_learning_rate") else None
        if isinstance(lr, WarmUp):
            lr.learning_rate *= self.lr_factor
        else:
            opt.learning_rate.assign(opt.learning_rate * self.lr_factor)
        hc = getattr(self.model, "hc_options", None)
        if hc is not None:
            hc["hc_learning_rate"] *= self.lr_factor
        # the rates are Python numbers in the traced step: trace it again
        self.model.make_train_function(force=True)
        if self.verbose:
            print(
                f"DivergenceGuard: probe loss {loss:.4g} nats/image against {self.best:.4g}: "
                f"rolled back and lowered the learning rate by {self.lr_factor} "
                f"(rollback {self.rollbacks} of at most {self.max_rollbacks})"
            )
        if self.rollbacks >= self.max_rollbacks:
            self.model.stop_training = True


def check_image_range(x: Images, low: float = -1.0, high: float = 1.0) -> None:
    """Refuse integer images and values outside `[low, high]` (the model's documented range:
    dequantised pixels scaled to [-1, 1])."""
    x = np.asarray(x)
    if np.issubdtype(x.dtype, np.integer):
        raise ValueError(
            f"images are integers ({x.dtype}); expected floats on [{low}, {high}] "
            "(dequantised pixels: (pixel + u) / 128 - 1, see tfdgmm.data)"
        )
    if x.size and (float(x.min()) < low - 1e-6 or float(x.max()) > high + 1e-6):
        raise ValueError(
            f"images range over [{x.min():.3g}, {x.max():.3g}]; expected "
            f"[{low}, {high}] (dequantised pixels scaled to [-1, 1])"
        )
