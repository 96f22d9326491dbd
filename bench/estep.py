"""E-step benchmark (issue 15): the search settings before issue 15 against the new defaults,
in one run, on the same trained model and the same images.

For every `--run NAME=RUN_DIR[@CHECKPOINT]` (a `tfdgmm train` run directory; the newest
checkpoint of `RUN_DIR/checkpoints/` unless one is named), the first `--images` training images
of the run (as the run saw them) are searched from the paths stored in the checkpoint (the
start of the run's next E-step), exactly as training does (`DatasetSearch.run`: a
`tf.while_loop` over batches), with

* `old`: `tfdgmm.path_search.SEARCH_SETTINGS["classic"]` (1 warm pass, 1 random restart of 2
  passes, ranked top-half steps, every block composed per layer call);
* `new`: `SEARCH_SETTINGS["adaptive1"]`, the `EMConfig` defaults since 2026-12-02 (exact Gram
  steps under one local choice layer, ranked steps at positive predicted gain evaluating the
  best-predicted other alternative, up to 2 extra passes where the last pass gained > 20
  nats);
* `adaptive`: `SEARCH_SETTINGS["adaptive"]`, the defaults of 2026-12-01 (all `K - 1` other
  alternatives at a visited location);
* `fast`: `SEARCH_SETTINGS["fast"]`, the defaults of 2026-11-30.

Reported per setting: images/s of the full schedule (best of `--repeats` timed runs after a
warm-up, so tracing is excluded), the mean joint `log pi_p + log p_p(x)` after the warm pass
alone and after the full schedule; per model the M-step rate (`EMTrainer`'s M-step graph,
minibatches of the run's `batch_size`) and the E-step's cost in M-step updates. Writes
`bench/results/estep.json` (the issue's format).

Usage: python bench/estep.py --run table3_intermediate_L3=RUNS/t3 --run table2_L4_K4=RUNS/t2
       [--images 500] [--skip 0] [--batch 250] [--repeats 1] [--mstep-updates 50] [--out FILE]

`--skip S` takes training images `S ... S + images - 1` instead of the first ones: a checkpoint
written inside an E-step holds paths searched by that E-step for its first batches and the
previous E-step's paths for the rest.
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
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from _trained import load  # noqa: E402

from tfdgmm.path_search import SEARCH_SETTINGS  # noqa: E402
from tfdgmm.training import EMTrainer  # noqa: E402
from tfdgmm.training.search import DatasetSearch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_commit():
    try:
        return subprocess.check_output(
            ["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], text=True
        ).strip()
    except Exception:  # noqa: BLE001
        return "unknown"


def search_for(model, x, paths, lower, batch, settings, restarts=None, name="search"):
    s = DatasetSearch(
        model,
        x,
        batch_size=batch,
        init_passes=1,
        name=name,
        **{**settings, **({} if restarts is None else {"restarts": restarts})},
    )
    start = [tf.constant(p) for p in paths]

    def run():
        for v, p in zip(s.paths, start):
            v.assign(p)
        s.lower.assign(lower)  # (the stored bounds: these paths were searched)
        s.reset()
        t = time.perf_counter()
        s.run(step=1)
        s.lower.numpy()
        return time.perf_counter() - t

    return s, run


def measure(model, x, paths, lower, batch, settings, repeats, log):
    n = len(x)
    full, run_full = search_for(model, x, paths, lower, batch, settings, name="full")
    t0 = time.perf_counter()
    run_full()  # trace + warm up
    log(f"    traced and ran once in {time.perf_counter() - t0:.1f} s")
    seconds = min(run_full() for _ in range(repeats))
    joint_full = float(np.mean(full.lower.numpy().astype(np.float64)))
    if settings["restarts"] == 0 or settings.get("restart_when") == "unsearched":
        joint_warm = joint_full  # (searched paths: no restart)
    else:
        warm, run_warm = search_for(
            model, x, paths, lower, batch, settings, restarts=0, name="warm"
        )
        run_warm()
        joint_warm = float(np.mean(warm.lower.numpy().astype(np.float64)))
    return {
        "images_per_second": n / seconds,
        "mean_joint_warm": joint_warm,
        "mean_joint_full": joint_full,
    }


def mstep_rate(model, em, x, paths, updates, log):
    em = em.replace(progress_interval_seconds=1e9)
    with tempfile.TemporaryDirectory() as out:
        trainer = EMTrainer(model, em, x, None, out, log=lambda s: None)
        for v, p in zip(trainer.train_search.paths, paths):
            v.assign(p)
        mstep = trainer._build_mstep()
        rest = (tf.constant(10**9, tf.int64), tf.constant(0, tf.int64))
        mstep(tf.constant(2, tf.int64), *rest)[0].numpy()  # trace + warm up
        t = time.perf_counter()
        mstep(tf.constant(updates, tf.int64), *rest)[0].numpy()
        seconds = time.perf_counter() - t
    return updates * trainer.batch_size / seconds, trainer.batch_size


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", action="append", required=True, metavar="NAME=DIR[@CKPT]")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument(
        "--skip",
        type=int,
        default=0,
        help="start at this training image (e.g. past the batches a checkpoint taken inside an "
        "E-step has searched already, for the stale paths of the E-step's start)",
    )
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--mstep-updates", type=int, default=50)
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "estep.json"))
    args = parser.parse_args()

    def log(msg):
        print(msg, flush=True)

    results = []
    for spec in args.run:
        name, _, where = spec.partition("=")
        run_dir, _, ckpt = where.partition("@")
        _, model, em, x_all, paths_all, lower_all, ckpt = load(run_dir, ckpt or None)
        lo = min(args.skip, len(x_all))
        n = min(args.images, len(x_all) - lo)
        x, lower = x_all[lo : lo + n], lower_all[lo : lo + n]
        paths = [p[lo : lo + n].numpy() for p in paths_all]
        log(f"{name}: {run_dir} ({ckpt}), images {lo}-{lo + n - 1}, batch {args.batch}")
        row = {"name": name, "images": n, "skip": lo}
        for which, key in (
            ("old", "classic"),
            ("new", "adaptive1"),
            ("adaptive", "adaptive"),
            ("fast", "fast"),
        ):
            log(f"  {which} ({key}): {SEARCH_SETTINGS[key]}")
            settings = SEARCH_SETTINGS[key]
            row[which] = measure(model, x, paths, lower, args.batch, settings, args.repeats, log)
            log(f"    {row[which]}")
        rate, batch = mstep_rate(model, em, x_all, paths_all, args.mstep_updates, log)
        row["mstep_images_per_second"] = rate
        n_train = len(x_all)
        for which in ("old", "new", "adaptive", "fast"):
            r = row[which]
            e_seconds = n_train / r["images_per_second"]
            log(
                f"  {which}: {r['images_per_second']:.1f} images/s; an E-step over the run's "
                f"{n_train} training images costs {e_seconds / (batch / rate):.0f} M-step "
                f"updates of {batch} ({rate / r['images_per_second']:.2f} M-step epochs)"
            )
        new, old = row["new"], row["old"]
        speedup = new["images_per_second"] / old["images_per_second"]
        delta = new["mean_joint_full"] - old["mean_joint_full"]
        log(f"  speed-up {speedup:.2f}x, mean joint new - old {delta:+.3f} nats/image")
        results.append(row)
    out = {
        "models": results,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git_commit(),
        "machine": f"{os.cpu_count()} cores, {cpu_name()}, TensorFlow {tf.__version__}",
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
