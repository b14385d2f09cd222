"""The package's shape, one obvious place for everything: no import cycle, no module named like
a standard-library one, no module over MAX_LINES lines, and the layers of docs/architecture.md: the stage
packages import only the shared layers, never each other."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "tispipe"
MAX_LINES = 400


def modules() -> dict[str, Path]:
    """Module name -> file for every .py under tispipe/: `tispipe.core.losses` for core/losses.py, `tispipe.core`
    for core/__init__.py, `tispipe` for __init__.py."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ("tispipe", *path.relative_to(PACKAGE).with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    assert len(found) > 10, f"no modules found in {PACKAGE}"
    return found


def _known_prefix(name: str, known: set[str]) -> str | None:
    """The longest dotted prefix of `name` that is a known module (`tispipe.x.y.f` -> `tispipe.x.y`), or None."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in known:
            return ".".join(parts[:end])
    return None


def imported_modules(tree: ast.AST, known: set[str], package: str = "tispipe") -> set[str]:
    """The tispipe modules a file imports, at module level or inside functions.

    `import tispipe.x`, `from tispipe.x import y` and `from tispipe import x` (when tispipe/x.py exists)
    all mean tispipe.x, and so on down the packages (`from tispipe.core import losses` means tispipe.core.losses);
    relative imports (`from . import x`, `from .x import y`) are resolved against `package`, the importing file's
    package. A name from the package itself (`import tispipe`, `from tispipe import __version__`) means `tispipe`.
    """
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(_known_prefix(alias.name, known) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(parent + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else _known_prefix(base, known))
    return {name for name in found if name} & known


def package_of(name: str, path: Path) -> str:
    """The package a module's relative imports resolve against: itself for an __init__.py, else its parent."""
    return name if path.stem == "__init__" else name.rsplit(".", 1)[0]


def import_graph() -> dict[str, set[str]]:
    files = modules()
    known = set(files)
    return {name: imported_modules(ast.parse(path.read_text(encoding="utf-8"), str(path)), known, package_of(name, path)) - {name}
            for name, path in files.items()}


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


def test_imports_resolve_down_the_packages():
    known = {"tispipe", "tispipe.core", "tispipe.core.losses", "tispipe.core.weights", "tispipe.data", "tispipe.data.pairs", "tispipe.errors"}
    source = "\n".join(["from tispipe.core import losses", "from tispipe.data.pairs import load_pairs", "from .weights import f",
                        "from . import losses", "import tispipe.errors", "from tispipe.data import something_else"])
    assert imported_modules(ast.parse(source), known, package="tispipe.core") == {
        "tispipe.core.losses", "tispipe.data.pairs", "tispipe.core.weights", "tispipe.errors", "tispipe.data"}


def test_import_graph_has_no_cycle():
    graph = import_graph()
    assert any(graph.values()), "no imports between tispipe modules found: the parser is broken"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_module_shadows_the_standard_library():
    shadowing = sorted(name for name in modules() if set(name.split(".")[1:]) & (sys.stdlib_module_names - {"__main__"}))
    assert not shadowing, f"named like standard-library modules: {shadowing}"


def test_no_module_is_over_the_line_limit():
    lengths = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in modules().items()}
    over = {name: n for name, n in sorted(lengths.items()) if n > MAX_LINES}
    assert not over, f"modules over {MAX_LINES} lines (split them): {over}"


# ---------------------------------------------------------------- layers (docs/architecture.md)
# The shared layers every stage builds on; the root's own modules (tispipe/*.py: options, config files,
# console, errors) are shared too, but for the command line itself, which sits above everything.
SHARED = ("core", "data", "modeling", "artifacts")
# One package per stage; a stage talks to another only through the folders it writes.
STAGES = ("prepare", "estimate", "train", "evaluate", "studies")
TOP = {"tispipe.cli", "tispipe.__main__"}
# (importer, imported) pairs allowed across the rules below, each with its reason. Keep it short.
EXCEPTIONS: dict[tuple[str, str], str] = {}


