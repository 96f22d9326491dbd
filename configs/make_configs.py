"""Generate the run configs of the paper's Tables 1-3 (and their CPU-sized variants).

    python configs/make_configs.py          # rewrites configs/table*.yaml

Every architecture is on 32x32x3 images with 4x4 patches (an 8 x 8 x 48 patch tensor) and
5x5 half-convolutions, layers listed bottom-up (data side first):

* Table 1 (`table1_hc{k}`): k half-convolutions, then one block-diagonal layer with a different
  48x48 block at every location (64 blocks) and a single alternative: a linear model, i.e. a
  Gaussian.
* Table 2 (`table2_L{l}_K{k}`): 3 half-convolutions, then l *shared* block-diagonal layers
  (one choice per image and layer) with k alternatives each, 64 blocks per alternative.
* Table 3 (`table3_{bottom,intermediate,gating}_L{l}`): *unshared* block-diagonal layers (one
  choice per image and location) with 4 blocks of 48x48 shared by all locations. `bottom`: 3
  half-convolutions, then l BD layers. `intermediate`: 3 more half-convolutions *between*
  consecutive BD layers (so L1 equals `bottom` L1, as in the paper's table). `gating`: the
  intermediate architecture and protocol, plus a `gating:` section: gating networks fitted after
  EM on the last E-step's training paths (the paper's method); the run's `metrics.json` has the
  gated bounds in its `gating` block and the gated model is saved in `RUN_DIR/gated/`.

* `dense_L{l}_K{k}`: the 2014 deep GMM (van den Oord & Schrauwen): l `dense` layers, each a full
  3072x3072 matrix on the whole image with k alternatives (one choice per image); the baseline
  that local connectivity is measured against (9.4M parameters per alternative and layer).

`*_cpu.yaml` variants keep the architecture and shrink the protocol (data, EM iterations,
updates) so that a run takes minutes to an hour on a laptop CPU; their numbers are not the
paper's. The full variants follow section 4.1: 20 EM iterations, 50,000 updates in the first
M-step and 7,500 in later ones, the learning rate lowered for the last 4,000 updates of each
M-step and across EM iterations, except that within an M-step the learning rate follows a
cosine from 1 down to 0.01 (`lr_decay: cosine`) instead of the paper's drop to 0.1 for the
last 4,000 updates: on the Table-1 benchmark (`bench/convergence.py`, BENCHMARKS.md) it ends
7 nats/image higher after 20,000 updates. `--set training.lr_decay=final --set
training.lr_final_factor=0.1` restores the paper's schedule. The `_cpu` variants keep the
paper's drop (their budget was not benchmarked with the cosine).
"""

import os

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))


class _Dumper(yaml.SafeDumper):
    """Plain YAML: no anchors/aliases; short flat mappings (layers) on one line."""

    def ignore_aliases(self, data):
        return True


def _represent_dict(dumper, data):
    flat = all(
        not isinstance(v, (dict, list)) or (isinstance(v, list) and len(v) <= 3)
        for v in data.values()
    )
    return dumper.represent_mapping(
        "tag:yaml.org,2002:map", data.items(), flow_style=flat and len(data) <= 5
    )


def _represent_list(dumper, data):
    short = len(data) <= 3 and all(isinstance(v, (int, float)) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=short)


_Dumper.add_representer(dict, _represent_dict)
_Dumper.add_representer(list, _represent_list)

HC = {"type": "half_convolution", "kernel_size": 5}
HC3 = {"type": "half_convolution", "kernel_size": 5, "repeat": 3}


def shared_bd(k):
    return {
        "type": "block_diagonal",
        "alternatives": k,
        "selection": "sample",
        "per_location": True,
    }


def unshared_bd(k=4):
    return {
        "type": "block_diagonal",
        "alternatives": k,
        "selection": "location",
        "per_location": False,
    }


def model(layers, prior="uniform"):
    return {"image_shape": [32, 32, 3], "patch_size": 4, "path_prior": prior, "layers": layers}


