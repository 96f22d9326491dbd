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
    with pytest.raises(DataUnavailableError,
                       match=r"tfds:cifar10: tensorflow-datasets could not load.*"
                             r"ConnectionError.*no network.*--data PATH"):
        load_cifar10("tfds")


def test_tfds_not_prepared_and_download_disabled(tmp_path):
    with pytest.raises(DataUnavailableError, match=r"data_dir=.*--data PATH"):
        load_cifar10("tfds", tfds_data_dir=str(tmp_path), download=False)
