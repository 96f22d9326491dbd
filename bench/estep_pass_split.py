"""Where one pass of the E-step goes (issue 15): on a trained run's stored paths, the time of
one forward (the joint of given paths), of one coordinate-ascent pass with the `adaptive` steps
(`threshold: 0`), of the same pass without candidate evaluation at the ranked layers (`top: 0`),
of one pass with the `fast` steps (`bound`) and of one with one alternative per visited location
(`alternatives: 1`), each inside a `tf.function` with the blocks and
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

    def timed(fn):
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
        composed(lambda: path_search.objective(model, model.patchify(x), init, True))
    )
    print(f"one forward: {forward:.3f} s per {n} images", flush=True)
    for name, options in (
        ("one pass, adaptive steps (threshold 0)", {"threshold": 0.0}),
        ("... without candidate evaluation (top 0)", {"threshold": 0.0, "top": 0}),
        ("one pass, fast steps (bound)", {"bound": True}),
        ("one pass, adaptive, 1 alternative per visit", {"threshold": 0.0, "alternatives": 1}),
    ):
        path, seconds = timed(
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

    # each per-location layer's step alone (the private steps of `path_search`: a benchmark)
    hs = [model.patchify(x)]
    for i in range(len(model.layers) - 1):
        hs.append(model.up(hs[-1], init, i, i + 1))
    path = list(init)
    seed = tf.constant([1, 2])
    for i, (k, shape) in enumerate(model.layer_specs):
        if k == 1 or not shape:
            continue
        h = hs[i]
        if all(kk == 1 for kk, _ in model.layer_specs[i + 1 :]):
            steps = {
                "exact Gram step (top)": lambda i=i, h=h: path_search._gram_update(
                    model, i, h, path, True
                )
            }
        elif path_search._local_top_layer(model, i) is not None:
            steps = {
                "exact local-Gram step": lambda i=i, h=h: path_search._local_gram_update(
                    model, i, h, path, True
                )
            }
        else:
            steps = {
                f"ranked step (threshold 0, {top})": (
                    lambda i=i, h=h, t=t: path_search._ranked_update(
                        model, i, h, path, True, seed=seed, threshold=0.0, top=t
                    )
                )
                for top, t in (("default top", None), ("top 0: no candidate evaluation", 0))
            }
            steps["ranked step (threshold 0, 1 alternative per visit)"] = lambda i=i, h=h: (
                path_search._ranked_update(
                    model, i, h, path, True, seed=seed, threshold=0.0, alternatives=1
                )
            )
        for name, fn in steps.items():
            _, seconds = timed(composed(fn))
            print(f"layer {i}, {name}: {seconds:.3f} s ({seconds / forward:.0f} forwards)")


if __name__ == "__main__":
    main()
