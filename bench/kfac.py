"""The K-FAC refresh's cost: the patch factor `A` by `patch_gram` against the Gram of the
extracted patch matrix, and its share of an M-step update.

Usage: python bench/kfac.py [--data ../shared/data/cifar10-jpeg75] [--configs table1_hc3 ...]
           [--images 4000] [--json bench/results/kfac.json] [--mstep-only]

For an A/B against older code: `PYTHONPATH=OLD_TREE python bench/kfac.py --mstep-only`, then
the same without `PYTHONPATH`, one after the other.

Part 1: `A` for the statistics of one refresh (`hc_statistics_images` = 500 images on the
8 x 8 patch grid, a 5 x 5 kernel on 24 channels: the paper's half-convolutions), both ways in
the same process, best of 7 after tracing, float32, one thread.
Part 2: `EMTrainer`'s M-step graph (the training code path) on `--images` training images
after one E-step, ms per update over 4 x 100 updates (best and median), with the configs'
K-FAC refresh every `hc_statistics_interval` updates and with no refresh in the timed window:
the difference is the refresh's share.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfdgmm  # noqa: E402
from tfdgmm.runs import load_data, load_run_config  # noqa: E402
from tfdgmm.training import EMTrainer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from convergence import commit, machine  # noqa: E402


def best_of(fn, repeats=7):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def factor_a(n=500, grid=8, channels=24, k=5):
    from tfdgmm.training.preconditioning import patch_gram

    x = tf.constant(
        np.random.default_rng(0).standard_normal((n, grid, grid, channels)).astype("float32")
    )

    @tf.function
    def extracted(x):
        p = tf.image.extract_patches(x, [1, k, k, 1], [1, 1, 1, 1], [1, 1, 1, 1], "SAME")
        p = tf.reshape(p, [-1, k * k * channels])
        return tf.matmul(p, p, transpose_a=True)

    @tf.function
    def lagged(x):
        return patch_gram(x, k, k)

    want = extracted(x).numpy()
    diff = np.abs(want - lagged(x).numpy()).max() / np.abs(want).max()
    old = best_of(lambda: extracted(x).numpy())
    new = best_of(lambda: lagged(x).numpy())
    return {
        "images": n,
        "extracted_patches_gram_ms": 1e3 * old,
        "patch_gram_ms": 1e3 * new,
        "speedup": old / new,
        "max_difference_relative_to_max_entry": float(diff),
    }


def mstep_ms(name, data_spec, images, overrides=()):
    cfg = load_run_config(
        os.path.join(ROOT, "configs", f"{name}.yaml"), ["training.em_iterations=1", *overrides]
    )
    splits = load_data(
        dict(cfg["data"], train_limit=images, validation_limit=1, test_limit=1), data_spec
    )
    model = tfdgmm.DeepGMM.from_config(cfg["model"])
    with tempfile.TemporaryDirectory() as out:
        trainer = EMTrainer(
            model, cfg["training"], splits.train.dequantized(0), None, out, log=lambda s: None
        )
        trainer._estep(0)
        run = trainer._ensure_mstep_fn()
        total = tf.constant(10**6, tf.int64)
        it = tf.constant(0, tf.int64)
        run(tf.constant(5, tf.int64), total, it)
        times = []
        for _ in range(4):
            start = time.perf_counter()
            run(tf.constant(100, tf.int64), total, it)[2].numpy()
            times.append((time.perf_counter() - start) / 100)
    return {"best_ms": 1e3 * min(times), "median_ms": 1e3 * float(np.median(times))}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "cifar10-jpeg75"))
    p.add_argument("--configs", nargs="*", default=["table1_hc3"])
    p.add_argument("--images", type=int, default=4000)
    p.add_argument("--json", default=None)
    p.add_argument(
        "--mstep-only",
        action="store_true",
        help="part 2 only: runs against older trees (PYTHONPATH=OLD_TREE) for an A/B",
    )
    args = p.parse_args(argv)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    result = {"mstep": {}}
    if not args.mstep_only:
        result["factor_a"] = factor_a()
        print(json.dumps(result["factor_a"]), flush=True)
    for name in args.configs:
        result["mstep"][name] = {
            "refresh_every_interval": mstep_ms(name, args.data, args.images),
            "no_refresh": mstep_ms(
                name, args.data, args.images, ["training.hc_statistics_interval=1000000000"]
            ),
        }
        print(name, json.dumps(result["mstep"][name]), flush=True)
    result.update(
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), commit=commit(), machine=machine()
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
