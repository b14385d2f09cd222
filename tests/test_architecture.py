"""The package's shape, one obvious place for everything: no import cycle, no module named like
a standard-library one, no module over MAX_LINES lines."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "tispipe"
MAX_LINES = 400


def modules() -> dict[str, Path]:
    """Module name -> file for every tispipe/*.py: `tispipe.x` for x.py, `tispipe` for __init__.py."""
    found = {"tispipe" if p.stem == "__init__" else f"tispipe.{p.stem}": p for p in sorted(PACKAGE.glob("*.py"))}
    assert len(found) > 10, f"no modules found in {PACKAGE}"
    return found


def imported_modules(tree: ast.AST, known: set[str]) -> set[str]:
    """The tispipe modules a file imports, at module level or inside functions.

    `import tispipe.x`, `from tispipe.x import y` and `from tispipe import x` (when tispipe/x.py exists)
    all mean tispipe.x; relative imports (`from . import x`, `from .x import y`) are resolved too. A name
    from the package itself (`import tispipe`, `from tispipe import __version__`) means `tispipe`.
    """
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ("tispipe." + node.module if node.module else "tispipe") if node.level else node.module or ""
            if base == "tispipe":
                found.update(f"tispipe.{a.name}" if f"tispipe.{a.name}" in known else "tispipe" for a in node.names)
            else:
                found.add(base)
    # tispipe is flat: `tispipe.x.y` can only be an attribute of module tispipe.x.
    return {".".join(name.split(".")[:2]) for name in found if name == "tispipe" or name.startswith("tispipe.")} & known


def import_graph() -> dict[str, set[str]]:
    files = modules()
    known = set(files)
    return {name: imported_modules(ast.parse(path.read_text(encoding="utf-8"), str(path)), known) - {name} for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search with the path on a stack)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_imports_inside_functions_and_from_package_count():
    source = "\n".join([
        "import os",
        "from tispipe import shards",
        "def f():",
        "    import tispipe.models",
        "    from tispipe.errors import TispipeError",
        "    class A:",
        "        from .weights import compute_weights",
    ])
    known = {"tispipe", "tispipe.shards", "tispipe.models", "tispipe.errors", "tispipe.weights", "tispipe.data"}
    assert imported_modules(ast.parse(source), known) == {"tispipe.shards", "tispipe.models", "tispipe.errors", "tispipe.weights"}
    assert imported_modules(ast.parse("from tispipe import __version__"), known) == {"tispipe"}


def test_import_graph_has_no_cycle():
    graph = import_graph()
    assert any(graph.values()), "no imports between tispipe modules found: the parser is broken"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_module_shadows_the_standard_library():
    shadowing = sorted(name for name in modules() if name != "tispipe" and name.split(".")[1] in sys.stdlib_module_names - {"__main__"})
    assert not shadowing, f"named like standard-library modules: {shadowing}"


def test_no_module_is_over_the_line_limit():
    lengths = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in modules().items()}
    over = {name: n for name, n in sorted(lengths.items()) if n > MAX_LINES}
    assert not over, f"modules over {MAX_LINES} lines (split them): {over}"
