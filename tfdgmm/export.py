"""Export a deep GMM as a TensorFlow SavedModel that needs neither tfdgmm nor TFP to run.

```python
import tfdgmm.export
tfdgmm.export.export_saved_model(model, "saved_models/cifar10")   # a live DeepGMM
tfdgmm.export.export_run("runs/cifar10", "saved_models/cifar10")  # a training run directory

# anywhere with TensorFlow (no tfdgmm):
m = tf.saved_model.load("saved_models/cifar10")
x = m.sample(16, seed=[1, 2])            # float32 [16, H, W, C], stateless int32[2] seed
x = m.sample(16)                         # a fresh random seed
lower = m.log_prob_lower_bound(x)        # [16]: E-step search with fixed settings
bpd = m.bits_per_dim(x)                  # [16]: the same lower bound in bits/dim
path = m.best_path(x)                    # {"path_0": [16] or [16, Hp, Wp] int32, ...,
                                         #  "lower_bound": [16]}
out = m.conditional_sample(x, mask, seed=[5, 6])  # mask float32 [H, W, C], 1 = observed
                                         # {"sample", "mean": [16, H, W, C], "observed_log_prob"}
```

A SavedModel keeps `tf.function` graphs and variables, not Python objects. The exported module
has these functions (inputs are float32 images `[None, H, W, C]`; densities come out in the
model's dtype, nats per image):

* `sample(n, seed=None)`: `n` int32 scalar, `seed` int32 `[2]` (stateless; positional or
  keyword) -> float32 `[n, H, W, C]`; bit for bit `model.sample(n, seed=seed)` of the live model
  (cast to float32). Without a seed, a fresh random one (as TFP's `seed=None`).
* `bits_per_dim(x)` -> `[N]`: the lower bound in bits per dimension,
  `-log2(bin_width) - lower / (D ln 2)` (`bin_width = 2/256`: data on the [-1, 1] scale, see
  `tfdgmm.units`); `best_path(x)` has it too, as `bits_per_dim`.
* `log_prob_lower_bound(x)` -> `[N]` and `best_path(x)` -> `{path_i, lower_bound}`: the live
  model's `best_path(x, **search_settings(...))` with the settings and the *fixed* stateless
  seed recorded at export (`search_config`), so results are deterministic. As in the live
  model, the search of one image may depend on the rest of its batch (random starts are drawn
  per batch; the `'ranked'` per-location scheme ranks locations with a batch-mean Gram).
* `log_prob_upper_bound(x)` -> `[N]`: the paper's approximate upper bound with the same search.
* `log_prob(x)` -> `[N]` (exact): only for models with `has_exact_log_prob` (at most
  `exact_limit` paths, or choices independent across locations: `tfdgmm.local_paths`).
* `conditional_sample(x, mask, seed)`: inpainting (`tfdgmm.conditional`; not for gating
  priors). `mask` float32 `[H, W, C]`, 1 = observed, 0 = missing (values are checked),
  `seed` int32 `[2]` (stateless) -> `{"sample": float32 [N, H, W, C]` (one conditional sample
  per image, observed pixels kept), `"mean"`: the conditional mean, `"observed_log_prob"`:
  `[N]` `log sum_c pi_c p_c(x_o)` over the candidate paths}`. The live model's
  `model.conditional(x, mask, seed=<search seed>, restarts=<restarts>,
  search={restart_passes, location_method, location_options}).sample(seed=seed)`; for more
  samples of one image, repeat it in `x` (the candidate search is then repeated too).
* `metadata()` -> dict of string scalars; the same values are variables of the module:
  `image_shape` (int32 `[3]`), `patch_size`, `num_paths` (decimal string, exact),
  `log_num_paths`, `dtype`, `num_dims`, `bin_width`, `config` (architecture JSON),
  `search_config` (JSON),
  `functions`, `tfdgmm_version`.

The same functions are also exported as serving signatures (dict outputs) for TF Serving and
`saved_model_cli`. Functions are not XLA-compiled (`jit_compile`), so exported results equal the
live model's; the bijectors' own XLA-compiled parameter preparation is kept as it is.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf

from tfdgmm import layout

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from tfdgmm.deep_gmm import DeepGMM
    from tfdgmm.types import Config, PathLike, Seed

__all__ = [
    "search_settings",
    "export_saved_model",
    "export_run",
    "load_run_model",
    "find_run_config",
    "find_run_checkpoint",
    "checkpoint_kind",
    "CONFIG_NAMES",
]

#: Config file names looked up in a run directory, in this order (`tfdgmm.runs.layout`).
CONFIG_NAMES = layout.CONFIG_NAMES
#: Checkpoint subdirectories of a run directory.
_BEST_DIR = layout.BEST
_STATE_DIR = layout.CHECKPOINTS

_INT32_MAX = 2**31 - 1


def search_settings(
    restarts: int = 2,
    restart_passes: int = 2,
    location_method: str = "auto",
    location_options: dict | None = None,
    seed: Seed = (0, 0),
) -> dict:
    """The E-step search settings of an export, as keyword arguments of `DeepGMM.best_path`.

    `model.best_path(x, **search_settings(...))` on the live model gives exactly what the
    exported `best_path(x)` gives (the same stateless seed and search), which is how the
    export is tested. Each datapoint starts from `restarts` random paths, `restart_passes`
    coordinate-ascent passes each, and keeps the best.

    Args:
      restarts: number of random starts (>= 1).
      restart_passes: passes per start (>= 1).
      location_method: per-location scheme, see `tfdgmm.path_search.LOCATION_METHODS`.
      location_options: dict for the per-location scheme (JSON-serialisable), or None.
      seed: the fixed stateless seed, a pair of int32s.

    Returns:
      A JSON-serialisable dict `{restarts, restart_passes, location_method, location_options,
      seed}` (`seed` a list of two ints).
    """
    from tfdgmm import path_search

    def count(name: str, v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"search_settings: {name} must be an int >= 1; got {v!r}")
        return int(v)

    if location_method not in path_search.LOCATION_METHODS:
        raise ValueError(
            f"search_settings: location_method must be one of "
            f"{path_search.LOCATION_METHODS}; got {location_method!r}"
        )
    try:
        seed_list = [int(s) for s in np.asarray(seed).reshape(-1)]
    except (TypeError, ValueError):
        seed_list = None
    if (
        seed_list is None
        or len(seed_list) != 2
        or not all(-_INT32_MAX - 1 <= s <= _INT32_MAX for s in seed_list)
    ):
        raise ValueError(f"search_settings: seed must be a pair of int32s; got {seed!r}")
    options = None if location_options is None else dict(location_options)
    settings = {
        "restarts": count("restarts", restarts),
        "restart_passes": count("restart_passes", restart_passes),
        "location_method": location_method,
        "location_options": options,
        "seed": seed_list,
    }
    try:
        json.dumps(settings)
    except TypeError as err:
        raise ValueError(
            f"search_settings: location_options must be JSON-serialisable: {err}"
        ) from err
    return settings


def _model_config_json(model: DeepGMM) -> str:
    try:
        config = model.get_config()
    except ValueError:  # not built from a config
        return ""
    return json.dumps(_plain(config), sort_keys=True)


def _plain(obj: Any) -> Any:
    """Plain dicts and lists (a tf.Module wraps dict/list attributes in tracking wrappers,
    which `json` refuses)."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, Sequence) and not isinstance(obj, (str, bytes)):
        return [_plain(v) for v in obj]
    return obj


