"""Throughput of the bijectors (not a test). Usage: python bench/bijectors.py [--quick]

Forward + log-det and inverse + log-det throughput on an 8x8x48 patch tensor
(and the "kernel floor": the fastest single TF kernels doing the same nominal
FLOPs, a ceiling for any TF implementation of the layer):
* BlockDiagonal, 64 locations of 48x48:
  - shared blocks: selection='sample', K=4, one 48x48 block per location and
    alternative (per-location parameters), one choice per sample;
  - unshared blocks: selection='location', K=4 blocks shared by all
    locations, one choice per sample and location;
  - batch form: K=1, choice=None (the plain layer).
* HalfConvolution 5x5, 24 -> 24 channels, K=1.

Nominal flops: 2*B*L*d*d for BD (L=64, d=48), 2*B*Hp*Wp*k*k*24*24 for HC;
reported as achieved GFLOP/s, as a fraction of a plain 2048x2048 float32
matmul measured in the same run, and (BD) as the speed ratio to the
`tf.linalg.LinearOperatorBlockDiag` route with the same parameters. Best of
several repeats (the machine is shared).
"""

import argparse
import os
import platform
import subprocess
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfdgmm.bijectors import (  # noqa: E402
    BlockDiagonal,
    HalfConvolution,
    _bank,  # noqa: E402
)

HP = WP = 8
L = HP * WP
D = 48
K = 4


def best_time(fn, *args, repeats=7, min_time=0.2):
    """Best per-call seconds over `repeats` runs of >= min_time each."""
    out = fn(*args)  # trace + warm up
    tf.nest.map_structure(lambda t: t.numpy(), out)
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            out = fn(*args)
        tf.nest.map_structure(lambda t: t.numpy(), out)
        dt = time.perf_counter() - t0
        if dt >= min_time:
            break
        n *= 2
    best = dt / n
    for _ in range(repeats - 1):
        t0 = time.perf_counter()
        for _ in range(n):
            out = fn(*args)
        tf.nest.map_structure(lambda t: t.numpy(), out)
        best = min(best, (time.perf_counter() - t0) / n)
    return best


def matmul_gflops(repeats):
    a = tf.random.normal([2048, 2048])
    b = tf.random.normal([2048, 2048])
    f = tf.function(lambda a, b: tf.matmul(a, b))
    t = best_time(f, a, b, repeats=repeats)
    return 2 * 2048**3 / t / 1e9


# ----------------------------------------------------------------------------
# The LinearOperatorBlockDiag route (same LU parameters, composed per call).
# ----------------------------------------------------------------------------


def lo_route(b, direction):
    """A straightforward implementation with tf.linalg.LinearOperatorBlockDiag."""
    k = b.num_alternatives

    def ops():
        if direction == "inverse":
            w = b.matrix()
        else:
            w = _bank.lu_matrix_inverse(
                tf.convert_to_tensor(b.lower_upper), tf.convert_to_tensor(b.permutation)
            )
        blocks = []
        for j in range(k):
            wj = w[j] if b.spatial_shape is not None else tf.tile(w[j][None, None], [HP, WP, 1, 1])
            wj = tf.reshape(wj, [L, D, D])
            blocks.append(
                tf.linalg.LinearOperatorBlockDiag(
                    [tf.linalg.LinearOperatorFullMatrix(wj[i]) for i in range(L)],
                    is_non_singular=True,
                )
            )
        return blocks

    shift = tf.convert_to_tensor(b.shift)
    if b.spatial_shape is None:
        shift = tf.tile(shift, [1, L])
    shift = tf.reshape(shift, [k, L * D])

    def ldj(c):
        t = b.inverse_log_det_table([HP, WP, D])
        v = _bank.reduce_table(t, c, b.selection, tf.zeros([tf.shape(c)[0], HP, WP, D]))
        return v if direction == "inverse" else -v

    def apply(op, j, xf):
        if direction == "inverse":
            return op.matvec(xf - shift[j])
        return op.matvec(xf) + shift[j]

    if b.selection == "sample":

        def f(x, c):
            xf = tf.reshape(x, [-1, L * D])
            o = ops()
            y = _bank.partition_apply(xf, c, k, lambda j, xj: apply(o[j], j, xj))
            return tf.reshape(y, tf.shape(x)), ldj(c)
    else:

        def f(x, c):
            xf = tf.reshape(x, [-1, L * D])
            o = ops()
            ys = tf.stack([tf.reshape(apply(o[j], j, xf), [-1, HP, WP, D]) for j in range(k)], 3)
            return tf.gather(ys, c, axis=3, batch_dims=3), ldj(c)

    return f