def layer_of(name: str) -> str:
    """`core`, `estimate`, ... for a module of that package; `root` for tispipe/*.py; `top` for the command line."""
    if name in TOP:
        return "top"
    parts = name.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in SHARED + STAGES) else "root"


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import that crosses the layers the wrong way, but for EXCEPTIONS:
    - a stage package imports no other stage package;
    - a shared layer (and the root's modules) imports no stage package and not the command line;
    - core (the math) imports nothing outside core but errors."""
    bad = []
    for importer, imported in sorted((a, b) for a, targets in graph.items() for b in targets):
        if (importer, imported) in EXCEPTIONS:
            continue
        src, dst = layer_of(importer), layer_of(imported)
        if src in STAGES and dst in STAGES and src != dst:
            bad.append(f"{importer} -> {imported}: stage {src} imports stage {dst} (share it through a shared layer or a folder)")
        elif src in SHARED + ("root",) and (dst in STAGES or dst == "top"):
            bad.append(f"{importer} -> {imported}: the shared layer {src} imports {dst}")
        elif src == "core" and dst != "core" and imported != "tispipe.errors":
            bad.append(f"{importer} -> {imported}: core imports {dst} (the math takes tensors and numbers, nothing else)")
    return bad


def test_every_module_is_in_a_layer():
    names = set(modules()) - {"tispipe"}
    layers = {layer_of(name) for name in names}
    assert layers <= set(SHARED + STAGES) | {"root", "top"}, layers
    assert set(SHARED + STAGES) <= layers, "a layer package is missing"


def test_layer_rule_finds_a_stage_importing_another():
    graph = {"tispipe.train.validation": {"tispipe.estimate.contrast", "tispipe.modeling.batching"}, "tispipe.core.losses": {"tispipe.configs"},
             "tispipe.data.toy": {"tispipe.artifacts.atomic"}, "tispipe.modeling.models": {"tispipe.train.train"}}
    assert [v.split(":")[0] for v in layer_violations(graph)] == [
        "tispipe.core.losses -> tispipe.configs", "tispipe.modeling.models -> tispipe.train.train", "tispipe.train.validation -> tispipe.estimate.contrast"]


def test_stages_import_only_the_shared_layers():
    graph = import_graph()
    assert any(layer_of(a) in STAGES and layer_of(b) in SHARED for a, targets in graph.items() for b in targets), "the parser is broken"
    assert not layer_violations(graph), "imports across the layers:\n" + "\n".join(layer_violations(graph))
    unused = [pair for pair in EXCEPTIONS if pair[1] not in graph.get(pair[0], set())]
    assert not unused, f"exceptions no longer needed (remove them): {unused}"


# ---------------------------------------------------------------- function length
MAX_FUNCTION_LINES = 80
# Functions allowed over the limit, each with its reason; an entry that fits the limit again must go.
LONG_FUNCTIONS = {
    "tispipe.estimate.estimate._estimate": "the stage's steps in order (pairs, pi+/pi-, shards, statistics, manifest), read top to bottom",
    "tispipe.studies.experiment.run": "the experiment's job plan in order (estimates, the lr sweep, the seeds, the generated block)",
}


def long_functions() -> dict[str, int]:
    """`module.function` (methods as `module.Class.method`) -> its length in lines, for every function over the limit."""
    found = {}
    for name, path in modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        scopes = [(node, name) for node in tree.body]
        while scopes:
            node, prefix = scopes.pop()
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                qualified = f"{prefix}.{node.name}"
                if not isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES:
                    found[qualified] = node.end_lineno - node.lineno + 1
                scopes.extend((child, qualified) for child in node.body)
    return found


def test_no_function_is_over_the_line_limit():
    found = long_functions()
    over = {name: n for name, n in sorted(found.items()) if name not in LONG_FUNCTIONS}
    assert not over, f"functions over {MAX_FUNCTION_LINES} lines (split them): {over}"
    stale = sorted(set(LONG_FUNCTIONS) - set(found))
    assert not stale, f"these fit in {MAX_FUNCTION_LINES} lines now: remove them from LONG_FUNCTIONS: {stale}"


def test_core_speaks_of_arguments_not_options():
    """The math names its own arguments in errors; which `--option` the user set is the commands' business."""
    found = []
    for path in sorted((PACKAGE / "core").glob("*.py")):
        source = path.read_text()
        for node in ast.walk(ast.parse(source)):
            text = ast.get_source_segment(source, node) if isinstance(node, ast.Raise) else None
            if text and re.search(r"[\"'(\s]--[a-z]", text):
                found.append(f"{path.name}:{node.lineno}: {text.splitlines()[0]}")
    assert not found, "core raises errors in the command line's words:\n" + "\n".join(found)
