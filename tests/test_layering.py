"""The package's shape, checked from its source: imports never go in circles, `methods/` stays pure PyTorch, no
module reaches into another's private names or Ray's internals outside the one adapter, and no file grows past
400 lines (a file that does is usually two ideas)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("methods", "orchestrator")
MAX_LINES = 400
# The one module allowed to touch Ray's private modules (with a fallback, and a test of its own).
RAY_ADAPTER = "orchestrator.run.ray_internals"


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module imported from, names imported, line) for every import that runs (TYPE_CHECKING blocks excluded)."""
    found: list[tuple[str, list[str], int]] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    found.append((alias.name, [], child.lineno))
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                found.append((child.module, [a.name for a in child.names], child.lineno))
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for module, names, _ in _imports(path):
            targets = [f"{module}.{n}" for n in names if f"{module}.{n}" in modules] or [module]
            for target in targets:
                if target in modules and target != name:
                    graph[name].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strongconnect(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                strongconnect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            strongconnect(node)
    return out


def test_imports_never_go_in_circles():
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_methods_are_pure_pytorch():
    """methods/ is a library of losses: no orchestration, no Ray, no files, no config parsing."""
    banned_modules = ("orchestrator", "ray", "yaml", "json", "pickle", "shutil", "pathlib", "os", "io",
                      "safetensors", "datasets")
    wrong = []
    for name, path in _modules().items():
        if not name.startswith("methods"):
            continue
        for module, _, line in _imports(path):
            if module.split(".")[0] in banned_modules:
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "open":
                wrong.append(f"{path.relative_to(ROOT)}:{node.lineno} opens a file")
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("save", "load") and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "torch"):
                wrong.append(f"{path.relative_to(ROOT)}:{node.lineno} calls torch.{node.func.attr}")
    assert wrong == []


def test_no_module_imports_a_private_name_of_another():
    wrong = []
    for name, path in _modules().items():
        for module, names, line in _imports(path):
            private_module = any(part.startswith("_") for part in module.split("."))
            if module.split(".")[0] == "ray":
                if private_module and name != RAY_ADAPTER:
                    wrong.append(f"{path.relative_to(ROOT)}:{line} imports Ray's internal {module}")
                continue
            if module.split(".")[0] not in PACKAGES:
                continue
            private = [n for n in names if n.startswith("_")]
            if private_module or private:
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {module} {private}")
    assert wrong == []


def test_no_file_is_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in _modules().values()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}
