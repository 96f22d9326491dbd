"""EM-step benchmark: images per second of the trainer's M-step and E-step graphs.

Usage: python bench/em_steps.py [--updates 30] [--estep-images 1000] [--repeats 3] [--jit]
                                [--configs table1_hc3 table3_intermediate_L3] [--append]

Runs exactly the graphs `EMTrainer` runs (the M-step `tf.while_loop` over minibatches of 100
with Adam, and `DatasetSearch.run`, the E-step over batches: 1 pass from the stored paths plus
1 random restart of 2 passes) on 32x32x3 inputs (random data on [-1, 1]: the speed does not
depend on the values), for the Table-1 architecture (3 HC + BD) and the Table-3 architecture
of the paper's best model (3 HC, then 3 unshared BD layers of 4 blocks with 3 HC between them;
the gating prior is left out). Best of `--repeats` timings after a warm-up call.

Throughput is also given as a fraction of the float32 matmul rate measured in the same run
(a 2048x2048 `tf.matmul`), with *nominal* FLOPs per image:

* one network evaluation (density direction) = sum over layers of `2*Hp*Wp*kh*kw*Dc*Du` per
  half-convolution, `2*Hp*Wp*d*d` per block-diagonal layer (one block per location applied),
  `2*n*n` per dense layer (diagonal layers are negligible);
* M-step = 3 evaluations per image (forward, and the backward pass's two products);
* E-step = 1 evaluation per image and pass (3 passes): a floor on the work of the search, which
  evaluates many candidates per pass, so this fraction understates the hardware use.

Prints a Markdown section; `--append` appends it to BENCHMARKS.md.
"""

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfdgmm  # noqa: E402
from tfdgmm.runs import load_run_config  # noqa: E402
from tfdgmm.training import EMConfig, EMTrainer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = {
    "table1_hc3": "Table 1: 3 HC + BD (1 path)",
    "table3_intermediate_L3": "Table 3 best: 3 HC + 3 x unshared BD(4), HC between",
}


def matmul_gflops(n=2048, repeats=5):
    a = tf.random.normal([n, n])
    b = tf.random.normal([n, n])
    f = tf.function(lambda a, b: tf.matmul(a, b))
    f(a, b).numpy()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(4):
            c = f(a, b)
        c.numpy()
        best = min(best, (time.perf_counter() - t0) / 4)
    return 2 * n**3 / best / 1e9


def nominal_flops_per_evaluation(model):
    """Nominal multiply-add FLOPs of one pass through the layers (see module docstring)."""
    hp, wp, d = model.patch_shape
    total = 0
    for spec in model.get_config()["layers"]:
        kind = spec["type"]
        if kind == "half_convolution":
            k = spec["kernel_size"]
            du = d // 2
            total += 2 * hp * wp * k * k * (d - du) * du
        elif kind == "block_diagonal":
            total += 2 * hp * wp * d * d
        elif kind == "dense":
            n = hp * wp * d
            total += 2 * n * n
    return total


