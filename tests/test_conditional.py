"""Conditionals (inpainting): exact against the closed-form Gaussian-mixture conditional of
`as_mixture()`, the search's candidates, sampling, shapes and errors."""

import numpy as np
import pytest
import tensorflow as tf
from small_models import HC, IMAGE

import tfdgmm

# as `small_models.SMALL_CONFIGS`, with the dense model ending at its dense layer
CONFIGS = {
    "shared_bd": [
        HC,
        {"type": "block_diagonal", "alternatives": 3},
        HC,
        {"type": "block_diagonal", "alternatives": 2},
    ],
    "unshared_bd": [HC, {"type": "block_diagonal", "alternatives": 2, "selection": "location"}, HC],
    "diag_dense_hc": [
        {"type": "diagonal", "alternatives": 2},
        HC,
        {"type": "dense", "alternatives": 2},
    ],
}


def make(layers, prior="uniform", seed=0):
    model = tfdgmm.DeepGMM.from_config(
        {
            "image_shape": IMAGE,
            "patch_size": 2,
            "layers": layers,
            "path_prior": prior,
            "exact_limit": 1 << 12,
            "seed": seed,
        },
        dtype=tf.float64,
    )
    # small moves: the reference works with covariances (Omega Omega^T squares the condition
    # number); these keep it accurate to ~1e-9 while every term is exercised
    rng = np.random.default_rng(seed + 100)
    for v in model.trainable_variables:
        v.assign_add(0.1 * rng.standard_normal(v.shape))
    return model


def centre_mask():
    mask = np.ones(IMAGE, np.float32)
    mask[1:3, 1:3, :] = 0.0  # 12 of 48 values missing
    return mask


def closed_form(model, x, mask):
    """The Gaussian-mixture conditional from `as_mixture()`, by the textbook formulas:
    weights `pi_p N(x_o; b_o, S_oo)`, means `b_m + S_mo S_oo^{-1} (x_o - b_o)`, covariances
    `S_mm - S_mo S_oo^{-1} S_om`. Returns `(log weights [N, P], means [N, P, m], covs [P, m, m],
    log p(x_o) [N])`."""
    mix = model.as_mixture()
    comp = mix.components_distribution.distribution  # MVN over the flattened image
    beta = comp.loc.numpy()
    sigma = comp.covariance().numpy()
    log_pi = tf.nn.log_softmax(mix.mixture_distribution.logits).numpy()
    o = np.asarray(mask).reshape(-1) > 0.5
    m = ~o
    xf = np.asarray(x).reshape(len(x), -1)
    s_oo, s_mo, s_mm = sigma[:, o][:, :, o], sigma[:, m][:, :, o], sigma[:, m][:, :, m]
    gain = np.linalg.solve(s_oo, s_mo.transpose(0, 2, 1)).transpose(0, 2, 1)  # S_mo S_oo^-1
    covs = s_mm - gain @ s_mo.transpose(0, 2, 1)
    dev = xf[:, None, o] - beta[None, :, o]  # [N, P, o]
    means = beta[None, :, m] + np.einsum("pmo,npo->npm", gain, dev)
    _, logdet = np.linalg.slogdet(s_oo)
    quad = np.einsum("npo,npo->np", dev, np.linalg.solve(s_oo[None], dev[..., None])[..., 0])
    log_obs = -0.5 * (quad + logdet[None] + o.sum() * np.log(2 * np.pi))
    joint = log_pi[None] + log_obs
    log_px_o = np.logaddexp.reduce(joint, axis=1)
    return joint - log_px_o[:, None], means, covs, log_px_o


