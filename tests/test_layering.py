"""The layer map of docs/DESIGN.md, enforced on every import of every tfdgmm module.

The map is the fenced `layers` block in DESIGN.md ("The layer map"): one layer a line, bottom
first; a module may import (top-level or inside a function) only modules of its own layer or of
the layers below it. Importing `a.b.c` also runs the package `a.b`, so that counts as an import
of `a.b` too (the root package `tfdgmm`, a lazy facade, excepted). The module graph has no
cycle at run time (imports under `if TYPE_CHECKING:`, for annotations, follow the map but
never run), and no module reaches into another module's private names (`obj._name` with `obj` not
`self`/`cls`/`super()`, or `from m import _name` from outside `m`'s package).
"""

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tfdgmm"
DESIGN = ROOT / "docs" / "DESIGN.md"

#: Private names of other libraries that tfdgmm reads on purpose, with the reason.
ALLOWED_PRIVATE = {
    # keras 3 keeps a LearningRateSchedule only there (`learning_rate` evaluates it)
    ("tfdgmm/keras.py", "_learning_rate"),
}


def module_name(path):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def read_map():
    text = DESIGN.read_text()
    block = re.search(r"```layers\n(.*?)```", text, re.S)
    assert block, "docs/DESIGN.md has no ```layers block (the layer map)"
    layers = []
    for line in block.group(1).splitlines():
        line = line.split("#")[0].strip()
        if line:
            layers.append([f"tfdgmm.{name.strip()}" for name in line.split(",")])
    return layers


def layer_of(module, layers):
    """Index of the layer whose longest entry is `module` or a package above it."""
    best = None
    for i, entries in enumerate(layers):
        for entry in entries:
            if module == entry or module.startswith(entry + "."):
                if best is None or len(entry) > len(best[1]):
                    best = (i, entry)
    return None if best is None else best[0]


def resolve(name):
    """The tfdgmm module a dotted name refers to (a module, or a name inside one)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def type_checking_only(tree):
    """The import statements under `if TYPE_CHECKING:` (for annotations; they never run)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in node.body:
                for sub in ast.walk(inner):
                    if isinstance(sub, (ast.Import, ast.ImportFrom)):
                        out.add(id(sub))
    return out


def imports(module, runtime_only=False):
    """`(line, imported module)` for every tfdgmm import in `module`, at any depth (without
    the `if TYPE_CHECKING:` ones when `runtime_only`)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    skip = type_checking_only(tree) if runtime_only else set()
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package
                for _ in range(node.level - 1):
                    anchor = anchor.rpartition(".")[0]
                base = f"{anchor}.{base}" if base else anchor
            targets = [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            if target == "tfdgmm" or target.startswith("tfdgmm."):
                found = resolve(target)
                if found is not None:
                    out.append((node.lineno, found))
    return out


def executed(target):
    """`target` and the packages above it that importing it runs (not the root)."""
    parts = target.split(".")
    return [".".join(parts[:k]) for k in range(2, len(parts) + 1)]


def test_every_module_is_on_the_map():
    layers = read_map()
    missing = [m for m in MODULES if m != "tfdgmm" and layer_of(m, layers) is None]
    assert not missing, f"modules not on DESIGN.md's layer map: {missing}"


def test_imports_follow_the_layer_map():
    layers = read_map()
    bad = []
    for module in MODULES:
        if module == "tfdgmm":
            continue
        own = layer_of(module, layers)
        for line, target in imports(module):
            for imported in executed(target):
                theirs = layer_of(imported, layers)
                if theirs is not None and theirs > own:
                    bad.append(
                        f"{MODULES[module].relative_to(ROOT)}:{line}: {module} (layer {own}) "
                        f"imports {imported} (layer {theirs})"
                    )
    assert not bad, "imports against DESIGN.md's layer map:\n" + "\n".join(sorted(set(bad)))


def find_cycle(graph):
    state = {}
    stack = []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_module_graph_has_no_cycle():
    graph = {
        m: {t for _, t in imports(m, runtime_only=True) if t not in (m, "tfdgmm")}
        for m in MODULES
        if m != "tfdgmm"
    }
    # A package's __init__ imports its own modules by design; the modules do not import it.
    for m in graph:
        graph[m] = {
            t for t in graph[m] if not (MODULES[t].name == "__init__.py" and m.startswith(t + "."))
        }
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def private_names_defined(tree):
    """Names a module defines: functions, classes, module names, `self._x`/`cls._x` stores."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.ctx, ast.Store)
            and isinstance(node.value, ast.Name)
            and node.value.id in ("self", "cls")
        ):
            names.add(node.attr)
    return names


def is_private(name):
    return name.startswith("_") and not name.startswith("__")


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_private_access_across_modules(module):
    path = MODULES[module]
    rel = str(path.relative_to(ROOT))
    tree = ast.parse(path.read_text())
    own = private_names_defined(tree)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and is_private(node.attr):
            value = node.value
            if isinstance(value, ast.Name) and value.id in ("self", "cls"):
                continue
            if isinstance(value, ast.Call) and getattr(value.func, "id", None) == "super":
                continue
            if node.attr in own or (rel, node.attr) in ALLOWED_PRIVATE:
                continue
            bad.append(f"{rel}:{node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                # a package's private module is for that package's own modules
                if is_private(alias.name) and node.module != package:
                    bad.append(f"{rel}:{node.lineno}: from {node.module} import {alias.name}")
    assert not bad, "private names of other modules:\n" + "\n".join(bad)
