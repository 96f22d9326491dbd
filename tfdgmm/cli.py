"""The `tfdgmm` command line: argparse and dispatch; the work is in `tfdgmm.runs`.

```none
tfdgmm train --config FILE [--data SPEC] --out DIR [--resume] [--set KEY=VALUE ...]
tfdgmm evaluate RUN_DIR [--split validation|test|train|all] [--data SPEC] [--restarts N]
                [--donors K] [--rounds R]
tfdgmm sample RUN_DIR [--n 64] [--seed 0] [--out PNG]
tfdgmm baseline [--data SPEC] [--out DIR] [--noise-seed 0] [--jitter J]
tfdgmm export RUN_DIR OUT_DIR [--which best|latest] [--restarts 2] [--restart-passes 2]
              [--seed A B] [--overwrite]
tfdgmm inpaint RUN_DIR [--mask center|left|right|top|bottom|random:P|FILE] [--n 16]
               [--images 4] [--data SPEC] [--split test] [--seed 0] [--out PNG]
tfdgmm score RUN_DIR [--data SPEC|PNG_DIR|NPZ] [--split test] [--limit N] [--out CSV]
tfdgmm tune --config FILE --max-trials N [--tuner random|bayesian|hyperband] [--data SPEC]
            --out DIR [--space YAML] [--max-epochs E] [--factor 3] [--set KEY=VALUE ...]
```

`tfdgmm --help` and `tfdgmm --version` answer without importing TensorFlow; every command
parses its arguments first, then loads TensorFlow with its start-up log lines silenced
(`TFDGMM_VERBOSE_TF=1` shows them).

A run config (YAML or JSON) has three sections:

```yaml
model:      # the architecture dict of tfdgmm.architectures (layers bottom-up)
  image_shape: [32, 32, 3]
  patch_size: 4
  layers: [{type: half_convolution, kernel_size: 5}, {type: block_diagonal, alternatives: 2}]
training:   # tfdgmm.training.EMConfig
  em_iterations: 2
data:       # optional: where the data comes from and how much of it
  spec: tfds              # 'tfds', a directory or a .npz (overridden by --data)
  train_limit: 500        # first k images of each split (small runs)
  validation_limit: 200
  test_limit: 200
  validation_size: 10000  # the last k images of the training file are the validation split
  noise_seed: 0           # fixed dequantization noise
  dequantize: fixed       # fixed | per_iteration (noise redrawn every EM iteration)
  evaluate_test: true     # bounds on the test split at the end
gating:     # optional (default off): gating networks, paper section 3
  enabled: true           # fit them after EM on the last E-step's training paths
  hidden: 32
  kernel_size: 3
  steps: 2000             # Adam updates on the fixed paths
  batch_size: 100
  learning_rate: 1.0e-3
  between_steps: 0        # > 0: train with gating and refit it between every E- and M-step
```

With `gating.enabled`, the final bounds are also computed with the gated prior (searches
warm-started from the last paths; `metrics.json` has a `gating` block) and the gated model is
saved as a run directory of its own, `RUN_DIR/gated/` (`config.yaml` whose model has
`path_prior: {kind: gating, ...}`, `best/`, `metrics.json`, `figures/`), so that
`tfdgmm evaluate|sample|export RUN_DIR/gated` work on it.

A run directory is self-describing: `config.yaml` (the resolved config), `command.txt`,
`train.log`, `checkpoints/`, `best/`, `tensorboard/`, `metrics.json`, `figures/`.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["main"]


def _version() -> str:
    from tfdgmm import __version__

    return __version__


def _count(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= `low` (a clear usage error otherwise)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer; got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}; got {value}")
        return value

    parse.__name__ = "count"
    return parse


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tfdgmm", description="Deep GMMs with locally-connected transformations."
    )
    p.add_argument("--version", action="version", version=f"tfdgmm {_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a deep GMM by hard EM")
    t.add_argument("--config", help="run config (YAML or JSON); optional with --resume")
    t.add_argument(
        "--data",
        help="data spec: 'tfds', a directory (train.npz + test.npz, or "
        "the official batches) or a .npz (overrides data.spec)",
    )
    t.add_argument("--out", required=True, help="run directory")
    t.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    t.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set training.em_iterations=3",
    )
    t.add_argument(
        "--no-figures",
        action="store_true",
        help="skip the PNG figures (samples, filters, training curve) at the end",
    )
    t.add_argument(
        "--strategy",
        default="default",
        choices=["default", "mirrored", "multiworker"],
        help="tf.distribute: one device (default), all local GPUs (mirrored) or "
        "the workers of TF_CONFIG (multiworker)",
    )

    e = sub.add_parser("evaluate", help="bounds of a trained run by a fresh E-step")
    e.add_argument("run_dir")
    e.add_argument(
        "--split",
        default="validation",
        choices=["train", "validation", "test", "all"],
        help="which split of the run's data to evaluate (default: validation)",
    )
    e.add_argument("--data", help="data spec (default: the run's)")
    e.add_argument("--restarts", type=_count(0), help="random restarts (default: eval_restarts)")
    e.add_argument(
        "--batch-size",
        type=_count(1),
        help="images per E-step batch (default: the run's estep_batch_size)",
    )
    e.add_argument(
        "--out", help="where to write the results (default RUN_DIR/evaluation-SPLIT.json)"
    )
    e.add_argument(
        "--donors",
        type=_count(0),
        default=0,
        help="more starts per image: the stored paths of its K nearest training images (default 0)",
    )
    e.add_argument(
        "--rounds",
        type=_count(0),
        default=0,
        help="then up to R warm rounds while a round gains --round-tol nats/image (default 0)",
    )
    e.add_argument("--round-tol", type=float, default=0.5, help="(default 0.5 nats/image)")

    s = sub.add_parser("sample", help="a PNG grid of samples from a trained run")
    s.add_argument("run_dir")
    s.add_argument("--n", type=_count(1), default=64, help="number of samples (default 64)")
    s.add_argument(
        "--seed",
        type=int,
        default=0,
        help="sampling seed; the same seed gives the same images (default 0)",
    )
    s.add_argument("--out", help="PNG path (default RUN_DIR/figures/samples-seedS.png)")

    b = sub.add_parser("baseline", help="closed-form full-covariance Gaussian baseline")
    b.add_argument("--data", help="data spec (default 'tfds')")
    b.add_argument("--out", help="directory for baseline.json")
    b.add_argument(
        "--noise-seed",
        type=int,
        default=0,
        help="seed of the fixed dequantization noise (default 0, as training runs)",
    )
    b.add_argument("--train-limit", type=int, help="use only the first N training images")
    b.add_argument("--validation-limit", type=int, help="use only the first N validation images")
    b.add_argument("--test-limit", type=int, help="use only the first N test images")
    b.add_argument(
        "--validation-size",
        type=int,
        default=10_000,
        help="the last N images of the training file are the validation split "
        "(default 10000, the paper's protocol)",
    )
    b.add_argument(
        "--jitter",
        type=float,
        default=0.0,
        help="added to the covariance diagonal; > 0 when there are fewer training "
        "images than dimensions (default 0: the exact ML fit)",
    )

    x = sub.add_parser(
        "export", help="write a run's model as a TensorFlow SavedModel (usable without tfdgmm)"
    )
    x.add_argument("run_dir")
    x.add_argument("out_dir", help="SavedModel directory, e.g. saved_models/NAME")
    x.add_argument(
        "--which",
        default="best",
        choices=["best", "latest"],
        help="best/ (default; falls back to the latest checkpoint) or latest",
    )
    x.add_argument(
        "--restarts", type=int, default=2, help="random starts of the exported E-step search"
    )
    x.add_argument(
        "--restart-passes", type=int, default=2, help="coordinate-ascent passes per start"
    )
    x.add_argument(
        "--location-method",
        default="auto",
        help="per-location search scheme (tfdgmm.path_search.LOCATION_METHODS)",
    )
    x.add_argument(
        "--seed",
        type=int,
        nargs=2,
        default=[0, 0],
        metavar=("A", "B"),
        help="the fixed stateless seed of the exported search",
    )
    x.add_argument("--overwrite", action="store_true", help="replace an existing SavedModel")

    i = sub.add_parser(
        "inpaint", help="fill in masked pixels: conditional mean and samples as a PNG grid"
    )
    i.add_argument("run_dir")
    i.add_argument(
        "--mask",
        default="center",
        help="center (a quarter of the pixels missing), left, right, top, bottom (that half "
        "missing), random:P (each pixel missing with probability P) or a .png/.npy file "
        "(white/1 = observed, black/0 = missing); default center",
    )
    i.add_argument(
        "--n", type=_count(1), default=16, help="conditional samples per image (default 16)"
    )
    i.add_argument("--images", type=_count(1), default=4, help="images to inpaint (default 4)")
    i.add_argument("--data", help="data spec, a folder of PNGs or a .npz (default: the run's data)")
    i.add_argument(
        "--split",
        default="test",
        choices=["train", "validation", "test"],
        help="split of a data spec to take the images from (default test)",
    )
    i.add_argument("--seed", type=int, default=0, help="seed of the search and the samples")
    i.add_argument("--out", help="PNG path (default RUN_DIR/figures/inpaint-MASK.png)")

    c = sub.add_parser("score", help="per-image bits/dim of images to a CSV")
    c.add_argument("run_dir")
    c.add_argument("--data", help="data spec, a folder of PNGs or a .npz (default: the run's data)")
    c.add_argument(
        "--split",
        default="test",
        choices=["train", "validation", "test"],
        help="split of a data spec to score (default test)",
    )
    c.add_argument("--limit", type=_count(1), help="score only the first N images")
    c.add_argument("--restarts", type=_count(1), help="random restarts (default eval_restarts)")
    c.add_argument("--batch-size", type=_count(1), help="images per search batch")
    c.add_argument(
        "--noise-seed", type=int, help="seed of the fixed dequantisation noise (default: the run's)"
    )
    c.add_argument("--out", help="CSV path (default RUN_DIR/scores.csv)")

    u = sub.add_parser("tune", help="keras-tuner hyperparameter search of EM-trained models")
    u.add_argument(
        "--config",
        required=True,
        help="base run config (model.image_shape, training, data; the search space "
        "sets the layers, patch size and learning rate)",
    )
    u.add_argument(
        "--max-trials",
        type=_count(1),
        required=True,
        help="number of trials (an upper bound for hyperband)",
    )
    u.add_argument(
        "--tuner",
        default="random",
        choices=["random", "bayesian", "hyperband"],
        help="keras-tuner oracle (default random; bayesian needs the tune extra)",
    )
    u.add_argument("--data", help="data spec (overrides data.spec)")
    u.add_argument("--out", required=True, help="project directory (trials, best.json)")
    u.add_argument(
        "--space",
        help="YAML mapping overriding the default search space, e.g. "
        "'{bd_layers: [1, 2], blocks: [unshared], "
        "learning_rate: [1.0e-4, 1.0e-2]}'",
    )
    u.add_argument(
        "--max-epochs",
        type=int,
        help="hyperband: EM iterations of the longest trials (default: training.em_iterations)",
    )
    u.add_argument("--factor", type=int, default=3, help="hyperband's reduction factor")
    u.add_argument(
        "--seed",
        type=int,
        help="the oracle's seed, a positive integer (default 1; recorded in best.json)",
    )
    u.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a base config value",
    )
    u.add_argument(
        "--overwrite",
        action="store_true",
        help="start a new search in an existing project directory",
    )
    u.add_argument("--quiet", action="store_true", help="no training logs of the trials")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `tfdgmm` command (and `python -m tfdgmm`). Returns an exit code.

    Arguments are parsed before TensorFlow is imported (`--help` and `--version` are
    instant, and TensorFlow's log level is set before it loads)."""
    args = _parser().parse_args(argv)
    full_argv = ["tfdgmm"] + list(sys.argv[1:] if argv is None else argv)
    from tfdgmm import runs

    runs.quiet_tensorflow()
    import tfdgmm

    tfdgmm.load_all()
    try:
        if args.command == "train":
            config = runs.load_run_config(args.config, args.set) if args.config else None
            if config is None and not args.resume:
                raise ValueError("train needs --config FILE (or --resume with an existing run)")
            if config is None and args.set:  # --resume --set: the run's own config, changed
                saved = os.path.join(args.out, runs.layout.CONFIG)
                if not os.path.isfile(saved):
                    raise ValueError(f"--set needs --config (there is no {saved} to change)")
                config = runs.load_run_config(saved, args.set)
            runs.train_run(
                config,
                args.out,
                data_spec=args.data,
                resume=args.resume,
                argv=full_argv,
                figures=not args.no_figures,
                strategy=args.strategy,
            )
        elif args.command == "evaluate":
            runs.evaluate_run(
                args.run_dir,
                args.split,
                args.data,
                args.restarts,
                args.batch_size,
                out_path=args.out,
                donors=args.donors,
                rounds=args.rounds,
                round_tol=args.round_tol,
            )
        elif args.command == "sample":
            print(runs.sample_run(args.run_dir, args.n, args.seed, args.out))
        elif args.command == "baseline":
            runs.baseline_run(
                args.data,
                args.out,
                args.noise_seed,
                args.train_limit,
                args.validation_limit,
                args.test_limit,
                args.validation_size,
                args.jitter,
            )
        elif args.command == "export":
            runs.export_run(
                args.run_dir,
                args.out_dir,
                args.which,
                args.restarts,
                args.restart_passes,
                args.seed,
                args.location_method,
                args.overwrite,
            )
        elif args.command == "inpaint":
            print(
                runs.inpaint_run(
                    args.run_dir,
                    args.mask,
                    args.n,
                    args.out,
                    args.data,
                    args.split,
                    args.images,
                    args.seed,
                )
            )
        elif args.command == "score":
            runs.score_run(
                args.run_dir,
                args.data,
                args.out,
                args.split,
                args.limit,
                args.restarts,
                args.batch_size,
                args.noise_seed,
            )
        elif args.command == "tune":
            runs.tune_run(
                args.config,
                args.out,
                args.max_trials,
                args.tuner,
                args.data,
                args.set,
                args.space,
                args.max_epochs,
                args.factor,
                args.seed,
                args.overwrite,
                verbose=not args.quiet,
            )
    except (runs.DataLoadError, runs.RunLockedError, ValueError, OSError, FloatingPointError) as e:
        print(f"tfdgmm {args.command}: error: {runs.one_line(e, args.command)}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001  (a full disk inside TensorFlow: one line, not 68)
        if not runs.is_disk_full(e):
            raise
        print(f"tfdgmm {args.command}: error: {runs.one_line(e, args.command)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
