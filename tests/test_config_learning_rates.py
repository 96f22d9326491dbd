"""The `_cpu` configs' learning rate against the block-count rule of configs/make_configs.py."""

import glob
import os

import pytest
import yaml
from repo_scripts import ROOT, load_script


def _make_configs():
    return load_script("configs/make_configs.py")


def _blocks(cfg):
    """Layers x alternatives of the block-diagonal layers; a dense layer counts as 32 (measured:
    `dense_L1_K2_cpu` rolled back at 3e-3 and ran clean at 7.5e-4; BENCHMARKS.md)."""
    weight = {"block_diagonal": 1, "dense": 32}
    return sum(
        int(layer.get("repeat", 1)) * int(layer.get("alternatives", 1)) * weight[layer["type"]]
        for layer in cfg["model"]["layers"]
        if layer["type"] in weight
    )


@pytest.mark.parametrize(
    "name, rate",
    [
        ("table1_hc3_cpu", 3e-3),
        ("table2_L4_K4_cpu", 3e-3),
        ("table2_L5_K4_cpu", 2.4e-3),
        ("table2_L5_K8_cpu", 1.2e-3),
        ("table2_L8_K4_cpu", 1.5e-3),
        ("table2_L1_K16_cpu", 3e-3),
        ("table2_L1_K32_cpu", 1.5e-3),
        ("table3_intermediate_L4_cpu", 3e-3),
        ("table3_intermediate_L5_cpu", 2.4e-3),
        ("dense_L1_K2_cpu", 7.5e-4),
    ],
)
def test_stacks_of_many_blocks_take_a_lower_rate(name, rate):
    with open(os.path.join(ROOT, "configs", f"{name}.yaml")) as f:
        cfg = yaml.safe_load(f)
    assert cfg["training"]["learning_rate"] == pytest.approx(rate, rel=1e-3)
    assert _make_configs().cpu_learning_rate(cfg["model"]) == pytest.approx(rate, rel=1e-3)


def test_every_cpu_config_follows_the_rule_and_full_configs_keep_the_papers_rate():
    module = _make_configs()
    cpu = sorted(glob.glob(os.path.join(ROOT, "configs", "*_cpu.yaml")))
    assert len(cpu) >= 40
    for path in cpu:
        with open(path) as f:
            cfg = yaml.safe_load(f)
        expected = 3e-3 * min(1.0, 16 / _blocks(cfg))
        assert cfg["training"]["learning_rate"] == pytest.approx(expected, rel=1e-3), path
        assert module.cpu_learning_rate(cfg["model"]) == pytest.approx(expected, rel=1e-3)
        with open(path.replace("_cpu.yaml", ".yaml")) as f:
            assert yaml.safe_load(f)["training"]["learning_rate"] == 1e-3
