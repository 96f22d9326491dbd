"""How well does a search from scratch recover a trained model's bound on held-out images?

A run's validation bound comes from paths refined at every E-step of training (warm starts
across EM iterations); the test split has no stored paths, so its bound comes from a search from
scratch, which can understate the model by tens of nats/image (BENCHMARKS.md, 2026-12-02). This
scores the same validation images of one trained run several ways, all lower bounds of the same
model (the best `log pi_p + log p_p(x)` over the paths each search visited):

* `stored`: the run's stored validation paths as they are;
* `warm`: the run's own final validation search (`EMTrainer.refine`: a pass from the stored
  paths, the E-step's extra passes, `eval_restarts` random restarts of 2 passes);
* `fresh`: `evaluate_bounds` (random start + `eval_restarts` restarts): what the test split gets;
* `fresh+rounds`: then warm rounds (1 pass + the extra passes) until one gains < `--tol`;
* `restartsR+rounds`: R random restarts instead, then the rounds;
* `donorsK+rounds`: the fresh search, plus starts at the stored training paths of the K nearest
  training images (`tfdgmm.training.donor_starts`), then the rounds;
* `restartsR+donorsK+rounds`: both.

    python bench/eval_search.py RUN_DIR [--images 500] [--donors 1,4] [--restarts 8]

Appends a row to `bench/results/eval_search.json` ("runs").
"""

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(__file__))
from estep import cpu_name, git_commit  # noqa: E402

import tfdgmm  # noqa: E402
from tfdgmm.runs.config import load_run_config  # noqa: E402
from tfdgmm.runs.data import dequantized, load_data, train_images  # noqa: E402
from tfdgmm.training import EVAL_SEED_OFFSET, EMConfig, donor_starts, evaluate_bounds  # noqa: E402
from tfdgmm.training.search import DatasetSearch  # noqa: E402

OUT = os.path.join(os.path.dirname(__file__), "results", "eval_search.json")


def load(run_dir, n_val):
    """The run's latest state: `(config, model, EMConfig, training images, their stored paths,
    the first n_val validation images, their stored paths, checkpoint)`."""
    config = load_run_config(os.path.join(run_dir, "config.yaml"))
    model = tfdgmm.DeepGMM.from_config(config["model"])
    em = EMConfig.from_dict(config["training"])
    splits = load_data(config["data"])
    x_tr = train_images(splits.train, config["data"])
    x_tr = np.asarray(x_tr(0) if callable(x_tr) else x_tr, np.float32)
    x_val = np.asarray(dequantized(splits.validation, config["data"]), np.float32)
    ckpt = tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints"))
    tr = DatasetSearch(model, x_tr, batch_size=min(500, len(x_tr)), name="train_search")
    va = DatasetSearch(model, x_val, batch_size=min(500, len(x_val)), name="validation_search")
    tf.train.Checkpoint(
        model=model, train=tr.checkpoint_items(), validation=va.checkpoint_items()
    ).read(ckpt).expect_partial()
    n = min(n_val, len(x_val))
    return config, model, em, x_tr, tr.path(), x_val[:n], tuple(p[:n] for p in va.path()), ckpt


def warm_search(model, em, x, paths, seed):
    """The run's own final validation search, as `EMTrainer.refine` runs it."""
    s = DatasetSearch(
        model,
        x,
        batch_size=min(em.estep_batch_size, len(x)),
        init_passes=1,
        restarts=em.eval_restarts,
        restart_passes=em.estep_restart_passes,
        location_method=em.location_method,
        location_options=em.location_options,
        seed=seed,
        name="warm",
        restart_when="always",
        extra_passes=em.estep_extra_passes,
        extra_pass_gain=em.estep_extra_pass_gain,
    )
    for v, p in zip(s.paths, paths):
        v.assign(p)
    return s


def _ints(text):
    return [int(v) for v in text.split(",") if v]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--donors", default="1,4")
    ap.add_argument("--restarts", default="8")
    ap.add_argument("--combos", default="8:4", help="R:K pairs: R restarts and K donors")
    ap.add_argument("--tol", type=float, default=0.5)
    ap.add_argument("--max-rounds", type=int, default=8)
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args(argv)
    config, model, em, x_tr, tr_paths, x, val_paths, ckpt = load(args.run_dir, args.images)
    seed = em.seed + EVAL_SEED_OFFSET
    rows = {}

    t0 = time.monotonic()
    s = warm_search(model, em, x, val_paths, seed)
    rows["stored"] = {"mean_joint": s.score()[0], "seconds": time.monotonic() - t0}
    print(f"  stored: {rows['stored']['mean_joint']:.2f}", flush=True)
    t0 = time.monotonic()
    s.run(step=1_000_003)
    rows["warm"] = {"mean_joint": s.mean_bounds()[0], "seconds": time.monotonic() - t0}
    print(f"  warm: {rows['warm']['mean_joint']:.2f}, {rows['warm']['seconds']:.0f} s", flush=True)

    common = dict(
        batch_size=min(em.estep_batch_size, len(x)),
        location_method=em.location_method,
        location_options=em.location_options,
        seed=seed,
        round_tol=args.tol,
        extra_passes=em.estep_extra_passes,
        extra_pass_gain=em.estep_extra_pass_gain,
    )
    plans = [("fresh", em.eval_restarts, 0, 0), ("fresh+rounds", em.eval_restarts, 0, 1)]
    plans += [(f"restarts{r}+rounds", r, 0, 1) for r in _ints(args.restarts)]
    plans += [(f"donors{k}+rounds", em.eval_restarts, k, 1) for k in _ints(args.donors)]
    for combo in filter(None, args.combos.split(",")):
        r, k = map(int, combo.split(":"))
        plans.append((f"restarts{r}+donors{k}+rounds", r, k, 1))
    for name, restarts, k, with_rounds in plans:
        r = evaluate_bounds(
            model,
            x,
            restarts=restarts,
            starts=donor_starts(x, x_tr, tr_paths, k=k) if k else (),
            rounds=args.max_rounds if with_rounds else 0,
            **common,
        )
        trace = r.get("search", {}).get("trace")
        rows[name] = {"mean_joint": r["lower_bound_nats"], "seconds": r["seconds"], "trace": trace}
        print(
            f"  {name}: {r['lower_bound_nats']:.2f} nats/image, {r['seconds']:.0f} s"
            + (f", trace {[round(v, 2) for v in trace]}" if trace else ""),
            flush=True,
        )

    out = {"runs": []}
    if os.path.exists(args.out):
        with open(args.out) as f:
            out = json.load(f)
    out["runs"].append(
        {
            "run": args.run_dir,
            "checkpoint": ckpt,
            "config": config.get("description"),
            "training_images": len(x_tr),
            "images": len(x),
            "tol": args.tol,
            "methods": rows,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "commit": git_commit(),
            "machine": f"{cpu_name()}, {os.cpu_count()} cores, {platform.system()}",
        }
    )
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
