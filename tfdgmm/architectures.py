"""Deep GMM architectures from plain dicts (the configs under `configs/`).

```python
config = {
    "image_shape": [32, 32, 3],
    "patch_size": 4,
    "path_prior": "uniform",          # uniform | factorized | table
    "layers": [                       # bottom (data side) first
        {"type": "half_convolution", "kernel_size": 5, "repeat": 3},
        {"type": "block_diagonal", "alternatives": 4, "selection": "location"},
    ],
}
model = tfdgmm.DeepGMM.from_config(config)
```

Layer types and their keys (defaults in brackets):

* `block_diagonal`: `alternatives` [1], `selection` [`sample`], `per_location` [True for
  `sample` selection (the paper's shared blocks: a different block at every location), False
  for `location` selection (unshared blocks: the same `alternatives` blocks at every location)].
* `diagonal`: `alternatives` [1], `selection` [`sample`], `per_location` [True].
* `half_convolution`: `kernel_size` [5], `alternatives` [1], `selection` [`sample`],
  `update` [alternates `second`, `first`, ... over the model's half-convolutions].
* `dense`: `alternatives` [1] (a full matrix on the whole image: the 2014 deep GMM layer).
* every type: `repeat` [1].
"""

import json

import tensorflow as tf

from tfdgmm import bijectors

__all__ = ["build", "normalize", "get_config", "set_config", "LAYER_TYPES"]

LAYER_TYPES = ("block_diagonal", "diagonal", "half_convolution", "dense")
_TOP_KEYS = {
    "image_shape",
    "patch_size",
    "path_prior",
    "exact_limit",
    "dtype",
    "seed",
    "layers",
    "name",
}
_LAYER_KEYS = {
    "block_diagonal": {"alternatives", "selection", "per_location"},
    "diagonal": {"alternatives", "selection", "per_location"},
    "half_convolution": {"kernel_size", "alternatives", "selection", "update"},
    "dense": {"alternatives"},
}


def normalize(config):
    """Check a config and fill in defaults; `repeat` is expanded. Returns a new dict."""
    if not isinstance(config, dict):
        raise TypeError(f"an architecture config must be a dict; got {type(config).__name__}")
    unknown = set(config) - _TOP_KEYS
    if unknown:
        raise ValueError(
            f"unknown architecture keys {sorted(unknown)}; expected some of {sorted(_TOP_KEYS)}"
        )
    for key in ("image_shape", "patch_size", "layers"):
        if key not in config:
            raise ValueError(f"architecture config is missing {key!r}")
    out = {
        "image_shape": [int(s) for s in config["image_shape"]],
        "patch_size": int(config["patch_size"]),
        "path_prior": config.get("path_prior", "uniform"),
        "exact_limit": int(config.get("exact_limit", 4096)),
        "dtype": str(config.get("dtype", "float32")),
        "seed": int(config.get("seed", 0)),
        "layers": [],
    }
    half_convs = 0
    for j, spec in enumerate(config["layers"]):
        spec = dict(spec)
        kind = spec.pop("type", None)
        if kind not in LAYER_TYPES:
            raise ValueError(f"layer {j}: unknown type {kind!r}; expected one of {LAYER_TYPES}")
        repeat = int(spec.pop("repeat", 1))
        unknown = set(spec) - _LAYER_KEYS[kind]
        if unknown:
            raise ValueError(
                f"layer {j} ({kind}): unknown keys {sorted(unknown)}; "
                f"expected some of {sorted(_LAYER_KEYS[kind])} and 'repeat'"
            )
        for _ in range(repeat):
            layer = {"type": kind, "alternatives": int(spec.get("alternatives", 1))}
            if kind != "dense":
                selection = spec.get("selection", "sample")
                if selection not in ("sample", "location"):
                    raise ValueError(
                        f"layer {j} ({kind}): selection must be 'sample' or "
                        f"'location'; got {selection!r}"
                    )
                layer["selection"] = selection
            if kind in ("block_diagonal", "diagonal"):
                default = kind == "diagonal" or layer["selection"] == "sample"
                layer["per_location"] = bool(spec.get("per_location", default))
            if kind == "half_convolution":
                layer["kernel_size"] = int(spec.get("kernel_size", 5))
                layer["update"] = spec.get("update", ("second", "first")[half_convs % 2])
                half_convs += 1
            out["layers"].append(layer)
    if not out["layers"]:
        raise ValueError("architecture config has no layers")
    return out


def build(config, dtype=None, seed=None, **kwargs):
    """Build a `DeepGMM` from a config dict (see module docstring).

    `dtype` and `seed` override the config's; `kwargs` go to `DeepGMM` (e.g. `validate_args`).
    """
    from tfdgmm.deep_gmm import DeepGMM

    cfg = normalize(config)
    if dtype is not None:
        cfg["dtype"] = tf.as_dtype(dtype).name
    if seed is not None:
        cfg["seed"] = int(seed)
    h, w, c = cfg["image_shape"]
    r = cfg["patch_size"]
    if h % r or w % r:
        raise ValueError(f"image size {h}x{w} is not divisible by the patch size {r}")
    hp, wp, d = h // r, w // r, r * r * c
    layers = []
    for i, spec in enumerate(cfg["layers"]):
        layer_seed = cfg["seed"] * 1009 + i
        common = dict(
            num_alternatives=spec["alternatives"],
            seed=layer_seed,
            dtype=cfg["dtype"],
            name=f"layer{i}_{spec['type']}",
        )
        kind = spec["type"]
        if kind == "block_diagonal":
            layers.append(
                bijectors.BlockDiagonal.new(
                    d,
                    spatial_shape=(hp, wp) if spec["per_location"] else None,
                    selection=spec["selection"],
                    **common,
                )
            )
        elif kind == "diagonal":
            layers.append(
                bijectors.Diagonal.new(
                    d,
                    spatial_shape=(hp, wp) if spec["per_location"] else None,
                    selection=spec["selection"],
                    **common,
                )
            )
        elif kind == "half_convolution":
            layers.append(
                bijectors.HalfConvolution.new(
                    d,
                    kernel_size=spec["kernel_size"],
                    update=spec["update"],
                    selection=spec["selection"],
                    **common,
                )
            )
        else:
            layers.append(bijectors.Dense.new((hp, wp, d), **common))
    kwargs.setdefault("exact_limit", cfg["exact_limit"])
    model = DeepGMM(
        layers, image_shape=(h, w, c), patch_size=r, path_prior=cfg["path_prior"], **kwargs
    )
    set_config(model, cfg)
    return model


def set_config(model, config):
    """Attach a (normalised) config to a model. Stored as a JSON string: a `tf.Module` would
    wrap a dict attribute in tracking containers that are not plain dicts."""
    model._config_json = json.dumps(config, sort_keys=True)


def get_config(model):
    """The normalised config a model was built from (models built by `build` only), as plain
    JSON-serialisable dicts and lists."""
    text = getattr(model, "_config_json", None)
    if text is None:
        raise ValueError("this DeepGMM was not built from a config; get_config is unavailable")
    return json.loads(text)
