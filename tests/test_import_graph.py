"""The import graph of ``vla_steer`` has no cycles: neither between packages nor between modules.

Every module is parsed with ``ast`` (nothing is imported), and every ``import`` / ``from ... import`` of
``vla_steer.*`` counts, at module level and inside functions alike: a function-level import is a dependency that
merely runs later. Packages are ``vla_steer.<name>`` (``hub``, ``lerobot_policy``, ``training``, ``algorithms``,
``adapters``, ``steering``, ``envs``, ``data``, ``policies``, ``metrics``); top-level modules (``vla_steer.config``,
``vla_steer.pipeline``, ``vla_steer.cli`` ...) are nodes of their own. Importing ``vla_steer.a.b`` from outside
``vla_steer.a`` also runs ``vla_steer/a/__init__.py``, so it counts as an import of ``vla_steer.a`` too. Imports
under ``if TYPE_CHECKING:`` never run and only name types for annotations; they are left out.

The layering these checks hold in place (lower never imports higher)::

    cli  ->  lerobot_policy (ActingHead, SteeredPolicy, load_steered, export_run)
          ->  hub (the head format and its I/O)  ->  steering, adapters, policies, config
"""

from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parent.parent / "vla_steer"
ROOT = "vla_steer"


@dataclass(frozen=True)
class Edge:
    source: str  # importing module
    target: str  # imported module (or package)
    line: int
    function_level: bool
    package_init: bool = False  # the implicit import of a package's __init__ by importing one of its modules

    def __str__(self) -> str:
        where = "in a function" if self.function_level else "module level"
        return f"{self.source}:{self.line} -> {self.target} ({where}{', runs its __init__' if self.package_init else ''})"


def module_files() -> dict[str, Path]:
    """``{dotted module name: file}`` of every module of the package (``__init__`` files name their package)."""
    modules = {}
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return name in modules and modules[name].name == "__init__.py"


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of ``name`` that is a module of the package (``vla_steer.hub.api.resolve_repo`` ->
    ``vla_steer.hub.api``), or None outside the package."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


