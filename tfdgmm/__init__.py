"""tfdgmm: deep Gaussian mixture models of images with locally-connected transformations.

The pieces, in the order data flows through them:

* `tfdgmm.data`: CIFAR-10 (tfds, `.npz`, official batches), the paper's split protocol.
* `tfdgmm.bijectors`: the locally-connected transforms as TFP bijectors (`Patchify`,
  `BlockDiagonal`, `Diagonal`, `HalfConvolution`, `Dense`).
* `tfdgmm.DeepGMM`: the mixture over paths as a `tfp.distributions.Distribution`, with exact
  densities for small models, the E-step path search, lower and upper bounds, and sampling.
* `tfdgmm.path_priors`: distributions over paths (uniform, factorized, table, gating).
* `tfdgmm.training`: hard-EM training.
* `tfdgmm.layers`, `tfdgmm.keras`: the transforms as Keras 3 layers and `DeepGMMModel`.
* `tfdgmm.export`: SavedModel export; `tfdgmm.gaussian`: the Gaussian baseline.

`import tfdgmm` registers the Keras classes (`DeepGMMModel` and the layers) with Keras, so
`keras.models.load_model("model.keras")` works after it. Every subpackage above is an
attribute of `tfdgmm` (loaded on first use).

The `tfdgmm` command (`tfdgmm ...`, `python -m tfdgmm ...`) imports this package before it has
parsed its arguments; there the heavy imports (TensorFlow, TFP, Keras) wait until they are
needed, so `tfdgmm --help` is instant.
"""

import importlib as _importlib
import os as _os
import sys as _sys

__version__ = "0.1.0"

#: Subpackages and modules available as attributes (imported on first access).
_SUBMODULES = (
    "architectures",
    "bijectors",
    "conditional",
    "data",
    "deep_gmm",
    "export",
    "gaussian",
    "keras",
    "layers",
    "path_priors",
    "path_search",
    "testing",
    "training",
    "units",
)

__all__ = ["DeepGMM", "__version__", *_SUBMODULES]


def __getattr__(name):
    if name in _SUBMODULES:
        return _importlib.import_module(f"{__name__}.{name}")
    if name == "DeepGMM":
        return _importlib.import_module(f"{__name__}.deep_gmm").DeepGMM
    raise AttributeError(f"module 'tfdgmm' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))


def _command_line_process():
    """True when this process runs the `tfdgmm` command (console script or `python -m
    tfdgmm[.main_job]`), which imports the heavy parts itself after parsing its arguments."""
    if _os.environ.get("TFDGMM_LIGHT_IMPORT") == "1":
        return True
    argv = list(getattr(_sys, "orig_argv", None) or [])
    i = 1
    while i < len(argv) - 1:  # the interpreter's options, up to -m MODULE
        arg = argv[i]
        if arg == "-m":
            return argv[i + 1] in ("tfdgmm", "tfdgmm.cli", "tfdgmm.main_job")
        if arg in ("-X", "-W"):  # options with a separate argument
            i += 1
        elif arg == "-c" or not arg.startswith("-"):
            break
        i += 1
    script = _os.path.basename(_sys.argv[0]) if _sys.argv and _sys.argv[0] else ""
    return script in ("tfdgmm", "tfdgmm.exe", "tfdgmm-script.py")


def load_all():
    """Import the core (TF, TFP) and register the Keras classes (done by `import tfdgmm`,
    except in the `tfdgmm` command before its arguments are parsed)."""
    from tfdgmm import bijectors, path_priors  # noqa: F401
    from tfdgmm import keras as _keras  # noqa: F401  (registers DeepGMMModel and the layers)
    from tfdgmm.deep_gmm import DeepGMM

    globals()["DeepGMM"] = DeepGMM


if not _command_line_process():
    load_all()
