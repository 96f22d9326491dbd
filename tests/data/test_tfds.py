import numpy as np
import pytest
import tensorflow_datasets as tfds

from tfdgmm.data import DataUnavailableError, load_cifar10, make_dataset
from tfdgmm.data.tfds_source import official_order


@pytest.mark.parametrize("spec", ["tfds", "tfds:cifar10"])
def test_tfds_end_to_end_with_mock_data(spec):
    with tfds.testing.mock_data(num_examples=12):
        splits = load_cifar10(spec, validation_size=4, test_limit=5)
    assert splits.source == "tfds:cifar10"
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (8, 4, 5)
    assert splits.train.images.dtype == np.uint8 and splits.train.images.shape[1:] == (32, 32, 3)
    assert splits.test.noise_start == 12
    # mock ids are random text, so the tfds order is kept and that is said
    assert any("kept the order tfds returned" in note for note in splits.notes)
    xs = [x.numpy() for x, _ in make_dataset(splits.train, 3, seed=0)]
    assert sum(len(x) for x in xs) == 8
    assert all(x.min() >= -1 and x.max() < 1 for x in xs)


def test_official_order_from_ids():
    ids = [b"train_00002", b"train_00000", b"train_00001"]
    np.testing.assert_array_equal(official_order(ids), [1, 2, 0])
    assert official_order(["test_00001", "test_00000"]).tolist() == [1, 0]
    assert official_order([b"gebc ahg", b"train_00001"]) is None
    assert official_order([b"train_00001", b"train_00001"]) is None


def test_tfds_failure_suggests_local_data(monkeypatch):
    def no_network(*args, **kwargs):
        raise ConnectionError("Failed to establish a new connection")

    monkeypatch.setattr(tfds, "load", no_network)
    with pytest.raises(
        DataUnavailableError,
        match=r"tfds:cifar10: tensorflow-datasets could not load.*"
        r"ConnectionError.*no network.*--data PATH",
    ):
        load_cifar10("tfds")


def test_tfds_not_prepared_and_download_disabled(tmp_path):
    with pytest.raises(DataUnavailableError, match=r"data_dir=.*--data PATH"):
        load_cifar10("tfds", tfds_data_dir=str(tmp_path), download=False)


def _offline(monkeypatch):
    """No network: every TCP connection fails at once (as it would after a timeout)."""
    import socket

    from tfdgmm.data import tfds_source

    calls = []

    def refuse(address, timeout=None, *args, **kwargs):
        calls.append((address, timeout))
        raise OSError("Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)

    def never_downloads(*args, **kwargs):  # tfds would retry for minutes here
        if kwargs.get("download"):
            raise AssertionError("tfds.load(download=True) called although the host is down")
        raise AssertionError(
            "Dataset cifar10: could not find data in /nowhere. Please make "
            "sure to call dataset_builder.download_and_prepare()"
        )

    monkeypatch.setattr(tfds, "load", never_downloads)
    return calls, tfds_source


def test_offline_default_source_fails_fast_with_one_hint(monkeypatch):
    import time

    calls, tfds_source = _offline(monkeypatch)
    start = time.monotonic()
    with pytest.raises(
        DataUnavailableError,
        match=r"not downloaded yet.*www\.cs\.toronto\.edu"
        r".*--data PATH",
    ) as info:
        load_cifar10("tfds")
    assert time.monotonic() - start < 10
    assert calls == [(("www.cs.toronto.edu", 443), tfds_source.REACHABILITY_TIMEOUT)]
    assert tfds_source.REACHABILITY_TIMEOUT <= 5
    assert str(info.value).count("--data") == 1


def test_offline_cli_names_data_once(monkeypatch, tmp_path, capsys):
    from tfdgmm import cli

    _offline(monkeypatch)
    config = tmp_path / "c.yaml"
    config.write_text(
        "model: {image_shape: [4, 4, 3], patch_size: 2, layers: [{type: diagonal}]}\n"
        "training: {em_iterations: 1}\n"
    )
    assert cli.main(["train", "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "not downloaded yet" in err and err.count("--data") == 1
    assert cli.main(["baseline"]) == 2
    err = capsys.readouterr().err
    assert "not downloaded yet" in err and err.count("--data") == 1
