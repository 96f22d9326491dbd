"""House style that ruff does not check (ruff check and ruff format run in `make lint`).

* One docstring dialect: Markdown backticks and Google sections (`Args:`, `Returns:`,
  `Raises:`, then TFP's `#### Examples` / `#### References`), never reST roles
  (`:func:`, `:class:`, ...), reST double-backtick literals, or numpydoc underlined sections.
* Type hints on the orchestration code (`runs/`, `training/`, `export.py`, `keras.py`,
  `cli.py`): every parameter (but `self`/`cls`) and every return of every function.
"""

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tfdgmm"
SOURCES = sorted(PACKAGE.rglob("*.py"))
ANNOTATED = sorted(
    [*PACKAGE.joinpath("runs").glob("*.py"), *PACKAGE.joinpath("training").glob("*.py")]
    + [PACKAGE / "export.py", PACKAGE / "keras.py", PACKAGE / "cli.py"]
)

OTHER_DIALECT = re.compile(
    r"(?<!`)``(?!`)"  # reST inline literal
    r"|:(?:func|class|meth|mod|attr|data|obj|exc|param|type|returns?|rtype|raises):"  # roles
    r"|^\s*(?:Parameters|Returns|Raises|Yields|Examples?|Notes?|Attributes)\s*\n\s*-{3,}\s*$"
    r"|^\s*\.\. \w[\w-]*::",  # directives
    re.M,
)


def docstrings(tree):
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            text = ast.get_docstring(node, clean=False)
            if text:
                yield node, text


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_one_docstring_dialect(path):
    bad = []
    for node, text in docstrings(ast.parse(path.read_text())):
        for match in OTHER_DIALECT.finditer(text):
            where = getattr(node, "lineno", 1)
            bad.append(f"{path.relative_to(ROOT)}:{where}: {match.group(0).strip()!r}")
    assert not bad, "reST/numpydoc in docstrings (use Markdown and Args:/Returns:):\n" + (
        "\n".join(bad)
    )


def test_the_dialect_check_can_fail():
    for text in ("see :func:`f`", "``x``", "Returns\n-------\n", ".. note::"):
        assert OTHER_DIALECT.search(text), text
    assert not OTHER_DIALECT.search("```python\nx = `y`\n```\nArgs:\n  x: `int`.")


def unannotated(tree):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
            if args and args[0].arg in ("self", "cls"):
                args = args[1:]
            args += [a for a in (node.args.vararg, node.args.kwarg) if a is not None]
            missing = [a.arg for a in args if a.annotation is None]
            if node.returns is None:
                missing.append("return")
            if missing:
                yield node, missing


@pytest.mark.parametrize("path", ANNOTATED, ids=lambda p: str(p.relative_to(ROOT)))
def test_orchestration_code_is_annotated(path):
    bad = [
        f"{path.relative_to(ROOT)}:{node.lineno}: {node.name}({', '.join(missing)})"
        for node, missing in unannotated(ast.parse(path.read_text()))
    ]
    assert not bad, "unannotated parameters or returns:\n" + "\n".join(bad)
