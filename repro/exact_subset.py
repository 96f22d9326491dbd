"""Evaluate trained runs on exact CIFAR-10 pixels against the JPEG copy, image for image.

`../shared/data/cifar10-exact-subset/train.npz` holds 5,085 training images with exact pixels
and their `index` in the official 50,000-image order. The ones with index >= 40,000 belong to the
paper's validation split (official batch 5): this script takes the first N of those, the same N
images from `cifar10-jpeg75`, dequantizes both with the same noise (seed 0, per image) and
scores every run on both with the same fresh search (`tfdgmm.training.evaluate_bounds`, the
search `tfdgmm evaluate` uses). Results: `RUN_DIR/exact-subset.json` and a summary line each.

    python repro/exact_subset.py --n 1017 runs/repro/table1_hc3 [RUN_DIR ...]
    python repro/exact_subset.py --gaussian runs/repro/gaussian-exact-subset.json

`--gaussian FILE` also scores the closed-form full-covariance Gaussian (fitted on the JPEG copy's
40,000 training images, as `tfdgmm baseline`) on the same pairs and writes FILE.
"""

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from tfdgmm.data import dequantize  # noqa: E402
from tfdgmm.export import load_run_model  # noqa: E402
from tfdgmm.runs import load_run_config  # noqa: E402
from tfdgmm.training import EVAL_SEED_OFFSET, EMConfig, evaluate_bounds  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.join(HERE, "..", "..", "shared", "data")


def paired_images(n, shared=SHARED, validation_start=40_000):
    exact = np.load(os.path.join(shared, "cifar10-exact-subset", "train.npz"))
    keep = np.flatnonzero(exact["index"] >= validation_start)[:n]
    index = exact["index"][keep]
    jpeg = np.load(os.path.join(shared, "cifar10-jpeg75", "train.npz"), mmap_mode="r")
    if not np.array_equal(jpeg["labels"][index], exact["labels"][keep]):
        raise ValueError("label mismatch between the exact subset and the JPEG copy")
    noise = np.random.default_rng(0).random(exact["images"][keep].shape)
    return (
        index,
        dequantize(exact["images"][keep], noise),
        dequantize(np.asarray(jpeg["images"][index]), noise),
    )


def evaluate(run_dir, x_exact, x_jpeg, restarts=None):
    config = load_run_config(os.path.join(run_dir, "config.yaml"))
    model, ckpt = load_run_model(run_dir)
    em = EMConfig.from_dict(config["training"])
    out = {"checkpoint": ckpt, "num_images": int(len(x_exact))}
    for name, x in (("exact", x_exact), ("jpeg75", x_jpeg)):
        out[name] = evaluate_bounds(
            model,
            x,
            batch_size=em.estep_batch_size,
            restarts=em.eval_restarts if restarts is None else restarts,
            location_method=em.location_method,
            location_options=em.location_options,
            seed=em.seed + EVAL_SEED_OFFSET,
            label=name,
        )
    out["jpeg_minus_exact_lower_bound_nats"] = (
        out["jpeg75"]["lower_bound_nats"] - out["exact"]["lower_bound_nats"]
    )
    with open(os.path.join(run_dir, "exact-subset.json"), "w") as f:
        json.dump(out, f, indent=1)
    return out


def gaussian(out_path, x_exact, x_jpeg, shared=SHARED):
    from tfdgmm import gaussian as g
    from tfdgmm.data import load_cifar10

    splits = load_cifar10(os.path.join(shared, "cifar10-jpeg75"))
    dist = g.fit_full_covariance_gaussian(splits.train.iter_dequantized(seed=0))
    out = {
        "num_images": int(len(x_exact)),
        "exact": g.mean_log_prob(dist, x_exact.astype(np.float64)),
        "jpeg75": g.mean_log_prob(dist, x_jpeg.astype(np.float64)),
    }
    with open(out_path, "w") as f:
        json.dump(out, f, indent=1)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dirs", nargs="*")
    ap.add_argument("--gaussian", metavar="FILE", help="also score the Gaussian baseline")
    ap.add_argument("--n", type=int, default=1017, help="validation images of the subset to use")
    ap.add_argument("--restarts", type=int, help="random restarts (default: the run's)")
    args = ap.parse_args(argv)
    index, x_exact, x_jpeg = paired_images(args.n)
    print(f"{len(index)} validation images (official indices {index[0]}..{index[-1]})")
    if args.gaussian:
        r = gaussian(args.gaussian, x_exact, x_jpeg)
        print(f"Gaussian: exact {r['exact']:.1f}, JPEG {r['jpeg75']:.1f} nats", flush=True)
    for run_dir in args.run_dirs:
        r = evaluate(run_dir, x_exact, x_jpeg, args.restarts)
        print(
            f"{run_dir}: LB exact {r['exact']['lower_bound_nats']:.1f}, JPEG "
            f"{r['jpeg75']['lower_bound_nats']:.1f} nats (JPEG - exact "
            f"{r['jpeg_minus_exact_lower_bound_nats']:+.1f})",
            flush=True,
        )


if __name__ == "__main__":
    sys.exit(main())
