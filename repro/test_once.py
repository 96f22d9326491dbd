"""Choose the model with the best validation lower bound over all runs, then score it on the test
split, once (the paper's Table 4).

    python repro/test_once.py [--runs runs/repro]

Candidates: every `RUN/metrics.json` and `RUN/gated/metrics.json`. The test bounds come from
`tfdgmm evaluate RUN --split test` (the run's `data.test_limit` images, a fresh search); the
choice and the result go to `RUNS/test-selection.json`.
"""

import argparse
import glob
import json
import os
import sys

from tfdgmm import runs


def candidates(root):
    for path in sorted(
        glob.glob(os.path.join(root, "*", "metrics.json"))
        + glob.glob(os.path.join(root, "*", "gated", "metrics.json"))
    ):
        with open(path) as f:
            m = json.load(f)
        v = m.get("splits", {}).get("validation")
        if v is not None:
            yield os.path.dirname(path), v["lower_bound_nats"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs/repro")
    args = ap.parse_args(argv)
    out_path = os.path.join(args.runs, "test-selection.json")
    if os.path.exists(out_path):
        print(f"{out_path} exists: the test split was already used; not touching it again")
        return 0
    ranked = sorted(candidates(args.runs), key=lambda c: -c[1])
    if not ranked:
        raise SystemExit(f"no finished runs under {args.runs}")
    for run, v in ranked:
        print(f"  validation LB {v:9.2f}  {run}")
    run, v = ranked[0]
    print(f"best on validation: {run} ({v:.2f} nats); evaluating on the test split")
    result = runs.evaluate_run(run, split="test")
    test = result["splits"]["test"]
    with open(out_path, "w") as f:
        json.dump(
            {
                "run": os.path.relpath(run, args.runs),
                "validation_lower_bound": v,
                "candidates": [[os.path.relpath(r, args.runs), x] for r, x in ranked],
                "test": test,
            },
            f,
            indent=1,
        )
    print(f"test: LB {test['lower_bound_nats']:.2f} nats on {test['num_images']} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
