"""Convergence benchmark: the validation lower bound against updates and wall-clock time.

Usage: python bench/convergence.py [--data ../shared/data/cifar10-jpeg75] [--updates 20000]
           [--eval-every 1000] [--configs table1_hc3 table1_hc0] [--modes kfac optimizer]
           [--train-limit N] [--validation-limit N] [--out bench/results/convergence.json]

Trains the single-path models of the paper's Table 1 (`configs/<name>.yaml`, the paper's
protocol: 40,000 training images, Adam on minibatches of 100, learning rate 1e-3 with a 500-update
warm-up and the last 4,000 updates at a tenth) for `--updates` updates in one M-step (the paper's
first M-step has 50,000), exactly as `tfdgmm train` does (`EMTrainer`, data-dependent init), once
per `--modes` entry:

* `kfac`: the default, half-convolution kernels take K-FAC steps
  (`training.hc_optimizer: kfac`, `tfdgmm.training.preconditioning`);
* `optimizer`: the behaviour before 2026-11-30, Adam on every variable.

Every `--eval-every` updates (at the first chunk boundary past it) the mean lower bound on the
validation split (all 10,000 images by default; exact for a single-path model) is recorded with
the update count and the training wall-clock time so far (evaluation time excluded). The
closed-form full-covariance Gaussian is fitted on the same training images in the same run: the
line to beat. Writes `--out` (JSON, the format of issue 12) and a PNG of the curves beside it.
"""

from __future__ import annotations

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

import tensorflow as tf  # noqa: E402

import tfdgmm  # noqa: E402
from tfdgmm.gaussian import run_gaussian_baseline  # noqa: E402
from tfdgmm.runs import load_data, load_run_config  # noqa: E402
from tfdgmm.training import EMTrainer  # noqa: E402
from tfdgmm.training.init import initialize_from_data  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, TF {tf.__version__}"


