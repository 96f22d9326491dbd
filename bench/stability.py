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

A config whose `model`, `training` and `data` sections equal an earlier config's (the gating
configs of Table 3 against their `intermediate` twins: their `gating:` block with
`between_steps: 0` acts after EM, and this script never reads it) trains exactly the same EM, so
it is not run twice: its row shows the twin's run, named. The check is on the loaded configs, so
a gating config that ever trains differently is run again.

`--report` prints the BENCHMARKS.md table from `--out`: per config, its learning rate now and the
newest run at that rate (the rate a run had is read from its record, or else from the config at
the run's commit plus its `--set` overrides).
"""

from __future__ import annotations

import argparse
import fcntl
import glob
import json
import os
import subprocess
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


def em_sections(name: str, overrides=(), commit_id: str | None = None) -> dict:
    """The sections of config `name` that decide its EM: model, training, data (at `commit_id`)."""
    path = os.path.join(ROOT, "configs", f"{name}.yaml")
    if commit_id is not None:  # the config as it was at that commit
        text = subprocess.check_output(
            ["git", "-C", ROOT, "show", f"{commit_id}:configs/{name}.yaml"], text=True
        )
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            f.write(text)
        try:
            cfg = load_run_config(f.name, list(overrides))
        finally:
            os.remove(f.name)
    else:
        cfg = load_run_config(path, list(overrides))
    return {k: cfg[k] for k in ("model", "training", "data")}


def same_em_as(name: str, names: list[str], overrides=()) -> str | None:
    """The config in `names` that runs `name`'s EM for it, if another one does.

    Configs with equal `em_sections` train the same EM. Of such a group, the one that runs is
    the first by (has an enabled `gating:` block, name): the plain deep GMM, not its gated twin.
    """
    mine = em_sections(name, overrides)
    group = [other for other in names if em_sections(other, overrides) == mine]
    runner = min(group, key=lambda other: (_gated(other), other))
    return None if runner == name else runner


def _gated(name: str) -> bool:
    cfg = load_run_config(os.path.join(ROOT, "configs", f"{name}.yaml"))
    return bool(cfg.get("gating", {}).get("enabled"))


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
            "learning_rate": cfg["training"]["learning_rate"],
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
        "learning_rate": cfg["training"]["learning_rate"],
        "rollbacks": rollbacks,
        "updates": sum(r["updates"] for r in history),
        "start_train_lower_bound": history[0]["estep_lower_bound"],
        "train_lower_bound": [r["train_lower_bound"] for r in history],
        "rollback_messages": [line for line in lines if "rolled back" in line],
        "seconds": time.monotonic() - start,
    }


def all_cpu_configs() -> list[str]:
    return sorted(
        os.path.basename(f)[:-5] for f in glob.glob(os.path.join(ROOT, "configs", "*_cpu.yaml"))
    )


def _commit_time(commit_id: str) -> int:
    return int(
        subprocess.check_output(["git", "-C", ROOT, "show", "-s", "--format=%ct", commit_id])
    )


def _record_rate(record: dict) -> float:
    if "learning_rate" in record:
        return float(record["learning_rate"])
    sections = em_sections(record["config"], record["overrides"], record["commit"])
    return float(sections["training"]["learning_rate"])


def report(results: dict) -> str:
    """The BENCHMARKS.md table: every `_cpu` config, its rate now and its newest run at it."""
    names = all_cpu_configs()
    rows, ran, clean = [], 0, 0
    rows.append(
        "| config | learning rate now | run at commit | rollbacks "
        "| train LB start -> M-step 1 -> M-step 2 | seconds |"
    )
    rows.append("| --- | --- | --- | --- | --- | --- |")
    for name in names:
        rate = float(em_sections(name)["training"]["learning_rate"])
        twin = same_em_as(name, names)
        group = {name, twin or name}
        runs = [r for r in results.values() if r["config"] in group and "commit" in r]
        runs.sort(key=lambda r: _commit_time(r["commit"]))
        now = [r for r in runs if abs(_record_rate(r) - rate) <= 1e-12 * rate]
        record = (now or runs or [None])[-1]
        if record is None:
            rows.append(f"| `{name}` | {rate:g} | not run | | | |")
            continue
        at = f"`{record['commit']}`"
        if record["config"] != name:
            at += f" (as `{record['config']}`: the same EM)"
        if not now:
            at += f" at {_record_rate(record):g}"
        else:
            ran += 1
            clean += record["rollbacks"] == 0
        if "gave_up" in record:
            bounds = f"gave up after {record['updates']} updates"
        else:
            bounds = " -> ".join(
                f"{v:,.1f}"
                for v in [record["start_train_lower_bound"], *record["train_lower_bound"]]
            )
        rows.append(
            f"| `{name}` | {rate:g} | {at} | {record['rollbacks']} | {bounds} "
            f"| {record['seconds']:.0f} |"
            if record.get("seconds") is not None
            else f"| `{name}` | {rate:g} | {at} | {record['rollbacks']} | {bounds} | |"
        )
    head = (
        f"**{ran} of the {len(names)} configs have run at their current rate, "
        f"{clean} of them with 0 rollbacks.**"
    )
    return head + "\n\n" + "\n".join(rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "cifar10-jpeg75"))
    p.add_argument("--configs", nargs="*", default=None)
    p.add_argument("--lane", type=int, default=0)
    p.add_argument("--lanes", type=int, default=1)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "stability.json"))
    p.add_argument("--report", action="store_true", help="print the BENCHMARKS.md table")
    args = p.parse_args(argv)
    if args.report:
        with open(args.out) as f:
            print(report(json.load(f)))
        return 0
    everything = all_cpu_configs()
    names = (args.configs or everything)[args.lane :: args.lanes]
    for name in names:
        twin = same_em_as(name, everything, args.overrides)
        if twin is not None:
            print(f"{name}: the same EM as {twin} (see its row); not run twice", flush=True)
            continue
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
