"""The package's layering, read from the source (AST: nothing is imported or run): no import cycles, the op package
never imports the exporter, the slim runtime never imports the export, training or serving code, and the leaf
modules import nothing of the package. Imports inside functions count: they are cycles all the same."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pard_export", "plugins")
LEAVES = ("pard_export.contract", "pard_export.errors", "pard_export.files", "pard_export.host")
NOT_FROM_RUNTIME = (
    "pard_export.export",
    "pard_export.train",
    "pard_export.triton_repo",
    "pard_export.serve",
    "pard_export.cli",
    "pard_export.bench",
    "pard_export.demo",
)


def module_files() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_names(module: str, path: Path) -> set[str]:
    """Every dotted name an import statement in the file names (`from a import b` names a.b: b is a submodule or a
    name in a, which the graph resolves to a). Parent packages, which Python imports first, are not counted."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (a name resolves to its longest prefix that is a module)."""
    modules = module_files()
    graph = {}
    for module, path in modules.items():
        targets = set()
        for name in imported_names(module, path):
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


@pytest.fixture(scope="module")
def graph():
    return import_graph()


def test_the_graph_sees_known_edges(graph):
    assert "pard_export.errors" in graph["pard_export.runtime.session"]
    assert "plugins.pard_attention.onnxruntime_op" in graph["pard_export.runtime.backend_ort"]
    assert "plugins.pard_attention.dtypes" in graph["plugins.pard_attention.triton_fused"]


def test_cycle_finder_finds_a_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles(graph):
    assert find_cycles(graph) == []


def test_plugins_never_import_the_exporter(graph):
    offending = {
        m: sorted(t for t in ts if t.startswith("pard_export")) for m, ts in graph.items() if m.startswith("plugins")
    }
    assert {m: ts for m, ts in offending.items() if ts} == {}


def test_runtime_imports_no_export_training_or_serving_code(graph):
    offending = {
        m: sorted(t for t in ts if t.startswith(NOT_FROM_RUNTIME))
        for m, ts in graph.items()
        if m.startswith("pard_export.runtime")
    }
    assert {m: ts for m, ts in offending.items() if ts} == {}


@pytest.mark.parametrize("leaf", LEAVES)
def test_leaf_modules_import_nothing_of_the_package(graph, leaf):
    assert graph[leaf] == set()
