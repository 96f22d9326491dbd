"""Exceptions raised by `tfdgmm.data`.

Every message names the problem and the path (or the tfds name) it concerns.
"""


class DataError(ValueError):
    """Data is missing, malformed, or too small for the requested splits."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A path given as a data source does not exist or holds no recognised data."""


class DataUnavailableError(DataError, RuntimeError):
    """tensorflow-datasets could not provide the data (typically: no network to download it)."""
