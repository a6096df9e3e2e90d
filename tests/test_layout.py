"""docs/LAYOUT.md matches the tree: every module is listed with what it does, nothing listed is missing, and a module
over the size the style sets says why it is longer."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
LONG = 300  # lines: a module longer than this needs its reason written beside it


def listed() -> dict[str, str]:
    """path -> its line of the layout table (`| path | what it holds |`)."""
    rows = {}
    for line in (ROOT / "docs" / "LAYOUT.md").read_text().splitlines():
        match = re.match(r"\|\s*`([^`]+)`\s*\|(.*)\|\s*$", line)
        if match:
            rows[match.group(1)] = match.group(2).strip()
    return rows


def shipped() -> set[str]:
    files = {p for p in ROOT.glob("lit_compclip/**/*.py") if p.name != "__init__.py"}
    files |= {p for p in ROOT.glob("benchmarks/*.py") if p.name != "__init__.py"} | set(ROOT.glob("scripts/*"))
    return {str(p.relative_to(ROOT)) for p in files if "__pycache__" not in p.parts}


def test_layout_lists_every_module_and_nothing_else():
    rows, files = listed(), shipped()
    assert not files - set(rows), f"modules missing from docs/LAYOUT.md: {sorted(files - set(rows))}"
    assert not set(rows) - files, f"docs/LAYOUT.md lists files that do not exist: {sorted(set(rows) - files)}"
    assert all(len(what) > 10 for what in rows.values()), [p for p, what in rows.items() if len(what) <= 10]


def test_a_long_module_says_why():
    rows = listed()
    for path in sorted(shipped()):
        if path.endswith(".py"):
            n = len((ROOT / path).read_text().splitlines())
            if n > LONG:
                assert "longer:" in rows[path], f"{path} has {n} lines: say why in docs/LAYOUT.md ('longer: ...')"


def test_readme_is_a_short_path_with_a_picture_and_working_links():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150, "README.md is a newcomer's path: at most 150 lines (results live in docs/)"
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text, re.S)
    assert pictures and all((ROOT / p).is_file() for p in pictures), pictures
    for target in re.findall(r"\]\(((?!http)[^)#]+)(?:#[^)]*)?\)", text):
        assert (ROOT / target).exists(), f"README.md links to {target}, which does not exist"