class _ExportModule(tf.Module):
    """The exported object: the model's variables, metadata variables and `tf.function`s.

    The `DeepGMM` itself is not an attribute (it is a Python object the loader could not
    rebuild); its variables are tracked through `model_variables` and captured by the
    functions' graphs.
    """

    def __init__(self, model: DeepGMM, settings: dict, bin_width: float = 2.0 / 256.0) -> None:
        super().__init__(name="tfdgmm_saved_model")
        from tfdgmm import __version__

        self.model_variables = list(model.variables)
        dtype = model.dtype
        h, w, c = model.image_shape
        images = tf.TensorSpec([None, h, w, c], tf.float32, name="x")
        exact = model.has_exact_log_prob
        uniform = _is_uniform(model)
        search_kwargs = dict(settings)
        search_seed = tf.constant(search_kwargs.pop("seed"), tf.int32)

        def search(x: tf.Tensor) -> tuple:
            return model.best_path(tf.cast(x, dtype), seed=search_seed, **search_kwargs)

        def sample(n: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
            return tf.cast(model.sample_with_path(n, seed=seed)[0], tf.float32)

        def log_prob_upper_bound(x: tf.Tensor) -> tf.Tensor:
            if uniform:  # the live model's formula, reusing the search
                return search_fn(x)[1] + tf.constant(model.log_num_paths, dtype)
            return model.log_prob_upper_bound(tf.cast(x, dtype), seed=search_seed, **search_kwargs)

        def log_prob(x: tf.Tensor) -> tf.Tensor:
            return model.log_prob(tf.cast(x, dtype))

        conditional_kwargs = {
            "restarts": search_kwargs["restarts"],
            "search": {
                k: search_kwargs[k]
                for k in ("restart_passes", "location_method", "location_options")
                if search_kwargs.get(k) is not None
            },
        }

        def conditional_sample(x: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor) -> dict:
            c = model.conditional(tf.cast(x, dtype), mask, seed=search_seed, **conditional_kwargs)
            return {
                "sample": tf.cast(c.sample(seed=seed), tf.float32),
                "mean": tf.cast(c.mean(), tf.float32),
                "observed_log_prob": c.observed_log_prob,
            }

        def best_path(x: tf.Tensor) -> dict:
            path, joint = search_fn(x)
            out = {f"path_{i}": tf.cast(z, tf.int32) for i, z in enumerate(path)}
            out["lower_bound"] = joint
            out["bits_per_dim"] = bits_per_dim(joint)
            return out

        # The model's graphs are traced once, here, into concrete functions; the exported
        # functions and signatures are thin wrappers calling them (tf.saved_model.save traces
        # every tf.function again in its own context, and a nested tf.function is traced
        # again for every calling graph: concrete functions are never retraced).
        n_spec = tf.TensorSpec([], tf.int32, name="n")
        seed_spec = tf.TensorSpec([2], tf.int32, name="seed")
        search_fn = _traced(search, images)
        log2_bin = math.log2(bin_width)
        nats_per_bit = float(model.num_dims) * math.log(2.0)

        def bits_per_dim(
            lower: tf.Tensor,
        ) -> tf.Tensor:  # -log2(bin_width) - LL / (D ln 2), see tfdgmm.units
            return tf.constant(-log2_bin, lower.dtype) - lower / tf.constant(
                nats_per_bit, lower.dtype
            )

        sample_fn = _traced(sample, n_spec, seed_spec)
        bodies = {
            "sample": (sample_fn, [n_spec, seed_spec], "images"),
            "log_prob_lower_bound": (lambda x: search_fn(x)[1], [images], "lower_bound"),
            "bits_per_dim": (lambda x: bits_per_dim(search_fn(x)[1]), [images], "bits_per_dim"),
            "log_prob_upper_bound": (
                _traced(log_prob_upper_bound, images),
                [images],
                "upper_bound",
            ),
            "best_path": (_traced(best_path, images), [images], None),
        }
        if exact:
            bodies["log_prob"] = (_traced(log_prob, images), [images], "log_prob")
        if not model.path_prior.is_conditional:  # no Gaussian conditionals with gating
            mask_spec = tf.TensorSpec([h, w, c], tf.float32, name="mask")
            bodies["conditional_sample"] = (
                _traced(conditional_sample, images, mask_spec, seed_spec),
                [images, mask_spec, seed_spec],
                None,
            )
        functions = list(bodies) + ["metadata"]
        for name, (body, specs, _) in bodies.items():
            if name != "sample":
                setattr(self, name, _thin(body, specs))
        self.sample = _sample_with_default_seed(sample_fn, n_spec, seed_spec)

        meta = {
            "image_shape": json.dumps(list(model.image_shape)),
            "patch_size": str(model.patch_size),
            "num_paths": str(model.num_paths),
            "log_num_paths": repr(float(model.log_num_paths)),
            "dtype": dtype.name,
            "num_dims": str(model.num_dims),
            "bin_width": repr(float(bin_width)),
            "config": _model_config_json(model),
            "search_config": json.dumps(settings, sort_keys=True),
            "functions": json.dumps(functions),
            "tfdgmm_version": __version__,
        }

        def var(value: Any, name: str, dtype: tf.DType | None = None) -> tf.Variable:
            return tf.Variable(value, dtype=dtype, trainable=False, name=name)

        self.image_shape = var(list(model.image_shape), "image_shape", tf.int32)
        self.patch_size = var(model.patch_size, "patch_size", tf.int32)
        self.log_num_paths = var(float(model.log_num_paths), "log_num_paths", tf.float64)
        for key in ("num_paths", "dtype", "config", "search_config", "functions", "tfdgmm_version"):
            setattr(self, key, var(meta[key], key, tf.string))

        def metadata() -> dict:
            return {k: tf.constant(v, tf.string) for k, v in meta.items()}

        metadata_fn = _traced(metadata)
        self.metadata = _thin(metadata_fn, [])
        bodies["metadata"] = (metadata_fn, [], None)
        # a plain function attribute: not tracked (a dict attribute would be)
        self._signature_bodies = lambda: bodies

    def signatures(self) -> dict:
        """Serving signatures: the same functions with dict outputs (`images`, `lower_bound`,
        `upper_bound`, `log_prob`; `best_path` and `metadata` return dicts already)."""
        return {
            name: _thin(body, specs, key)
            for name, (body, specs, key) in self._signature_bodies().items()
        }


def _sample_with_default_seed(
    sample_fn: Callable, n_spec: tf.TensorSpec, seed_spec: tf.TensorSpec
) -> Callable:
    """`sample(n, seed=None)`: with a seed (positional or keyword), stateless and exactly
    reproducible; without one, a fresh random seed (as TFP's `seed=None`). Two traced
    signatures, so the loaded function accepts both calls."""

    def sample(n: tf.Tensor, seed: tf.Tensor | None = None) -> tf.Tensor:
        if seed is None:
            seed = tf.random.uniform([2], minval=-_INT32_MAX - 1, maxval=_INT32_MAX, dtype=tf.int32)
        return sample_fn(n, seed)

    fn = tf.function(sample, autograph=False)
    fn.get_concrete_function(n_spec)
    fn.get_concrete_function(n_spec, seed_spec)
    return fn


def _traced(fn: Callable, *specs: tf.TensorSpec) -> Any:
    """`fn` traced once into a concrete function (autograph on: the model code needs it)."""
    return tf.function(fn, input_signature=list(specs)).get_concrete_function()


def _thin(fn: Callable, specs: Sequence[tf.TensorSpec], key: str | None = None) -> Any:
    """A `tf.function` calling `fn` (cheap to trace), its output wrapped as `{key: ...}`."""
    if key is None:
        return tf.function(lambda *args: fn(*args), input_signature=specs, autograph=False)
    return tf.function(lambda *args: {key: fn(*args)}, input_signature=specs, autograph=False)


def _is_uniform(model: DeepGMM) -> bool:
    from tfdgmm import path_priors

    return isinstance(model.path_prior, path_priors.UniformPathPrior)


def export_saved_model(
    model: DeepGMM, path: PathLike, *, search: dict | None = None, overwrite: bool = False
) -> str:
    """Write `model` (a `tfdgmm.DeepGMM`) as a SavedModel at `path`; returns `path`.

    Args:
      model: the model; its current variable values are exported.
      path: output directory.
      search: E-step settings for `best_path` / `log_prob_lower_bound` /
        `log_prob_upper_bound`, a dict of `search_settings` arguments (or its result);
        defaults to `search_settings()`.
      overwrite: replace an existing SavedModel at `path` (an error otherwise; a directory
        that is neither a SavedModel nor the remains of an interrupted export is never
        replaced). The export is written to a temporary sibling and renamed into place, so the
        old model stays until the new one is complete.
    """
    from tfdgmm.deep_gmm import DeepGMM

    if not isinstance(model, DeepGMM):
        raise TypeError(f"export_saved_model needs a tfdgmm.DeepGMM; got {type(model).__name__}")
    settings = search_settings(**(search or {}))
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not os.path.isdir(path):
        raise FileExistsError(f"{path} exists and is not a directory")
    _recover_interrupted(path)
    state = _target_state(path)
    if state == "savedmodel" and not overwrite:
        raise FileExistsError(f"{path} holds a SavedModel (pass overwrite=True to replace it)")
    if state == "other":
        raise FileExistsError(
            f"{path} is not empty and is not a SavedModel (nor what an "
            "interrupted export leaves); refusing to replace it"
        )
    module = _ExportModule(model, settings)
    signatures = module.signatures()
    # write a temporary sibling, then rename it into place: `path` always holds either the old
    # SavedModel or the complete new one
    parent, name = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{name}{_PARTIAL}{os.getpid()}")
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    try:
        tf.saved_model.save(module, tmp, signatures=signatures)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if state == "savedmodel":
        old = os.path.join(parent, f".{name}{_OLD}{os.getpid()}")
        os.rename(path, old)
        os.rename(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        if state == "leftover":  # an empty directory or an interrupted export's remains
            shutil.rmtree(path)
        os.rename(tmp, path)
    return path


#: Suffixes of the temporary siblings of an export (`.NAME.partial-PID`, `.NAME.old-PID`).
_PARTIAL = ".partial-"
_OLD = ".old-"
#: What `tf.saved_model.save` writes; a directory holding only (some of) these but no
#: `saved_model.pb` is the remains of an interrupted export.
_SAVEDMODEL_ENTRIES = {"saved_model.pb", "variables", "assets", "fingerprint.pb"}


def _target_state(path: PathLike) -> str:
    """`'absent'`, `'leftover'` (empty, or an interrupted export), `'savedmodel'` or `'other'`."""
    if not os.path.isdir(path):
        return "absent"
    entries = set(os.listdir(path))
    if "saved_model.pb" in entries and os.path.isdir(os.path.join(path, "variables")):
        return "savedmodel"
    return "leftover" if entries <= _SAVEDMODEL_ENTRIES else "other"


def _recover_interrupted(path: PathLike) -> None:
    """Clean up after an export that was killed: partial siblings are deleted; an old
    SavedModel moved aside by an interrupted `overwrite` comes back when `path` is gone."""
    parent, name = os.path.split(path)
    if not os.path.isdir(parent):
        return
    for entry in sorted(os.listdir(parent)):
        full = os.path.join(parent, entry)
        if entry.startswith(f".{name}{_PARTIAL}"):
            shutil.rmtree(full, ignore_errors=True)
        elif entry.startswith(f".{name}{_OLD}"):
            if not os.path.exists(path) and _target_state(full) == "savedmodel":
                os.rename(full, path)
            else:
                shutil.rmtree(full, ignore_errors=True)


# ---------------------------------------------------------------------- run directories


def find_run_config(run_dir: PathLike) -> tuple[Config, str]:
    """The architecture dict of a run: from the first of `CONFIG_NAMES` in `run_dir`.

    The file is either the architecture itself (it has `layers`) or a run config with the
    architecture under `model` (or `architecture`), inline or as a path to an architecture
    file (relative to the run directory, else to the working directory).
    Returns `(architecture dict, config file path)`.
    """
    run_dir = os.fspath(run_dir)
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    for name in CONFIG_NAMES:
        path = os.path.join(run_dir, name)
        if os.path.isfile(path):
            break
    else:
        raise FileNotFoundError(
            f"{run_dir}: no run config found (looked for {', '.join(CONFIG_NAMES)})"
        )
    config = _read_config_file(path)
    arch = _architecture_of(config, path, run_dir)
    return arch, path


def _read_config_file(path: PathLike) -> Config:
    try:
        with open(path) as f:
            text = f.read()
        if path.endswith(".json"):
            config = json.loads(text)
        else:
            import yaml

            config = yaml.safe_load(text)
    except (OSError, ValueError) as err:  # json and yaml errors are ValueErrors or YAMLErrors
        raise ValueError(f"{path}: cannot read the config: {err}") from err
    except Exception as err:  # yaml.YAMLError
        raise ValueError(f"{path}: cannot parse the config: {err}") from err
    if not isinstance(config, dict):
        raise ValueError(
            f"{path}: expected a mapping at the top level; got {type(config).__name__}"
        )
    return config


def _architecture_of(config: Config, path: PathLike, run_dir: PathLike) -> Config:
    if "layers" in config:
        return config
    for key in ("model", "architecture"):
        if key not in config:
            continue
        arch = config[key]
        if isinstance(arch, str):
            candidates = [os.path.join(run_dir, arch), arch]
            found = next((p for p in candidates if os.path.isfile(p)), None)
            if found is None:
                raise FileNotFoundError(
                    f"{path}: {key}: architecture file {arch!r} not found "
                    f"(looked in {run_dir} and the working directory)"
                )
            arch = _read_config_file(found)
            path = found
            if "layers" not in arch and isinstance(arch.get(key), dict):
                arch = arch[key]
        if not isinstance(arch, dict) or "layers" not in arch:
            raise ValueError(
                f"{path}: {key!r} is not an architecture (a mapping with "
                "'image_shape', 'patch_size' and 'layers')"
            )
        return arch
    raise ValueError(
        f"{path}: no architecture found: expected 'layers' at the top level or a 'model' section"
    )


def find_run_checkpoint(run_dir: PathLike, which: str = "best", notes: list | None = None) -> str:
    """The checkpoint prefix to export: `which='best'` reads `run_dir/best/` and falls back
    to the latest of `run_dir/checkpoints/` (then `run_dir` itself) only when the run has no
    best model; `'latest'` skips `best/`.

    A `best/checkpoint` state file that cannot be read is never skipped silently: the newest
    `ckpt-N` in `best/` is used and a note is appended to `notes` (a list), or, when `best/`
    holds no checkpoint files, a `ValueError` says to pass `which='latest'`.
    """
    from tfdgmm.training.checkpointing import checkpoint_in

    if which not in ("best", "latest"):
        raise ValueError(f"which must be 'best' or 'latest'; got {which!r}")
    subdirs = ([_BEST_DIR] if which == "best" else []) + [_STATE_DIR, ""]
    looked = []
    for sub in subdirs:
        directory = os.path.join(run_dir, sub) if sub else run_dir
        looked.append(directory)
        prefix, problem = checkpoint_in(directory)
        if problem is not None:
            if prefix is None:
                hint = (
                    " (pass which='latest' / --which latest to use the latest training "
                    "checkpoint instead)"
                    if sub == _BEST_DIR
                    else ""
                )
                raise ValueError(f"{problem}{hint}")
            if notes is not None:
                notes.append(problem)
        if prefix is not None:
            if sub != subdirs[0] and notes is not None:
                notes.append(f"{run_dir} has no {subdirs[0] or 'checkpoint'}; using {prefix}")
            return prefix
    raise FileNotFoundError(f"{run_dir}: no checkpoint found (looked in {', '.join(looked)})")


def checkpoint_kind(run_dir: PathLike, prefix: str) -> str:
    """`'best'`, `'latest'` or `'checkpoint'`: which of a run's checkpoints `prefix` is."""
    parent = os.path.basename(os.path.dirname(os.path.abspath(prefix)))
    return {_BEST_DIR: "best", _STATE_DIR: "latest"}.get(parent, "checkpoint")


def load_run_model(
    run_dir: PathLike, which: str = "best", notes: list | None = None
) -> tuple[DeepGMM, str]:
    """Rebuild a run's model from its config and restore its weights.

    Returns `(model, checkpoint prefix)`. The checkpoint must hold the model under the key
    `model` (`tf.train.Checkpoint(model=model)`, as the trainer writes it); every model
    variable must be restored, other objects in it (optimizer, E-step state) are ignored.
    """
    from tfdgmm.deep_gmm import DeepGMM

    run_dir = os.fspath(run_dir)
    arch, config_path = find_run_config(run_dir)
    try:
        model = DeepGMM.from_config(arch)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{config_path}: invalid architecture: {err}") from err
    prefix = find_run_checkpoint(run_dir, which, notes=notes)
    try:
        status = tf.train.Checkpoint(model=model).read(prefix)
        # fails when a model variable has no value in the checkpoint
        status.assert_existing_objects_matched().expect_partial()
    except Exception as err:  # OpError, AssertionError, and IndexError for truncated files
        raise ValueError(
            f"{prefix}: cannot restore the model from this checkpoint (corrupt or truncated, "
            f"or written for another architecture than {config_path}): "
            f"{type(err).__name__}: {err}"
        ) from err
    return model, prefix


def export_run(
    run_dir: PathLike,
    out_dir: PathLike,
    *,
    which: str = "best",
    search: dict | None = None,
    overwrite: bool = False,
) -> str:
    """`tfdgmm export RUN_DIR OUT_DIR`: rebuild a run's model (see `load_run_model`) and
    export it as a SavedModel (see `export_saved_model`). Returns `out_dir`."""
    model, _ = load_run_model(run_dir, which=which)
    return export_saved_model(model, out_dir, search=search, overwrite=overwrite)
