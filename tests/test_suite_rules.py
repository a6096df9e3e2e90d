"""Rules the suite keeps itself: a test module never imports another (what they share is in conftest.py and
helpers.py), so each module runs alone and no fixture is built twice under two modules' names."""

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def module_names(folder: Path) -> set[str]:
    return {p.stem for p in folder.glob("test_*.py")}


def imports_of_test_modules(folder: Path) -> list[str]:
    """'file:line module' for every import (at any depth, in any function) of one of the folder's test modules."""
    modules, found = module_names(folder), []
    for path in sorted(folder.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            found += [f"{path.name}:{node.lineno} {name}" for name in names if name.split(".")[0] in modules]
    return found


def test_no_test_module_imports_another():
    assert imports_of_test_modules(TESTS) == [], "move what they share to tests/conftest.py or tests/helpers.py"


def test_the_rule_sees_an_import_inside_a_function_too(tmp_path):
    (tmp_path / "test_a.py").write_text("def shared():\n    return 1\n")
    (tmp_path / "test_b.py").write_text("import os\n\n\ndef test_x():\n    from test_a import shared\n")
    (tmp_path / "test_c.py").write_text("import test_a as a\nfrom helpers import DEFAULT\n")
    assert imports_of_test_modules(tmp_path) == ["test_b.py:5 test_a", "test_c.py:1 test_a"]
