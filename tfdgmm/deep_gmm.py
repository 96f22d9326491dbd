"""The deep GMM as a TensorFlow Probability distribution over images."""

import json
import math

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfdgmm import architectures, local_paths, path_priors, path_search
from tfdgmm.bijectors import Patchify
from tfdgmm.checks import check_float_images, check_seed

tfd = tfp.distributions
tfb = tfp.bijectors

__all__ = ["DeepGMM"]

_LOG_2PI = math.log(2.0 * math.pi)

# The library's control flow is explicit (Python loops over layers unroll at trace time; loops
# over locations are tf.while_loop), so AutoGraph has nothing to convert here. Keeping it out
# also keeps tracing fast and immune to AutoGraph's conversion cache.
_no_autograph = tf.autograph.experimental.do_not_convert


class DeepGMM(tfd.Distribution):
    r"""Deep Gaussian mixture model of images with locally-connected layers.

    Layers are listed **bottom-up**: layer 0 touches the data, the last layer touches the
    standard-normal latent. Each layer is a bank of `K_i` invertible affine bijectors from
    `tfdgmm.bijectors` acting on the patch tensor `[H/r, W/r, r*r*C]`. A *path* `p` picks one
    alternative per layer (per patch location for layers with `selection='location'`), and
    defines the Gaussian component

    ```none
    x = patchify^{-1}(A_{0,p} A_{1,p} ... A_{n-1,p} z + beta_p),  z ~ N(0, I),
    p(x) = sum_p pi_p N(x | beta_p, Omega_p Omega_p^T),  Omega_p = prod_i A_{i,p}.
    ```

    With `h_0 = patchify(x)` and `h_{i+1} = layer_i.inverse(h_i, choice=z_i)`,

    ```none
    log p_p(x) = log N(h_n; 0, I) + sum_i log |det dh_{i+1}/dh_i|.
    ```

    The number of paths is exponential in depth (`4^(64*3)` for the paper's Table-3 model), so
    paths are never materialised: `log_prob` is exact up to `exact_limit` paths, and beyond that
    when the choices are independent across locations (`tfdgmm.local_paths`: every choice in a
    top stack of per-location block-diagonal or diagonal layers, uniform or factorized prior,
    as in Table 2's models; the mixture then factorises over locations, with at most
    `exact_limit` choice combinations per location; `has_exact_log_prob`). Otherwise use
    `log_prob_lower_bound` (`max_p log pi_p p_p(x)`, found by the E-step search
    `best_path`) and `log_prob_upper_bound` (the paper's approximate upper bound).

    Args:
      layers: list of bijectors from `tfdgmm.bijectors` (`BlockDiagonal`, `Diagonal`,
        `HalfConvolution`, `Dense`), bottom (data side) first.
      image_shape: `(H, W, C)`.
      patch_size: `r`; `H` and `W` must be divisible by it.
      path_prior: `'uniform'`, `'factorized'`, `'table'`, `'gating'` (or a dict such as
        `{"kind": "gating", "hidden": 32}`), or a `tfdgmm.path_priors.PathPrior`.
      exact_limit: the largest path count for which `log_prob` enumerates every path (and the
        largest per-location combination count for the factorised form).
      validate_args: check inputs (shape, NaN) at run time.

    #### Examples

    ```python
    import tfdgmm
    model = tfdgmm.DeepGMM.from_config({
        "image_shape": [32, 32, 3], "patch_size": 4,
        "layers": [{"type": "half_convolution", "kernel_size": 5, "repeat": 3},
                   {"type": "block_diagonal", "alternatives": 4,
                    "selection": "location", "per_location": False}]})
    x = model.sample(8, seed=[1, 2])               # [8, 32, 32, 3]
    path, joint = model.best_path(x, seed=[3, 4])  # hard E-step
    lower = model.log_prob_lower_bound(x, path=path)
    ```

    #### References

    [1]: Aaron van den Oord and Joni Dambre. Locally-connected transformations for deep GMMs.
         ICML Deep Learning Workshop, 2015.
    [2]: Aaron van den Oord and Benjamin Schrauwen. Factoring variations in natural images with
         deep Gaussian mixture models. NeurIPS, 2014.
    """

    def __init__(
        self,
        layers,
        image_shape,
        patch_size,
        path_prior="uniform",
        exact_limit=4096,
        validate_args=False,
        name="DeepGMM",
        config=None,
    ):
        parameters = dict(locals())
        image_shape = tuple(int(s) for s in image_shape)
        if len(image_shape) != 3:
            raise ValueError(f"image_shape must be (H, W, C); got {image_shape}")
        h, w, c = image_shape
        r = int(patch_size)
        if r < 1 or h % r or w % r:
            raise ValueError(f"image size {h}x{w} is not divisible by the patch size {r}")
        if not layers:
            raise ValueError("a DeepGMM needs at least one layer")
        with tf.name_scope(name) as name:
            self._image_shape = image_shape
            self._patch_size = r
            self._patch_shape = (h // r, w // r, r * r * c)
            self._patchify = Patchify(r, validate_args=validate_args)
            self._layers = list(layers)
            self._exact_limit = int(exact_limit)
            dtype = _layers_dtype(self._layers)
            self._layer_specs = []
            for layer in self._layers:
                k = int(layer.num_alternatives)
                shape = self._patch_shape[:2] if (k > 1 and layer.selection == "location") else ()
                self._layer_specs.append((k, shape))
            self._path_prior = path_priors.make_path_prior(
                path_prior, self._layer_specs, dtype, patch_shape=self._patch_shape
            )
            self._ildj_tables = None
            # A JSON string: a `tf.Module` would wrap a dict attribute in tracking containers.
            self._config_json = None if config is None else json.dumps(config, sort_keys=True)
            super().__init__(
                dtype=dtype,
                reparameterization_type=tfd.NOT_REPARAMETERIZED,
                validate_args=validate_args,
                allow_nan_stats=True,
                parameters=parameters,
                name=name,
            )

    # ------------------------------------------------------------------ structure

    @classmethod
    def from_config(cls, config, dtype=None, seed=None, **kwargs):
        """Build from an architecture dict (see `tfdgmm.architectures`).

        Args:
          config: the architecture dict.
          dtype: overrides the config's `dtype`.
          seed: overrides the config's `seed` (the layers' initial values).
          **kwargs: other `DeepGMM` arguments (e.g. `validate_args`).

        Returns:
          A `DeepGMM` whose `config` is the normalised config.
        """
        cfg = architectures.normalize(config)
        if dtype is not None:
            cfg["dtype"] = tf.as_dtype(dtype).name
        if seed is not None:
            cfg["seed"] = int(seed)
        layers = architectures.build_layers(cfg)
        h, w, c = cfg["image_shape"]
        kwargs.setdefault("exact_limit", cfg["exact_limit"])
        return cls(
            layers,
            image_shape=(h, w, c),
            patch_size=cfg["patch_size"],
            path_prior=cfg["path_prior"],
            config=cfg,
            **kwargs,
        )

    @property
    def config(self):
        """The normalised architecture config (a new plain dict), or None for a model not
        built from one."""
        return None if self._config_json is None else json.loads(self._config_json)

    def get_config(self):
        """The normalised architecture config (for models built with `from_config`).

        Raises:
          ValueError: the model was not built from a config.
        """
        if self._config_json is None:
            raise ValueError("this DeepGMM was not built from a config; get_config is unavailable")
        return self.config

    @property
    def layers(self):
        return list(self._layers)

    @property
    def path_prior(self):
        return self._path_prior

    @property
    def image_shape(self):
        return self._image_shape

    @property
    def patch_size(self):
        return self._patch_size

    @property
    def patch_shape(self):
        """`(H/r, W/r, r*r*C)`, the event shape the layers act on."""
        return self._patch_shape

    @property
    def layer_specs(self):
        """Per layer `(num_alternatives, choice_shape)`; `choice_shape` is `()` or `(Hp, Wp)`."""
        return list(self._layer_specs)

    @property
    def num_paths(self):
        """Number of paths, a Python int (exact; may be astronomically large)."""
        return path_priors.count_paths(self._layer_specs)

    @property
    def log_num_paths(self):
        """`log(num_paths)` as a float (finite when `num_paths` is ~1e115)."""
        return sum((math.prod(s) if s else 1) * math.log(k) for k, s in self._layer_specs)

    @property
    def exact_limit(self):
        return self._exact_limit

    @property
    def has_exact_log_prob(self):
        """Whether `log_prob` is exact and tractable: at most `exact_limit` paths, or choices
        independent across locations with at most `exact_limit` combinations per location."""
        if self.num_paths <= self._exact_limit:
            return True
        stack = local_paths.local_stack(self)
        return stack is not None and stack.combinations <= self._exact_limit

    @property
    def num_dims(self):
        return int(np.prod(self._image_shape))

    def num_parameters(self):
        """Number of trainable scalars (layers and path prior)."""
        return int(sum(np.prod(v.shape) for v in self.trainable_variables))

    def _event_shape(self):
        return tf.TensorShape(self._image_shape)

    def _event_shape_tensor(self):
        return tf.constant(self._image_shape, tf.int32)

    def _batch_shape(self):
        return tf.TensorShape([])

    def _batch_shape_tensor(self):
        return tf.constant([], tf.int32)

    # ------------------------------------------------------------------ building blocks
    # The layer-chain algebra. Public because `tfdgmm.path_search` and
    # `tfdgmm.training.distribute` build on it: `patchify`, `prepare_images`, `check_path`,
    # `ildj_table`, `up`, `joint_from_patches` and `score_above` are their contract.

    def patchify(self, x):
        """Images `[N, H, W, C]` -> the patch tensor `h_0`, `[N, Hp, Wp, D]`."""
        return self._patchify.forward(x)

    def prepare_images(self, x):
        """Convert `x`, check its trailing shape, flatten leading dims: `([N, H, W, C], lead)`."""
        check_float_images(x)
        x = tf.convert_to_tensor(x, dtype=self.dtype, name="x")
        if x.shape.rank is not None and x.shape.rank < 3:
            raise ValueError(
                f"expected images [..., {', '.join(map(str, self._image_shape))}]"
                f"; got shape {x.shape}"
            )
        if (
            x.shape.rank is not None
            and x.shape[-3:].is_fully_defined()
            and tuple(x.shape[-3:]) != self._image_shape
        ):
            raise ValueError(
                f"expected images of shape [..., {self._image_shape[0]}, "
                f"{self._image_shape[1]}, {self._image_shape[2]}]; got {x.shape}"
            )
        if self.validate_args:
            x = tf.debugging.assert_all_finite(x, "DeepGMM input contains NaN or Inf")
        lead = tf.shape(x)[:-3]
        return tf.reshape(x, [-1, *self._image_shape]), lead

    def check_path(self, path, n=None):
        if len(path) != len(self._layers):
            raise ValueError(
                f"a path needs one choice tensor per layer ({len(self._layers)}); got {len(path)}"
            )
        out = []
        for i, (z, (k, shape)) in enumerate(zip(path, self._layer_specs)):
            z = tf.cast(tf.convert_to_tensor(z), tf.int32)
            if z.shape.rank is not None and z.shape.rank != 1 + len(shape):
                raise ValueError(
                    f"path entry {i} must have shape [N{''.join(f', {s}' for s in shape)}]"
                    f"; got {z.shape}"
                )
            if self.validate_args:
                z = _checked_choices(z, k, i)
            out.append(z)
        return tuple(out)

    def ildj_table(self, i):
        """`[K, Hp, Wp]` per-alternative, per-location log|det| of layer i's inverse."""
        return tf.convert_to_tensor(
            self._layers[i].inverse_log_det_table(self._patch_shape), dtype=self.dtype
        )

    def _layer_ildj(self, i, z):
        """Layer i's ildj for choices `z` (`[N...]` or `[N..., Hp, Wp]`), shape `z.shape[:n]`."""
        k, shape = self._layer_specs[i]
        table = self.ildj_table(i)
        if k == 1:
            return tf.fill(tf.shape(z)[: tf.rank(z) - len(shape)], tf.reduce_sum(table))
        if not shape:
            return tf.gather(tf.reduce_sum(table, axis=[1, 2]), z)
        onehot = tf.one_hot(z, k, dtype=self.dtype)  # [..., Hp, Wp, K]
        return tf.reduce_sum(onehot * tf.transpose(table, [1, 2, 0]), axis=[-3, -2, -1])

    def _path_ildj(self, path):
        return tf.add_n([self._layer_ildj(i, z) for i, z in enumerate(path)])

    def _base_log_prob(self, z):
        """`log N(z; 0, I)` summed over the event `[Hp, Wp, D]`."""
        n = float(np.prod(self._patch_shape))
        return -0.5 * tf.reduce_sum(tf.square(z), axis=[-3, -2, -1]) - 0.5 * n * _LOG_2PI

    def _choice(self, i, z, batch_shape):
        """Broadcast layer i's choices (`[N]`/`[N, Hp, Wp]`) to `batch_shape` (starting with N)."""
        k, shape = self._layer_specs[i]
        if k == 1:
            return None
        # static length (not `len`): also without autograph, e.g. in Keras' train functions
        extra = (int(batch_shape.shape[0]) if tf.is_tensor(batch_shape) else len(batch_shape)) - 1
        z = tf.reshape(z, tf.concat([tf.shape(z)[:1], _ints([1] * extra), _ints(shape)], 0))
        return tf.broadcast_to(z, tf.concat([batch_shape, _ints(shape)], 0))

    def up(self, h, path, start, stop=None):
        """Apply the inverses of layers `start..stop-1` with the path's choices.

        `h` is `[N, *extra, Hp, Wp, D]`; choices are broadcast over `extra`.
        """
        stop = len(self._layers) if stop is None else stop
        batch_shape = tf.shape(h)[:-3]
        for i in range(start, stop):
            h = self._layers[i].inverse(h, **_kw(self._choice(i, path[i], batch_shape)))
        return h

    def _activations(self, h0, path):
        """Outputs `h_{i+1}` of every layer's inverse on the path (the gating inputs)."""
        acts, h = [], h0
        batch_shape = tf.shape(h0)[:-3]
        for i, layer in enumerate(self._layers):
            h = layer.inverse(h, **_kw(self._choice(i, path[i], batch_shape)))
            acts.append(h)
        return acts

    def joint_from_patches(self, h0, path, use_prior=True):
        """`log p_p(x) (+ log pi_p)` from `h0 = patchify(x)`, `[N]`."""
        acts = self._activations(h0, path)
        score = self._base_log_prob(acts[-1]) + self._path_ildj(path)
        if use_prior:
            score += self._prior_log_prob(path, acts)
        return score

    def _prior_log_prob(self, path, acts=None):
        if self._path_prior.is_conditional:
            return self._path_prior.log_prob(path, acts)
        return self._path_prior.log_prob(path)

    def score_above(self, y, path, i, choice_i=None, use_prior=True):
        """Exact terms that depend on layer i's output `y = h_{i+1}` (`[N, *extra, ...]`):
        `log N(z)` after the layers above, plus, for a conditional (gating) prior, the gating
        terms of layer i (given its choices `choice_i`, broadcast like `y`) and of every layer
        above. Layer log-determinants are not included."""
        conditional = use_prior and self._path_prior.is_conditional
        batch_shape = tf.shape(y)[:-3]
        score = 0.0
        if conditional and self._layer_specs[i][0] > 1:
            score += self._path_prior.layer_log_prob(i, y, choice_i)
        h = y
        for j in range(i + 1, len(self._layers)):
            choice = self._choice(j, path[j], batch_shape)
            h = self._layers[j].inverse(h, **_kw(choice))
            if conditional and choice is not None:
                score += self._path_prior.layer_log_prob(j, h, choice)
        return score + self._base_log_prob(h)

    def _down(self, h, path, start=None, stop=0):
        """Apply the forwards of layers `start-1 .. stop` (top-down, generative)."""
        start = len(self._layers) if start is None else start
        batch_shape = tf.shape(h)[:-3]
        for i in reversed(range(stop, start)):
            h = self._layers[i].forward(h, **_kw(self._choice(i, path[i], batch_shape)))
        return h

    @_no_autograph
    def latent(self, x, path):
        """The latent `z = Omega_p^{-1}(x - beta_p)` of images `[N, H, W, C]` on `path`."""
        x, _ = self.prepare_images(x)
        path = self.check_path(path)
        return self.up(self.patchify(x), path, 0)

    # ------------------------------------------------------------------ densities

    @_no_autograph
    def component_log_prob(self, x, path):
        """`log p_p(x)`: the Gaussian log-density of component `path` (no prior), `[N]`."""
        z = self.latent(x, path)
        return self._base_log_prob(z) + self._path_ildj(self.check_path(path))

    @_no_autograph
    def path_log_prob(self, path, x=None):
        """`log pi_p`, `[N]`. Gating priors depend on the partial sample: pass the images `x`."""
        path = self.check_path(path)
        if not self._path_prior.is_conditional:
            return self._path_prior.log_prob(path)
        if x is None:
            raise ValueError(
                "this model's path prior (gating networks) depends on the sample; "
                "pass x to path_log_prob"
            )
        x, _ = self.prepare_images(x)
        return self._path_prior.log_prob(path, self._activations(self.patchify(x), path))

    @_no_autograph
    def joint_log_prob(self, x, path):
        """`log pi_p + log p_p(x)`, `[N]`: the hard-EM objective."""
        x, _ = self.prepare_images(x)
        return self.joint_from_patches(self.patchify(x), self.check_path(path))

    @_no_autograph
    def layer_inputs_and_output_gradients(self, x, path, indices, latent_probe=None):
        """Curvature statistics of layers `indices` on `path` (for Kronecker-factored
        preconditioning, `tfdgmm.training.preconditioning`).

        Returns `(inputs, grads)`, one `[N, Hp, Wp, D]` tensor per index: the input `h_i` of
        layer `i` in the density direction (`h_{i+1} = layer_i.inverse(h_i)`) and the gradient
        of the negative joint `-sum_n log(pi_p p_p(x_n))` with respect to its output `h_{i+1}`
        (per datapoint, since datapoints do not interact). With `latent_probe` (a tensor shaped
        like the latent `z`, e.g. standard normal), the gradient of `sum(latent_probe * z)`
        instead: `J^T probe`, whose second moment is the Gauss-Newton matrix `J^T J` of the
        Gaussian term whatever the fit."""
        x, _ = self.prepare_images(x)
        path = self.check_path(path)
        indices = sorted(set(int(i) for i in indices))
        h = self.patchify(x)
        batch_shape = tf.shape(h)[:-3]
        inputs, outputs, acts = [], [], []
        with tf.GradientTape() as tape:
            for i, layer in enumerate(self._layers):
                if i in indices:
                    inputs.append(h)
                h = layer.inverse(h, **_kw(self._choice(i, path[i], batch_shape)))
                if i in indices:
                    tape.watch(h)
                    outputs.append(h)
                acts.append(h)
            if latent_probe is not None:
                loss = tf.reduce_sum(tf.cast(latent_probe, h.dtype) * h)
            else:
                score = self._base_log_prob(h)
                if self._path_prior.is_conditional:
                    score += self._path_prior.log_prob(path, acts)
                loss = -tf.reduce_sum(score)
        return inputs, tape.gradient(loss, outputs)

    @_no_autograph
    def enumerate_paths(self):
        """Every path, as a tuple of `[P]` / `[P, Hp, Wp]` int32 arrays (row-major, layer 0
        most significant). Raises when `num_paths > exact_limit`."""
        self._require_enumerable("enumerate_paths")
        grids = []
        for k, shape in self._layer_specs:
            m = int(np.prod(shape)) if shape else 1
            combos = np.stack(np.unravel_index(np.arange(k**m), [k] * m), axis=-1)  # [k^m, m]
            grids.append(combos.reshape([k**m] + list(shape)) if shape else combos[:, 0])
        sizes = [len(g) for g in grids]
        idx = np.unravel_index(np.arange(int(np.prod(sizes))), sizes)
        return tuple(tf.constant(g[j].astype(np.int32)) for g, j in zip(grids, idx))

    def _require_enumerable(self, what):
        if self.num_paths > self._exact_limit:
            raise ValueError(
                f"{what}: the model has {_fmt_count(self.num_paths)} paths, more than "
                f"exact_limit={self._exact_limit}; exact enumeration is infeasible. Use "
                "log_prob_lower_bound / log_prob_upper_bound (or raise exact_limit)."
            )

    def _call_log_prob(self, value, name, **kwargs):
        # before TFP converts `value` to the model's dtype: raw integer pixels are an error
        check_float_images(value)
        return super()._call_log_prob(value, name, **kwargs)

    def _call_prob(self, value, name, **kwargs):
        check_float_images(value)
        return super()._call_prob(value, name, **kwargs)

    @_no_autograph
    def _log_prob(self, x):
        if self.num_paths > self._exact_limit and self.has_exact_log_prob:
            x, lead = self.prepare_images(x)  # the mixture factorises over locations
            return tf.reshape(local_paths.local_log_prob(self, self.patchify(x)), lead)
        self._require_enumerable("log_prob")
        x, lead = self.prepare_images(x)
        h = self.patchify(x)[:, None]  # [N, P=1, Hp, Wp, D]
        n = tf.shape(h)[0]
        ildj = tf.zeros([n, 1], self.dtype)
        gating = self._path_prior.is_conditional
        all_paths = self.enumerate_paths()
        for i, (layer, (k, shape)) in enumerate(zip(self._layers, self._layer_specs)):
            table = self.ildj_table(i)
            if k == 1:
                h = layer.inverse(h)
                ildj += tf.reduce_sum(table)
                continue
            if not shape:
                # batch form: [N, P, 1, ...] against the bank's batch [K] -> [N, P, K, ...]
                h = layer.inverse(h[:, :, None])
                terms = tf.reduce_sum(table, axis=[1, 2])  # [K]
                c = k
            else:
                m = int(np.prod(shape))
                combos = np.stack(np.unravel_index(np.arange(k**m), [k] * m), -1)
                combos = tf.constant(combos.reshape([k**m] + list(shape)).astype(np.int32))
                c = k**m
                hb = tf.broadcast_to(
                    h[:, :, None], tf.concat([tf.shape(h)[:2], [c], tf.shape(h)[2:]], 0)
                )
                choice = tf.broadcast_to(combos, tf.concat([tf.shape(h)[:2], [c], _ints(shape)], 0))
                h = layer.inverse(hb, choice=choice)
                onehot = tf.one_hot(combos, k, dtype=self.dtype)
                terms = tf.reduce_sum(onehot * tf.transpose(table, [1, 2, 0]), [1, 2, 3])
            p = tf.shape(h)[1]
            if gating:  # log p(z_i | h_{i+1}) for every prefix, h: [N, P, C, ...]
                choices = tf.range(c) if not shape else combos
                terms = terms + self._path_prior.layer_log_prob(
                    i,
                    h,
                    tf.broadcast_to(choices, tf.concat([tf.shape(h)[:2], tf.shape(choices)], 0)),
                )
            h = tf.reshape(h, tf.concat([[n, p * c], self._patch_shape], 0))
            ildj = tf.reshape(ildj[:, :, None] + terms, [n, -1])
        lp = self._base_log_prob(h) + ildj
        if not gating:
            lp += self._path_prior.log_prob(all_paths)[None]
        return tf.reshape(tf.reduce_logsumexp(lp, axis=1), lead)

    # ------------------------------------------------------------------ E-step and bounds

    @_no_autograph
    def best_path(
        self,
        x,
        init=None,
        restarts=1,
        init_passes=1,
        restart_passes=2,
        seed=None,
        location_method="auto",
        use_prior=True,
        location_options=None,
        compose_once=True,
        extra_passes=0,
        extra_pass_gain=1.0,
    ):
        """Hard E-step: the best path per image found by layer-wise coordinate ascent.

        The paper's heuristic: starting from `init` (e.g. the previous E-step's paths), run
        `init_passes` passes; then from `restarts` random starts run `restart_passes` passes
        each; keep the best per datapoint. Each pass visits the layers bottom-up; a
        per-sample layer tries all its alternatives at once (batched), a per-location layer
        is optimised location by location (see `tfdgmm.path_search`: an exact shared-Gram
        scheme when no layer above has a choice, else exact steps at the locations a
        linearisation ranks highest). A pass never lowers the objective.

        Args:
          x: images `[N, H, W, C]`.
          init: a path for the batch, or None.
          restarts: number of random starts (at least 1 when `init` is None).
          seed: stateless seed (`int32[2]` tensor, or an int) for the random starts.
          location_method: `'auto' | 'gram' | 'ranked' | 'linearized' | 'brute_force'`.
          location_options: dict for the per-location scheme, e.g. `{"top": 32}` for
            `'ranked'` (see `tfdgmm.path_search.coordinate_ascent_pass`).
          use_prior: maximise `log pi_p + log p_p(x)` (True) or `log p_p(x)` (False).
          compose_once: compose every block once for the whole search (default) instead of
            once per layer call.
          extra_passes: after the `init_passes` from `init`, up to this many more passes, each
            for the datapoints whose previous pass raised their objective by more than
            `extra_pass_gain` nats (default 0: none).

        Returns:
          `(path, score)`: the path tuple and `log pi_p + log p_p(x)` (or `log p_p(x)` when
          `use_prior=False`), `[N]`.
        """
        x, _ = self.prepare_images(x)
        check_seed(seed)
        if init is not None:
            init = self.check_path(init)
        return path_search.best_path(
            self,
            x,
            init=init,
            restarts=restarts,
            init_passes=init_passes,
            restart_passes=restart_passes,
            seed=seed,
            location_method=location_method,
            use_prior=use_prior,
            location_options=location_options,
            compose_once=compose_once,
            extra_passes=extra_passes,
            extra_pass_gain=extra_pass_gain,
        )

    @_no_autograph
    def log_prob_lower_bound(self, x, path=None, **search_kwargs):
        """`max_p log(pi_p p_p(x)) <= log p(x)` over the paths the search finds, `[N]`.

        Pass `path` to evaluate a known path (e.g. from `best_path`) without searching.
        """
        if path is not None:
            return self.joint_log_prob(x, path)
        return self.best_path(x, **search_kwargs)[1]

    @_no_autograph
    def log_prob_upper_bound(self, x, path=None, joint=None, **search_kwargs):
        """The paper's approximate upper bound `max_p log p_p(x) >= log p(x)`, `[N]`.

        `p(x) = sum_p pi_p p_p(x) <= max_p p_p(x)`. It is *approximate* because the search
        may miss the best component. With a uniform prior the best component is the best
        joint path, so this is `lower bound + log(num_paths)` (with `joint`, the path's known
        `log pi_p + log p_p(x)` from `best_path`, nothing is recomputed). Otherwise the search
        for the best component starts from the lower bound's path (`path`, or a fresh
        `best_path`), so it is never below that path's component.
        """
        if isinstance(self._path_prior, path_priors.UniformPathPrior):
            if joint is not None and path is not None:
                return tf.convert_to_tensor(joint, self.dtype) + tf.constant(
                    self.log_num_paths, self.dtype
                )
            return self.log_prob_lower_bound(x, path=path, **search_kwargs) + tf.constant(
                self.log_num_paths, self.dtype
            )
        if path is None:
            path, _ = self.best_path(x, **search_kwargs)
        options = {
            k: v
            for k, v in search_kwargs.items()
            if k in ("seed", "location_method", "location_options")
        }
        return self.best_path(x, init=path, restarts=0, init_passes=1, use_prior=False, **options)[
            1
        ]

    def conditional(self, x, mask, **kwargs):
        """The posterior over missing pixels given the observed ones (`mask`: 1 = observed):
        a `tfdgmm.conditional.DeepGMMConditional` (`sample`, `mean`, `log_prob`), exact per
        path and weighted across paths by the observed block's likelihood. See
        `tfdgmm.conditional.conditional` for the arguments."""
        from tfdgmm import conditional

        return conditional.conditional(self, x, mask, **kwargs)

    # ------------------------------------------------------------------ sampling

    @_no_autograph
    def sample_with_path(self, n, seed=None):
        """Draw `n` images and the paths they came from: `(x [n, H, W, C], path)`.

        `seed`: an int, an int32 `[2]` tensor (stateless: reproduces exactly) or None.
        """
        static_n = tf.get_static_value(tf.convert_to_tensor(n))
        if static_n is not None and np.ndim(static_n) == 0 and int(static_n) < 0:
            raise ValueError(f"the number of samples must be >= 0; got {int(static_n)}")
        seed = tfp.random.sanitize_seed(check_seed(seed), salt="DeepGMM")
        path_seed, z_seed = path_priors.split_seed(seed, n=2)
        # Philox (the CPU/GPU default) named explicitly: XLA-compiled sampling draws the same z
        z = tf.random.stateless_normal(
            [n, *self._patch_shape], seed=z_seed, dtype=self.dtype, alg="philox"
        )
        if not self._path_prior.is_conditional:
            path = self._path_prior.sample(n, path_seed)
            return self._patchify.inverse(self._down(z, path)), path
        # gating: top-down, each layer's choice drawn given the partial sample above it
        seeds = path_priors.split_seed(path_seed, n=len(self._layers))
        path = [None] * len(self._layers)
        h = z
        for i in reversed(range(len(self._layers))):
            k, shape = self._layer_specs[i]
            if k == 1:
                path[i] = tf.zeros([n], tf.int32)
            else:
                logits = tf.reshape(self._path_prior.layer_logits(i, h), [-1, k])
                draws = path_priors.stateless_categorical(logits, seeds[i])
                path[i] = tf.reshape(draws, tf.concat([[n], _ints(shape)], 0))
            h = self._layers[i].forward(h, **_kw(self._choice(i, path[i], tf.shape(h)[:-3])))
        return self._patchify.inverse(h), tuple(path)

    @_no_autograph
    def _sample_n(self, n, seed=None):
        return self.sample_with_path(n, seed=seed)[0]

    # ------------------------------------------------------------------ TFP extras

    def _default_event_space_bijector(self):
        # The support is all of R^(H x W x C): TFP's MCMC and VI helpers need no constraint.
        return tfb.Identity(validate_args=self.validate_args)

    def _layer_weights(self, what):
        """Per layer, the mixing weights of its alternatives when choices are independent
        across layers (and locations): `[K]` or `[Hp, Wp, K]` probabilities (None for K = 1).
        Uniform and factorized priors only."""
        if not isinstance(
            self._path_prior, (path_priors.UniformPathPrior, path_priors.FactorizedPathPrior)
        ):
            raise NotImplementedError(
                f"{what}: closed form only for the uniform and factorized path priors; this "
                f"model has a {type(self._path_prior).__name__}. For small models use "
                f"as_mixture().{what}()."
            )
        out = []
        for i, (k, _) in enumerate(self._layer_specs):
            if k == 1:
                out.append(None)
                continue
            logits = tf.convert_to_tensor(self._path_prior.layer_logits(i), self.dtype)
            out.append(tf.nn.softmax(logits, axis=-1))
        return out

    def _mix_layer(self, i, weights, h):
        """`sum_k w_k * forward_k(h)` (per location for per-location weights): `h` is
        `[M, Hp, Wp, D]`; every alternative gets the same inputs."""
        layer = self._layers[i]
        if weights is None:
            return layer.forward(h)
        y = layer.forward(h[:, None])  # batch form: [M, K, Hp, Wp, D]
        if weights.shape.rank == 1:  # [K]
            w = tf.reshape(weights, [1, -1, 1, 1, 1])
        else:  # [Hp, Wp, K]
            w = tf.transpose(weights, [2, 0, 1])[None, :, :, :, None]
        return tf.reduce_sum(w * y, axis=1)

    @_no_autograph
    def _mean(self):
        """`E[x] = sum_p pi_p beta_p`, top-down without enumerating paths: the layers are
        affine and the choices independent, so `E[f_z(h)] = sum_k pi_k f_k(E[h])` (per
        location for per-location choices: output location l depends only on its choice)."""
        weights = self._layer_weights("mean")
        h = tf.zeros([1, *self._patch_shape], self.dtype)
        for i in reversed(range(len(self._layers))):
            h = self._mix_layer(i, weights[i], h)
        return self._patchify.inverse(h)[0]

    def _variance(self):
        """Per-pixel variances `[H, W, C]` (the diagonal of `covariance()`)."""
        return tf.reshape(tf.linalg.diag_part(self._covariance()), self._image_shape)

    @_no_autograph
    def _covariance(self):
        """`Cov[x]`, `[H*W*C, H*W*C]` (row-major flattening of the image), by propagating the
        second moment `M = E[[1, h][1, h]^T]` down the layers.

        A layer with alternative `k` is the affine map `A_k` in homogeneous coordinates.
        Per-sample choice: `M' = sum_k pi_k A_k M A_k^T`. Per-location choices, independent
        across locations: the blocks of distinct locations `l != l'` are those of
        `Abar M Abar^T` (`Abar` the pi-weighted map), the blocks on the diagonal those of
        `sum_k pi_k A_k M A_k^T`. Costs `O(K)` applications of a layer to `1 + D` vectors.
        """
        weights = self._layer_weights("covariance")
        hp, wp, d = self._patch_shape
        n = hp * wp * d
        m = tf.eye(n + 1, dtype=self.dtype)  # [1, z]: E[z] = 0, E[z z^T] = I
        loc = np.repeat(np.arange(hp * wp), d)
        # blocks of one location (the homogeneous row and column, i.e. the mean, come from
        # the pi-weighted map)
        same_loc = tf.constant(
            np.pad(loc[:, None] == loc[None, :], [[1, 0], [1, 0]], constant_values=False)
        )

        def apply(i, cols, alt):
            """`A_k` (alt = k) or `Abar` (alt = None) on homogeneous columns `[1 + n, B]`."""
            b = tf.shape(cols)[1]
            c0 = cols[:1]  # [1, B]
            h = tf.reshape(tf.transpose(cols[1:]), [b, hp, wp, d])
            zero = tf.zeros([1, hp, wp, d], self.dtype)
            both = tf.concat([zero, h], 0)
            layer = self._layers[i]
            if alt is None:
                y = self._mix_layer(i, weights[i], both)
            else:
                y = layer.forward(both, choice=self._fixed_choice(i, alt, b + 1))
            f0, fh = tf.reshape(y[:1], [1, n]), tf.reshape(y[1:], [b, n])
            lin = fh - f0  # linear part
            out = lin + tf.transpose(c0) * f0  # + c0 * offset
            return tf.concat([c0, tf.transpose(out)], 0)

        def sandwich(i, mm, alt):
            left = apply(i, mm, alt)  # A M
            return apply(i, tf.transpose(left), alt)  # A (A M)^T = A M A^T

        for i in reversed(range(len(self._layers))):
            k, shape = self._layer_specs[i]
            if k == 1:
                m = sandwich(i, m, None)
                continue
            w = weights[i]
            if not shape:
                m = tf.add_n([w[j] * sandwich(i, m, j) for j in range(k)])
                continue
            wl = tf.reshape(tf.repeat(tf.reshape(w, [hp * wp, k]), d, axis=0), [n, k])
            wl = tf.concat([tf.zeros([1, k], self.dtype), wl], 0)  # (row 0: not same_loc)
            diag = 0.0
            for j in range(k):  # rows weighted by the alternative's probability at their loc
                diag += wl[:, j : j + 1] * sandwich(i, m, j)
            m = tf.where(same_loc, diag, sandwich(i, m, None))
        mean = m[0, 1:]
        cov = m[1:, 1:] - mean[:, None] * mean[None, :]
        # patch-tensor order -> image order, on both sides
        perm = tf.reshape(
            self._patchify.inverse(tf.reshape(tf.range(n, dtype=tf.float64), [1, hp, wp, d])), [n]
        )
        perm = tf.cast(perm, tf.int32)
        cov = tf.gather(tf.gather(cov, perm, axis=0), perm, axis=1)
        return cov

    def _fixed_choice(self, i, alt, n):
        k, shape = self._layer_specs[i]
        return tf.fill([n, *shape], tf.constant(alt, tf.int32))

    # ------------------------------------------------------------------ dense equivalents

    @_no_autograph
    def component_params(self, path):
        """Mean `beta_p [P, D]` and factor `Omega_p [P, D, D]` (image-space flattening,
        `x = Omega_p z + beta_p` with `z` flattened like the patch tensor) of given paths."""
        path = self.check_path(path)
        p = tf.shape(path[0])[0]
        d = int(np.prod(self._patch_shape))
        eye = tf.reshape(tf.eye(d, dtype=self.dtype), [d, *self._patch_shape])
        basis = tf.concat([tf.zeros([1, *self._patch_shape], self.dtype), eye], 0)  # [1+D, ...]
        h = tf.broadcast_to(basis[None], tf.concat([[p], tf.shape(basis)], 0))  # [P, 1+D, ...]
        x = self._patchify.inverse(self._down(h, path))  # [P, 1+D, H, W, C]
        x = tf.reshape(x, [p, d + 1, d])
        beta = x[:, 0]
        omega = tf.transpose(x[:, 1:] - beta[:, None], [0, 2, 1])
        return beta, omega

    def as_mixture(self):
        """The equivalent `tfd.MixtureSameFamily` over every path (small models only).

        Components are `TransformedDistribution`s of `MultivariateNormalLinearOperator(beta_p,
        Omega_p)` reshaped to the image event; mixture weights are `pi_p`.
        """
        self._require_enumerable("as_mixture")
        paths = self.enumerate_paths()
        beta, omega = self.component_params(paths)
        if self._path_prior.is_conditional:
            raise ValueError(
                "as_mixture: with gating networks the mixture weights depend on x; "
                "there is no fixed-weight mixture. Use log_prob."
            )
        components = tfd.TransformedDistribution(
            tfd.MultivariateNormalLinearOperator(
                loc=beta, scale=tf.linalg.LinearOperatorFullMatrix(omega)
            ),
            tfb.Reshape(event_shape_out=list(self._image_shape), event_shape_in=[beta.shape[-1]]),
        )
        return tfd.MixtureSameFamily(
            tfd.Categorical(logits=self._path_prior.log_prob(paths)),
            components,
            validate_args=self.validate_args,
        )


def _checked_choices(z, k, i):
    """`z` with run-time checks that every choice is in `[0, k)` (a static value is checked
    at once). The assertions are control dependencies of the returned tensor, so they run
    eagerly and in graphs."""
    static = tf.get_static_value(z)
    msg = f"path entry {i}: choices must be in [0, {k})"
    if static is not None and np.size(static):
        lo, hi = int(np.min(static)), int(np.max(static))
        if lo < 0 or hi >= k:
            raise ValueError(f"{msg}; got min {lo}, max {hi}")
        return z
    checks = [
        tf.debugging.assert_non_negative(z, message=f"{msg} (got a negative choice)"),
        tf.debugging.assert_less(
            z, tf.constant(k, tf.int32), message=f"{msg} (got a choice >= {k})"
        ),
    ]
    with tf.control_dependencies(checks):
        return tf.identity(z)


def _ints(seq):
    """A static int sequence as an int32 vector (also when empty)."""
    return tf.constant(list(seq), dtype=tf.int32, shape=[len(seq)])


def _kw(choice):
    return {} if choice is None else {"choice": choice}


def _layers_dtype(layers):
    for layer in layers:
        for v in layer.variables:
            if v.dtype.is_floating:
                return v.dtype
    for layer in layers:  # parameters given as tensors (e.g. values of Keras weights)
        if layer.dtype is not None and tf.as_dtype(layer.dtype).is_floating:
            return tf.as_dtype(layer.dtype)
    return tf.float32


def _fmt_count(n):
    return str(n) if n < 10**12 else f"~{n:.3e}"
