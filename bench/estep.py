"""E-step benchmark: datapoints per second of one coordinate-ascent pass on the paper's
Table-3 architecture (32x32x3, 4x4 patches, 3 HC, then 3 x (unshared BD with 4 blocks, 3 HC)),
for the vectorised search (`auto`: exact shared-Gram for the top layer, linearised for the
others) against the paper's brute force (every location tries every block by re-running the
layers above), from the same starting paths. Also reports the objective each reaches.

Usage: python bench/estep.py [--batch 100] [--brute-batch 10] [--repeats 3]
"""

import argparse
import datetime
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfdgmm  # noqa: E402
from tfdgmm import path_search  # noqa: E402

TABLE3 = {
    "image_shape": [32, 32, 3],
    "patch_size": 4,
    "layers": [{"type": "half_convolution", "kernel_size": 5, "repeat": 3}]
    + [
        {"type": "block_diagonal", "alternatives": 4, "selection": "location"},
        {"type": "half_convolution", "kernel_size": 5, "repeat": 3},
    ]
    * 3,
}


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def best_time(fn, repeats):
    fn()  # trace / warm up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--brute-batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    model = tfdgmm.DeepGMM.from_config(TABLE3, seed=1)
    rng = np.random.default_rng(0)
    for v in model.trainable_variables:  # move off the initialisation (kernels start near 0)
        v.assign_add(0.01 * rng.standard_normal(v.shape).astype(np.float32))
    x_all = model.sample(args.batch, seed=tf.constant([1, 2]))

    def make_pass(method):
        @tf.function(jit_compile=False, reduce_retracing=True)
        def one_pass(x, path, seed):
            h0 = model.patchify(x)
            new = path_search.coordinate_ascent_pass(model, h0, path, method, seed=seed)
            return new, path_search.objective(model, h0, new)

        return one_pass

    # quality: every method from the same random start on the same images (brute-force batch)
    n_q = args.brute_batch
    xq = x_all[:n_q]
    h0q = model.patchify(xq)
    start_q = path_search.random_path(model, n_q, tf.constant([3, 4]))
    before_q = path_search.objective(model, h0q, start_q)
    methods = ["auto", "linearized", "brute_force"]
    results = {}
    for method in methods:
        fn = make_pass(method)
        # throughput at the full batch (brute force: only the small batch is affordable)
        n = n_q if method == "brute_force" else args.batch
        x = x_all[:n]
        start = path_search.random_path(model, n, tf.constant([3, 4]))
        out = {}

        def run(fn=fn, x=x, start=start, out=out):
            out["path"], out["score"] = fn(x, start, tf.constant([5, 6]))
            out["score"].numpy()

        t = best_time(run, 1 if method == "brute_force" else args.repeats)
        _, score_q = fn(xq, start_q, tf.constant([5, 6]))
        gain = float(tf.reduce_mean(score_q - before_q))
        results[method] = (n / t, t, gain, n)

    print(
        f"# E-step benchmark, {datetime.date.today()}, {os.cpu_count()} cores, {cpu_name()}, "
        f"TensorFlow {tf.__version__}"
    )
    print(
        f"model: Table-3 (3 unshared BD layers x 4 blocks, 12 HC), {model.num_parameters():,}"
        f" parameters, 4^{64 * 3} paths; one pass from a random start"
    )
    brute_gain = results["brute_force"][2]
    for name, (ips, t, gain, n) in results.items():
        print(
            f"{name:12s} batch {n:4d}: {t:8.3f} s/pass, {ips:8.2f} images/s, "
            f"objective gain on the {n_q} shared images {gain:8.1f} nats "
            f"({100 * gain / brute_gain:5.1f}% of brute force)"
        )
    for name in methods[:-1]:
        print(
            f"speed-up of {name} over brute force: "
            f"{results[name][0] / results['brute_force'][0]:.1f}x"
        )


if __name__ == "__main__":
    main()
