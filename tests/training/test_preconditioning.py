"""K-FAC preconditioning of half-convolution kernels against its definition, and the stability it
buys on real images (issue 12)."""

import os

import numpy as np
import pytest
import tensorflow as tf

import tfdgmm
from tfdgmm.training import EMConfig, EMTrainer
from tfdgmm.training.init import initialize_from_data
from tfdgmm.training.preconditioning import HalfConvolutionKFAC, patch_gram

# 8x8x3 images, 2x2 patches: a 4 x 4 x 12 patch tensor. Two half-convolutions (update 'second'
# then 'first'), one with 2 per-sample alternatives, then a shared block-diagonal layer.
ARCH = {
    "image_shape": [8, 8, 3],
    "patch_size": 2,
    "seed": 3,
    "layers": [
        {"type": "half_convolution", "kernel_size": 3},
        {"type": "half_convolution", "kernel_size": 3, "alternatives": 2},
        {"type": "block_diagonal", "alternatives": 2},
    ],
}


def _model_and_data(n=64):
    model = tfdgmm.DeepGMM.from_config(ARCH)
    rng = np.random.default_rng(0)
    for v in model.trainable_variables:  # move away from the near-identity start
        v.assign_add(0.05 * rng.standard_normal(v.shape).astype(np.float32))
    x = model.sample(n, seed=[1, 2])
    path = (
        tf.zeros([n], tf.int32),
        tf.constant(rng.integers(0, 2, n), tf.int32),
        tf.constant(rng.integers(0, 2, n), tf.int32),
    )
    return model, x, path


@pytest.mark.parametrize(
    "shape, kh, kw",
    [
        ((3, 8, 8, 24), 5, 5),  # the paper's kernels on the 8 x 8 patch grid
        ((2, 4, 6, 3), 3, 3),  # H != W
        ((2, 5, 4, 2), 4, 2),  # even windows: SAME pads (k - 1) // 2 before
        ((2, 3, 3, 2), 7, 5),  # a window larger than the grid
        ((4, 6, 5, 1), 1, 3),
    ],
)
def test_patch_gram_is_the_gram_of_the_extracted_patches(shape, kh, kw):
    x = tf.constant(np.random.default_rng(sum(shape)).standard_normal(shape))
    p = tf.image.extract_patches(x, [1, kh, kw, 1], [1, 1, 1, 1], [1, 1, 1, 1], "SAME")
    p = tf.reshape(p, [-1, kh * kw * shape[-1]])
    want = tf.matmul(p, p, transpose_a=True).numpy()
    got = patch_gram(x, kh, kw).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10 * np.abs(want).max())


def test_the_factor_a_is_the_patch_covariance_of_the_conditioning_halves():
    model, x, path = _model_and_data()
    kfac = HalfConvolutionKFAC(model, damping=1e-3)
    kfac.update(x, path)
    for j, (p, _) in enumerate(kfac.kernel_gradient_factors(x, path)):
        a = tf.matmul(p, p, transpose_a=True) / tf.cast(tf.shape(p)[0], p.dtype)
        n = int(a.shape[0])
        damped = a + (1e-3 * tf.reduce_mean(tf.linalg.diag_part(a)) + 1e-12) * tf.eye(n)
        np.testing.assert_allclose(
            (kfac.a_inverse[j] @ damped).numpy(), np.eye(n), atol=2e-3, err_msg=f"layer {j}"
        )


def test_factors_reproduce_the_kernel_gradient():
    """`-p_k^T g_k` over the units choosing `k` is the autodiff gradient of the negative joint:
    the patches, the halves and the alternatives are laid out like the kernel."""
    model, x, path = _model_and_data()
    pre = HalfConvolutionKFAC(model)
    assert pre.indices == [0, 1]
    with tf.GradientTape() as tape:
        loss = -tf.reduce_sum(model.joint_log_prob(x, path))
    grads = tape.gradient(loss, pre.kernels)
    locations = 16
    for j, ((p, g), grad) in enumerate(zip(pre.kernel_gradient_factors(x, path), grads)):
        k = grad.shape[0]
        choice = np.repeat(path[j].numpy(), locations) if k > 1 else np.zeros(len(p), int)
        for a in range(k):
            rows = choice == a
            want = -(p.numpy()[rows].T @ g.numpy()[rows]).reshape(grad.shape[1:])
            np.testing.assert_allclose(grad[a].numpy(), want, rtol=2e-3, atol=2e-3)
            assert np.abs(want).max() > 1e-2  # not trivially zero