def mixture_log_density(log_w, means, covs, values):
    """`log sum_p w_p N(values; means_p, covs_p)` per image, numpy."""
    out = []
    for n in range(len(values)):
        terms = []
        for p in range(means.shape[1]):
            d = values[n] - means[n, p]
            _, logdet = np.linalg.slogdet(covs[p])
            q = d @ np.linalg.solve(covs[p], d)
            terms.append(log_w[n, p] - 0.5 * (q + logdet + len(d) * np.log(2 * np.pi)))
        out.append(np.logaddexp.reduce(terms))
    return np.array(out)


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("prior", ["uniform", "factorized"])
def test_equals_the_closed_form_mixture_conditional(name, prior):
    model = make(CONFIGS[name], prior)
    if prior == "factorized":
        rng = np.random.default_rng(5)
        for v in model.path_prior.trainable_variables:
            v.assign(rng.standard_normal(v.shape))
    x = model.sample(3, seed=[4, 5])
    mask = centre_mask()
    c = model.conditional(x, mask)
    assert c.batch_shape == [3] and c.event_shape == IMAGE
    log_w, means, covs, log_px_o = closed_form(model, x, mask)
    assert c.log_weights.shape == log_w.shape  # every path is a component, in enumerate order
    np.testing.assert_allclose(c.log_weights.numpy(), log_w, atol=1e-8)
    np.testing.assert_allclose(c.component_means.numpy(), means, rtol=1e-8, atol=1e-8)
    got_cov = c.component_covariances().numpy()
    for n in range(3):
        np.testing.assert_allclose(got_cov[n], covs, rtol=1e-7, atol=1e-9 * np.abs(covs).max())
    np.testing.assert_allclose(c.observed_log_prob.numpy(), log_px_o, rtol=1e-10)
    # the marginal of the observed block: log p(x) - log p(x_m | x_o) = log p(x_o)
    np.testing.assert_allclose(
        (model.log_prob(x) - c.log_prob(x)).numpy(), log_px_o, rtol=1e-9, atol=1e-8
    )
    missing = ~(mask.reshape(-1) > 0.5)
    values = x.numpy().reshape(3, -1)[:, missing]
    want = mixture_log_density(log_w, means, covs, values)
    np.testing.assert_allclose(c.log_prob(x).numpy(), want, rtol=1e-9, atol=1e-8)
    np.testing.assert_allclose(c.missing_distribution().log_prob(values).numpy(), want, rtol=1e-8)
    # the mean: observed pixels kept, missing ones the weighted component means
    mean = c.mean().numpy().reshape(3, -1)
    np.testing.assert_array_equal(mean[:, ~missing], x.numpy().reshape(3, -1)[:, ~missing])
    np.testing.assert_allclose(
        mean[:, missing], np.einsum("np,npm->nm", np.exp(log_w), means), atol=1e-9
    )


def test_samples_have_the_conditional_mean_and_covariance():
    model = make(CONFIGS["diag_dense_hc"], seed=1)
    x = model.sample(1, seed=[1, 1])
    mask = np.ones(IMAGE[:2], np.float32)  # [H, W]: broadcast over channels
    mask[0, :2] = 0.0  # 6 values missing
    c = model.conditional(x[0], mask)  # one image: batch shape []
    assert c.batch_shape == []
    s = c.sample(20000, seed=[7, 8])
    assert s.shape == [20000, *IMAGE]
    observed = np.broadcast_to(mask[..., None], IMAGE) > 0.5
    np.testing.assert_array_equal(
        s.numpy()[:, observed], np.broadcast_to(x.numpy()[0][observed], (20000, observed.sum()))
    )
    log_w, means, covs, _ = closed_form(model, x, np.broadcast_to(mask[..., None], IMAGE))
    w = np.exp(log_w[0])
    mu = w @ means[0]
    cov = np.einsum("p,pij->ij", w, covs + means[0][:, :, None] * means[0][:, None, :])
    cov -= np.outer(mu, mu)
    vals = s.numpy()[:, ~observed]
    sd = np.sqrt(np.diag(cov))
    np.testing.assert_allclose(vals.mean(0), mu, atol=4 * sd.max() / np.sqrt(20000))
    np.testing.assert_allclose(np.cov(vals.T), cov, atol=0.05 * np.abs(cov).max())
    # the same seed, the same samples
    np.testing.assert_array_equal(c.sample(3, seed=[7, 8]), c.sample(3, seed=[7, 8]))