def kernel_floor(batch, repeats):
    """The fastest single TF kernels doing exactly the BD layer's nominal FLOPs.

    Any TensorFlow implementation of the layer needs at least this work at this
    shape (B samples x 64 locations, 48 x 48 blocks): the best of these times is
    a ceiling on the "of matmul" fraction that the layer itself can reach.
    """
    x_lmajor = tf.random.normal([L, batch, D])  # already locations-major
    w = tf.random.normal([L, D, D])
    x_flat = tf.random.normal([batch * L, D])
    w_one = tf.random.normal([D, D])
    kernels = {
        "batched matmul [64,B,48]x[64,48,48]": (tf.function(lambda a: tf.matmul(a, w)), x_lmajor),
        "same, XLA (jit_compile)": (
            tf.function(lambda a: tf.matmul(a, w), jit_compile=True),
            x_lmajor,
        ),
        "one GEMM [64B,48]x[48,48] (no per-location blocks)": (
            tf.function(lambda a: tf.matmul(a, w_one)),
            x_flat,
        ),
    }
    return {name: best_time(f, a, repeats=repeats) for name, (f, a) in kernels.items()}


def composition_time(b, repeats):
    """Per-call parameter work of `inverse`: composing W = P L U for every block."""
    f = tf.function(
        lambda: _bank.lu_density_params(
            tf.convert_to_tensor(b.lower_upper),
            tf.convert_to_tensor(b.permutation),
            tf.convert_to_tensor(b.shift),
        )
    )
    return best_time(f, repeats=repeats)


def ours(b, direction, with_choice=True):
    m = getattr(b, direction)
    ld = getattr(
        b,
        direction.replace("inverse", "inverse_log_det_jacobian").replace(
            "forward", "forward_log_det_jacobian"
        ),
    )
    if with_choice:
        return lambda x, c: (m(x, choice=c), ld(x, choice=c))
    return lambda x, c: (m(x), ld(x, event_ndims=3))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--batches", default="100,1000")
    args = ap.parse_args()
    repeats = 3 if args.quick else 7
    rng = np.random.default_rng(0)
    cpu = "unknown"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M')} | nproc {nproc} | {cpu} | "
        f"TF {tf.__version__} | python {platform.python_version()}"
    )
    ref = matmul_gflops(repeats)
    print(f"# reference: 2048x2048 float32 matmul {ref:.1f} GFLOP/s")

    layers = {
        "BD shared (sample, K=4, per-loc)": BlockDiagonal.new(D, K, (HP, WP), "sample", seed=0),
        "BD unshared (location, K=4)": BlockDiagonal.new(D, K, None, "location", seed=0),
        "BD batch form (K=1, per-loc)": BlockDiagonal.new(D, 1, (HP, WP), "sample", seed=0),
        "HC 5x5 24->24 (K=1)": HalfConvolution.new(D, 5, 1, seed=0),
    }
    lines = []
    for name, b in layers.items():
        if name.startswith("BD"):
            t = composition_time(b, repeats)
            msg = (
                f"parameter work per call, {name}: {t * 1e3:.3f} ms (compose "
                f"{b.num_alternatives * (L if b.spatial_shape else 1)} blocks W = P L U)"
            )
            lines.append(msg)
            print(msg, flush=True)
    for batch in [int(s) for s in args.batches.split(",")]:
        x = tf.constant(rng.standard_normal([batch, HP, WP, D]), tf.float32)
        flops = 2 * batch * L * D * D
        for name, t in kernel_floor(batch, repeats).items():
            gf = flops / t / 1e9
            msg = (
                f"B={batch:5d} floor: {name:50s} {t * 1e3:8.3f} ms {gf:6.1f} GFLOP/s = "
                f"{gf / ref:.2f} of matmul"
            )
            lines.append(msg)
            print(msg, flush=True)
        for name, b in layers.items():
            is_bd = name.startswith("BD")
            batch_form = "batch form" in name
            if b.selection == "sample":
                c = tf.constant(rng.integers(0, b.num_alternatives, [batch]), tf.int32)
            else:
                c = tf.constant(rng.integers(0, b.num_alternatives, [batch, HP, WP]), tf.int32)
            flops = 2 * batch * L * D * D if is_bd else 2 * batch * L * 25 * 24 * 24
            for direction in ("inverse", "forward"):
                spec = [
                    tf.TensorSpec([None, HP, WP, D]),
                    tf.TensorSpec([None] + c.shape.as_list()[1:], tf.int32),
                ]
                f = tf.function(ours(b, direction, not batch_form), input_signature=spec)
                t = best_time(f, x, c, repeats=repeats)
                gf = flops / t / 1e9
                msg = (
                    f"B={batch:5d} {name:34s} {direction:7s}: {t * 1e3:8.3f} ms "
                    f"{gf:6.1f} GFLOP/s = {gf / ref:.2f} of matmul"
                )
                if is_bd:
                    g = tf.function(lo_route(b, direction), input_signature=spec)
                    t_lo = best_time(g, x, c, repeats=repeats)
                    y_ours = f(x, c)[0]
                    y_lo = g(x, c)[0]
                    err = float(tf.reduce_max(tf.abs(y_ours - y_lo)))
                    msg += (
                        f" | {t_lo / t:5.1f}x faster than LinearOperatorBlockDiag"
                        f" (max|diff| {err:.1e})"
                    )
                lines.append(msg)
                print(msg, flush=True)
    ref_after = matmul_gflops(repeats)
    lines.append(
        f"reference matmul: {ref:.1f} GFLOP/s before, {ref_after:.1f} after "
        "(fractions use the value before)"
    )
    print("\n# summary")
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
