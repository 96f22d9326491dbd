"""The run config: its schema, `--set` overrides, defaults and checks.

A run config (YAML or JSON) has the sections `model` (an architecture dict of
`tfdgmm.architectures`), `training` (`tfdgmm.training.EMConfig`), `data` (`DATA_DEFAULTS`) and
the optional `gating` (`tfdgmm.training.gating.GATING_DEFAULTS`), `description`, `paper`.
"""

from __future__ import annotations

import copy

__all__ = ["DATA_DEFAULTS", "apply_overrides", "load_run_config", "normalize_run_config",
           "normalize_gating_section"]

DATA_DEFAULTS = {
    "spec": "tfds",
    "train_limit": None,
    "validation_limit": None,
    "test_limit": None,
    "validation_size": 10_000,
    "noise_seed": 0,
    "dequantize": "fixed",
    "evaluate_test": True,
}
_DEQUANTIZE = ("fixed", "per_iteration")


def _parse_value(text):
    import yaml

    return yaml.safe_load(text)


def apply_overrides(config: dict, overrides) -> dict:
    """`['training.em_iterations=3', 'data.train_limit=1000']` -> a modified copy."""
    config = copy.deepcopy(config)
    for item in overrides or ():
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE (e.g. training.em_iterations=3); "
                             f"got {item!r}")
        key, value = item.split("=", 1)
        node = config
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = _parse_value(value)
    return config


def load_run_config(path, overrides=()) -> dict:
    """Read a YAML/JSON run config, apply `--set` overrides, check and fill in defaults."""
    import yaml

    with open(path) as f:
        raw = yaml.safe_load(f)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a run config must be a mapping with 'model' and 'training'")
    return normalize_run_config(apply_overrides(raw, overrides), where=path)


def normalize_run_config(raw: dict, where="config") -> dict:
    from tfdgmm import architectures
    from tfdgmm.training import EMConfig

    unknown = set(raw) - {"model", "training", "data", "description", "paper", "gating"}
    if unknown:
        raise ValueError(f"{where}: unknown sections {sorted(unknown)}; expected 'model', "
                         "'training', 'data' (and optional 'gating', 'description', 'paper')")
    if "model" not in raw:
        raise ValueError(f"{where}: missing the 'model' section (an architecture dict)")
    out = {k: copy.deepcopy(raw[k]) for k in ("description", "paper") if k in raw}
    out["model"] = architectures.normalize(raw["model"])
    out["training"] = EMConfig.from_dict(raw.get("training")).to_dict()
    data = dict(DATA_DEFAULTS)
    extra = set(raw.get("data") or {}) - set(DATA_DEFAULTS)
    if extra:
        raise ValueError(f"{where}: unknown data keys {sorted(extra)}; expected some of "
                         f"{sorted(DATA_DEFAULTS)}")
    data.update(raw.get("data") or {})
    if data["dequantize"] not in _DEQUANTIZE:
        raise ValueError(f"{where}: data.dequantize must be one of {_DEQUANTIZE}")
    out["data"] = data
    if "gating" in raw:
        out["gating"] = normalize_gating_section(raw["gating"], out["model"], where)
    return out


def normalize_gating_section(section, model, where):
    """`gating:` with defaults. With `between_steps > 0` the trained model itself is gated:
    `model['path_prior']` (modified in place) becomes the gating prior."""
    from tfdgmm.training.gating import GATING_DEFAULTS, gating_prior_config, normalize_gating

    gating = normalize_gating(section, where)
    if gating["enabled"] and gating["between_steps"]:
        wanted = gating_prior_config(gating)
        prior = model.get("path_prior", "uniform")
        if isinstance(prior, dict) and prior.get("kind") == "gating":
            have = {k: prior.get(k, GATING_DEFAULTS[k]) for k in ("hidden", "kernel_size")}
            if dict(have, kind="gating") != wanted:
                raise ValueError(f"{where}: model.path_prior {prior} disagrees with the gating "
                                 "section's hidden/kernel_size")
        elif prior not in ("uniform", None):
            raise ValueError(f"{where}: gating.between_steps > 0 trains the model with gating "
                             f"networks as its path prior; model.path_prior is {prior!r}")
        model["path_prior"] = wanted
    return gating