def test_precondition_is_the_damped_kronecker_solve():
    model, x, path = _model_and_data()
    pre = HalfConvolutionKFAC(model, damping=1e-2)
    pre.update(x, path, seed=(7, 8))
    # the default Fisher: standard-normal probes of the latent, drawn from the update's seed
    probe = tf.random.stateless_normal([len(x), *model.patch_shape], (7, 8))
    grads = [tf.random.stateless_normal(k.shape, [5, j]) for j, k in enumerate(pre.kernels)]
    steps = pre.precondition(grads)
    factors = pre.kernel_gradient_factors(x, path, latent_probe=probe)
    for j, ((p, g), grad, step) in enumerate(zip(factors, grads, steps)):
        p, g = p.numpy().astype(np.float64), g.numpy().astype(np.float64)
        a, b = p.T @ p / len(p), g.T @ g / len(g)
        a += 1e-2 * np.mean(np.diag(a)) * np.eye(len(a))
        b += 1e-2 * np.mean(np.diag(b)) * np.eye(len(b))
        k = grad.shape[0]
        usage = np.ones(k) if k == 1 else np.bincount(path[j].numpy(), minlength=k) / len(x)
        for alt in range(k):
            gm = grad[alt].numpy().reshape(len(a), len(b)).astype(np.float64)
            # vec(A^-1 G B^-1) = (A (x) B)^-1 vec(G) (row-major vec, symmetric factors)
            want = np.linalg.solve(np.kron(a, b), gm.reshape(-1)).reshape(gm.shape)
            want /= 16 * max(usage[alt], 0.1 / k)
            np.testing.assert_allclose(
                step[alt].numpy().reshape(gm.shape), want, rtol=5e-3, atol=1e-6 * np.abs(want).max()
            )


def test_sampled_and_empirical_curvature_agree_at_a_white_latent():
    """At the data-dependent start the latent is white, so the Gauss-Newton factor from
    standard-normal probes and the empirical one from the data's own gradients agree."""
    arch = {
        "image_shape": [8, 8, 3],
        "patch_size": 2,
        "seed": 0,
        "layers": [
            {"type": "half_convolution", "kernel_size": 3},
            {
                "type": "block_diagonal",
                "alternatives": 1,
                "selection": "sample",
                "per_location": True,
            },
        ],
    }
    x = tfdgmm.DeepGMM.from_config(dict(arch, seed=7)).sample(3000, seed=[1, 1])
    model = tfdgmm.DeepGMM.from_config(arch)
    initialize_from_data(model, x)
    path = (tf.zeros([3000], tf.int32),) * 2
    pre = HalfConvolutionKFAC(model)
    probe = tf.random.stateless_normal([3000, *model.patch_shape], (1, 2))
    ((_, g_sampled),) = pre.kernel_gradient_factors(x, path, latent_probe=probe)
    ((_, g_data),) = pre.kernel_gradient_factors(x, path)
    b_sampled = (tf.transpose(g_sampled) @ g_sampled).numpy() / len(g_sampled)
    b_data = (tf.transpose(g_data) @ g_data).numpy() / len(g_data)
    rel = np.linalg.norm(b_sampled - b_data) / np.linalg.norm(b_data)
    assert rel < 0.1, rel


