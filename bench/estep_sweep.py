"""E-step settings sweep (issue 15): named `SEARCH_SETTINGS` entries and variants of them,
timed and scored on one trained run's stored paths, exactly as `bench/estep.py` does (the
training code path, `DatasetSearch.run`), one setting after the other in one process.

A variant is `BASE` or `BASE+{"key": value, ...}` (JSON overriding the named settings), e.g.

    python bench/estep_sweep.py RUN_DIR[@CKPT] classic adaptive \
        'adaptive+{"extra_passes": 1}' 'adaptive+{"extra_pass_gain": 50}' --images 500

Prints, per variant, images/s (best of `--repeats` after a warm-up run), the mean found joint
and its difference to the first variant's, and appends the rows to `--out` (JSON lines) if given.
"""

import argparse
import datetime
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _trained import load  # noqa: E402
from estep import git_commit, measure  # noqa: E402

from tfdgmm.path_search import SEARCH_SETTINGS  # noqa: E402


def parse_variant(spec):
    base, plus, extra = spec.partition("+")
    if base not in SEARCH_SETTINGS:
        raise SystemExit(f"unknown settings {base!r}; named ones: {sorted(SEARCH_SETTINGS)}")
    settings = dict(SEARCH_SETTINGS[base])
    if plus:
        settings.update(json.loads(extra))
    return settings


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run", metavar="RUN_DIR[@CKPT]")
    parser.add_argument("variants", nargs="+")
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
    parser.add_argument("--out", help="append the rows to this JSON-lines file")
    args = parser.parse_args()
    variants = [(v, parse_variant(v)) for v in args.variants]

    run_dir, _, ckpt = args.run.partition("@")
    _, model, _, x_all, paths_all, lower_all, ckpt = load(run_dir, ckpt or None)
    lo = min(args.skip, len(x_all))
    n = min(args.images, len(x_all) - lo)
    x, lower = x_all[lo : lo + n], lower_all[lo : lo + n]
    paths = [p[lo : lo + n].numpy() for p in paths_all]
    print(f"{run_dir} ({ckpt}), images {lo}-{lo + n - 1}, batch {args.batch}", flush=True)
    first = None
    for name, settings in variants:
        r = measure(model, x, paths, lower, args.batch, settings, args.repeats, print)
        first = r if first is None else first
        row = {
            "variant": name,
            "settings": settings,
            **r,
            "joint_minus_first": r["mean_joint_full"] - first["mean_joint_full"],
            "speed_vs_first": r["images_per_second"] / first["images_per_second"],
            "run": args.run,
            "images": n,
            "skip": lo,
            "batch": args.batch,
            "commit": git_commit(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        print(
            f"{name}: {r['images_per_second']:.1f} images/s ({row['speed_vs_first']:.2f}x), "
            f"mean joint {r['mean_joint_full']:.2f} ({row['joint_minus_first']:+.2f})",
            flush=True,
        )
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
