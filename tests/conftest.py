import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    tf.random.set_seed(1234)
    np.random.seed(1234)
    yield


@pytest.fixture(scope="session")
def shared_data_dir():
    """`../shared/data` beside the repository (CI and developer machines have it)."""
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.normpath(os.path.join(here, "..", "..", "shared", "data"))
    if not os.path.isdir(path):
        pytest.skip(f"shared data not found at {path}")
    return path


# Test helper modules beside the tests (`small_models`) import by name under
# `--import-mode=importlib`, which does not put this directory on `sys.path` itself.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
