"""The package's import graph, lazy imports inside functions included, has no cycle."""

import ast
from pathlib import Path

import lit_compclip

PACKAGE = Path(lit_compclip.__file__).parent


def module_names() -> dict[str, Path]:
    """{dotted module name: file} for every module of lit_compclip/ (a package by its __init__.py)."""
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def imported(node: ast.AST, module: str, is_package: bool, modules: dict) -> set[str]:
    """The package's modules one import statement names. `from X import a` is X.a when that is a module, else X;
    importing a submodule runs its parent package's __init__ first, which is no edge (else every package whose
    __init__ re-exports a submodule would be a cycle)."""
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: resolved against the importing module's package
            package = module.split(".") if is_package else module.split(".")[:-1]
            package = package[:len(package) - node.level + 1]
            base = ".".join(package + ([base] if base else []))
        targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
    found = set()
    for target in targets:
        while target and target not in modules:  # `import a.b.c` of a name inside a module: that module
            target = target.rpartition(".")[0]
        if target and target != module:
            found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = module_names()
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        graph[name] = set()
        for node in ast.walk(tree):  # every statement, module-level or inside a function
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[name] |= imported(node, name, path.name == "__init__.py", modules)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search, grey = on the current path)."""
    state, path = {}, []

    def visit(node):
        state[node] = "grey"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "grey":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = "black"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle_and_resolves_lazy_and_relative_imports():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
    modules = {"p": None, "p.x": None, "p.y": None, "p.q": None, "p.q.z": None}
    tree = ast.parse("def f():\n    from .y import g\n    from . import q\n    from .q.z import h\n"
                     "    import p.q.z\n    from p import x\n    import numpy\n")
    found = set().union(*(imported(n, "p.x", False, modules) for n in ast.walk(tree)
                          if isinstance(n, (ast.Import, ast.ImportFrom))))
    assert found == {"p.y", "p.q", "p.q.z"}  # itself and numpy are no edges


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert {"lit_compclip.training.run", "lit_compclip.checkpoints", "lit_compclip.synth.write"} <= set(graph)
    assert "lit_compclip.encoders" in graph["lit_compclip.evaluate"]  # lazy and module-level imports both count
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
