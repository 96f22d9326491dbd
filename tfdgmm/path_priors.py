"""Distributions over paths through a deep GMM (paper, section 3).

A *path* picks one alternative per layer: for a batch of N datapoints it is a tuple with one int32
tensor per layer, shaped `[N]` for layers whose choice is per sample (the paper's shared blocks,
and every layer with a single alternative) and `[N, Hp, Wp]` for layers whose choice is per
patch location (unshared blocks).

A prior describes itself through `layer_specs`, a list of `(num_alternatives, choice_shape)` per
layer, where `choice_shape` is `()` or `(Hp, Wp)`. It offers

* `log_prob(path)`: `log pi_p`, shape `[N]`;
* `conditional_log_probs(i, path)`: `log pi` of the path with layer i's choice replaced by each
  alternative, up to a constant that does not depend on layer i's choice; shape `[N, K_i]` or
  `[N, Hp, Wp, K_i]` (for per-location layers the terms of different locations add up, which
  holds for every prior here that admits per-location layers);
* `sample(n, seed)`: a path for n samples, from a stateless seed.

Gating networks (`p(z_i | h_i)`, a later addition) depend on the partial sample; the interface
admits them through `is_conditional` and the activations the distribution passes in.
"""

import math

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

__all__ = [
    "PathPrior",
    "UniformPathPrior",
    "FactorizedPathPrior",
    "TablePathPrior",
    "GatingPathPrior",
    "count_paths",
    "make_path_prior",
]


def count_paths(layer_specs):
    """Number of paths as a Python int (exact, possibly astronomically large)."""
    total = 1
    for k, shape in layer_specs:
        total *= k ** int(np.prod(shape, dtype=np.int64)) if shape else k
    return total


def _num_choice_variables(shape):
    return int(np.prod(shape)) if shape else 1


def split_seed(seed, n=2):
    """`tfp.random.split_seed(seed, n)` for a stateless `int32[2]` seed, with the same values,
    but with the Philox generator named: XLA-compiled functions then derive the same seeds
    (their default generator differs)."""
    seed = tfp.random.sanitize_seed(seed)
    seeds = tf.random.stateless_uniform(
        [n, 2], seed=seed, minval=None, maxval=None, dtype=tf.int32, alg="philox"
    )
    return tf.unstack(seeds)


def stateless_categorical(logits, seed):
    """One draw per row of `logits` `[M, K]`, int32 `[M]`, by the Gumbel-max trick on Philox
    uniforms: the same draws eagerly, in graphs and under XLA (`tf.random.stateless_categorical`
    draws differently when compiled)."""
    logits = tf.convert_to_tensor(logits)
    tiny = np.finfo(logits.dtype.as_numpy_dtype).tiny
    u = tf.random.stateless_uniform(
        tf.shape(logits), seed=seed, minval=tiny, maxval=1.0, dtype=logits.dtype, alg="philox"
    )
    return tf.argmax(logits - tf.math.log(-tf.math.log(u)), axis=-1, output_type=tf.int32)


class PathPrior(tf.Module):
    """Base class: a distribution over paths given the layers' `(K, choice_shape)` specs."""

    #: True when `p(z_i | ...)` depends on the partial sample (gating networks).
    is_conditional = False

    def __init__(self, layer_specs, dtype=tf.float32, name=None):
        super().__init__(name=name)
        self._layer_specs = [(int(k), tuple(int(s) for s in shape)) for k, shape in layer_specs]
        self._dtype = tf.as_dtype(dtype)

    @property
    def layer_specs(self):
        return list(self._layer_specs)

    @property
    def dtype(self):
        return self._dtype

    @property
    def num_paths(self):
        return count_paths(self._layer_specs)

    def log_prob(self, path):
        raise NotImplementedError

    def conditional_log_probs(self, i, path):
        raise NotImplementedError

    def sample(self, n, seed):
        """Independent per-layer draws from `layer_logits`; subclasses may override."""
        seeds = split_seed(seed, n=max(len(self._layer_specs), 1))
        path = []
        for i, (k, shape) in enumerate(self._layer_specs):
            logits = tf.convert_to_tensor(self.layer_logits(i))  # [K] or [Hp, Wp, K]
            if k == 1:
                path.append(tf.zeros([n] + list(shape), tf.int32))
                continue
            flat = tf.reshape(logits, [-1, k])
            draws = stateless_categorical(tf.tile(flat, [n, 1]), seed=seeds[i])
            path.append(tf.reshape(draws, [n] + list(shape)))
        return tuple(path)

    def layer_logits(self, i):
        """Unnormalised per-layer log-probabilities, `[K]` or `[Hp, Wp, K]`."""
        raise NotImplementedError

    def _check_layer(self, i):
        if not 0 <= i < len(self._layer_specs):
            raise IndexError(f"layer index {i} out of range for {len(self._layer_specs)} layers")