FULL_TRAINING = {
    "em_iterations": 20,
    "updates_first": 50_000,
    "updates_later": 7_500,
    "batch_size": 100,
    "learning_rate": 1.0e-3,
    "lr_em_decay": 0.85,
    "lr_min_factor": 0.1,
    "lr_decay": "cosine",
    "lr_final_updates": 4_000,
    "lr_final_factor": 0.01,
    "lr_warmup_updates": 500,
    "estep_batch_size": 500,
    "early_stopping_patience": 3,
    # converged: an EM iteration gained less than 5 nats/image of validation bound per 1,000
    # updates (the paper-budget reproduction's rule)
    "early_stopping_min_gain_per_1000_updates": 5.0,
    "eval_restarts": 2,
}
FULL_DATA = {"train_limit": None, "validation_limit": None, "test_limit": None}

CPU_TRAINING = dict(
    {k: v for k, v in FULL_TRAINING.items() if k != "early_stopping_min_gain_per_1000_updates"},
    em_iterations=4,
    updates_first=1_500,
    updates_later=500,
    learning_rate=3.0e-3,
    lr_decay="final",
    lr_final_factor=0.1,
    lr_final_updates=200,
    lr_warmup_updates=100,
    early_stopping_patience=2,
    eval_restarts=1,
    estep_batch_size=250,
)
CPU_DATA = {"train_limit": 4_000, "validation_limit": 1_000, "test_limit": 2_000}

# Stacks with many block matrices take a lower CPU rate: 3e-3 x 16 / (layers x alternatives) when
# that product is above 16 (4 layers x 4 alternatives, the largest stack measured stable at
# 3e-3). Adam moves every entry of every block by about the learning rate whatever the scale or
# noise of its gradient: the layers of a stack compose, and with K alternatives each block sees
# 1/K of the images, so both depth and K make the same rate more damaging. Measured with the
# half-convolutions frozen, first M-step, training loss (BENCHMARKS.md, "Why table2_L8_K4_cpu
# rolled back" and "Table-2 models with 8 alternatives per layer"):
#   8 layers x 4 at 3e-3: -340 nats/image (updates 40-160); at 1.5e-3 steady gains;
#   5 layers x 8 at 2.4e-3: -290 by update 200, then images at 10^6 nats; at 1.2e-3 steady gains;
#   4 layers x 4 at 3e-3: -62, recovered (never rolled back). The half-convolutions' K-FAC steps
# alone were steady in every case.
CPU_REFERENCE_BLOCKS = 16


# A dense layer counts as this many blocks. Its rows are 3,072 entries long against a block's
# 48, and Adam's step moves every entry of a row by about the learning rate, so one update moves
# its outputs further. Measured (bench/stability.py, first 2,000 updates of dense_L1_K2_cpu):
# 3e-3 (weight 1) rolled back once (train LB 9,225.5 after 2,000 updates); 7.5e-4 (weight 32)
# and 3.75e-4 (weight 64, the full ratio of row lengths) ran with 0 rollbacks, to 9,203.1 and
# 9,090.2: the largest clean rate is kept.
DENSE_BLOCKS = 32


def cpu_blocks(arch):
    """`sum(layers x alternatives)` over the block-diagonal layers, a dense layer counting as
    `DENSE_BLOCKS` blocks."""
    weight = {"block_diagonal": 1, "dense": DENSE_BLOCKS}
    return sum(
        int(layer.get("repeat", 1)) * int(layer.get("alternatives", 1)) * weight[layer["type"]]
        for layer in arch["layers"]
        if layer["type"] in weight
    )


def cpu_learning_rate(arch):
    """The `_cpu` configs' rate for a model: 3e-3, times 16 / `cpu_blocks(arch)` when that sum
    is above 16."""
    rate = CPU_TRAINING["learning_rate"] * min(1.0, CPU_REFERENCE_BLOCKS / max(cpu_blocks(arch), 1))
    return float(f"{rate:.4g}")


