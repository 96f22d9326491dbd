"""The main job (`make main`, `python -m tfdgmm.main_job`): train a small deep GMM for a few
minutes on CPU and write its metrics and figures to `runs/main/`.

Data: CIFAR-10 through tensorflow-datasets when it is already prepared locally or the download
host answers; otherwise the local copy `../shared/data/cifar10-jpeg75` beside the repository
when present; otherwise a clear error naming `--data`. The model and protocol are in
`configs/main.yaml` (3 half-convolutions and one unshared block-diagonal layer of 4 blocks, the
first row of the paper's Table 3, on a subset of the data).

Running it again resumes the run in `runs/main/` (a finished run only recomputes its final
bounds and figures); `--fresh` starts over.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(ROOT, "configs", "main.yaml")
DEFAULT_OUT = os.path.join(ROOT, "runs", "main")
LOCAL_COPY = os.path.normpath(os.path.join(ROOT, "..", "shared", "data", "cifar10-jpeg75"))
DOWNLOAD_HOST = ("www.cs.toronto.edu", 443)  # where tfds downloads CIFAR-10 from


def _host_reachable(address, timeout=5.0):
    try:
        with socket.create_connection(address, timeout=timeout):
            return True
    except OSError:
        return False


def choose_data(data_cfg, log=print):
    """The data spec to use: tfds when possible (without waiting minutes for retries on a
    machine without network), else the local copy."""
    from tfdgmm.runs import DataLoadError, load_data

    try:  # already downloaded and prepared: no network needed
        from tfdgmm.data import load_cifar10

        load_cifar10("tfds", download=False, train_limit=1, validation_limit=1, test_limit=1)
        return "tfds"
    except Exception:  # noqa: BLE001  (not prepared, or tfds unusable)
        pass
    if _host_reachable(DOWNLOAD_HOST):
        try:
            load_data(data_cfg, "tfds")
            return "tfds"
        except DataLoadError as e:
            log(f"tfds: {e}")
    else:
        log(f"tfds: cannot reach {DOWNLOAD_HOST[0]} to download CIFAR-10 (no network?)")
    if os.path.isdir(LOCAL_COPY):
        log(
            f"using the local copy {LOCAL_COPY} (see its README: a JPEG-75 copy of CIFAR-10, "
            "so scores are higher than on the original images)"
        )
        return LOCAL_COPY
    raise DataLoadError(
        "no CIFAR-10: tensorflow-datasets cannot download it here and the local copy "
        f"{LOCAL_COPY} does not exist. Run `tfdgmm train --config {DEFAULT_CONFIG} --data PATH "
        f"--out {DEFAULT_OUT}` with PATH a directory holding train.npz + test.npz or the "
        "official CIFAR-10 batches."
    )


def main(argv=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    p = argparse.ArgumentParser(
        prog="python -m tfdgmm.main_job", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.add_argument("--out", default=DEFAULT_OUT)
    p.add_argument("--data", help="data spec (default: tfds, else the local copy)")
    p.add_argument("--fresh", action="store_true", help="delete the previous run first")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)

    from tfdgmm import runs

    runs.quiet_tensorflow()
    start = time.monotonic()
    config = runs.load_run_config(args.config, args.set)
    try:
        spec = args.data or choose_data(config["data"])
    except runs.DataLoadError as e:
        print(f"main job: error: {e}", file=sys.stderr)
        return 2
    if args.fresh and os.path.isdir(args.out):
        shutil.rmtree(args.out)
    resume = os.path.isdir(os.path.join(args.out, runs.layout.CHECKPOINTS))
    if resume:
        print(f"main job: resuming the run in {args.out} (--fresh to start over)", flush=True)
    argv_record = ["python", "-m", "tfdgmm.main_job"] + list(sys.argv[1:] if argv is None else argv)
    metrics = runs.train_run(config, args.out, data_spec=spec, resume=resume, argv=argv_record)
    splits = metrics["splits"]
    print(f"\nmain job done in {time.monotonic() - start:.0f} s. Outputs in {args.out}:")
    lay = runs.layout
    for name in (
        lay.METRICS,
        os.path.join(lay.FIGURES, "samples.png"),
        os.path.join(lay.FIGURES, "filters.png"),
        lay.LOG,
        lay.TENSORBOARD + "/",
    ):
        print(f"  {os.path.join(args.out, name)}")
    print(f"  (tensorboard --logdir {os.path.join(args.out, lay.TENSORBOARD)})")
    for name, r in splits.items():
        print(
            f"  {name:10s} lower bound {r['lower_bound_nats']:8.1f} nats/image = "
            f"{r['lower_bound_bits_per_dim']:.3f} bits/dim"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
