"""Training gating networks (paper, section 3): after the deep GMM, on the last E-step's paths.

The gating prior `p(z_i | h_i)` is fitted by maximum likelihood on fixed paths: with the deep
GMM's layers frozen, maximise `mean_n sum_i log p(z_{n,i} | h_{n,i})`, where `h_{n,i}` is the
partial sample of datapoint n on its path (the output of layer i's inverse). This is exactly the
part of the hard-EM objective `log pi_p + log p_p(x)` that depends on the gating weights.
"""

import time

import keras
import numpy as np
import tensorflow as tf

from tfdgmm import architectures, path_priors

__all__ = ["fit_gating", "with_gating"]


def with_gating(model, hidden=32, kernel_size=3, seed=0):
    """A `DeepGMM` sharing `model`'s layers, with a fresh (uniform-initialised) gating prior."""
    from tfdgmm.deep_gmm import DeepGMM

    prior = path_priors.GatingPathPrior(model.layer_specs, model.patch_shape, hidden=hidden,
                                        kernel_size=kernel_size, seed=seed, dtype=model.dtype)
    gated = DeepGMM(model.layers, image_shape=model.image_shape, patch_size=model.patch_size,
                    path_prior=prior, exact_limit=model.exact_limit,
                    validate_args=model.validate_args)
    if getattr(model, "_config_json", None) is not None:
        architectures.set_config(gated, dict(
            architectures.get_config(model),
            path_prior={"kind": "gating", "hidden": hidden, "kernel_size": kernel_size}))
    return gated


def fit_gating(model, images, paths, steps=1000, batch_size=100, learning_rate=1e-3,
               optimizer=None, seed=0, log_every=0, log=print):
    """Fit `model.path_prior` (a `GatingPathPrior`) to fixed paths; returns the loss history.

    Args:
      model: a `DeepGMM` with a gating prior (see `with_gating`).
      images: float images `[N, H, W, C]` (preprocessed like the training data).
      paths: their paths (tuple of int arrays `[N]` / `[N, Hp, Wp]`), e.g. the last E-step's.
      steps, batch_size, learning_rate: Adam on minibatches (sampled with replacement from a
        seeded stream).
      optimizer: a Keras optimizer (default Adam).
      log_every: print a progress line every this many steps (0: never).

    Returns:
      `dict(loss=[...], nats_before=float, nats_after=float)`: mean `-log pi(path | x)` per
      image over the whole set before and after fitting.
    """
    prior = model.path_prior
    if not isinstance(prior, path_priors.GatingPathPrior):
        raise TypeError("fit_gating needs a model whose path prior is a GatingPathPrior "
                        f"(see tfdgmm.training.gating.with_gating); got {type(prior).__name__}")
    images = tf.convert_to_tensor(images, model.dtype)
    paths = tuple(tf.convert_to_tensor(z, tf.int32) for z in paths)
    n = int(images.shape[0])
    if any(int(z.shape[0]) != n for z in paths):
        raise ValueError("fit_gating: every path tensor needs one row per image")
    variables = list(prior.trainable_variables)
    optimizer = optimizer or keras.optimizers.Adam(learning_rate)
    optimizer.build(variables)

    @tf.function
    def nll(x, path):
        return -tf.reduce_mean(model.path_log_prob(path, x=x))

    @tf.function
    def step(x, path):
        with tf.GradientTape() as tape:
            loss = nll(x, path)
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    def full_nll():
        total = 0.
        for start in range(0, n, 1000):
            chunk = tuple(z[start:start + 1000] for z in paths)
            total += float(nll(images[start:start + 1000], chunk)) * min(1000, n - start)
        return total / n

    before = full_nll()
    rng = np.random.default_rng(seed)
    history = []
    t0 = time.time()
    for s in range(steps):
        idx = tf.constant(rng.integers(0, n, size=min(batch_size, n)))
        loss = step(tf.gather(images, idx), tuple(tf.gather(z, idx) for z in paths))
        history.append(float(loss))
        if log_every and (s + 1) % log_every == 0:
            rate = (s + 1) / (time.time() - t0)
            log(f"gating {s + 1}/{steps}: -log pi = {np.mean(history[-log_every:]):.3f} nats, "
                f"ETA {(steps - s - 1) / rate:.0f} s")
    return {"loss": history, "nats_before": before, "nats_after": full_nll()}
