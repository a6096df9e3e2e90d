"""The package's layers, read from the source: which may import which (lazy imports inside functions count too)."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lit_compclip"

# The library is what a user of a trained model needs: nothing in it may reach the trainer, the reports, the
# synthetic world or the commands. Each layer may import the layers named for it, and itself.
LIBRARY = {"lit_compclip", "errors", "registry", "ranks", "model", "factory", "losses", "metrics", "checkpoints",
           "text_cache", "towers", "probes", "encoders"}
ALLOWED = {
    "library": {"library"},
    "tools": {"library"},  # what every command shares: argument parsing, output folders, stopping on a signal
    "data": {"library", "tools"},
    "config": {"library", "tools", "data"},  # plug-ins are reached by name (config/plugins.py), never imported
    "recaption": {"library", "tools", "data"},
    "export": {"library", "tools", "data"},  # a trained model to other tools' folders (the library reads its own)
    "reports": {"library", "tools", "data", "config"},
    "training": {"library", "tools", "data", "config", "reports"},  # a run draws its probe chart
    # the synthetic world is a plug-in on top: it may use anything below, and only names reach it (config/plugins.py,
    # the hard-negative and recaption registries) or the commands
    "synth": {"library", "tools", "data", "config", "recaption", "reports", "training"},
    "commands": {"library", "tools", "data", "config", "synth", "recaption", "training", "reports", "export"},
}
NAMED = {"cli_args": "tools", "stopping": "tools", "cli": "commands", "evaluate": "commands", "embed": "commands"}


def layer(module: str) -> str:
    """lit_compclip.X.Y -> the layer of X."""
    parts = module.split(".")
    head = parts[1] if len(parts) > 1 else "lit_compclip"
    if head in LIBRARY:
        return "library"
    if head in NAMED:
        return NAMED[head]
    assert head in ALLOWED, f"{module}: no layer is declared for lit_compclip.{head} (tests/test_layers.py)"
    return head


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: pathlib.Path) -> set[str]:
    """Every module `path` imports, at the top or inside a function, relative imports made absolute."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}  # `from pkg import module`
    return found


SOURCES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_each_module_imports_only_the_layers_below_it(path):
    own = layer(module_name(path))
    for target in sorted(imports(path)):
        if target.startswith("benchmarks"):
            pytest.fail(f"{path.relative_to(ROOT)} imports {target}: nothing in the package imports the benchmarks")
        if not target.startswith("lit_compclip.") and target != "lit_compclip":
            continue
        if not (PACKAGE.parent / (target.replace(".", "/") + ".py")).exists() and \
                not (PACKAGE.parent / target.replace(".", "/")).is_dir():
            continue  # `from lit_compclip.x import name`: the module itself is checked
        theirs = layer(target)
        assert theirs == own or theirs in ALLOWED[own], \
            f"{path.relative_to(ROOT)} ({own}) imports {target} ({theirs}); {own} may import {sorted(ALLOWED[own])}"


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    # the rule must catch what a reader would miss: an import inside a function, and a relative one
    src = tmp_path / "lit_compclip" / "probes" / "x.py"
    src.parent.mkdir(parents=True)
    src.write_text("def f():\n    from lit_compclip.training import run\n\nfrom ..synth import world\n")
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        found = imports(src)
    finally:
        ROOT = saved
    assert {"lit_compclip.training.run", "lit_compclip.synth.world"} <= found
    assert layer("lit_compclip.training.run") == "training" and "training" not in ALLOWED["library"]


def test_scripts_and_notebooks_never_import_the_benchmarks_and_nothing_else_does():
    for path in [*ROOT.glob("scripts/*"), *ROOT.glob("notebooks/*.ipynb")]:
        # a path or a command that runs a benchmark in its own process (`python -m benchmarks.NAME`, as make does)
        text = path.read_text().replace("benchmarks/", "").replace("-m benchmarks.", "")
        assert "benchmarks" not in text, path
