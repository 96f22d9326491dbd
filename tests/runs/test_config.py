"""`tfdgmm.runs.config`: bad values are named with their allowed range before data loads."""

import os

import pytest

from tfdgmm import cli, runs

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
