"""tf.distribute benchmark: M-step updates/s on 1 vs 2 replicas, per-step FLOPs and all-reduce
volume, and an estimate for 8 GPUs and 4 hosts.

Usage: python bench/distribute.py [--configs table1_hc3 table3_intermediate_L3]
                                  [--updates 10] [--repeats 3] [--append]

The measurement runs in a child process whose CPU is split into 2 logical devices (that must
happen before TensorFlow starts). For each architecture (the `model:` section of
`configs/NAME.yaml`, 32x32x3, random data on [-1, 1]: speed does not depend on the values), it
times exactly the trainer's M-step graph (`tf.while_loop` over minibatches of 100, Adam):

* `1 device`: the default single-device path (no strategy);
* `mirrored x1`: `MirroredStrategy` over one logical CPU (the strategy's overhead alone);
* `mirrored x2`: `MirroredStrategy` over 2 logical CPUs (each replica takes 50 of the 100).

FLOPs per update are *measured* from the graph of one replica-free update (loss and gradient
for 100 images) with TensorFlow's profiler (`float_operation`: ops with registered FLOP
statistics: matmuls, batched matmuls, convolutions, elementwise; the optimizer's few FLOPs per
parameter are added). The all-reduce volume per update is the trainable parameter count x 4
bytes (float32 gradients, summed once per update). Prints a Markdown section; `--append`
appends it to BENCHMARKS.md.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child(names, updates, repeats):
    from tfdgmm.training import distribute

    distribute.configure_cpu_devices(2)
    import numpy as np
    import tensorflow as tf

    import tfdgmm
    from tfdgmm.runs import load_run_config
    from tfdgmm.training import EMConfig, EMTrainer

    cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    out = {"cpu_count": os.cpu_count(), "tensorflow": tf.__version__, "models": {}}
    rng = np.random.default_rng(0)
    # one strategy object per device set for the whole process: two MirroredStrategy objects
    # over the same CPUs reuse collective instance keys (measured: "Shape mismatch in the
    # collective instance 100" when a second strategy's all-reduce ran)
    strategies = [
        ("1 device", None),
        ("mirrored x1", distribute.make_strategy("mirrored", cpus[:1])),
        ("mirrored x2", distribute.make_strategy("mirrored", cpus)),
    ]
    for name in names:
        arch = load_run_config(os.path.join(ROOT, "configs", f"{name}.yaml"))["model"]
        x = rng.uniform(-1, 1, [1000, *arch["image_shape"]]).astype(np.float32)
        cfg = EMConfig(
            em_iterations=1,
            updates_first=10**6,
            batch_size=100,
            estep_batch_size=500,
            progress_interval_seconds=1e9,
            seed=0,
        )
        rec = {}
        for label, strategy in strategies:
            with distribute.scope(strategy):
                model = tfdgmm.DeepGMM.from_config(arch)
            trainer = EMTrainer(
                model, cfg, x, None, tempfile.mkdtemp(), strategy=strategy, log=lambda s: None
            )
            fn = trainer._build_mstep() if strategy is None else trainer._build_distributed_mstep()
            args = (tf.constant(10**6, tf.int64), tf.constant(0, tf.int64))
            fn(tf.constant(2, tf.int64), *args)  # trace and warm up
            best = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                done, ok, _ = fn(tf.constant(updates, tf.int64), *args)
                int(done)
                best = min(best, time.perf_counter() - t0)
            rec[label] = updates / best
            if strategy is None:
                rec["num_parameters"] = int(sum(np.prod(v.shape) for v in trainer.variables))
                rec["flops"] = update_flops(
                    model, trainer.variables, x[:100], trainer.train_search.path()
                )
                rec["num_ops"] = rec["flops"].pop("num_ops")
            print(f"{name} {label}: {rec[label]:.2f} updates/s", file=sys.stderr, flush=True)
        out["models"][name] = rec
    print("RESULT " + json.dumps(out))


def update_flops(model, variables, x, paths):
    """Profiler FLOPs of one loss-and-gradient evaluation on 100 images (static shapes)."""
    import tensorflow as tf

    paths = tuple(p[:100] for p in paths)

    @tf.function
    def step(x, paths):
        with tf.GradientTape() as tape:
            loss = -tf.reduce_mean(model.joint_log_prob(x, paths))
        return loss, tape.gradient(loss, variables)

    graph = step.get_concrete_function(tf.constant(x), paths).graph
    opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    prof = tf.compat.v1.profiler.profile(graph, options=opts)
    return {"profiled": int(prof.total_float_ops), "num_ops": len(graph.get_operations())}


def estimate(rec):
    """Seconds per update on 8 GPUs (one host) and on 4 hosts x 1 GPU, from the measured
    FLOPs and bytes (see the assumptions printed with it)."""
    flops = rec["flops"]["profiled"] + 10 * rec["num_parameters"]  # + Adam
    nbytes = 4 * rec["num_parameters"]
    ops = rec["num_ops"]
    gpu_eff = 5e12  # effective FLOP/s of one GPU on these small batched GEMMs/convs
    launch = 8e-6  # seconds per kernel launch (a step is launch bound when tiny)
    out = {}
    for label, r, bw, lat in [
        ("8 GPUs, NVLink", 8, 100e9, 10e-6),
        ("8 GPUs, PCIe", 8, 10e9, 20e-6),
        ("4 hosts x 1 GPU, 25 GbE", 4, 2.5e9, 50e-6),
        ("4 hosts x 1 GPU, 10 GbE", 4, 1.1e9, 50e-6),
    ]:
        t1 = max(flops / gpu_eff, ops * launch)
        compute = max(flops / r / gpu_eff, ops * launch)
        comm = 2 * (r - 1) / r * nbytes / bw + 2 * (r - 1) * lat
        out[label] = {
            "replicas": r,
            "t1_ms": 1e3 * t1,
            "compute_ms": 1e3 * compute,
            "allreduce_ms": 1e3 * comm,
            "speedup": t1 / (compute + comm),
        }
    return out


def markdown(res, updates, repeats):
    lines = [
        f"## Multi-replica M-step (`bench/distribute.py`), {datetime.date.today().isoformat()}",
        "",
        f"Machine: {platform.machine()}, {res['cpu_count']} CPU cores (shared with other "
        f"jobs), TensorFlow {res['tensorflow']}; the CPU split into 2 logical devices. "
        f"Best of {repeats} timings of {updates} updates (minibatch 100, Adam) after a "
        "warm-up; 2 replicas take 50 images each of the same minibatch and all-reduce "
        "the gradients.",
        "",
        "| architecture | parameters | all-reduce / update | FLOPs / update (measured) "
        "| graph ops | 1 device | mirrored x1 | mirrored x2 | x2 vs 1 device |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in res["models"].items():
        lines.append(
            f"| {name} | {r['num_parameters']:,} | {4 * r['num_parameters'] / 1e6:.2f} MB | "
            f"{r['flops']['profiled'] / 1e9:.2f} GFLOP | {r['num_ops']:,} | "
            f"{r['1 device']:.2f}/s | {r['mirrored x1']:.2f}/s | {r['mirrored x2']:.2f}/s | "
            f"{r['mirrored x2'] / r['1 device']:.2f}x |"
        )
    lines += [
        "",
        "Estimate for GPUs (not measured here: no GPU on this machine). Assumptions: "
        "5 TFLOP/s effective per GPU on these small batched GEMMs and convolutions "
        "(~1/3 of a V100/A100-class fp32 peak), 8 us per kernel launch (a step cannot "
        "be faster than its op count x launch time), ring all-reduce of the float32 "
        "gradients (2 (R-1)/R x bytes / bandwidth + 2 (R-1) x latency) with NVLink "
        "100 GB/s, PCIe 10 GB/s, 25 GbE 2.5 GB/s, 10 GbE 1.1 GB/s, latencies 10-50 us; "
        "global minibatch kept at 100 (8 replicas need a batch divisible by 8, e.g. 96 or "
        "104; every replica then takes 12-13 images).",
        "",
        "| architecture | setup | 1 GPU ms/update | compute ms (R) | all-reduce ms | speedup |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for name, r in res["models"].items():
        for label, e in estimate(r).items():
            lines.append(
                f"| {name} | {label} | {e['t1_ms']:.2f} | {e['compute_ms']:.2f} | "
                f"{e['allreduce_ms']:.2f} | {e['speedup']:.2f}x |"
            )
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--configs", nargs="+", default=["table1_hc3", "table3_intermediate_L3"])
    p.add_argument("--updates", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--append", action="store_true")
    p.add_argument("--child", action="store_true")
    a = p.parse_args()
    if a.child:
        return child(a.configs, a.updates, a.repeats)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="-1")
    env.pop("TF_CONFIG", None)
    proc = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            "--updates",
            str(a.updates),
            "--repeats",
            str(a.repeats),
            "--configs",
            *a.configs,
        ],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    res = json.loads(
        next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:]
    )
    text = markdown(res, a.updates, a.repeats)
    print(text)
    if a.append:
        with open(os.path.join(ROOT, "BENCHMARKS.md"), "a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
