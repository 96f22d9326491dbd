"""`tfdgmm.runs.config`: bad values are named with their allowed range before data loads."""

import os

import pytest

from tfdgmm import cli, runs
from tfdgmm.training.gating import normalize_gating

HERE = os.path.dirname(os.path.abspath(__file__))
TINY = os.path.join(HERE, "..", "..", "configs", "tiny.yaml")


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.patch_size=0", r"model.patch_size must be an integer >= 1; got 0"),
        ("model.patch_size=3", r"model.patch_size 3 must divide the image height and width"),
        (
            "model.layers=[{type: half_convolution, kernel_size: 0}]",
            r"model.layers\[0\].kernel_size must be an integer >= 1; got 0",
        ),
        (
            "model.layers=[{type: block_diagonal, alternatives: -2}]",
            r"model.layers\[0\].alternatives must be an integer >= 1",
        ),
        ("model.image_shape=[28, 28]", r"model.image_shape must be \[height, width, channels\]"),
        ("data.train_limit=-3", r"data.train_limit must be an integer >= 1 or null; got -3"),
        ("data.validation_size=-1", r"data.validation_size must be an integer >= 0"),
        ("training.batch_size=0", r"training: batch_size must be > 0; got 0"),
        ("training.em_iterations.x=1", r"training.em_iterations is 2, not a section"),
    ],
)
def test_bad_values_name_the_field_and_range(override, message):
    with pytest.raises(ValueError, match=message) as err:
        runs.load_run_config(TINY, [override])
    assert "\n" not in str(err.value)


def test_an_int_learning_rate_is_a_float():
    cfg = runs.load_run_config(TINY, ["training.learning_rate=1", "training.hc_damping=0"])
    assert cfg["training"]["learning_rate"] == 1.0
    assert isinstance(cfg["training"]["learning_rate"], float)
    assert isinstance(cfg["training"]["hc_damping"], float)
    assert isinstance(cfg["training"]["em_iterations"], int)


def test_a_yaml_syntax_error_is_one_line_with_file_and_line(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  image_shape: [32, 32, 3\n  patch_size: 4\n")
    with pytest.raises(ValueError, match=rf"{path}:3: YAML syntax error") as err:
        runs.load_run_config(str(path))
    assert "\n" not in str(err.value)
    assert cli.main(["train", "--config", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.yaml:3" in err
    assert not (tmp_path / "run").exists()  # refused before anything was written


TINY_ARCH = {
    "image_shape": [4, 4, 1],
    "patch_size": 2,
    "layers": [{"type": "block_diagonal", "alternatives": 2}],
}


def test_gating_section_is_checked_and_sets_the_prior_for_between_steps():
    base = {"model": TINY_ARCH, "training": {}}
    assert "gating" not in runs.normalize_run_config(base)  # no section: unchanged configs
    cfg = runs.normalize_run_config(dict(base, gating={"enabled": True, "steps": 10}))
    assert cfg["gating"]["steps"] == 10 and cfg["gating"]["hidden"] == 32
    assert cfg["model"]["path_prior"] == "uniform"  # after EM only: the trained model is not
    cfg = runs.normalize_run_config(
        dict(base, gating={"enabled": True, "between_steps": 5, "hidden": 8})
    )
    assert cfg["model"]["path_prior"] == {"kind": "gating", "hidden": 8, "kernel_size": 3}
    assert runs.normalize_run_config(cfg) == cfg  # idempotent (config.yaml is read back)
    for bad, text in (
        ({"enabled": True, "stpes": 3}, "unknown gating keys"),
        ({"steps": 0}, "gating.steps"),
        ({"learning_rate": -1}, "learning_rate"),
    ):
        with pytest.raises(ValueError, match=text):
            runs.normalize_run_config(dict(base, gating=bad))
    with pytest.raises(ValueError, match="path_prior"):
        runs.normalize_run_config(
            {
                "model": dict(TINY_ARCH, path_prior="factorized"),
                "gating": {"enabled": True, "between_steps": 1},
            }
        )
    assert normalize_gating(None)["enabled"] is False


def test_config_overrides_and_validation(tmp_path):
    cfg = runs.load_run_config(TINY, ["training.em_iterations=5", "data.train_limit=100"])
    assert cfg["training"]["em_iterations"] == 5 and cfg["data"]["train_limit"] == 100
    with pytest.raises(ValueError, match="unknown training config keys"):
        runs.load_run_config(TINY, ["training.em_iteratons=5"])
    with pytest.raises(ValueError, match="unknown data keys"):
        runs.load_run_config(TINY, ["data.limit=5"])
