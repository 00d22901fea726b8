"""The package's layers, read from the source with ``ast`` (nothing is imported).

- ``models/``, ``nn/``, ``data/`` and ``inference.py`` sit below training and studies: none
  of their modules imports ``matxfer.train`` or ``matxfer.study``, neither at module level
  nor inside a function.
- module-level imports form no cycle (a function-level import may point upwards, e.g. the
  registry importing the class a name refers to on first look-up).
"""

from __future__ import annotations

import ast
from pathlib import Path

import matxfer

SRC = Path(matxfer.__file__).resolve().parent
LOWER = ("matxfer.models", "matxfer.nn", "matxfer.data", "matxfer.inference")
UPPER = ("matxfer.train", "matxfer.study")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str, path: Path, known: set[str]) -> list[tuple[str, bool, int]]:
    """(imported matxfer module, at module level?, line) for every import in a file.

    ``from package import name`` counts as an import of ``package.name`` when that is a
    module. Imports under ``if TYPE_CHECKING:`` are left out (they never run).
    """
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    found: list[tuple[str, bool, int]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for sub in child.orelse:
                    visit_one(sub, top)
                continue
            visit_one(child, top)

    def visit_one(node: ast.AST, top: bool) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append((alias.name, top, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, is_package, node)
            found.append((target, top, node.lineno))
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in known:
                    found.append((sub, top, node.lineno))
        else:
            inner = top and not isinstance(
                node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
            )
            visit(node, inner)

    visit(tree, True)
    return [(m, top, line) for m, top, line in found if m == "matxfer" or m.startswith("matxfer.")]


def _graph() -> tuple[dict[str, Path], dict[str, list[tuple[str, bool, int]]]]:
    mods = _modules()
    known = set(mods)
    return mods, {m: _imports(m, p, known) for m, p in mods.items()}


def test_the_import_graph_sees_the_package():
    mods, edges = _graph()
    assert "matxfer.models.base" in mods and "matxfer.train.loop" in mods
    # function-level imports are seen too
    assert any(not top for m in edges.values() for _, top, _ in m)


def test_lower_layers_never_import_training_or_studies():
    mods, edges = _graph()
    bad = [
        f"{mods[m].relative_to(SRC.parent)}:{line} imports {target}"
        + ("" if top else " (inside a function)")
        for m in sorted(edges)
        if _within(m, LOWER)
        for target, top, line in edges[m]
        if _within(target, UPPER)
    ]
    assert not bad, "\n".join(bad)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), plus self-loops."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_module_level_imports_have_no_cycles():
    mods, edges = _graph()
    graph: dict[str, set[str]] = {}
    for m, targets in edges.items():
        graph[m] = set()
        for target, top, _ in targets:
            if not top or target == m:
                continue
            # importing a.b.c runs a/__init__ and a/b/__init__ first
            parts = target.split(".")
            for i in range(2, len(parts) + 1):
                name = ".".join(parts[:i])
                if name in mods and name != m and not m.startswith(name + "."):
                    graph[m].add(name)
    cycles = _cycles(graph)
    detail = []
    for comp in cycles:
        members = set(comp)
        links = [
            f"  {m} -> {t} (line {line})"
            for m in comp
            for t, top, line in edges[m]
            if top and t in members
        ]
        detail.append(" <-> ".join(comp) + "\n" + "\n".join(links))
    assert not cycles, "import cycles among module-level imports:\n" + "\n".join(detail)