def commit() -> str:
    try:
        return subprocess.check_output(
            ["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], text=True
        ).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def validation_bound(model, x, batch=1000):
    """Mean `log p(x)` of a single-path model (its lower bound is exact)."""
    if model.num_paths != 1:
        raise ValueError("bench/convergence.py evaluates single-path models only")
    total = 0.0
    for i in range(0, len(x), batch):
        xb = x[i : i + batch]
        path = tuple(tf.zeros([len(xb), *shape], tf.int32) for _, shape in model.layer_specs)
        total += float(tf.reduce_sum(tf.cast(model.joint_log_prob(xb, path), tf.float64)))
    return total / len(x)


def run_one(name, mode, splits, x_train, x_val, args):
    cfg = load_run_config(
        os.path.join(ROOT, "configs", f"{name}.yaml"),
        [
            "training.em_iterations=1",
            f"training.updates_first={args.updates}",
            "training.early_stopping_patience=0",
            f"training.max_chunk={args.eval_every}",
            "training.checkpoint_interval_seconds=1000000000",
            "training.progress_interval_seconds=60",
            f"training.hc_optimizer={mode}",
            *args.overrides,
        ],
    )
    model = tfdgmm.DeepGMM.from_config(cfg["model"])
    record = {
        "name": name,
        "mode": mode,
        "overrides": list(args.overrides),
        "commit": commit(),
        "updates": [0],
        "validation_nats": [],
        "wall_seconds": [0.0],
    }
    clock = {"start": None, "eval": 0.0, "last": 0}

    def evaluate():
        t0 = time.monotonic()
        v = validation_bound(model, x_val)
        clock["eval"] += time.monotonic() - t0
        return v

    def hook(trainer, event, info):
        if event != "mstep":
            return
        u = info["update"]
        if u // args.eval_every > clock["last"] // args.eval_every or u == info["updates"]:
            clock["last"] = u
            wall = time.monotonic() - clock["start"] - clock["eval"]
            v = evaluate()
            record["updates"].append(u)
            record["validation_nats"].append(v)
            record["wall_seconds"].append(wall)
            print(
                f"  {name} [{mode}] update {u}: validation {v:.1f} nats ({wall:.0f} s)", flush=True
            )

    # the start: the trainer's own data-dependent init (fit() repeats it, deterministically)
    tc = cfg["training"]
    initialize_from_data(
        model, x_train[: tc["data_init_images"]], identity_below=tc["data_init_identity"]
    )
    record["validation_nats"].append(evaluate())
    clock["eval"] = 0.0
    print(f"  {name} [{mode}] start: validation {record['validation_nats'][0]:.1f}", flush=True)
    with tempfile.TemporaryDirectory() as out:
        trainer = EMTrainer(
            model, cfg["training"], x_train, None, out, hooks=[hook], log=lambda s: None
        )
        clock["start"] = time.monotonic()
        trainer.fit()
        record["rollbacks"] = int(trainer.state.rollbacks.numpy())
        record["total_wall_seconds"] = time.monotonic() - clock["start"] - clock["eval"]
    return record


def plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for run in result["runs"]:
        extra = "".join(f", {o.split('.', 1)[-1]}" for o in run.get("overrides", []))
        label = f"{run['name']} ({run['mode']}{extra}, {run['rollbacks']} rollbacks)"
        axes[0].plot(run["updates"], run["validation_nats"], marker=".", label=label)
        axes[1].plot(run["wall_seconds"], run["validation_nats"], marker=".", label=label)
    g = result["gaussian_validation_nats"]
    for ax, xl in zip(axes, ("updates (minibatches of 100)", "training wall-clock (s)")):
        ax.axhline(g, color="k", ls="--", label=f"full-covariance Gaussian {g:.1f}")
        ax.set_xlabel(xl)
        ax.set_ylabel("validation lower bound (nats/image)")
        ax.grid(alpha=0.3)
    lo = min(min(r["validation_nats"]) for r in result["runs"])
    for ax in axes:
        ax.set_ylim(max(lo, g - 1400), g + 60)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(
        f"Convergence on CIFAR-10 ({result['train_images']} training, "
        f"{result['validation_images']} validation images), {result['date']}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "cifar10-jpeg75"))
    p.add_argument("--updates", type=int, default=20_000)
    p.add_argument("--eval-every", type=int, default=1000)
    p.add_argument("--configs", nargs="+", default=["table1_hc3", "table1_hc0"])
    p.add_argument("--modes", nargs="+", default=["kfac", "optimizer"])
    p.add_argument("--train-limit", type=int, default=None)
    p.add_argument("--validation-limit", type=int, default=None)
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        help="config override for every run (e.g. training.hc_learning_rate=0.1)",
    )
    p.add_argument(
        "--merge",
        action="store_true",
        help="add the runs to an existing --out (same data) instead of replacing it",
    )
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "convergence.json"))
    args = p.parse_args(argv)

    data_cfg = load_run_config(os.path.join(ROOT, "configs", f"{args.configs[0]}.yaml"))["data"]
    data_cfg.update(
        train_limit=args.train_limit, validation_limit=args.validation_limit, test_limit=1
    )
    splits = load_data(data_cfg, args.data)
    x_train = splits.train.dequantized(0)
    x_val = splits.validation.dequantized(0)
    print(f"data: {splits.describe()}", flush=True)
    gauss = run_gaussian_baseline(splits)
    g_val = gauss["splits"]["validation"]["nats"]
    print(f"full-covariance Gaussian: validation {g_val:.1f} nats", flush=True)
    result = {
        "gaussian_validation_nats": g_val,
        "gaussian_train_nats": gauss["splits"]["train"]["nats"],
        "train_images": len(x_train),
        "validation_images": len(x_val),
        "updates_budget": args.updates,
        "runs": [],
        "date": datetime.date.today().isoformat(),
        "commit": commit(),
        "machine": machine(),
    }
    if args.merge and os.path.exists(args.out):
        with open(args.out) as f:
            result["runs"] = json.load(f)["runs"]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    for name in args.configs:
        for mode in args.modes:
            if mode != args.modes[0] and not any(
                layer.get("type") == "half_convolution"
                for layer in load_run_config(os.path.join(ROOT, "configs", f"{name}.yaml"))[
                    "model"
                ]["layers"]
            ):
                continue  # no half-convolution: every mode is the same run
            result["runs"].append(run_one(name, mode, splits, x_train, x_val, args))
            with open(args.out, "w") as f:  # after every run: a stopped benchmark keeps its runs
                json.dump(result, f, indent=1)
            plot(result, os.path.splitext(args.out)[0] + ".png")
    print(
        json.dumps(
            {
                r["name"] + "/" + r["mode"]: (r["validation_nats"][-1], r["rollbacks"])
                for r in result["runs"]
            }
        )
    )


if __name__ == "__main__":
    sys.exit(main())
