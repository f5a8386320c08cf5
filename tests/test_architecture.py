"""The layering the code relies on: api/ is the bottom, and no module imports itself back.

Read from the source with ast, so lazy imports inside functions count too; only imports under
``if TYPE_CHECKING:`` are left out (they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("api", "mcp_server", "supervisor")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree: ast.AST, package: str) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []  # types only
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], base]).strip(".")
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def import_graph() -> nx.DiGraph:
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")] + [ROOT / "agent_manager.py"]
    modules = {_module_name(p): p for p in files}
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for target in _imports(ast.parse(path.read_text(encoding="utf-8")), package):
            if target in modules and target != name:
                graph.add_edge(name, target)
    return graph


def test_the_product_modules_import_each_other_without_a_cycle() -> None:
    graph = import_graph()
    assert len(graph) > 40  # the walk found the packages
    cycles = list(nx.simple_cycles(graph))
    assert cycles == [], f"import cycles: {cycles}"


def test_the_queue_layer_imports_neither_the_supervisor_nor_the_mcp_server() -> None:
    graph = import_graph()
    upward = [
        (source, target)
        for source, target in graph.edges
        if source.startswith("api") and target.startswith(("supervisor", "mcp_server", "agent_manager"))
    ]
    assert upward == []


def test_the_mcp_server_does_not_import_the_supervisor() -> None:
    graph = import_graph()
    assert [(s, t) for s, t in graph.edges if s.startswith("mcp_server") and t.startswith("supervisor")] == []
