"""tfdgmm: deep Gaussian mixture models of images with locally-connected transformations.

The pieces, in the order data flows through them:

* `tfdgmm.bijectors`: the locally-connected transforms as TFP bijectors (`Patchify`,
  `BlockDiagonal`, `Diagonal`, `HalfConvolution`, `Dense`).
* `tfdgmm.DeepGMM`: the mixture over paths as a `tfp.distributions.Distribution`, with exact
  densities for small models, the E-step path search, lower and upper bounds, and sampling.
* `tfdgmm.path_priors`: distributions over paths (uniform, factorized, table).
* `tfdgmm.training`: hard-EM training.
"""

from tfdgmm import bijectors
from tfdgmm import path_priors
from tfdgmm.deep_gmm import DeepGMM

__version__ = "0.1.0"

__all__ = ["DeepGMM", "bijectors", "path_priors", "__version__"]
