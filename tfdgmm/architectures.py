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

The types are those of `tfdgmm.bijectors.registry`; a registered transform's keys and
defaults are its `CONFIG_KEYS` and `normalize_spec`.
"""

from tfdgmm.bijectors import registry

__all__ = ["build_layers", "layer_seed", "layer_types", "normalize"]

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


def layer_types():
    """The layer `type`s a config may use: the registered transforms
    (`tfdgmm.bijectors.registry`)."""
    return registry.types()


def normalize(config):
    """Check a config and fill in defaults; `repeat` is expanded. Returns a new dict.

    Raises:
      TypeError: `config` is not a dict.
      ValueError: an unknown or missing key, an unknown layer type, a bad value, or no layers.
    """
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
    for j, spec in enumerate(config["layers"]):
        spec = dict(spec)
        kind = spec.pop("type", None)
        if kind not in registry.types():
            raise ValueError(
                f"layer {j}: unknown type {kind!r}; expected one of {list(registry.types())}"
            )
        cls = registry.lookup(kind)
        repeat = int(spec.pop("repeat", 1))
        unknown = set(spec) - set(cls.CONFIG_KEYS)
        if unknown:
            raise ValueError(
                f"layer {j} ({kind}): unknown keys {sorted(unknown)}; "
                f"expected some of {sorted(cls.CONFIG_KEYS)} and 'repeat'"
            )
        for _ in range(repeat):
            try:
                layer = cls.normalize_spec(spec, out["layers"])
            except ValueError as err:
                raise ValueError(f"layer {j} ({kind}): {err}") from None
            out["layers"].append({"type": kind, **layer})
    if not out["layers"]:
        raise ValueError("architecture config has no layers")
    return out


def layer_seed(seed, index):
    """The initial-value seed of layer `index` of a model with seed `seed` (the one formula:
    `DeepGMM.from_config` and the Keras model start from the same values)."""
    return int(seed) * 1009 + int(index)


def build_layers(cfg):
    """The layers (new `BankBijector`s, bottom-up) of a normalised config.

    Raises:
      ValueError: the image size is not divisible by the patch size.
    """
    h, w, c = cfg["image_shape"]
    r = cfg["patch_size"]
    if h % r or w % r:
        raise ValueError(f"image size {h}x{w} is not divisible by the patch size {r}")
    patch_shape = (h // r, w // r, r * r * c)
    return [
        registry.lookup(spec["type"]).from_spec(
            spec,
            patch_shape,
            seed=layer_seed(cfg["seed"], i),
            dtype=cfg["dtype"],
            name=f"layer{i}_{spec['type']}",
        )
        for i, spec in enumerate(cfg["layers"])
    ]
