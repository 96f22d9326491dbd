"""The run config: its schema, `--set` overrides, defaults and checks.

A run config (YAML or JSON) has the sections `model` (an architecture dict of
`tfdgmm.architectures`), `training` (`tfdgmm.training.EMConfig`), `data` (`DATA_DEFAULTS`) and
the optional `gating` (`tfdgmm.training.gating.GATING_DEFAULTS`), `description`, `paper`.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

    from tfdgmm.types import Config, PathLike

__all__ = [
    "DATA_DEFAULTS",
    "apply_overrides",
    "load_run_config",
    "normalize_run_config",
    "normalize_gating_section",
]

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


def _parse_value(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def apply_overrides(config: dict, overrides: Sequence[str]) -> dict:
    """`['training.em_iterations=3', 'data.train_limit=1000']` -> a modified copy."""
    config = copy.deepcopy(config)
    for item in overrides or ():
        if "=" not in item:
            raise ValueError(
                f"--set expects KEY=VALUE (e.g. training.em_iterations=3); got {item!r}"
            )
        key, value = item.split("=", 1)
        node = config
        parts = key.strip().split(".")
        for i, p in enumerate(parts[:-1]):
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(
                    f"--set {item}: {'.'.join(parts[: i + 1])} is {node!r}, not a "
                    f"section, so it has no key {parts[i + 1]!r}"
                )
        node[parts[-1]] = _parse_value(value)
    return config


def load_run_config(path: PathLike, overrides: Sequence[str] = ()) -> dict:
    """Read a YAML/JSON run config, apply `--set` overrides, check and fill in defaults."""
    import yaml

    with open(path) as f:
        try:
            raw = yaml.safe_load(f)
        except yaml.YAMLError as err:  # one line with the file and line, not 52
            mark = getattr(err, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ValueError(f"{where}: YAML syntax error: {problem}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a run config must be a mapping with 'model' and 'training'")
    return normalize_run_config(apply_overrides(raw, overrides), where=path)


def normalize_run_config(raw: dict, where: str = "config") -> dict:
    from tfdgmm import architectures
    from tfdgmm.training import EMConfig

    unknown = set(raw) - {"model", "training", "data", "description", "paper", "gating"}
    if unknown:
        raise ValueError(
            f"{where}: unknown sections {sorted(unknown)}; expected 'model', "
            "'training', 'data' (and optional 'gating', 'description', 'paper')"
        )
    if "model" not in raw:
        raise ValueError(f"{where}: missing the 'model' section (an architecture dict)")
    out = {k: copy.deepcopy(raw[k]) for k in ("description", "paper") if k in raw}
    check_model_section(raw["model"], where)
    try:
        out["model"] = architectures.normalize(raw["model"])
    except (TypeError, ValueError, ZeroDivisionError, KeyError) as err:
        raise ValueError(f"{where}: model: {err}") from None
    try:
        out["training"] = EMConfig.from_dict(
            _floats_as_floats(EMConfig, raw.get("training"))
        ).to_dict()
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: training: {err}") from None
    data = dict(DATA_DEFAULTS)
    extra = set(raw.get("data") or {}) - set(DATA_DEFAULTS)
    if extra:
        raise ValueError(
            f"{where}: unknown data keys {sorted(extra)}; expected some of {sorted(DATA_DEFAULTS)}"
        )
    data.update(raw.get("data") or {})
    if data["dequantize"] not in _DEQUANTIZE:
        raise ValueError(f"{where}: data.dequantize must be one of {_DEQUANTIZE}")
    for key in ("train_limit", "validation_limit", "test_limit"):
        _check_int(data[key], f"{where}: data.{key}", low=1, allow_none=True)
    _check_int(data["validation_size"], f"{where}: data.validation_size", low=0)
    _check_int(data["noise_seed"], f"{where}: data.noise_seed", low=0)
    out["data"] = data
    if "gating" in raw:
        out["gating"] = normalize_gating_section(raw["gating"], out["model"], where)
    return out


def normalize_gating_section(section: Config | None, model: Config, where: str) -> Config:
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
                raise ValueError(
                    f"{where}: model.path_prior {prior} disagrees with the gating "
                    "section's hidden/kernel_size"
                )
        elif prior not in ("uniform", None):
            raise ValueError(
                f"{where}: gating.between_steps > 0 trains the model with gating "
                f"networks as its path prior; model.path_prior is {prior!r}"
            )
        model["path_prior"] = wanted
    return gating


def _check_int(value: Any, what: str, low: int | None = None, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low):
        bound = "" if low is None else f" >= {low}"
        raise ValueError(
            f"{what} must be an integer{bound}{' or null' if allow_none else ''}; got {value!r}"
        )


def check_model_section(model: Config, where: str = "config") -> None:
    """The fields whose bad values would otherwise fail deep inside the model (a division by
    zero, an unpacking error, negative dimensions): named, with the allowed range."""
    if not isinstance(model, dict):
        return  # architectures.normalize says what is expected
    shape = model.get("image_shape")
    if shape is not None and (
        not isinstance(shape, (list, tuple))
        or len(shape) != 3
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape)
    ):
        raise ValueError(
            f"{where}: model.image_shape must be [height, width, channels], three "
            f"integers >= 1; got {shape!r}"
        )
    patch = model.get("patch_size")
    if patch is not None:
        _check_int(patch, f"{where}: model.patch_size", low=1)
        if shape is not None and (shape[0] % patch or shape[1] % patch):
            raise ValueError(
                f"{where}: model.patch_size {patch} must divide the image height "
                f"and width {shape[:2]}"
            )
    layers = model.get("layers")
    if layers is not None and not isinstance(layers, list):
        raise ValueError(f"{where}: model.layers must be a list of layer mappings")
    for j, layer in enumerate(layers or ()):
        if not isinstance(layer, dict):
            raise ValueError(f"{where}: model.layers[{j}] must be a mapping with 'type'")
        for key in ("kernel_size", "alternatives", "repeat"):
            values = layer.get(key)
            values = (
                values if key == "kernel_size" and isinstance(values, (list, tuple)) else [values]
            )
            for value in values:
                if value is not None:
                    _check_int(value, f"{where}: model.layers[{j}].{key}", low=1)


def _floats_as_floats(cls, section: Config) -> Config:
    """An int where a float is expected (`learning_rate: 1`) becomes that float."""
    import dataclasses

    if not isinstance(section, dict):
        return section
    kinds = {f.name: f.type for f in dataclasses.fields(cls)}
    return {
        k: float(v)
        if kinds.get(k) in ("float", float) and isinstance(v, int) and not isinstance(v, bool)
        else v
        for k, v in section.items()
    }
