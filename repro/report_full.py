"""Write the first section of REPRODUCTION.md, "The paper at its own budget" (issue 18), from the
full-budget runs of `bash repro/full.sh`.

    python repro/report_full.py [--results repro/results/full] [--out REPRODUCTION.md]

Reads what `bash repro/full.sh collect` copies into `repro/results/full/` (so it runs on a clean
clone): every `NAME/metrics.json` (and `NAME/gated/metrics.json`, `NAME/exact-subset.json`),
`NAME/train.log` for the M-step curves, `gaussian/baseline.json` and `test-selection.json`. It
writes one PNG per table into `docs/reproduction/full/` and replaces the block between the
`full-budget` markers in REPRODUCTION.md (inserting it after the title the first time); the
1%-budget sections below it (`repro/report.py`) are left as they are. The reading
(`repro/reading_full.md`, written by hand) goes at the top of the block.
"""

import argparse
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from report import PAPER_T1, PAPER_T2, PAPER_T3, bpd, dur, fmt, load, table  # noqa: E402

BEGIN, END = "<!-- full-budget:begin -->", "<!-- full-budget:end -->"
PAPER_GAUSSIAN = {"train": 5237, "validation": 4989, "test": 4893}

TABLE1 = [(f"table1_hc{k}", f"{k} HC + 1 BD", PAPER_T1[k]) for k in range(5)]
TABLE2 = [
    (f"table2_L{n}_K{k}", f"{n} x {k}", PAPER_T2[(n, k)])
    for n, k in ((1, 4), (2, 4), (3, 4), (4, 4), (8, 4), (1, 32))
]
TABLE3 = [
    ("table3_bottom_L3", "bottom HC only, 3 layers", PAPER_T3[("bottom", 3)]),
    ("table3_intermediate_L2", "+ intermediate HC, 2 layers", PAPER_T3[("intermediate", 2)]),
    ("table3_intermediate_L3", "+ intermediate HC, 3 layers", PAPER_T3[("intermediate", 3)]),
    ("table3_gating_L2/gated", "+ gating networks, 2 layers", PAPER_T3[("gating", 2)]),
    ("table3_gating_L3/gated", "+ gating networks, 3 layers", PAPER_T3[("gating", 3)]),
]

PROGRESS = re.compile(r"^\[EM (\d+)/\d+\] M-step (\d+)/(\d+) \(\d+%\), loss (-?[\d.]+) nats/image")
STOP = re.compile(r"^(early stopping: .*)$")


class Results:
    """The collected results of the full-budget runs (`repro/results/full/`)."""

    def __init__(self, root):
        self.root = root
        self.gaussian = load(os.path.join(root, "gaussian", "baseline.json"))

    def metrics(self, name):
        return load(os.path.join(self.root, name, "metrics.json"))

    def log(self, name):
        path = os.path.join(self.root, name.split("/")[0], "train.log")
        if not os.path.exists(path):
            return []
        with open(path) as f:
            return f.read().splitlines()

    def g(self, split):
        return None if self.gaussian is None else self.gaussian["splits"][split]["nats"]


def lb(m, split):
    if m is None or split not in m.get("splits", {}):
        return None
    return m["splits"][split]["lower_bound_nats"]


def ub(m, split):
    if m is None or split not in m.get("splits", {}):
        return None
    return m["splits"][split].get("upper_bound_nats")


def total_updates(m):
    return sum(r.get("updates", 0) for r in m["history"])


def stop_reason(results, name, m):
    """Why EM ended: the trainer's early-stopping line, or the iteration budget."""
    for line in results.log(name):
        hit = STOP.match(line)
        if hit:
            text = hit.group(1)
            if "per 1,000" in text:
                return "converged (< 5 nats per 1,000 updates)"
            if "patience" in text or "without" in text:
                return "no better validation bound (patience)"
            return text.removeprefix("early stopping: ")
    if m["em_iterations_run"] >= m["config"]["training"]["em_iterations"]:
        return "all EM iterations"
    return "-"


def curves(results, name, m):
    """((updates, -loss) M-step progress points, (updates, validation LB) per EM iteration)."""
    offsets, total = {}, 0
    for r in m["history"]:
        offsets[r["iteration"]] = total
        total += r.get("updates", 0)
    train = []
    for line in results.log(name):
        hit = PROGRESS.match(line)
        if hit:
            it, u = int(hit.group(1)), int(hit.group(2))
            if it in offsets:
                train.append((offsets[it] + u, -float(hit.group(4))))
    train.sort()
    valid, total = [], 0
    for r in m["history"]:
        total += r.get("updates", 0)
        if "validation_lower_bound" in r:
            valid.append((total, r["validation_lower_bound"]))
    return train, valid


