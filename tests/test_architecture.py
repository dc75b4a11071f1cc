"""The layout is the architecture: imports run one way between serq's packages.

Reads every module's imports with :mod:`ast` (module level, inside functions and under
``TYPE_CHECKING`` alike: a lazy import is still a dependency) and fails on an import that runs
against the layers below, on a cycle between packages, or on a cycle between modules (a
cycle a lazy import hides is still a cycle).

Layers, lowest first; a package may import only its own layer or lower ones::

    core (settings, errors, labels, files, progress) < schemas < transport < client
    core < schemas < engine < models < training < handlers < services < cli

``transport`` sits beside the engine: it knows the broker and the contract, nothing of audio.
``client`` (what an assistant imports) may use only core, schemas and transport. The CLI sits
on top of everything.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {"serq": "serq", "serq.worker": "worker", "serq.client": "client", "serq.schemas": "schemas",
           "serq.models": "models"}

#: package -> the packages it may import (besides itself).
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "schemas": {"core"},
    "transport": {"core", "schemas"},
    "client": {"core", "schemas", "transport"},
    "engine": {"core", "schemas"},
    "models": {"core", "schemas", "engine"},
    "training": {"core", "schemas", "engine", "models"},
    "handlers": {"core", "schemas", "engine", "models", "training"},
    "services": {"core", "schemas", "engine", "models", "training", "handlers", "transport"},
    "cli": {"core", "schemas", "engine", "models", "training", "handlers", "services", "transport", "client"},
}


def package_of(module: str) -> str | None:
    """The layer a serq module belongs to, or None for modules outside serq."""
    parts = module.split(".")
    if parts[0] != "serq":
        return None
    if len(parts) == 1:
        return "core"
    second = parts[1]
    if second == "worker":
        return parts[2] if len(parts) > 2 and parts[2] in ("engine", "training", "handlers", "services") else "worker"
    if second in ("schemas", "transport", "client", "models", "cli"):
        return second
    if second == "__main__":
        return "cli"  # `python -m serq` is the command line
    return "core"  # serq.settings, serq.errors, serq.labels, ...


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO)
    for name, folder in FOLDERS.items():
        if rel.parts[0] == folder:
            parts = [*name.split("."), *rel.parts[1:]]
            parts[-1] = parts[-1].removesuffix(".py")
            if parts[-1] == "__init__":
                parts.pop()
            return ".".join(parts)
    raise ValueError(path)


def imports_of(path: Path) -> set[str]:
    """Every serq module ``path`` imports, anywhere in the file."""
    tree = ast.parse(path.read_text(), str(path))
    me = module_name(path)
    here = me.split(".") if path.name == "__init__.py" else me.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import module`
    return {m for m in found if m.split(".")[0] == "serq"}


def sources() -> list[Path]:
    return sorted(p for folder in FOLDERS.values() for p in (REPO / folder).rglob("*.py"))


def package_graph() -> dict[str, dict[str, list[str]]]:
    """layer -> imported layer -> the 'module -> module' imports behind that edge."""
    graph: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in sources():
        me = module_name(path)
        mine = package_of(me)
        for target in imports_of(path):
            theirs = package_of(target)
            if theirs and theirs != mine and theirs != "worker":
                graph[mine][theirs].append(f"{me} -> {target}")
    return graph


def test_every_module_belongs_to_a_layer():
    loose = [module_name(p) for p in sources() if package_of(module_name(p)) == "worker"
             and module_name(p) != "serq.worker"]
    assert not loose, f"modules directly in worker/, outside engine/training/handlers/services: {loose}"


def test_imports_run_one_way():
    wrong = [edge for mine, targets in package_graph().items() for theirs, edges in targets.items()
             if theirs not in ALLOWED[mine] for edge in edges]
    assert not wrong, "imports against the layering:\n" + "\n".join(sorted(set(wrong)))


def test_no_cycle_between_packages():
    graph = {mine: set(targets) for mine, targets in package_graph().items()}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    cycles = sorted(f"{a} <-> {b}" for a in graph for b in graph[a] if reaches(b, a, {b}))
    assert not cycles, f"package cycles: {cycles}"


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_the_allowed_graph_itself_has_no_cycle(layer):
    # A guard on the table above: whatever it allows must still run one way.
    def below(x: str, seen: frozenset[str]) -> bool:
        return any(y == layer or (y not in seen and below(y, seen | {y})) for y in ALLOWED[x])

    assert not below(layer, frozenset({layer}))


def module_graph() -> dict[str, set[str]]:
    """module -> the serq modules it imports (``from pkg.mod import name`` counts as ``pkg.mod``)."""
    modules = {module_name(p): p for p in sources()}

    def resolve(target: str) -> str | None:
        parts = target.split(".")
        while parts and ".".join(parts) not in modules:
            parts.pop()
        return ".".join(parts) or None

    return {me: {m for t in imports_of(path) if (m := resolve(t)) and m != me} for me, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = stack[stack.index(v):]
            del stack[stack.index(v):]
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_no_cycle_between_modules():
    assert cycles(module_graph()) == []


def test_the_cycle_finder_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_no_test_module_imports_another():
    # Shared helpers live in tests/helpers/ and shared fixtures in conftest.py.
    tests = REPO / "tests"
    names = {p.stem for p in tests.rglob("test_*.py")}
    offenders = []
    for path in sorted(tests.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                imported = [node.module or ""] + ([f"{node.module}.{a.name}" for a in node.names] if node.module
                                                  else [a.name for a in node.names])
            elif isinstance(node, ast.Import):
                imported = [a.name for a in node.names]
            else:
                continue
            offenders += [f"{path.relative_to(REPO)} -> {m}" for m in imported if m.split(".")[-1] in names]
    assert not offenders, offenders