def test_kfac_step_approaches_the_exact_newton_step_of_a_half_convolution():
    """Under a fixed whitening layer a half-convolution's loss is exactly quadratic in its kernel
    (log-det 0), so the exact Newton step reaches its minimum. One undamped K-FAC step must get
    most of that decrease."""
    arch = {
        "image_shape": [8, 8, 3],
        "patch_size": 2,
        "seed": 0,
        "layers": [
            {"type": "half_convolution", "kernel_size": 3},
            {
                "type": "block_diagonal",
                "alternatives": 1,
                "selection": "sample",
                "per_location": True,
            },
        ],
    }
    truth = tfdgmm.DeepGMM.from_config(dict(arch, seed=7))
    truth.layers[0].kernel.assign(
        0.3 * tf.random.stateless_normal(truth.layers[0].kernel.shape, [0, 1])
    )
    n = 2000
    # dequantisation-like noise sets the smallest variances, as on CIFAR-10
    x = truth.sample(n, seed=[3, 4]) + tf.random.stateless_uniform([n, 8, 8, 3], [5, 6], 0.0, 0.01)
    model = tfdgmm.DeepGMM.from_config(arch)
    initialize_from_data(model, x)
    path = (tf.zeros([n], tf.int32), tf.zeros([n], tf.int32))
    kernel = model.layers[0].kernel
    w0 = tf.identity(kernel)

    def loss_at(w):
        kernel.assign(w)
        return -float(tf.reduce_mean(model.joint_log_prob(x, path)))

    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            value = -tf.reduce_mean(model.joint_log_prob(x, path))
        grad = inner.gradient(value, kernel)
    hessian = outer.jacobian(grad, kernel)  # exact: the loss is quadratic in the kernel
    size = int(np.prod(kernel.shape))
    h = tf.reshape(hessian, [size, size]).numpy().astype(np.float64)
    g = grad.numpy().reshape(-1).astype(np.float64)
    newton = -np.linalg.solve(h, g).reshape(kernel.shape)
    start = loss_at(w0)
    best = loss_at(w0 + newton.astype(np.float32))
    pre = HalfConvolutionKFAC(model, damping=1e-6)
    kernel.assign(w0)
    pre.update(x, path)
    kfac = loss_at(w0 - pre.precondition([grad])[0])
    print(f"start {start:.2f}, exact Newton {best:.2f}, one K-FAC step {kfac:.2f}")
    assert start - best > 5.0  # a real gap to close
    assert start - kfac > 0.9 * (start - best)


# ----------------------------------------------------------------------------------- stability


def _tiny_run(shared_data_dir, tmp_path, **training):
    """configs/tiny.yaml's model on its 500 training images, one M-step of 200 updates in
    chunks of 10 (fixed by update count, so the divergence checks are deterministic)."""
    from tfdgmm.runs import load_data, load_run_config

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cfg = load_run_config(os.path.join(root, "configs", "tiny.yaml"))
    data = load_data(
        dict(cfg["data"], validation_limit=100, test_limit=1),
        os.path.join(shared_data_dir, "cifar10-jpeg75"),
    )
    model = tfdgmm.DeepGMM.from_config(cfg["model"])
    config = EMConfig.from_dict(
        dict(
            cfg["training"],
            em_iterations=1,
            updates_first=200,
            max_chunk=10,
            progress_interval_seconds=1000,
            checkpoint_interval_seconds=1000,
            **training,
        )
    )
    trainer = EMTrainer(
        model,
        config,
        data.train.dequantized(0),
        data.validation.dequantized(0),
        str(tmp_path),
        log=lambda s: None,
    )
    history = trainer.fit()
    return history[-1], int(trainer.state.rollbacks.numpy())


@pytest.mark.parametrize("hc_optimizer", ["kfac", "optimizer"])
def test_default_schedule_does_not_diverge_where_adam_on_kernels_did(
    shared_data_dir, tmp_path, hc_optimizer
):
    """configs/tiny.yaml at its learning rate (3e-3): Adam on the half-convolution kernels
    diverged from the data-dependent start (a rollback within the first 50 updates; the old
    default), K-FAC steps (the default) do not, and end higher."""
    record, rollbacks = _tiny_run(shared_data_dir, tmp_path, hc_optimizer=hc_optimizer)
    print(
        hc_optimizer,
        rollbacks,
        record["estep_lower_bound"],
        record["train_lower_bound"],
        record["validation_lower_bound"],
    )
    if hc_optimizer == "kfac":
        assert rollbacks == 0
        assert record["train_lower_bound"] > record["estep_lower_bound"] + 200
    else:
        assert rollbacks >= 1