def binned(points, width):
    """Means of (x, y) points in bins of `width` along x (the minibatch bound is noisy)."""
    bins = {}
    for x, y in points:
        bins.setdefault(int(x // width), []).append(y)
    keys = sorted(bins)
    return [(k + 0.5) * width for k in keys], [sum(bins[k]) / len(bins[k]) for k in keys]


def plot_table(results, rows, title, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.8))
    lows = []
    for i, (name, label, _paper) in enumerate(rows):
        m = results.metrics(name)
        if m is None:
            continue
        color = f"C{i}"
        train, valid = curves(results, name.split("/")[0], m)
        if train:
            xs, ys = binned(train, width=2500)
            ax.plot(xs, ys, color=color, alpha=0.45, lw=1.2)
        if valid:
            xs, ys = zip(*valid)
            ax.plot(xs, ys, "o-", color=color, label=f"{label}: {fmt(lb(m, 'validation'))}")
            lows.append(min(ys))
    g = results.g("validation")
    if g is not None:
        ax.axhline(g, color="k", ls="--", lw=1, label=f"full-covariance Gaussian: {g:,.1f}")
        lows.append(g)
    if lows:
        ax.set_ylim(min(lows) - 150, None)
    ax.set_xlabel("M-step updates (minibatches of 100)")
    ax.set_ylabel("nats per image")
    ax.set_title(
        f"{title}\nmarkers: validation lower bound after each EM iteration; "
        "faint: training minibatch bound (means of 2,500 updates)",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def row_for(results, name, label, paper):
    m = results.metrics(name)
    paper_lb = paper[0] if isinstance(paper, tuple) else paper
    paper_gap = f"{paper_lb - PAPER_GAUSSIAN['validation']:+,d}"
    if m is None:
        return [label, f"{paper_lb:,}", paper_gap, "not finished", "", "", "", "", "", "", ""]
    g = results.g("validation")
    v = lb(m, "validation")
    if name.endswith("/gated"):
        parent = results.metrics(name.split("/")[0])
        updates = f"{total_updates(parent):,} + gating" if parent else "-"
        em = (
            f"{parent['em_iterations_run']} (best {parent['best_em_iteration']})" if parent else "-"
        )
        wall = dur(parent["wall_time_seconds"]["training_total"]) if parent else "-"
        reason = "gating fitted after EM"
    else:
        updates = f"{total_updates(m):,}"
        em = f"{m['em_iterations_run']} (best {m['best_em_iteration']})"
        wall = dur(m["wall_time_seconds"]["training_total"])
        reason = stop_reason(results, name, m)
    u = ub(m, "validation")
    return [
        label,
        f"{paper_lb:,}",
        paper_gap,
        f"{fmt(v)} ({bpd(v):.3f})",
        "-" if g is None else f"{v - g:+,.1f}",
        fmt(u) if u is not None and abs(u - v) > 0.05 else "=",
        fmt(lb(m, "train")),
        em,
        updates,
        wall,
        f"{reason}; {m.get('rollbacks', 0)} rollbacks" if "rollbacks" in m else reason,
    ]


HEADER = [
    "model",
    "paper validation LB",
    "paper - Gaussian",
    "ours validation LB (bits/dim)",
    "ours - Gaussian",
    "ours validation UB*",
    "ours train LB",
    "EM iterations",
    "updates",
    "wall time",
    "budget ended by",
]


def section(results, figures_dir, reading):
    rel = os.path.relpath(figures_dir, ROOT)
    g = {s: results.g(s) for s in ("train", "validation", "test")}
    parts = [
        "## The paper at its own budget (issue 18)",
        "",
        "Generated by `python repro/report_full.py` from `repro/results/full/` (what `bash "
        "repro/full.sh collect` keeps of the runs of `bash repro/full.sh lane_a` and `lane_b`); "
        "the reading is `repro/reading_full.md`, by hand. Every run: the full config "
        "(`configs/NAME.yaml`, the paper's schedule: up to 20 EM iterations, 50,000 updates in "
        "the first M-step and 7,500 in each later one, minibatches of 100, learning rate 1e-3 with "
        "a warm-up, cosine decay within and x0.85 across M-steps), all 40,000 training images, "
        "the full 10,000-image validation split for model choice and early stopping (after 3 EM "
        "iterations without a better validation bound, or an iteration that gains less than 5 "
        "nats/image per 1,000 updates; the best iteration's model is kept), the test split "
        "untouched until Table 4. Data: `cifar10-jpeg75`. Machine: 2 cores, no GPU; two lanes "
        "side by side, one core each (wall times are one core's, at times shared).",
        "",
        reading.strip(),
        "",
        "**The same-data Gaussian** (closed form, full covariance, fitted on the 40,000 training "
        f"images: `repro/results/full/gaussian/baseline.json`): train {fmt(g['train'])}, "
        f"validation {fmt(g['validation'])}, test {fmt(g['test'])} nats/image (paper, on the "
        "original CIFAR-10: 5,237 / 4,989 / 4,893). Gaps below are to it, ours and the "
        "paper's to its own Gaussian.",
    ]
    for title, rows, fig in (
        ("Table 1: k half-convolutions + 1 block-diagonal layer (single path)", TABLE1, "table1"),
        ("Table 2: 3 HC + layers x transforms of shared block-diagonal layers", TABLE2, "table2"),
        (
            "Table 3: unshared block-diagonal layers (4 blocks, 4^64 choices per layer)",
            TABLE3,
            "table3",
        ),
    ):
        if not any(results.metrics(n) for n, _, _ in rows):
            parts += ["", f"### {title}", "", "No run has finished yet."]
            continue
        path = os.path.join(figures_dir, f"{fig}.png")
        plot_table(results, rows, title, path)
        parts += [
            "",
            f"### {title}",
            "",
            table(HEADER, [row_for(results, *r) for r in rows]),
            "",
            f"![{title}]({rel}/{fig}.png)",
        ]
    parts += ["", section_table4(results), "", section_exact(results)]
    return "\n".join(parts)


def section_table4(results):
    sel = load(os.path.join(results.root, "test-selection.json"))
    if sel is None:
        return (
            "### Table 4: the test split\n\nNot yet touched: it is scored once, with the best "
            "validation model, when every run has finished (`bash repro/full.sh final`)."
        )
    test, g = sel["test"], results.g("test")
    v = sel["validation_lower_bound"]
    rows = [
        ["full-covariance Gaussian", "4,893", fmt(g), "-"],
        [
            f"deep GMM (`{sel['run']}`)",
            "6,384 (+1,491)",
            f"{fmt(test['lower_bound_nats'])} ({test['lower_bound_nats'] - g:+,.1f})",
            f"{fmt(v)} ({v - results.g('validation'):+,.1f})",
        ],
    ]
    return "### Table 4: the test split, once\n\n" + table(
        ["model", "paper test", "ours test (- Gaussian)", "ours validation (- Gaussian)"], rows
    )


def section_exact(results):
    rows = []
    g = load(os.path.join(results.root, "gaussian-exact-subset.json"))
    if g:
        rows.append(["full-covariance Gaussian", fmt(g["jpeg75"]), fmt(g["exact"])])
    for name, label, _ in TABLE1 + TABLE2 + TABLE3:
        e = load(os.path.join(results.root, name, "exact-subset.json"))
        if e:
            rows.append(
                [label, fmt(e["jpeg75"]["lower_bound_nats"]), fmt(e["exact"]["lower_bound_nats"])]
            )
    head = "### Exact pixels (`cifar10-exact-subset`)\n\n"
    if len(rows) <= 1:
        return head + "Scored when the runs have finished (`bash repro/full.sh final`)."
    return (
        head
        + (
            "The first 1,017 validation images with exact pixels and the same images of the JPEG "
            "copy, same dequantization noise, same search (`python repro/exact_subset.py`).\n\n"
        )
        + table(["model", "LB on the JPEG copy", "LB on exact pixels"], rows)
    )


def splice(old_text, block):
    """`old_text` with the full-budget block replaced (or inserted after the title)."""
    block = f"{BEGIN}\n{block.strip()}\n{END}"
    if BEGIN in old_text and END in old_text:
        head, rest = old_text.split(BEGIN, 1)
        return head + block + rest.split(END, 1)[1]
    lines = old_text.split("\n\n")
    return "\n\n".join(lines[:2] + [block] + lines[2:])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=os.path.join(HERE, "results", "full"))
    ap.add_argument("--out", default=os.path.join(ROOT, "REPRODUCTION.md"))
    ap.add_argument("--figures", default=os.path.join(ROOT, "docs", "reproduction", "full"))
    args = ap.parse_args(argv)
    results = Results(args.results)
    reading_path = os.path.join(HERE, "reading_full.md")
    reading = open(reading_path).read() if os.path.exists(reading_path) else ""
    block = section(results, args.figures, reading)
    old = open(args.out).read() if os.path.exists(args.out) else ""
    with open(args.out, "w") as f:
        f.write(splice(old, block))
    print(f"wrote the full-budget section of {args.out}")


if __name__ == "__main__":
    main()
