"""`tfdgmm.runs.errors`: a full disk and other failures in one line, with a way on."""

import errno

import pytest
import tensorflow as tf

from tfdgmm import cli, runs
from tfdgmm.runs.errors import is_disk_full, one_line


def test_a_full_disk_is_one_line_that_says_resume_continues():
    for err in (
        OSError(errno.ENOSPC, "No space left on device"),
        tf.errors.ResourceExhaustedError(
            None, None, "ckpt-3_temp/part-00000: No space left on device\\n\\tlong details"
        ),
    ):
        assert is_disk_full(err)
        text = one_line(err, "train")
        assert "\n" not in text and "disk is full" in text and "--resume" in text
    assert not is_disk_full(ValueError("bad"))
    assert one_line(ValueError("a\n  b")) == "a b"


@pytest.mark.parametrize(
    "error, text",
    [
        (tf.errors.ResourceExhaustedError(None, None, "No space left on device"), "--resume"),
        (
            FloatingPointError(
                "diverging loss ...; giving up. To go on, resume with a lower "
                "training.learning_rate"
            ),
            "training.learning_rate",
        ),
    ],
)
def test_train_failures_are_one_line(monkeypatch, capsys, tmp_path, error, text):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(runs, "train_run", fail)
    config = str(tmp_path / "c.yaml")
    with open(config, "w") as f:
        f.write("model: {image_shape: [4, 4, 1], patch_size: 2, layers: [{type: diagonal}]}\n")
    assert cli.main(["train", "--config", config, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and text in err
