"""Crash trials for the run-directory guarantees (issue 14): not part of the unit suite.

```none
python bench/faults.py [--trials 20] [--data ../shared/data/cifar10-jpeg75] [--work /tmp/faults]
```

1. A reference run: `tfdgmm train` of `configs/tiny.yaml` (made smaller with `--set`) to the end.
2. Each trial trains the same command into its own directory, is killed with SIGKILL at a random
   moment (seeded), and is resumed with `--resume` (killed again at random up to `--kills`
   times) until it finishes. The trial's final model (`best/`) is compared with the reference,
   tensor by tensor, and so are its final bounds (`metrics.json`).
3. The concurrent case: a second `train --resume` into a directory that a running process owns
   must be refused in one line (exit code 2), and the first must finish untouched.

Prints one JSON line per trial and a summary (`RESULT {...}`); see RELIABILITY.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "tiny.yaml")
DATA = os.path.normpath(os.path.join(ROOT, "..", "shared", "data", "cifar10-jpeg75"))
FAST = [
    "data.train_limit=200",
    "data.validation_limit=100",
    "data.test_limit=100",
    "data.evaluate_test=false",
    "training.updates_first=120",
    "training.updates_later=60",
    "training.lr_final_updates=20",
    "training.estep_batch_size=100",
    "training.checkpoint_interval_seconds=1",
    "training.progress_interval_seconds=1",
]


def _command(out, resume, data, config):
    """The same command every time, plus `--resume` after a kill (a kill before the run
    directory was written leaves nothing to resume: `--resume` then starts afresh)."""
    cmd = [
        sys.executable,
        "-m",
        "tfdgmm",
        "train",
        "--data",
        data,
        "--out",
        out,
        "--no-figures",
        "--config",
        config,
    ]
    for item in FAST + EXTRA:
        cmd += ["--set", item]
    return cmd + (["--resume"] if resume else [])


EXTRA = []  # --set items from the command line (e.g. a learning rate that forces rollbacks)


def _env():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    return env


def _run(out, resume, data, config, kill_after=None):
    """Run one training process; kill it after `kill_after` seconds. Returns (rc, seconds)."""
    start = time.monotonic()
    with open(os.path.join(os.path.dirname(out), os.path.basename(out) + ".out"), "a") as log:
        proc = subprocess.Popen(
            _command(out, resume, data, config), stdout=log, stderr=subprocess.STDOUT, env=_env()
        )
        try:
            proc.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, time.monotonic() - start


def _tensors(run_dir):
    import tensorflow as tf

    prefix = tf.train.latest_checkpoint(os.path.join(run_dir, "best"))
    reader = tf.train.load_checkpoint(prefix)
    names = sorted(
        n
        for n in reader.get_variable_to_shape_map()
        if n.startswith("model/") and "OPTIMIZER" not in n
    )
    return {n: reader.get_tensor(n) for n in names}


def _bounds(run_dir):
    with open(os.path.join(run_dir, "metrics.json")) as f:
        splits = json.load(f)["splits"]
    return {name: r["lower_bound_nats"] for name, r in splits.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--kills", type=int, default=2, help="at most this many kills per trial")
    p.add_argument("--data", default=DATA)
    p.add_argument("--config", default=CONFIG)
    p.add_argument("--work", default="/tmp/tfdgmm-faults")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="more config overrides, e.g. training.learning_rate=0.05 (rollbacks)",
    )
    args = p.parse_args(argv)
    EXTRA[:] = args.set
    import numpy as np

    rng = random.Random(args.seed)
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)
    ref = os.path.join(args.work, "reference")
    rc, ref_seconds = _run(ref, False, args.data, args.config)
    if rc != 0:
        raise SystemExit(f"the reference run failed (rc {rc}); see {ref}.out")
    want, want_bounds = _tensors(ref), _bounds(ref)
    with open(os.path.join(ref, "metrics.json")) as f:
        ref_rollbacks = json.load(f)["rollbacks"]
    print(
        json.dumps(
            {
                "reference_seconds": round(ref_seconds, 1),
                "bounds": want_bounds,
                "rollbacks": ref_rollbacks,
            }
        ),
        flush=True,
    )

    trials = []
    for i in range(args.trials):
        out = os.path.join(args.work, f"trial-{i:02d}")
        kills, resumes, seconds, rc, first = 0, 0, 0.0, None, True
        while rc != 0:
            kill_after = rng.uniform(0.1, 1.0) * ref_seconds if kills < args.kills else None
            rc, spent = _run(out, not first, args.data, args.config, kill_after)
            seconds += spent
            if rc != 0 and kill_after is not None and rc == -signal.SIGKILL:
                kills += 1
            elif rc != 0:
                break  # a failure that is not our kill: reported below
            if not first:
                resumes += 1
            first = False
        record = {
            "trial": i,
            "kills": kills,
            "resumes": resumes,
            "rc": rc,
            "seconds": round(seconds, 1),
            "extra_seconds": round(seconds - ref_seconds, 1),
        }
        if rc == 0:
            got = _tensors(out)
            record["identical"] = got.keys() == want.keys() and all(
                np.array_equal(got[n], want[n]) for n in want
            )
            bounds = _bounds(out)
            record["max_bound_difference_nats"] = max(
                abs(bounds[k] - want_bounds[k]) for k in want_bounds
            )
        trials.append(record)
        print(json.dumps(record), flush=True)

    # the concurrent case: a second process on a run in use is refused, the first finishes
    out = os.path.join(args.work, "concurrent")
    first = subprocess.Popen(
        _command(out, False, args.data, args.config),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_env(),
    )
    deadline = time.monotonic() + 120
    while not os.path.exists(os.path.join(out, ".lock")) and time.monotonic() < deadline:
        time.sleep(0.2)
    second = subprocess.run(
        _command(out, True, args.data, args.config), capture_output=True, text=True, env=_env()
    )
    concurrent = {
        "second_rc": second.returncode,
        "second_message": second.stderr.strip().splitlines()[-1:],
        "first_rc": first.wait(),
    }
    if concurrent["first_rc"] == 0:
        concurrent["first_identical"] = all(
            np.array_equal(a, want[n]) for n, a in _tensors(out).items()
        )
    print(json.dumps({"concurrent": concurrent}), flush=True)

    done = [t for t in trials if t["rc"] == 0]
    summary = {
        "trials": len(trials),
        "resumed_to_the_end": len(done),
        "bit_identical": sum(bool(t.get("identical")) for t in done),
        "kills": sum(t["kills"] for t in trials),
        "median_extra_seconds": float(np.median([t["extra_seconds"] for t in done]))
        if done
        else None,
        "reference_seconds": round(ref_seconds, 1),
        "reference_rollbacks": ref_rollbacks,
        "overrides": FAST + EXTRA,
        "concurrent": concurrent,
    }
    print("RESULT " + json.dumps(summary), flush=True)
    return 0 if len(done) == len(trials) and summary["bit_identical"] == len(done) else 1


if __name__ == "__main__":
    sys.exit(main())