def test_search_candidates_are_exact_components_with_renormalised_weights():
    model = make(CONFIGS["unshared_bd"], seed=2)  # 16 paths
    x = model.sample(4, seed=[2, 3])
    mask = centre_mask()
    c = model.conditional(x, mask, paths="search", restarts=2, iterations=2, seed=[5, 6])
    assert c.log_weights.shape == [4, 6]  # restarts * (iterations + 1) candidates
    log_w, means, covs, _ = closed_form(model, x, mask)
    every = [z.numpy() for z in model.enumerate_paths()]
    index = {tuple(np.concatenate([z[p].reshape(-1) for z in every])): p for p in range(16)}
    got_w = c.log_weights.numpy()
    for n in range(4):
        seen = []
        for k in range(6):
            key = tuple(np.concatenate([z.numpy()[n, k].reshape(-1) for z in c.paths]))
            p = index[key]
            np.testing.assert_allclose(c.component_means.numpy()[n, k], means[n, p], atol=1e-8)
            np.testing.assert_allclose(c.component_covariances().numpy()[n, k], covs[p], atol=1e-8)
            if p in seen:
                assert got_w[n, k] == -np.inf  # a duplicate does not count twice
            seen.append(p)
        distinct = sorted(set(seen))
        want = log_w[n, distinct] - np.logaddexp.reduce(log_w[n, distinct])
        np.testing.assert_allclose(
            np.sort(got_w[n][np.isfinite(got_w[n])]), np.sort(want), atol=1e-8
        )
    # repeated paths (factorised once, copied) occur here and count once
    assert np.isinf(got_w).any()
    # hard EM: along each chain, the joint p(x_o, x_m, path) at the conditional mode never falls
    means_img = c.component_means.numpy()
    missing = ~(mask.reshape(-1) > 0.5)
    for n in range(4):
        for r in range(2):
            joints = []
            for t in range(3):
                k = t * 2 + r
                img = x.numpy()[n].reshape(-1).copy()
                img[missing] = means_img[n, k]
                path = tuple(z[n : n + 1, k] for z in c.paths)
                joints.append(float(model.joint_log_prob(img.reshape(1, *IMAGE), path)[0]))
            assert all(b >= a - 1e-8 for a, b in zip(joints, joints[1:])), joints


def test_graph_mode_and_dynamic_masks_match_eager():
    model = make(CONFIGS["shared_bd"], seed=3)
    x = model.sample(2, seed=[3, 4])
    mask = centre_mask()

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, *IMAGE], tf.float64),
            tf.TensorSpec(IMAGE, tf.float32),
        ]
    )
    def mean_and_sample(x, mask):
        c = model.conditional(x, mask, paths="search", seed=[1, 2])
        return c.mean(), c.sample(2, seed=[3, 4]), c.log_prob(x)

    got = mean_and_sample(x, tf.constant(mask))
    eager = model.conditional(x, mask, paths="search", seed=[1, 2])
    np.testing.assert_allclose(got[0], eager.mean(), rtol=1e-10)
    np.testing.assert_allclose(got[1], eager.sample(2, seed=[3, 4]), rtol=1e-10)
    np.testing.assert_allclose(got[2], eager.log_prob(x), rtol=1e-10)
    with pytest.raises(tf.errors.InvalidArgumentError, match="0 .missing. or 1"):
        mean_and_sample(x, tf.constant(0.5 * mask))


def test_clear_errors():
    model = make(CONFIGS["shared_bd"])
    x = model.sample(1, seed=[1, 2])
    with pytest.raises(ValueError, match=r"mask must have shape \[4, 4, 3\]"):
        model.conditional(x, np.ones([4, 3]))
    with pytest.raises(ValueError, match="0 .missing. or 1 .observed.; got values"):
        model.conditional(x, 0.5 * np.ones([4, 4]))
    with pytest.raises(ValueError, match="every pixel as observed"):
        model.conditional(x, np.ones([4, 4, 3]))
    with pytest.raises(ValueError, match=r"x must be images \[N, 4, 4, 3\]"):
        model.conditional(tf.zeros([1, 4, 5, 3], tf.float64), centre_mask())
    with pytest.raises(ValueError, match="raw pixels"):
        model.conditional(np.zeros([1, 4, 4, 3], np.uint8), centre_mask())
    with pytest.raises(ValueError, match="paths must be one of"):
        model.conditional(x, centre_mask(), paths="some")
    with pytest.raises(ValueError, match="restarts must be an int >= 1"):
        model.conditional(x, centre_mask(), restarts=0)
    gated = make(CONFIGS["shared_bd"], prior={"kind": "gating", "hidden": 4})
    with pytest.raises(ValueError, match="gating"):
        gated.conditional(x, centre_mask())
    big = tfdgmm.DeepGMM.from_config(
        {
            "image_shape": IMAGE,
            "patch_size": 2,
            "layers": CONFIGS["unshared_bd"],
            "exact_limit": 4,
        },
        dtype=tf.float64,
    )
    with pytest.raises(ValueError, match="exact_limit"):
        big.conditional(x, centre_mask(), paths="all")
    # everything missing: the conditional is the model itself
    c = model.conditional(x, np.zeros([4, 4, 3]))
    np.testing.assert_allclose(c.log_prob(x), model.log_prob(x), rtol=1e-9)
