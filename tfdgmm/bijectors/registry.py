"""The one table of transform types: config `type` -> `BankBijector` subclass (and Keras layer).

`tfdgmm.architectures` (normalising and building configs) and `tfdgmm.keras.DeepGMMModel` look
every layer type up here. An unknown type is an error that lists the registered ones, never a
fallback. A transform registers itself where it is defined:

```python
@registry.register
class Conv1x1(BankBijector):
    TYPE = "conv1x1"
    ...
```

and its Keras layer (optional; `tfdgmm.layers`) with `registry.register_layer("conv1x1", cls)`.
"""

from tfdgmm.bijectors.base import BankBijector

__all__ = ["keras_layer", "lookup", "register", "register_layer", "types", "unregister"]

_BIJECTORS = {}
_LAYERS = {}


def register(cls):
    """Register a `BankBijector` subclass under its `TYPE` (usable as a class decorator).

    Raises:
      TypeError: `cls` is not a `BankBijector` subclass.
      ValueError: `cls.TYPE` is not a string, or another class holds that type already.
    """
    if not (isinstance(cls, type) and issubclass(cls, BankBijector)):
        raise TypeError(f"register needs a BankBijector subclass; got {cls!r}")
    name = cls.TYPE
    if not isinstance(name, str) or not name:
        raise ValueError(f"{cls.__name__}.TYPE must be a non-empty string; got {name!r}")
    if _BIJECTORS.get(name, cls) is not cls:
        raise ValueError(
            f"transform type {name!r} is registered already (by {_BIJECTORS[name].__name__})"
        )
    _BIJECTORS[name] = cls
    return cls


def register_layer(name, layer_cls):
    """Register the Keras layer (a `tfdgmm.layers.TransformLayer` with a `from_spec`
    classmethod) that `DeepGMMModel` builds for layers of type `name`."""
    lookup(name)
    _LAYERS[name] = layer_cls
    return layer_cls


def unregister(name):
    """Remove a type (and its Keras layer); for tests of toy transforms."""
    _BIJECTORS.pop(name, None)
    _LAYERS.pop(name, None)


def types():
    """The registered type names, in registration order."""
    return tuple(_BIJECTORS)


def lookup(name):
    """The `BankBijector` subclass registered as `name`.

    Raises:
      ValueError: no transform has that type.
    """
    try:
        return _BIJECTORS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown transform type {name!r}; expected one of {list(_BIJECTORS)}"
        ) from None


def keras_layer(name):
    """The Keras layer class registered for type `name`.

    Raises:
      ValueError: the type is unknown, or has no Keras layer.
    """
    lookup(name)
    if name not in _LAYERS:
        raise ValueError(
            f"transform type {name!r} has no Keras layer (tfdgmm.layers); DeepGMMModel "
            f"cannot build it. Types with one: {list(_LAYERS)}"
        )
    return _LAYERS[name]
