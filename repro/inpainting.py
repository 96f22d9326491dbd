"""Evidence for inpainting and per-image scores (docs/inpainting.md).

1. Inpainting of held-out (test) images: PSNR of the conditional mean on the missing pixels and
   the conditional log-likelihood `log p(x_m | x_o)` in nats of the true (dequantised) pixels,
   for the deep GMM (`DeepGMM.conditional`, library defaults), the full-covariance Gaussian's
   closed-form conditional (`tfdgmm.gaussian`, fitted on the run's training images and on all
   40,000) and a mean fill (the training per-pixel mean; its log-likelihood under independent
   per-pixel Gaussians).
2. Out-of-distribution scores: per-image bits/dim by `tfdgmm score` (the run's evaluation
   search) for test images against uniform noise, colour-inverted and channel-swapped (BGR)
   test images, and exact-pixel CIFAR-10 images (`cifar10-exact-subset`, positions 40,000+:
   validation images the model never trained on) against their JPEG-75 copies; AUROC of
   "higher bits/dim = shifted".

Usage: python repro/inpainting.py RUN_DIR --data ../shared/data/cifar10-jpeg75
          --exact ../shared/data/cifar10-exact-subset/train.npz [--images 100] [--ood 500]
          [--masks center,left] [--out repro/results/inpainting.json]
"""

import argparse
import datetime
import json
import math
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfdgmm import gaussian, runs  # noqa: E402
from tfdgmm.runs.inpaint import make_mask, psnr, score_run  # noqa: E402

LOG_2PI = math.log(2.0 * math.pi)


def auroc(negative, positive):
    """P(positive score > negative score) (+ half the ties): the Mann-Whitney statistic."""
    neg, pos = np.asarray(negative), np.asarray(positive)
    scores = np.concatenate([neg, pos])
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    for v in np.unique(scores):  # average ranks of ties
        tie = scores == v
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    r_pos = ranks[len(neg) :].sum()
    return float((r_pos - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def gaussian_conditional(dist, x, mask):
    """Closed-form conditional of a full-covariance Gaussian: mean `[N, m]`, log p(x_m | x_o)."""
    mu = dist.loc.numpy()
    chol = dist.scale.to_dense().numpy()
    sigma = chol @ chol.T
    o = mask.reshape(-1) > 0.5
    m = ~o
    xf = x.reshape(len(x), -1).astype(np.float64)
    s_oo, s_mo, s_mm = sigma[np.ix_(o, o)], sigma[np.ix_(m, o)], sigma[np.ix_(m, m)]
    gain = np.linalg.solve(s_oo, s_mo.T).T
    cov = s_mm - gain @ s_mo.T
    mean = mu[m][None] + (xf[:, o] - mu[o][None]) @ gain.T
    lc = np.linalg.cholesky(0.5 * (cov + cov.T))
    dev = np.linalg.solve(lc, (xf[:, m] - mean).T)
    ll = -0.5 * np.sum(dev**2, 0) - np.sum(np.log(np.diag(lc))) - 0.5 * m.sum() * LOG_2PI
    return mean, ll


def summary(values):
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "sem": float(v.std(ddof=1) / np.sqrt(len(v)))}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir")
    p.add_argument("--data", required=True)
    p.add_argument("--exact", help="cifar10-exact-subset/train.npz (the exact-pixel images)")
    p.add_argument("--images", type=int, default=100, help="test images to inpaint per mask")
    p.add_argument("--ood", type=int, default=500, help="images per set for the AUROCs")
    p.add_argument("--masks", default="center,left")
    p.add_argument("--chunk", type=int, default=10)
    p.add_argument("--out", default="repro/results/inpainting.json")
    p.add_argument("--skip-inpainting", action="store_true")
    p.add_argument("--skip-ood", action="store_true")
    p.add_argument(
        "--settings",
        default="2x1",
        help="comma-separated search settings RESTARTSxITERATIONS of the deep GMM's "
        "conditional (default 2x1, the library's defaults); the first is 'deep_gmm', the "
        "others 'deep_gmm_RxI'",
    )
    args = p.parse_args()

    start_time = time.time()
    config, model, ckpt = runs.commands.run_model(args.run_dir)
    data_cfg = dict(config["data"])
    splits = runs.load_data(
        dict(data_cfg, train_limit=None, test_limit=None, validation_limit=None), args.data
    )
    noise_seed = int(data_cfg["noise_seed"])
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
        "command": " ".join(["python"] + sys.argv),
        "run_dir": args.run_dir,
        "checkpoint": ckpt,
        "data": splits.source,
    }

    if not args.skip_inpainting:
        train_limit = min(data_cfg.get("train_limit") or len(splits.train), len(splits.train))
        train = splits.train.dequantized(noise_seed, np.float64, 0, train_limit)
        x_test = splits.test.dequantized(noise_seed, np.float32, 0, args.images)
        pix_mean = train.mean(0)
        pix_var = train.var(0)
        fits = {
            f"gaussian_{train_limit}": gaussian.fit_full_covariance_gaussian(train),
        }
        if len(splits.train) > train_limit:
            fits[f"gaussian_{len(splits.train)}"] = gaussian.fit_full_covariance_gaussian(
                splits.train.iter_dequantized(noise_seed)
            )
        del train
        result["inpainting"] = {"images": args.images, "masks": {}}
        for spec in args.masks.split(","):
            mask = make_mask(spec, model.image_shape)
            missing = mask.reshape(-1) < 0.5
            m = int(missing.sum())
            xt = x_test.reshape(len(x_test), -1)

            rows = {}
            for k, setting in enumerate(args.settings.split(",")):
                restarts, iterations = (int(v) for v in setting.split("x"))
                label = "deep_gmm" if k == 0 else f"deep_gmm_{setting}"
                rows[label] = deep_gmm_row(
                    model, x_test, mask, restarts, iterations, args.chunk, f"{spec} {setting}"
                )
            for name, dist in fits.items():
                gm, gll = gaussian_conditional(dist, x_test, mask)
                filled = xt.astype(np.float64).copy()
                filled[:, missing] = gm
                rows[name] = {
                    "psnr_db": summary(psnr(filled.reshape(x_test.shape), x_test, mask < 0.5)),
                    "log_prob_nats": summary(gll),
                }
            fill = xt.astype(np.float64).copy()
            fill[:, missing] = pix_mean.reshape(-1)[missing]
            v = pix_var.reshape(-1)[missing]
            dev = xt[:, missing] - pix_mean.reshape(-1)[missing]
            ll_fill = -0.5 * np.sum(dev**2 / v + np.log(v) + LOG_2PI, axis=1)
            rows["mean_fill"] = {
                "psnr_db": summary(psnr(fill.reshape(x_test.shape), x_test, mask < 0.5)),
                "log_prob_nats": summary(ll_fill),
            }
            result["inpainting"]["masks"][spec] = {"missing_values": m, "models": rows}
            print(json.dumps({spec: rows}, indent=1))

    if not args.skip_ood:
        result["ood"] = ood_scores(args, splits)
    result["seconds"] = time.time() - start_time
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"results: {args.out}")


