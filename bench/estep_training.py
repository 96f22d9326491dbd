"""E-step settings compared in training (issue 15): whole runs, not single E-steps.

`bench/estep.py` times one E-step from one stored state. This script answers the question that
single states cannot: over a whole run (first E-step from the initialisation, the stale second
E-step after the long first M-step, the late ones after), what does each E-step setting cost in
M-step updates of its own run, and how good a model does the run end with?

Each `NAME=RUN_DIR` is a finished `tfdgmm train` run directory; the runs should differ only in
their E-step settings (`training.location_method`, `location_options`, `estep_restart_when`,
`estep_extra_passes`, `estep_extra_pass_gain`). Reported per run, from its `metrics.json`:

* per EM iteration: E-step seconds, M-step seconds and updates, the E-step in M-step updates of
  the same run (`estep_seconds / (mstep_seconds / updates)`), the mean joint the E-step found
  on the training images, and the run's own validation lower bound;
* totals over the run;

and, so that the models are compared by one yardstick rather than each by its own search, the
validation lower bound of each run's best model by **the same fresh search for every run**
(`tfdgmm.training.evaluate_bounds` from random paths with `--restarts` restarts, location
method `auto`, `{"threshold": 0.0}`, the evaluation seed of `tfdgmm evaluate`). Both are lower
bounds of their models; the fresh search can be much weaker than a run's own refined paths
(BENCHMARKS.md, 2026-12-02: 23-43 nats/image), so read the two together.

Usage: python bench/estep_training.py classic=RUNS/classic adaptive1=RUNS/adaptive1 ...
       [--restarts 2] [--reuse EARLIER.json ...] [--out bench/results/estep_training.json]

`--reuse` takes the common-search validation bounds of runs already measured (same name, run
directory, checkpoint and restarts) from earlier outputs of this script, so that runs finishing
at different times can be measured as they finish and reported together.
"""

import argparse
import datetime
import json
import os
import platform
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from estep import cpu_name, git_commit  # noqa: E402

from tfdgmm.runs.commands import run_model  # noqa: E402
from tfdgmm.runs.data import bpd_fn, dequantized, load_data  # noqa: E402
from tfdgmm.training import EVAL_SEED_OFFSET, EMConfig, evaluate_bounds  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEARCH_KEYS = (
    "location_method",
    "location_options",
    "estep_restarts",
    "estep_restart_when",
    "estep_extra_passes",
    "estep_extra_pass_gain",
)


def earlier_common(paths, name, run_dir, ckpt, restarts):
    for path in paths:
        with open(path) as f:
            earlier = json.load(f)
        for r in earlier["runs"]:
            same = (r["name"], r["run_dir"], r["checkpoint"]) == (
                name,
                os.path.abspath(run_dir),
                ckpt,
            )
            if same and earlier["restarts"] == restarts:
                return r["common_validation"]
    return None


def run_record(name, run_dir, restarts, reuse=()):
    with open(os.path.join(run_dir, "metrics.json")) as f:
        metrics = json.load(f)
    iterations = []
    for h in metrics["history"]:
        per_update = h["mstep_seconds"] / max(h["updates"], 1)
        iterations.append(
            {
                "iteration": h["iteration"],
                "estep_seconds": h["estep_seconds"],
                "estep_lower_bound": h["estep_lower_bound"],
                "mstep_seconds": h["mstep_seconds"],
                "updates": h["updates"],
                "estep_in_mstep_updates": h["estep_seconds"] / per_update,
                "validation_lower_bound": h.get("validation_lower_bound"),
            }
        )
    e = sum(i["estep_seconds"] for i in iterations)
    m = sum(i["mstep_seconds"] for i in iterations)
    u = sum(i["updates"] for i in iterations)
    config, model, ckpt = run_model(run_dir)
    em = EMConfig.from_dict(config["training"])
    common = earlier_common(reuse, name, run_dir, ckpt, restarts)
    if common is None:
        common = common_validation(name, config, model, em, restarts)
    return {
        "name": name,
        "run_dir": os.path.abspath(run_dir),
        "search": {k: config["training"][k] for k in SEARCH_KEYS},
        "checkpoint": ckpt,
        "best_em_iteration": metrics["best_em_iteration"],
        "iterations": iterations,
        "total_estep_seconds": e,
        "total_mstep_seconds": m,
        "total_updates": u,
        "estep_in_mstep_updates": e / (m / max(u, 1)),
        "own_validation_lower_bound": metrics["splits"]["validation"]["lower_bound_nats"],
        "common_validation": common,
    }


def common_validation(name, config, model, em, restarts):
    val = load_data(config["data"]).validation
    return evaluate_bounds(
        model,
        dequantized(val, config["data"]),
        batch_size=em.estep_batch_size,
        restarts=restarts,
        location_method="auto",
        location_options={"threshold": 0.0},
        seed=em.seed + EVAL_SEED_OFFSET,
        nats_to_bpd=bpd_fn(val.num_dims),
        log=print,
        label=f"{name} validation",
    )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", metavar="NAME=RUN_DIR")
    p.add_argument("--restarts", type=int, default=2)
    p.add_argument("--reuse", nargs="*", default=[], metavar="EARLIER.json")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "estep_training.json"))
    args = p.parse_args(argv)
    records = []
    for spec in args.runs:
        name, sep, run_dir = spec.partition("=")
        if not sep:
            p.error(f"expected NAME=RUN_DIR, got {spec!r}")
        r = run_record(name, run_dir, args.restarts, args.reuse)
        records.append(r)
        print(
            f"{name}: E-steps {r['total_estep_seconds']:.0f} s = "
            f"{r['estep_in_mstep_updates']:.0f} M-step updates over {r['total_updates']} updates; "
            f"validation LB own {r['own_validation_lower_bound']:.2f}, common "
            f"{r['common_validation']['lower_bound_nats']:.2f} nats"
        )
    base = records[0]
    for r in records:
        r["estep_speedup_vs_first"] = base["estep_in_mstep_updates"] / r["estep_in_mstep_updates"]
        r["common_validation_minus_first"] = (
            r["common_validation"]["lower_bound_nats"]
            - base["common_validation"]["lower_bound_nats"]
        )
    out = {
        "runs": records,
        "restarts": args.restarts,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, {platform.python_version()}",
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
