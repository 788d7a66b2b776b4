"""The layout rules of DESIGN.md that imports can break, read from the source with ``ast``.

Every import counts: top-level, function-local and ``TYPE_CHECKING`` ones alike, since a local
import is still a dependency, only a hidden one. ``from X import Y`` is an import of the module
``X.Y`` where that is a module of the project, else of ``X``.

* ``engines/`` is the ground floor: nothing in it imports ``stream_server`` or ``benchmarks``.
* The project's modules form no import cycle (no strongly connected component of more than one
  module in the graph of their imports).
"""

from __future__ import annotations

import ast
from collections import deque
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("engines", "stream_server", "benchmarks")
GROUND = "engines"
ABOVE_GROUND = ("stream_server", "benchmarks")

# Known cycles, each to be removed by the change named beside it (none left).
ALLOWED_CYCLES: set[frozenset[str]] = set()


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported module (or the dotted name, where it is no module of the project)
    where: str  # path:line of the import statement


def module_files(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under the packages (a package is its __init__)."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def imports_of(name: str, path: Path, root: Path, modules: dict[str, Path]) -> list[Import]:
    """Every import in a module's source, wherever in the file it is written."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(tree):
        where = f"{path.relative_to(root)}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            found.extend(Import(name, alias.name, where) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: counted from the importing module's package
                package = name.split(".") if is_package else name.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            for alias in node.names:
                child = f"{base}.{alias.name}"
                found.append(Import(name, child if child in modules else base, where))
    return found


def project_imports(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> tuple[dict[str, Path], list[Import]]:
    modules = module_files(root, packages)
    found = [imp for name, path in modules.items() for imp in imports_of(name, path, root, modules)]
    return modules, list(dict.fromkeys(imp for imp in found if imp.target.split(".")[0] in packages))


def owning_module(target: str, modules: dict[str, Path]) -> str | None:
    """The project module a dotted name lives in (its longest prefix that is a module)."""
    parts = target.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return None


def import_cycles(modules: dict[str, Path], found: list[Import]) -> list[tuple[frozenset[str], list[Import]]]:
    """Each strongly connected component of more than one module (Tarjan's algorithm), with one
    cycle of imports through it (the shortest way round from its first module)."""
    edges: dict[str, dict[str, Import]] = {name: {} for name in modules}
    for imp in found:
        target = owning_module(imp.target, modules)
        if target is not None and target != imp.source:
            edges[imp.source].setdefault(target, imp)

    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def connect(node: str) -> None:  # recursion depth is at most the number of modules
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges[node]:
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for name in sorted(modules):
        if name not in index:
            connect(name)

    cycles = []
    for component in components:
        start = min(component)
        came_from: dict[str, Import] = {}
        queue = deque([start])
        while queue:  # breadth first inside the component, back to the start
            node = queue.popleft()
            for target, imp in sorted(edges[node].items()):
                if target in component and target not in came_from:
                    came_from[target] = imp
                    queue.append(target)
        path = [came_from[start]]
        while path[0].source != start:
            path.insert(0, came_from[path[0].source])
        cycles.append((frozenset(component), path))
    return cycles


def describe(cycle: list[Import]) -> str:
    """``a -> b -> a (where a imports b; where b imports a)``."""
    names = " -> ".join([imp.source for imp in cycle] + [cycle[0].source])
    return f"{names} ({'; '.join(f'{imp.where} imports {imp.target}' for imp in cycle)})"


def test_engines_import_nothing_above_them() -> None:
    _, found = project_imports()
    upward = [imp for imp in found if imp.source.split(".")[0] == GROUND and imp.target.split(".")[0] in ABOVE_GROUND]
    assert not upward, "engines/ is the ground floor (DESIGN.md, Layout) but imports what is built on it:\n" + "\n".join(
        f"  {imp.where}: {imp.source} imports {imp.target}" for imp in upward
    )


def test_no_import_cycles() -> None:
    modules, found = project_imports()
    cycles = [(component, cycle) for component, cycle in import_cycles(modules, found) if component not in ALLOWED_CYCLES]
    assert not cycles, "import cycles among the project's modules:\n" + "\n".join(
        f"  {describe(cycle)}" + (f", in a loop of {len(component)} modules: {', '.join(sorted(component))}" if len(component) > len(cycle) else "")
        for component, cycle in cycles
    )


def test_a_cycle_through_a_local_import_is_found(tmp_path: Path) -> None:
    """The walker sees imports inside functions and relative ones, and names the whole cycle."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg import b\n")
    (package / "b.py").write_text("def late():\n    from .c import thing\n")
    (package / "c.py").write_text("import pkg.a\nthing = 1\n")
    (package / "d.py").write_text("from pkg.a import x\n")  # into the cycle, not part of it
    modules, found = project_imports(tmp_path, ("pkg",))
    cycles = import_cycles(modules, found)
    assert [(sorted(component), [imp.source for imp in cycle]) for component, cycle in cycles] == [
        (["pkg.a", "pkg.b", "pkg.c"], ["pkg.a", "pkg.b", "pkg.c"])
    ]
    assert describe(cycles[0][1]).startswith("pkg.a -> pkg.b -> pkg.c -> pkg.a (pkg/a.py:1 imports pkg.b; pkg/b.py:2")