class UniformPathPrior(PathPrior):
    """All paths equally likely: `log pi_p = -log(num_paths)`."""

    def __init__(self, layer_specs, dtype=tf.float32, name="uniform_path_prior"):
        super().__init__(layer_specs, dtype=dtype, name=name)
        self._log_num_paths = sum(
            _num_choice_variables(shape) * math.log(k) for k, shape in self._layer_specs
        )

    @property
    def log_num_paths(self):
        """`log(num_paths)` as a Python float (finite even when num_paths is ~1e115)."""
        return self._log_num_paths

    def log_prob(self, path):
        n = tf.shape(path[0])[0]
        return tf.fill([n], tf.constant(-self._log_num_paths, self._dtype))

    def conditional_log_probs(self, i, path):
        self._check_layer(i)
        k, shape = self._layer_specs[i]
        n = tf.shape(path[0])[0]
        return tf.zeros(
            tf.concat([[n], tf.constant(list(shape) + [k], tf.int32)], axis=0), self._dtype
        )

    def layer_logits(self, i):
        self._check_layer(i)
        k, shape = self._layer_specs[i]
        return tf.zeros(list(shape) + [k], self._dtype)


class FactorizedPathPrior(PathPrior):
    """A learned categorical per layer (per location for per-location layers).

    `log pi_p = sum_i sum_locations log softmax(logits_i)[z_i]`. The maximum-likelihood
    update given hard paths is closed form: `fit(paths)` sets the logits to log-frequencies.
    """

    def __init__(self, layer_specs, dtype=tf.float32, name="factorized_path_prior"):
        super().__init__(layer_specs, dtype=dtype, name=name)
        with self.name_scope:
            self.logits = [
                tf.Variable(
                    tf.zeros(list(shape) + [k], self._dtype), name=f"logits_{i}", trainable=k > 1
                )
                for i, (k, shape) in enumerate(self._layer_specs)
            ]

    def layer_logits(self, i):
        self._check_layer(i)
        return self.logits[i]

    def _log_probs(self, i):
        return tf.nn.log_softmax(tf.convert_to_tensor(self.logits[i]), axis=-1)

    def log_prob(self, path):
        total = 0.0
        for i, z in enumerate(path):
            lp = self._log_probs(i)  # [K] or [Hp, Wp, K]
            k, shape = self._layer_specs[i]
            if shape:
                onehot = tf.one_hot(z, k, dtype=self._dtype)  # [N, Hp, Wp, K]
                total += tf.reduce_sum(onehot * lp, axis=[1, 2, 3])
            else:
                total += tf.gather(lp, z)
        return total

    def conditional_log_probs(self, i, path):
        self._check_layer(i)
        k, shape = self._layer_specs[i]
        n = tf.shape(path[0])[0]
        lp = self._log_probs(i)
        return tf.broadcast_to(lp, tf.concat([[n], tf.shape(lp)], axis=0))

    def fit(self, path, pseudo_count=1.0):
        """Closed-form M-step: logits <- log(counts + pseudo_count) for each layer."""
        for i, z in enumerate(path):
            k, shape = self._layer_specs[i]
            if k == 1:
                continue
            counts = tf.reduce_sum(tf.one_hot(z, k, dtype=self._dtype), axis=0)
            self.logits[i].assign(tf.math.log(counts + pseudo_count))


