"""Where the hard E-step's time and gains go, on a trained run (issue 15's measurements).

On the first `--images` training images of a `tfdgmm train` run, from the paths stored in its
newest checkpoint (the start of the run's next E-step), with the current default search:

* how many choices change in the warm pass (per choice layer, mean per image);
* how often the random restart (2 passes) beats the warm pass, and by how much;
* the time of one warm pass, and of the same pass without its parts: with the blocks composed
  once for all calls instead of per call, with no candidate evaluation at the ranked layers
  (`top=0`: what is left is the set-up, the ranking VJP and the Gram probes), with every
  alternative computed and selected instead of `tf.dynamic_partition` (`choice_ops`);
* the same for thresholded ranking (`location_options={"threshold": T}`).

Usage: python bench/estep_profile.py RUN_DIR [--images 250] [--repeats 2] [--thresholds 0 1]
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from _trained import load  # noqa: E402

from tfdgmm import path_search  # noqa: E402
from tfdgmm.bijectors import choice_ops, precomposed  # noqa: E402


def best_time(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dir")
    parser.add_argument("--images", type=int, default=250)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--thresholds", type=float, nargs="*", default=[0.0])
    parser.add_argument("--checkpoint")
    parser.add_argument("--json")
    args = parser.parse_args()

    _, model, _, x, paths, _, ckpt = load(args.run_dir, args.checkpoint)
    n = args.images
    x = tf.constant(x[:n])
    init = tuple(p[:n] for p in paths)
    h0 = model.patchify(x)
    seed = tf.constant([5, 6])

    def make_pass(options=None, compose_once=True, ops="auto"):
        @tf.function(reduce_retracing=True)
        def one_pass(h0, path, seed):
            with choice_ops(ops):
                if compose_once:
                    with precomposed(model.layers):
                        return path_search.coordinate_ascent_pass(
                            model, h0, path, seed=seed, location_options=options
                        )
                return path_search.coordinate_ascent_pass(
                    model, h0, path, seed=seed, location_options=options
                )

        return one_pass

    objective = tf.function(lambda h0, p: path_search.objective(model, h0, p))
    out = {"run": args.run_dir, "checkpoint": ckpt, "images": n}
    old = make_pass()
    warm = old(h0, init, seed)
    j_init, j_warm = objective(h0, init).numpy(), objective(h0, warm).numpy()
    changed = {}
    for i, (k, shape) in enumerate(model.layer_specs):
        if k > 1:
            diff = tf.cast(tf.not_equal(warm[i], init[i]), tf.float32)
            per_image = tf.reduce_sum(tf.reshape(diff, [n, -1]), axis=1).numpy()
            changed[i] = {
                "choices": int(np.prod(shape)) if shape else 1,
                "mean_changed": float(per_image.mean()),
                "images_with_change": float((per_image > 0).mean()),
            }
    out["warm_pass"] = {
        "mean_joint_start": float(j_init.mean()),
        "mean_joint_warm": float(j_warm.mean()),
        "changed": changed,
    }
    start = path_search.random_path(model, n, tf.constant([3, 4]))
    r = old(h0, old(h0, start, seed), seed)
    j_r = objective(h0, r).numpy()
    wins = j_r > j_warm + 1e-3
    out["restart"] = {
        "wins": float(wins.mean()),
        "mean_margin_of_wins": float((j_r - j_warm)[wins].mean()) if wins.any() else 0.0,
        "mean_gain_per_image": float(np.maximum(j_r - j_warm, 0).mean()),
        "mean_joint_restart": float(j_r.mean()),
    }
    print(json.dumps(out, indent=1), flush=True)

    timings = {}

    def timed(name, fn, path=init):
        t = best_time(lambda: fn(h0, path, seed)[0].numpy(), args.repeats)
        timings[name] = t
        print(f"{name:45s} {t:8.3f} s/pass  {n / t:8.1f} images/s", flush=True)

    timed("warm pass, default (composed once)", old)
    timed("warm pass, composed per call", make_pass(compose_once=False))
    timed("warm pass, choice by select (no partition)", make_pass(ops="select"))
    has_location = any(shape for _, shape in model.layer_specs)
    if has_location:
        timed("warm pass, top=0 (set-up, VJP, probes)", make_pass({"top": 0}))
        timed("warm pass, top=0, probes=1", make_pass({"top": 0, "probes": 1}))
        for thr in args.thresholds:
            fn = make_pass({"threshold": thr})
            timed(f"warm pass, threshold {thr}", fn)
            j = objective(h0, fn(h0, init, seed)).numpy()
            timings[f"joint_threshold_{thr}"] = float(j.mean())
            print(f"   mean joint {j.mean():.2f} (default warm pass {j_warm.mean():.2f})")
        timed("random-start pass, default", old, start)
        for thr in args.thresholds:
            timed(f"random-start pass, threshold {thr}", make_pass({"threshold": thr}), start)
    out["timings"] = timings
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