# Gating networks after EM (paper, section 3): Adam on the last E-step's paths.
FULL_GATING = {
    "enabled": True,
    "hidden": 32,
    "kernel_size": 3,
    "steps": 10_000,
    "batch_size": 100,
    "learning_rate": 1.0e-3,
}
CPU_GATING = dict(FULL_GATING, steps=1_000)


def write(name, description, paper, arch, gating=False):
    for suffix, training, data, gate, note in (
        (
            "",
            FULL_TRAINING,
            FULL_DATA,
            FULL_GATING,
            "the paper's protocol (section 4.1), cosine learning-rate decay per M-step",
        ),
        (
            "_cpu",
            CPU_TRAINING,
            CPU_DATA,
            CPU_GATING,
            "CPU-sized protocol: 4,000 training images, 4 EM iterations",
        ),
    ):
        cfg = {
            "description": f"{description}; {note}",
            "paper": paper,
            "model": arch,
            "training": dict(training),
            "data": dict(data),
        }
        if suffix == "_cpu":
            cfg["training"]["learning_rate"] = cpu_learning_rate(arch)
        if gating:
            cfg["gating"] = dict(gate)
        with open(os.path.join(HERE, f"{name}{suffix}.yaml"), "w") as f:
            f.write("# Generated by configs/make_configs.py; edit that script, not this file.\n")
            yaml.dump(cfg, f, Dumper=_Dumper, sort_keys=False, width=100)


def main():
    table1 = {0: 3829, 1: 4349, 2: 4927, 3: 5059, 4: 5074}
    for k, ll in table1.items():
        layers = ([dict(HC, repeat=k)] if k else []) + [shared_bd(1)]
        write(
            f"table1_hc{k}",
            f"Table 1: {k} HC + 1 BD (single path)",
            {"table": 1, "validation_log_likelihood": ll},
            model(layers),
        )

    table2 = {
        4: [5584, 5736, 5803, 5876, 5933, 5954, 5961, 5941],
        8: [5618, 5802, 5887, 5881, 5905, 5877, 5839],
        16: [5649, 5776, 5760, 5752],
        32: [5613, 5834, 5744],
        64: [5568, 5329],
    }
    for k, row in table2.items():
        for l, ll in enumerate(row, start=1):
            write(
                f"table2_L{l}_K{k}",
                f"Table 2: 3 HC + {l} shared BD x {k}",
                {"table": 2, "validation_lower_bound": ll},
                model([HC3] + [shared_bd(k)] * l),
            )

    table3 = {
        "bottom": ([5981, 6182, 6168, 6145, 6097], [6070, 6359, 6434, 6500, 6541]),
        "intermediate": ([5981, 6278, 6395, 6342, 6326], [6070, 6455, 6661, 6697, 6770]),
        "gating": ([6046, 6367, 6490, 6452, 6441], None),
    }
    for kind, (lbs, ubs) in table3.items():
        for l in range(1, 6):
            if kind == "bottom":
                layers = [HC3] + [unshared_bd()] * l
            else:
                layers = [HC3, unshared_bd()] + [HC3, unshared_bd()] * (l - 1)
            paper = {"table": 3, "validation_lower_bound": lbs[l - 1]}
            if ubs:
                paper["validation_upper_bound"] = ubs[l - 1]
            text = {
                "bottom": "3 HC + {l} unshared BD x 4",
                "intermediate": "3 HC + {l} unshared BD x 4 with 3 HC between BD layers",
                "gating": "3 HC + {l} unshared BD x 4, 3 HC between, gating networks",
            }[kind]
            write(
                f"table3_{kind}_L{l}",
                "Table 3: " + text.format(l=l),
                paper,
                model(layers),
                gating=kind == "gating",
            )

    for l, k in ((1, 2),):
        write(
            f"dense_L{l}_K{k}",
            f"2014 deep GMM: {l} dense layer(s) x {k} (full 3072x3072 matrices on the whole image)",
            {"table": None},
            model([{"type": "dense", "alternatives": k}] * l),
        )


if __name__ == "__main__":
    main()