class TablePathPrior(PathPrior):
    """A full table of path probabilities, `softmax(table)[index(p)]`, for small path counts.

    Only for models whose choices are all per sample (per-location choices multiply the path
    count beyond any table). Paths are indexed in row-major order over the layers.
    """

    def __init__(self, layer_specs, max_paths=1 << 16, dtype=tf.float32, name="table_path_prior"):
        super().__init__(layer_specs, dtype=dtype, name=name)
        if any(shape for k, shape in self._layer_specs if k > 1):
            raise ValueError(
                "TablePathPrior needs every choice to be per sample; a layer chooses per "
                "location, which makes the path table astronomically large. Use "
                "'factorized' or 'uniform'."
            )
        if self.num_paths > max_paths:
            raise ValueError(
                f"TablePathPrior: {self.num_paths} paths exceed max_paths={max_paths}."
            )
        self._sizes = [k for k, _ in self._layer_specs]
        strides = np.cumprod([1] + self._sizes[::-1])[:-1][::-1]
        self._strides = [int(s) for s in strides]
        with self.name_scope:
            self.table = tf.Variable(tf.zeros([self.num_paths], self._dtype), name="table")

    def _index(self, path):
        index = 0
        for z, stride in zip(path, self._strides):
            index += tf.cast(z, tf.int32) * stride
        return index

    def log_prob(self, path):
        return tf.gather(tf.nn.log_softmax(self.table), self._index(path))

    def conditional_log_probs(self, i, path):
        self._check_layer(i)
        k = self._sizes[i]
        base = self._index(path) - tf.cast(path[i], tf.int32) * self._strides[i]
        idx = base[:, None] + tf.range(k)[None, :] * self._strides[i]
        return tf.gather(tf.nn.log_softmax(self.table), idx)

    def sample(self, n, seed):
        logits = tf.nn.log_softmax(self.table)[None]
        flat = stateless_categorical(tf.tile(logits, [n, 1]), seed=seed)
        path = []
        for k, stride in zip(self._sizes, self._strides):
            path.append((flat // stride) % k)
        return tuple(path)

    def fit(self, path, pseudo_count=1.0):
        counts = tf.math.bincount(
            self._index(path), minlength=self.num_paths, maxlength=self.num_paths, dtype=self._dtype
        )
        self.table.assign(tf.math.log(counts + pseudo_count))


def make_path_prior(kind, layer_specs, dtype=tf.float32, patch_shape=None):
    """A path prior from a spec: `'uniform' | 'factorized' | 'table' | 'gating'`, a dict
    `{"kind": "gating", "hidden": 32, "kernel_size": 3}`, or a `PathPrior` (returned as is)."""
    if isinstance(kind, PathPrior):
        return kind
    options = {}
    if isinstance(kind, dict):
        options = dict(kind)
        kind = options.pop("kind", None)
    kinds = {
        "uniform": UniformPathPrior,
        "factorized": FactorizedPathPrior,
        "table": TablePathPrior,
        "gating": GatingPathPrior,
    }
    if kind not in kinds:
        raise ValueError(
            f"unknown path prior {kind!r}; expected one of {sorted(kinds)} or a PathPrior instance"
        )
    if kind == "gating":
        if patch_shape is None:
            raise ValueError("a gating prior needs the patch shape [Hp, Wp, D]")
        return GatingPathPrior(layer_specs, patch_shape, dtype=dtype, **options)
    if options:
        raise ValueError(f"path prior {kind!r} takes no options; got {sorted(options)}")
    return kinds[kind](layer_specs, dtype=dtype)


class GatingPathPrior(PathPrior):
    r"""Gating networks: `p(z_i = k | h_i) = softmax(f_i(h_i))_k` (paper, section 3).

    `h_i` is the partial sample just above layer i: the generative input of layer i, i.e. the
    output of `layer_i.inverse` in the density direction, a patch tensor `[Hp, Wp, D]`. Each
    layer with a choice has a small convolutional network:

    ```none
    a = relu(conv_{k x k}(h_i, W1) + b1)                       # [Hp, Wp, hidden]
    per-sample layers:    logits = mean_{locations}(a) W2 + b2  # [K]
    per-location layers:  logits = conv_{1 x 1}(a, W2) + b2     # [Hp, Wp, K]
    ```

    The last layer starts at zero, so an untrained gating prior is uniform. Weights are plain
    `tf.Variable`s (tracked by `tf.Module`, checkpointed with the model). The prior is
    *conditional* (`is_conditional = True`): `log_prob(path, activations)` needs the
    activations `h_i` of the path, which `DeepGMM` supplies.
    """

    is_conditional = True

    def __init__(
        self,
        layer_specs,
        patch_shape,
        hidden=32,
        kernel_size=3,
        seed=0,
        dtype=tf.float32,
        name="gating_path_prior",
    ):
        super().__init__(layer_specs, dtype=dtype, name=name)
        self._patch_shape = tuple(int(s) for s in patch_shape)
        self._hidden = int(hidden)
        self._kernel_size = int(kernel_size)
        d = self._patch_shape[-1]
        rng = np.random.default_rng(seed)
        np_dtype = self._dtype.as_numpy_dtype
        self.networks = []
        with self.name_scope:
            for i, (k, _shape) in enumerate(self._layer_specs):
                if k == 1:
                    self.networks.append({})
                    continue
                fan_in = self._kernel_size**2 * d
                w1 = rng.standard_normal((self._kernel_size, self._kernel_size, d, self._hidden))
                self.networks.append(
                    {
                        "w1": tf.Variable(
                            (w1 * np.sqrt(2.0 / fan_in)).astype(np_dtype), name=f"gate{i}_w1"
                        ),
                        "b1": tf.Variable(
                            tf.zeros([self._hidden], self._dtype), name=f"gate{i}_b1"
                        ),
                        "w2": tf.Variable(
                            tf.zeros([self._hidden, k], self._dtype), name=f"gate{i}_w2"
                        ),
                        "b2": tf.Variable(tf.zeros([k], self._dtype), name=f"gate{i}_b2"),
                    }
                )

    @property
    def patch_shape(self):
        return self._patch_shape

    def layer_logits(self, i, h=None):
        """Logits of layer i's choice given the partial sample `h [..., Hp, Wp, D]`:
        `[..., K]` (per-sample layers) or `[..., Hp, Wp, K]` (per-location layers)."""
        self._check_layer(i)
        k, shape = self._layer_specs[i]
        if h is None:
            raise ValueError("GatingPathPrior.layer_logits needs the partial sample h")
        lead = tf.shape(h)[:-3]
        if k == 1:
            return tf.zeros(
                tf.concat([lead, tf.constant(list(shape) + [1], tf.int32)], 0), self._dtype
            )
        net = self.networks[i]
        x = tf.reshape(h, tf.concat([[-1], self._patch_shape], 0))
        a = tf.nn.relu(tf.nn.conv2d(x, net["w1"], 1, "SAME") + net["b1"])
        if shape:
            logits = tf.einsum("nhwc,ck->nhwk", a, net["w2"]) + net["b2"]
            return tf.reshape(logits, tf.concat([lead, tf.constant(list(shape) + [k])], 0))
        logits = tf.matmul(tf.reduce_mean(a, axis=[1, 2]), net["w2"]) + net["b2"]
        return tf.reshape(logits, tf.concat([lead, [k]], 0))

    def layer_log_prob(self, i, h, z):
        """`log p(z_i | h_i)` summed over locations; `z` is `[...]` or `[..., Hp, Wp]`."""
        k, shape = self._layer_specs[i]
        if k == 1:
            return tf.zeros(tf.shape(h)[:-3], self._dtype)
        lp = tf.nn.log_softmax(self.layer_logits(i, h), axis=-1)
        picked = tf.reduce_sum(lp * tf.one_hot(z, k, dtype=self._dtype), axis=-1)
        return tf.reduce_sum(picked, axis=[-2, -1]) if shape else picked

    def log_prob(self, path, activations=None):
        if activations is None:
            raise ValueError(
                "GatingPathPrior.log_prob needs the path's activations "
                "(use DeepGMM.path_log_prob(path, x=...) or joint_log_prob)"
            )
        return tf.add_n(
            [self.layer_log_prob(i, h, z) for i, (h, z) in enumerate(zip(activations, path))]
        )

    def conditional_log_probs(self, i, path):
        raise NotImplementedError(
            "gating priors are not separable per layer; the path search scores them exactly"
        )

    def sample(self, n, seed):
        raise NotImplementedError(
            "gating priors are sampled top-down with the partial sample; use DeepGMM.sample"
        )

    def get_config(self):
        return {"kind": "gating", "hidden": self._hidden, "kernel_size": self._kernel_size}
