"""Where one pass of the E-step goes (issue 15): on a trained run's stored paths, the time of
one forward (the joint of given paths), of one coordinate-ascent pass with the `adaptive` steps
(`threshold: 0`), of the same pass without candidate evaluation at the ranked layers (`top: 0`)
and of one pass with the `fast` steps (`bound`), each inside a `tf.function` with the blocks and
the exact Gram steps' constants composed in the call; best of `--repeats` after a warm-up.

Usage: python bench/estep_pass_split.py RUN_DIR[@CKPT] [--images 250] [--repeats 3]
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from _trained import load  # noqa: E402

from tfdgmm import path_search  # noqa: E402
from tfdgmm.bijectors import precomposed  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run", metavar="RUN_DIR[@CKPT]")
    parser.add_argument("--images", type=int, default=250)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    run_dir, _, ckpt = args.run.partition("@")
    _, model, _, x_all, paths_all, _, ckpt = load(run_dir, ckpt or None)
    n = min(args.images, len(x_all))
    x = tf.constant(x_all[:n])
    init = tuple(tf.constant(p[:n].numpy()) for p in paths_all)
    print(f"{run_dir} ({ckpt}), {n} images", flush=True)

    def timed(name, fn):
        f = tf.function(fn)
        out = f()  # trace + warm up
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            np.asarray(tf.nest.flatten(f())[0])
            times.append(time.perf_counter() - t)
        return out, min(times)

    def composed(fn):
        def call():
            with precomposed(model.layers), path_search.gram_constants(model, True):
                return fn()

        return call

    _, forward = timed(
        "forward", composed(lambda: path_search.objective(model, model.patchify(x), init, True))
    )
    print(f"one forward: {forward:.3f} s per {n} images", flush=True)
    for name, options in (
        ("one pass, adaptive steps (threshold 0)", {"threshold": 0.0}),
        ("... without candidate evaluation (top 0)", {"threshold": 0.0, "top": 0}),
        ("one pass, fast steps (bound)", {"bound": True}),
    ):
        path, seconds = timed(
            name,
            composed(
                lambda o=options: path_search.coordinate_ascent_pass(
                    model, model.patchify(x), init, "auto", True, tf.constant([1, 2]), o
                )
            ),
        )
        joint = path_search.objective(model, model.patchify(x), path, True)
        print(
            f"{name}: {seconds:.3f} s ({seconds / forward:.0f} forwards), mean joint "
            f"{float(tf.reduce_mean(tf.cast(joint, tf.float64))):.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