def best_of(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def paired(fn, work, repeats):
    """Time `fn` (doing `work` FLOPs) right after a matmul reference, `repeats` times; the
    machine is shared, so the ratio is taken within each pair and the best pair is kept.
    Returns `(best seconds of fn, best fraction of the matmul rate, matmul GFLOP/s of that
    pair)`."""
    best_t, best_frac, ref_at = float("inf"), 0.0, None
    for _ in range(repeats):
        ref = matmul_gflops(repeats=2)
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best_t = min(best_t, dt)
        frac = work / dt / 1e9 / ref
        if frac > best_frac:
            best_frac, ref_at = frac, ref
    return best_t, best_frac, ref_at


def bench_config(name, updates, estep_images, repeats, jit):
    cfg = load_run_config(os.path.join(ROOT, "configs", f"{name}.yaml"))
    model = tfdgmm.DeepGMM.from_config(cfg["model"])
    rng = np.random.default_rng(0)
    n = max(estep_images, 1000)
    x = rng.uniform(-1, 1, size=(n, 32, 32, 3)).astype(np.float32)
    em = EMConfig.from_dict(cfg["training"]).replace(
        jit_compile=jit, estep_batch_size=min(500, estep_images), progress_interval_seconds=1e9
    )
    with tempfile.TemporaryDirectory() as out:
        trainer = EMTrainer(model, em, x, None, out, log=lambda s: None)
        mstep = trainer._build_mstep()
        args = (
            tf.constant(updates, tf.int64),
            tf.constant(10**9, tf.int64),
            tf.constant(0, tf.int64),
        )
        t0 = time.perf_counter()
        mstep(tf.constant(1, tf.int64), *args[1:])[0].numpy()  # trace + warm up
        trace_m = time.perf_counter() - t0
        flops = nominal_flops_per_evaluation(model)
        m_sec, m_frac, m_ref = paired(
            lambda: mstep(*args)[0].numpy(), 3 * flops * updates * trainer.batch_size, repeats
        )
        m_rate = updates * trainer.batch_size / m_sec

        search = trainer.train_search
        batches = estep_images // search.batch_size
        passes = em.estep_init_passes + em.estep_restarts * em.estep_restart_passes
        extra = {"mstep_fraction": m_frac, "mstep_ref": m_ref}
        if jit:  # XLA only changes the M-step; the E-step row is the same as without it
            return _row(
                name, model, em, m_rate, None, trace_m, None, search.batch_size, jit, **extra
            )

        def estep():
            search.reset()
            search.run(step=0, max_batches=batches)

        t0 = time.perf_counter()
        search.reset()
        search.run(step=0, max_batches=1)  # trace + warm up
        trace_e = time.perf_counter() - t0
        e_sec, e_frac, e_ref = paired(estep, passes * flops * batches * search.batch_size, repeats)
        e_rate = batches * search.batch_size / e_sec
    return _row(
        name,
        model,
        em,
        m_rate,
        e_rate,
        trace_m,
        trace_e,
        search.batch_size,
        jit,
        estep_fraction=e_frac,
        estep_ref=e_ref,
        **extra,
    )


def _row(name, model, em, m_rate, e_rate, trace_m, trace_e, estep_batch, jit, **extra):
    flops = nominal_flops_per_evaluation(model)
    passes = em.estep_init_passes + em.estep_restarts * em.estep_restart_passes
    return {
        "name": name,
        "parameters": model.num_parameters(),
        "log10_paths": model.log_num_paths / np.log(10),
        "flops": flops,
        "mstep_rate": m_rate,
        "estep_rate": e_rate,
        "mstep_gflops": m_rate * 3 * flops / 1e9,
        "estep_gflops": None if e_rate is None else e_rate * passes * flops / 1e9,
        "trace_m": trace_m,
        "trace_e": trace_e,
        "passes": passes,
        "estep_batch": estep_batch,
        "jit": jit,
        **extra,
    }


def git_commit():
    try:
        return subprocess.check_output(
            ["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], text=True
        ).strip()
    except Exception:  # noqa: BLE001
        return "unknown"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=list(NAMES))
    p.add_argument("--updates", type=int, default=30)
    p.add_argument("--estep-images", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--jit",
        action="store_true",
        help="also time the M-step with XLA (jit_compile=True; the E-step is not "
        "compiled, so it is not timed again)",
    )
    p.add_argument(
        "--jit-configs",
        nargs="+",
        help="with --jit: only these configs (XLA's CPU compile of the Table-3 "
        "M-step failed with 'LLVM ERROR: Unable to allocate section memory' "
        "and aborted the whole run on the 2-core development machine)",
    )
    p.add_argument("--append", action="store_true", help="append the section to BENCHMARKS.md")
    args = p.parse_args(argv)

    ref_before = matmul_gflops()
    rows = []
    for name in args.configs:
        with_jit = args.jit and (not args.jit_configs or name in args.jit_configs)
        for jit in [False, True] if with_jit else [False]:
            try:
                rows.append(bench_config(name, args.updates, args.estep_images, args.repeats, jit))
            except Exception as e:  # noqa: BLE001  (XLA may not compile some graphs)
                rows.append(
                    {
                        "name": name,
                        "jit": jit,
                        "error": f"{type(e).__name__}: {str(e).splitlines()[0][:120]}",
                    }
                )
            print(rows[-1], file=sys.stderr, flush=True)
    ref_after = matmul_gflops()
    load = os.getloadavg()
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "",
        "## EM steps (`bench/em_steps.py`)",
        "",
        f"Run: `.venv/bin/python bench/em_steps.py"
        f"{' --jit' if args.jit else ''}"
        f"{' --jit-configs ' + ' '.join(args.jit_configs) if args.jit_configs else ''}` "
        f"({args.updates} M-step updates of 100 images, E-step on {args.estep_images} images; "
        f"best of {args.repeats}). Not a test.",
        "",
        f"* **Date:** {now}, commit `{git_commit()}`.",
        f"* **Machine:** `nproc` = {os.cpu_count()}, {platform.processor() or platform.machine()}"
        f", no GPU; load average during the run {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} "
        "(the machine is shared with other engineers' jobs).",
        f"* **Software:** TensorFlow {tf.__version__}, Python {platform.python_version()}, "
        "float32.",
        f"* **Reference matmul** (2048x2048 float32): {ref_before:.1f} GFLOP/s before the "
        f"run, {ref_after:.1f} after. Each timing of an EM step follows its own matmul "
        "measurement and the fraction is taken within that pair (best pair shown, with its "
        "matmul rate), so load changes during the run do not skew it.",
        "",
        "| architecture | XLA | params | log10 paths | MFLOP/eval | M-step img/s | M-step of "
        "matmul (matmul GFLOP/s) | E-step img/s | E-step of matmul, floor (matmul GFLOP/s) "
        "| trace M / E (s) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        label = NAMES.get(r["name"], r["name"])
        if "error" in r:
            lines.append(
                f"| {label} | {'yes' if r['jit'] else 'no'} | failed: {r['error']} | | | | | | | |"
            )
            continue
        e_cols = (
            "(not compiled) | | "
            if r["estep_rate"] is None
            else f"{r['estep_rate']:.1f} | {r['estep_fraction']:.3f} ({r['estep_ref']:.0f}) | "
        )
        trace_e = "-" if r["trace_e"] is None else f"{r['trace_e']:.0f}"
        lines.append(
            f"| {label} | {'yes' if r['jit'] else 'no'} | {r['parameters']:,} | "
            f"{r['log10_paths']:.1f} | {r['flops'] / 1e6:.2f} | {r['mstep_rate']:.0f} | "
            f"{r['mstep_fraction']:.2f} ({r['mstep_ref']:.0f}) | "
            + e_cols
            + f"{r['trace_m']:.0f} / {trace_e} |"
        )
    lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.append:
        with open(os.path.join(ROOT, "BENCHMARKS.md"), "a") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
