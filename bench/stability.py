"""Stability sweep: divergence rollbacks in the first 2,000 updates of every `_cpu` config.

Usage: python bench/stability.py [--data ../shared/data/cifar10-jpeg75] [--configs NAME ...]
           [--lane I --lanes N] [--set training.hc_optimizer=optimizer]
           [--out bench/results/stability.json]

Each config (`configs/*_cpu.yaml`, the paper's architectures at the CPU-sized protocol: 4,000
training images, a first M-step of 1,500 updates and later ones of 500) is trained exactly as
`tfdgmm train` trains it (`EMTrainer`, data-dependent init, the config's own schedule), for its
first two EM iterations: E-step, 1,500 updates, E-step, 500 updates, i.e. its first 2,000
updates (validation bounds are skipped: they do not change the training). Recorded per config:
rollbacks, the training lower bound after the first E-step (the start), after each M-step, and
the wall time. Gating configs train the same deep GMM as their `intermediate` twins (their gating
networks are fitted after EM, by Adam on fixed paths, without rollbacks), so they are run too but
are the same EM.

`--lane I --lanes N` runs every N-th config from the I-th (two lanes on two cores). Results are
merged into `--out` by config name (and `--set` overrides), so lanes and reruns add up.
"""

from __future__ import annotations

import argparse
import fcntl
import glob
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tfdgmm  # noqa: E402
from tfdgmm.runs import load_data, load_run_config  # noqa: E402
from tfdgmm.training import EMTrainer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from convergence import commit, machine  # noqa: E402


def _first_estep_bound(lines):
    """The first E-step's training lower bound, from the trainer's log line."""
    for line in lines:
        if "E-step done: training lower bound" in line:
            return float(line.split("training lower bound")[1].split()[0])
    return None


def run_config(name, data_spec, overrides):
    cfg = load_run_config(
        os.path.join(ROOT, "configs", f"{name}.yaml"),
        ["training.em_iterations=2", "training.early_stopping_patience=0", *overrides],
    )
    splits = load_data(dict(cfg["data"], validation_limit=1, test_limit=1), data_spec)
    model = tfdgmm.DeepGMM.from_config(cfg["model"])
    lines = []
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as out:
        trainer = EMTrainer(
            model, cfg["training"], splits.train.dequantized(0), None, out, log=lines.append
        )
        gave_up = None
        try:
            history = trainer.fit()
        except FloatingPointError as err:  # the trainer gave up after max_rollbacks
            gave_up = str(err)
            history = json.loads(trainer.state.history.numpy().decode())
        rollbacks = int(trainer.state.rollbacks.numpy())
    if gave_up is not None:
        return {
            "config": name,
            "overrides": list(overrides),
            "rollbacks": rollbacks,
            "gave_up": gave_up,
            "updates": sum(r["updates"] for r in history),
            "start_train_lower_bound": _first_estep_bound(lines),
            "train_lower_bound": [r["train_lower_bound"] for r in history],
            "rollback_messages": [line for line in lines if "rolled back" in line],
            "seconds": time.monotonic() - start,
        }
    return {
        "config": name,
        "overrides": list(overrides),
        "rollbacks": rollbacks,
        "updates": sum(r["updates"] for r in history),
        "start_train_lower_bound": history[0]["estep_lower_bound"],
        "train_lower_bound": [r["train_lower_bound"] for r in history],
        "rollback_messages": [line for line in lines if "rolled back" in line],
        "seconds": time.monotonic() - start,
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "cifar10-jpeg75"))
    p.add_argument("--configs", nargs="*", default=None)
    p.add_argument("--lane", type=int, default=0)
    p.add_argument("--lanes", type=int, default=1)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "stability.json"))
    args = p.parse_args(argv)
    names = args.configs or sorted(
        os.path.basename(f)[:-5] for f in glob.glob(os.path.join(ROOT, "configs", "*_cpu.yaml"))
    )
    names = names[args.lane :: args.lanes]
    for name in names:
        record = run_config(name, args.data, args.overrides)
        record.update(commit=commit(), machine=machine())
        if "gave_up" in record:
            print(f"{name}: gave up after {record['rollbacks']} rollbacks", flush=True)
        print(
            f"{name}: {record['rollbacks']} rollbacks, train LB "
            f"{record['start_train_lower_bound']:.1f} -> "
            f"{', '.join(f'{v:.1f}' for v in record['train_lower_bound'])} "
            f"({record['seconds']:.0f} s)",
            flush=True,
        )
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out + ".lock", "w") as lock:  # lanes merge one at a time
            fcntl.flock(lock, fcntl.LOCK_EX)
            results = {}
            if os.path.exists(args.out):
                with open(args.out) as f:
                    results = json.load(f)
            results[name + "".join(f" {o}" for o in args.overrides)] = record
            tmp = args.out + f".tmp{os.getpid()}"
            with open(tmp, "w") as f:
                json.dump(results, f, indent=1, sort_keys=True)
            os.replace(tmp, args.out)


if __name__ == "__main__":
    sys.exit(main())