class _Collector(ast.NodeVisitor):
    def __init__(self, module: str, modules: dict[str, Path]):
        self.module, self.modules = module, modules
        self.package = module if _is_package(module, modules) else module.rpartition(".")[0]
        self.depth = 0  # > 0 inside a function
        self.edges: list[Edge] = []

    def _function(self, node) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_If(self, node: ast.If) -> None:
        """``if TYPE_CHECKING:`` bodies never run (type names for annotations only): their imports are left out."""
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
                isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def _add(self, name: str, line: int) -> None:
        target = _resolve(name, self.modules)
        if target is None or target == self.module:
            return
        self.edges.append(Edge(self.module, target, line, self.depth > 0))
        # importing vla_steer.a.b from outside vla_steer.a first runs vla_steer/a/__init__.py
        parts = target.split(".")
        for end in range(2, len(parts)):
            parent = ".".join(parts[:end])
            if not (self.module == parent or self.module.startswith(parent + ".")):
                self.edges.append(Edge(self.module, parent, line, self.depth > 0, package_init=True))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name == ROOT or alias.name.startswith(ROOT + "."):
                self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".")
            base = base[: len(base) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        if not (source == ROOT or source.startswith(ROOT + ".")):
            return
        for alias in node.names:
            submodule = f"{source}.{alias.name}"
            self._add(submodule if submodule in self.modules else source, node.lineno)


def import_edges() -> list[Edge]:
    modules = module_files()
    edges = []
    for module, path in modules.items():
        collector = _Collector(module, modules)
        collector.visit(ast.parse(path.read_text(), filename=str(path)))
        edges += collector.edges
    return list(dict.fromkeys(edges))  # `from m import a, b` is one statement


def package_of(module: str) -> str:
    """``vla_steer.hub.api`` -> ``vla_steer.hub``; a top-level module (``vla_steer.config``) is its own node."""
    return ".".join(module.split(".")[:2])


def strongly_connected(nodes: set[str], edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one node (each one holds a cycle)."""
    index, low, stack, on_stack, components, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
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
                components.append(sorted(component))

    for node in sorted(nodes):
        if node not in index:
            visit(node)
    return components


def shortest_cycle(start: str, members: set[str], edges: dict[str, set[str]]) -> list[str]:
    """A shortest cycle through ``start`` inside its strongly connected component (breadth-first)."""
    parents, frontier = {start: None}, [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(edges.get(node, ())):
                if nxt == start:
                    path = [node]
                    while parents[path[-1]] is not None:
                        path.append(parents[path[-1]])
                    return [*reversed(path), start]
                if nxt in members and nxt not in parents:
                    parents[nxt] = node
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"{start} is on no cycle")


def cycle_report(kind: str, node_of, edges: list[Edge], max_statements: int = 4) -> str:
    """The cycles of the graph whose nodes are ``node_of(module)``: for every node of every strongly connected
    component, a shortest cycle through it, each edge with the import statements that make it."""
    graph: dict[str, set[str]] = defaultdict(set)
    statements: dict[tuple[str, str], list[Edge]] = defaultdict(list)
    nodes = set()
    for edge in edges:
        a, b = node_of(edge.source), node_of(edge.target)
        nodes |= {a, b}
        if a != b:
            graph[a].add(b)
            statements[a, b].append(edge)
    lines = []
    for component in strongly_connected(nodes, graph):
        cycles = []
        for node in component:
            cycle = shortest_cycle(node, set(component), graph)
            turn = cycle[:-1].index(min(cycle[:-1]))
            cycle = cycle[turn:-1] + cycle[:turn] + [cycle[turn]]  # one rotation per cycle, so each is listed once
            if cycle not in cycles:
                cycles.append(cycle)
        lines.append(f"{kind} import cycle(s) among {', '.join(component)}:")
        members = set(component)
        inner = [(a, b) for a in component for b in sorted(graph[a]) if b in members]
        breaking = [(a, b) for a, b in inner if not strongly_connected(
            members, {n: {m for m in graph[n] if m in members and (n, m) != (a, b)} for n in component})]
        if breaking:
            lines.append("  removing any one of these imports breaks every cycle here: " + "; ".join(
                f"{a} -> {b} ({', '.join(f'{e.source}:{e.line}' for e in statements[a, b][:max_statements])})"
                for a, b in breaking))
        for cycle in cycles:
            lines.append(f"  {' -> '.join(cycle)}")
            for a, b in zip(cycle, cycle[1:]):
                found = sorted(statements[a, b], key=lambda e: (e.package_init, e.source, e.line))
                lines += [f"      {edge}" for edge in found[:max_statements]]
                if len(found) > max_statements:
                    lines.append(f"      ... and {len(found) - max_statements} more {a} -> {b}")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def edges() -> list[Edge]:
    return import_edges()


def test_the_parser_sees_module_and_function_level_imports(edges):
    """Guards the checks below against silently finding nothing."""
    found = {(e.source, e.target, e.function_level) for e in edges}
    assert ("vla_steer.cli", "vla_steer.config", False) in found
    assert any(e.source == "vla_steer.cli" and e.target.startswith("vla_steer.hub") and e.function_level for e in edges)
    assert ("vla_steer.lerobot_policy.head", "vla_steer.hub", False) in found  # the package __init__ runs first


def test_no_import_cycle_between_packages(edges):
    report = cycle_report("package", package_of, [e for e in edges if not e.package_init])
    assert not report, "\n" + report


def test_no_import_cycle_between_modules(edges):
    """No module imports, while it is being imported, a module that imports it back (directly or around a loop):
    the cycles that make "partially initialized module" errors depend on which module is imported first. Imports
    inside functions count for the package graph above; within one package a function-level import (a factory
    importing the classes it builds, a lazy re-export in an ``__init__``) is not a cycle at import time."""
    report = cycle_report("module", lambda module: module, [e for e in edges if not e.function_level])
    assert not report, "\n" + report


def test_the_hub_layer_imports_nothing_above_it(edges):
    """The head format and its I/O sit below the acting head and the steered policy (as PEFT's save_and_load sits
    below PeftModel): ``vla_steer.hub`` imports neither ``vla_steer.lerobot_policy`` nor ``vla_steer.training``
    (nor the entry points built on them)."""
    above = ("vla_steer.lerobot_policy", "vla_steer.training", "vla_steer.pipeline", "vla_steer.cli", "vla_steer.__main__")
    upward = [str(e) for e in edges if package_of(e.source) == "vla_steer.hub" and package_of(e.target) in above]
    assert not upward, "\n" + "\n".join(upward)
