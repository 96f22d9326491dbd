"""Conditioning benchmark: inpainting one 32x32x3 image with a centre mask (the middle 16x16
pixels, a quarter of the image, missing) and drawing 16 conditional samples, against one E-step
(`best_path`) on that image, on a trained run's model.

Both are `tf.function`s traced before timing, run alternately `--repeats` times (so drift of the
shared machine hits both alike); the report is the median time of each and their ratio.
The conditional uses the library's defaults (`paths='auto'`: a search for this model,
`restarts=2` chains, `iterations=1`: up to 4 candidate paths) and the cheapest setting
(`restarts=1, iterations=0`: the one path of an E-step on the image with its missing pixels
filled by the observed mean); the E-step is the training E-step of a new image
(`restarts=1`, 2 passes: `EMConfig.estep_restarts` / `estep_restart_passes`) and the
evaluation search (`eval_restarts=2`).

Usage: python bench/conditional.py RUN_DIR [--data SPEC] [--repeats 7] [--json OUT]
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfdgmm import export, runs  # noqa: E402


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def centre_mask(shape):
    h, w, c = shape
    mask = np.ones(shape, np.float32)
    mask[h // 4 : h - h // 4, w // 4 : w - w // 4] = 0.0
    return mask


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir")
    p.add_argument("--data", help="data spec (default: the run's)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()

    config = runs.load_run_config(os.path.join(args.run_dir, "config.yaml"))
    model, ckpt = export.load_run_model(args.run_dir)
    splits = runs.load_data(dict(config["data"], test_limit=1), args.data)
    x = tf.constant(splits.test.dequantized(int(config["data"]["noise_seed"]))[:1], model.dtype)
    mask = tf.constant(centre_mask(model.image_shape))
    seed = tf.constant([1, 2], tf.int32)

    def condition_fn(**kwargs):
        @tf.function(autograph=False)
        def condition():
            c = model.conditional(x, mask, seed=seed, **kwargs)
            return c.mean(), c.sample(args.samples, seed=seed)

        return condition

    def estep_fn(restarts):
        @tf.function(autograph=False)
        def estep():
            return model.best_path(x, restarts=restarts, restart_passes=2, seed=seed)[1]

        return estep

    # the parts of one path's exact conditional (768 missing values): the basis images through
    # every layer, the Gram matrix W_m^T W_m (model dtype) and its float64 Cholesky factor
    m = int(np.sum(mask.numpy() == 0))
    d = int(np.prod(model.image_shape))
    basis = tf.reshape(tf.one_hot(tf.range(m + 1), d, dtype=model.dtype), [-1, *model.image_shape])
    one_path, _ = model.best_path(x, restarts=1, seed=seed)
    basis_path = tuple(tf.repeat(z, m + 1, axis=0) for z in one_path)
    w_m = tf.random.stateless_normal([m, d], seed=seed, dtype=model.dtype)
    gram = tf.cast(tf.matmul(w_m, w_m, transpose_b=True), tf.float64) + d * tf.eye(
        m, dtype=tf.float64
    )

    @tf.function(autograph=False)
    def part_push():
        return model.latent(basis, basis_path)

    @tf.function(autograph=False)
    def part_gram():
        return tf.matmul(w_m, w_m, transpose_b=True)

    @tf.function(autograph=False)
    def part_cholesky():
        return tf.linalg.cholesky(gram)

    fns = {
        "part_push_basis_all_layers": part_push,
        "part_gram": part_gram,
        "part_cholesky_float64": part_cholesky,
        "conditional": condition_fn(),  # defaults: 2 chains, 1 alternation: 4 candidates
        "conditional_1_path": condition_fn(restarts=1, iterations=0),  # the filled image's path
        "estep_1": estep_fn(1),
        "estep_2": estep_fn(2),
    }
    for f in fns.values():
        f()  # trace
    times = {k: [] for k in fns}
    for _ in range(args.repeats):
        for k, f in fns.items():
            t = time.perf_counter()
            out = f()
            tf.nest.map_structure(lambda v: v.numpy(), out)
            times[k].append(time.perf_counter() - t)
    med = {k: float(np.median(v)) for k, v in times.items()}
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=os.path.dirname(os.path.abspath(__file__)),
        ).stdout.strip()
    except OSError:
        commit = "unknown"
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores",
        "commit": commit,
        "run_dir": args.run_dir,
        "checkpoint": ckpt,
        "num_missing": int(np.sum(mask.numpy() == 0)),
        "samples": args.samples,
        "repeats": args.repeats,
        "seconds_median": med,
        "seconds_all": times,
        "ratio_conditional_to_estep_1": med["conditional"] / med["estep_1"],
        "ratio_conditional_to_estep_2": med["conditional"] / med["estep_2"],
        "ratio_conditional_1_path_to_estep_1": med["conditional_1_path"] / med["estep_1"],
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
    }
    print(json.dumps({k: v for k, v in result.items() if k != "seconds_all"}, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
