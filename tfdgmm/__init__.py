"""tfdgmm: deep Gaussian mixture models of images with locally-connected transformations."""

__version__ = "0.1.0"
