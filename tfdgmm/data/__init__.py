"""CIFAR-10 for deep GMMs: loading, the paper's split protocol, dequantization, `tf.data`.

Entry points: `load_cifar10` (`"tfds"`, `"tfds:cifar10"`, a directory or a `.npz`)
-> `Splits` of uint8 `Split`s; `make_dataset` -> batches on [-1, 1).

Protocol (the paper, section 4.3): train on the first 40,000 training images, validate on the
last 10,000 (official batch 5), test on the official 10,000; dequantize
`x = (pixel + u) / 128 - 1` with `u ~ U[0, 1)`.

Noise: **fixed** (drawn once per dataset from `noise_seed`; the default, and the layout the
reference figures use: `np.random.default_rng(0).random(...)` over the training file, then the
test file) makes likelihoods of different models and runs exactly comparable and lets EM store
per-datapoint state. **epoch** (redrawn every epoch) is a better Monte-Carlo estimate of the
dequantized likelihood for gradient training, but a datapoint then changes between epochs.
Report scores with the fixed noise (`noise_seed=0`).
"""

from tfdgmm.data.dequantize import dequantize, quantize, reference_noise
from tfdgmm.data.errors import DataError, DataNotFoundError, DataUnavailableError
from tfdgmm.data.pipeline import DEQUANTIZE_MODES, make_dataset
from tfdgmm.data.splits import Split, Splits, load_cifar10

__all__ = [
    "DEQUANTIZE_MODES",
    "DataError",
    "DataNotFoundError",
    "DataUnavailableError",
    "Split",
    "Splits",
    "dequantize",
    "load_cifar10",
    "make_dataset",
    "quantize",
    "reference_noise",
]
