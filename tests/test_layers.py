"""The layers the README's "How the code is laid out" promises, read from the source.

Every import counts, a function's lazy one too: a dependency deferred is still one.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

from .conftest import REPO

PACKAGE = REPO / "mailer"


def _module(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def _trees() -> dict[str, ast.Module]:
    return {_module(p): ast.parse(p.read_text(encoding="utf-8"), str(p))
            for p in sorted(PACKAGE.rglob("*.py"))}


@cache
def _imports() -> dict[str, frozenset[str]]:
    """Each module's imported names, absolute: ``from .x import y`` gives both
    ``mailer.x`` and ``mailer.x.y`` (y may be a module)."""
    graph: dict[str, frozenset[str]] = {}
    for name, tree in _trees().items():
        is_package = (PACKAGE.parent / Path(*name.split(".")) / "__init__.py").exists()
        package = name if is_package else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = package.split(".")
                    parts = parts[: len(parts) - (node.level - 1)]
                    base = ".".join(parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                found.add(base)
                found |= {f"{base}.{a.name}" for a in node.names}
        graph[name] = frozenset(found)
    return graph


def _reaches(start: str) -> set[str]:
    """Every name imported by ``start`` or by the mailer modules it imports, onward."""
    graph = _imports()
    seen: set[str] = set()
    todo = [start]
    while todo:
        for name in graph[todo.pop()]:
            if name not in seen:
                seen.add(name)
                if name in graph:
                    todo.append(name)
    return seen


def _hits(reached: set[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(n for n in reached
                  if any(n == f or n.startswith(f + ".") for f in forbidden))


def test_the_graph_is_read() -> None:
    """The checks below are only as good as the graph: it must see known edges."""
    assert "mailer.transport" in _reaches("mailer.send")
    assert "mailer.store" in _reaches("mailer.web")
    assert "jinja2" in _reaches("mailer.render")
    assert _hits({"mailer.store.roster"}, ("mailer.store",)) == ["mailer.store.roster"]
    assert _hits({"mailer.storefront"}, ("mailer.store",)) == []


@pytest.mark.parametrize(("start", "forbidden"), [
    # The engine takes prepared messages and a ledger; it never parses or renders.
    ("mailer.send", ("mailer.compose", "mailer.render", "mailer.issue", "mailer.campaigns",
                     "jinja2", "premailer")),
    ("mailer.transport", ("mailer.store", "mailer.compose", "mailer.render", "sqlite3")),
    # The web app reads and records; it never sends.
    ("mailer.web", ("mailer.send", "mailer.transport", "mailer.campaigns", "aiosmtplib")),
    # Parsing, rendering and message bytes know no database.
    ("mailer.issue", ("mailer.store", "sqlite3", "sqlite_utils")),
    ("mailer.render", ("mailer.store", "sqlite3", "sqlite_utils")),
    ("mailer.message", ("mailer.store", "sqlite3", "sqlite_utils")),
    # Reading a CSV yields models; the store takes them.
    ("mailer.recipients_file", ("mailer.store", "sqlite3", "sqlite_utils")),
])
def test_a_layer_does_not_reach(start: str, forbidden: tuple[str, ...]) -> None:
    assert _hits(_reaches(start), forbidden) == []


def test_nothing_below_the_cli_imports_it_and_nothing_imports_the_tests() -> None:
    graph = _imports()
    entry = {"mailer.__main__"}  # `python -m mailer` is the CLI's own door
    below = [m for m, names in graph.items()
             if not m.startswith("mailer.cli") and m not in entry
             and _hits(set(names), ("mailer.cli",))]
    assert below == []
    assert [m for m, names in graph.items() if _hits(set(names), ("tests",))] == []


def _public_signatures_with_any() -> list[str]:
    found = []
    for module, tree in _trees().items():
        def walk(node: ast.AST, private: bool, module: str = module) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.ClassDef):
                    walk(child, private or child.name.startswith("_"))
                elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    name = child.name
                    if private or (name.startswith("_") and not name.startswith("__")):
                        continue
                    a = child.args
                    annotations = [x.annotation for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
                    annotations += [a.vararg and a.vararg.annotation,
                                    a.kwarg and a.kwarg.annotation, child.returns]
                    text = " ".join(ast.unparse(x) for x in annotations if x is not None)
                    if re.search(r"\bAny\b", text):
                        found.append(f"{module}:{child.lineno} {name}")
        walk(tree, False)
    return found


def test_no_public_signature_says_any() -> None:
    assert _public_signatures_with_any() == []
