"""Load a script of the repository that is not a package module (`configs/make_configs.py`,
`bench/*.py`) as a module, for the tests of what it computes."""

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script(relative_path: str, name: str | None = None):
    """The module of `ROOT/relative_path`, executed once per call."""
    path = os.path.join(ROOT, relative_path)
    name = name or os.path.splitext(relative_path)[0].replace(os.sep, "_")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