def deep_gmm_row(model, x_test, mask, restarts, iterations, chunk, label):
    """PSNR and conditional log-likelihood of the deep GMM's conditional on `x_test`."""

    @tf.function(
        input_signature=[tf.TensorSpec([None, *model.image_shape], model.dtype)],
        autograph=False,
    )
    def deep(x):
        c = model.conditional(
            x, mask, seed=tf.constant([3, 4]), restarts=restarts, iterations=iterations
        )
        return c.mean(), c.log_prob(x)

    means, lls = [], []
    t0 = time.time()
    for i in range(0, len(x_test), chunk):
        mean, ll = deep(tf.constant(x_test[i : i + chunk], model.dtype))
        means.append(mean.numpy())
        lls.append(ll.numpy())
        print(f"[{label}] deep GMM {i + len(mean)}/{len(x_test)} ({time.time() - t0:.0f} s)")
    return {
        "restarts": restarts,
        "iterations": iterations,
        "psnr_db": summary(psnr(np.concatenate(means), x_test, mask < 0.5)),
        "log_prob_nats": summary(np.concatenate(lls)),
        "seconds_per_image": (time.time() - t0) / len(x_test),
    }


def ood_scores(args, splits):
    """Per-image bits/dim (`tfdgmm score`) of test images and shifted sets; AUROCs."""
    n = args.ood
    test_pixels = splits.test.images[:n]
    rng = np.random.default_rng(0)
    sets = {
        "uniform_noise": rng.integers(0, 256, size=test_pixels.shape, dtype=np.uint8),
        "inverted_colours": (255 - test_pixels).astype(np.uint8),
        "bgr_channels": np.ascontiguousarray(test_pixels[..., ::-1]),
    }
    scores = {}
    with tempfile.TemporaryDirectory() as tmp:

        def score(name, spec, **kw):
            out = os.path.join(tmp, f"{name}.csv")
            score_run(args.run_dir, spec, out, **kw)
            return np.loadtxt(out, delimiter=",", skiprows=1, usecols=3)

        scores["test"] = score("test", args.data, split="test", limit=n)
        for name, images in sets.items():
            path = os.path.join(tmp, f"{name}.npz")
            np.savez(path, images=images, labels=np.zeros(len(images), np.int64))
            scores[name] = score(name, path)
        if args.exact:
            with np.load(args.exact) as f:
                exact, index = f["images"], f["index"]
            start = splits.validation.file_offset  # position 40,000 of the training file
            held = index >= start
            exact, index = exact[held][:n], index[held][:n]
            jpeg = splits.validation.images[index - start]
            for name, images in (("exact_pixels", exact), ("jpeg_of_exact", jpeg)):
                path = os.path.join(tmp, f"{name}.npz")
                np.savez(path, images=images, labels=np.zeros(len(images), np.int64))
                scores[name] = score(name, path)
    ood = {
        "images_per_set": n,
        "mean_bits_per_dim": {k: float(v.mean()) for k, v in scores.items()},
    }
    ood["auroc_vs_test"] = {k: auroc(scores["test"], v) for k, v in scores.items() if k != "test"}
    if "exact_pixels" in scores:
        ood["auroc_exact_vs_jpeg"] = auroc(scores["jpeg_of_exact"], scores["exact_pixels"])
        ood["exact_higher_than_its_jpeg"] = float(
            np.mean(scores["exact_pixels"] > scores["jpeg_of_exact"])
        )
    print(json.dumps(ood, indent=1))
    return ood


if __name__ == "__main__":
    main()
