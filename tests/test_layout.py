"""The package layout of docs/ARCHITECTURE.md, checked on the code: data flows one way between the
folders, models/ is self-contained (remote code copies it), and examples use only public names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hf_monosem"

#: a folder may import folders of a lower rank only (equal ranks: not each other)
RANK = {
    "models": 0,
    "data": 1,
    "adapters": 1,
    "training": 2,
    "cached": 3,
    "scenarios": 4,
    "evaluation": 4,
    "hub": 5,
}


def _imports(path: Path) -> list[tuple[int, str]]:
    """(level, module) of every ``from ... import`` and ``import ...`` in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            found.append((node.level, node.module or ""))
        elif isinstance(node, ast.Import):
            found.extend((0, alias.name) for alias in node.names)
    return found


def _folder_edges() -> set[tuple[str, str, str]]:
    edges = set()
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).parts
        if len(parts) < 2 or parts[0] not in RANK:
            continue
        for level, module in _imports(path):
            if level >= 2:  # from ..other import x
                target = module.split(".")[0]
            elif level == 0 and module.startswith("hf_monosem."):
                target = module.split(".")[1]
            else:
                continue
            if target and target != parts[0]:
                edges.add((parts[0], target, str(path.relative_to(ROOT))))
    return edges


def test_every_folder_is_ranked():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == set(RANK), (
        f"new or removed folders: {folders ^ set(RANK)}; rank them in RANK and ARCHITECTURE.md"
    )


def test_lower_layers_never_import_higher_ones():
    bad = sorted(
        f"{where}: {src} -> {dst}"
        for src, dst, where in _folder_edges()
        if dst not in RANK or RANK[dst] >= RANK[src]
    )
    assert not bad, "imports against the data flow:\n" + "\n".join(bad)


def test_models_folder_imports_only_its_own_files_relatively():
    # remote-code export copies modeling.py and its same-folder relative imports; anything else breaks it
    bad = [
        f"{path.name}: level={level} module={module!r}"
        for path in (PACKAGE / "models").glob("*.py")
        for level, module in _imports(path)
        if level > 1 or (level == 0 and module.split(".")[0] == "hf_monosem")
    ]
    assert not bad, bad


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "examples").glob("*.py")))
def test_examples_use_only_public_names(script):
    tree = ast.parse((ROOT / "examples" / script).read_text())
    private = [
        f"{node.module}.{alias.name}"
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hf_monosem")
        for alias in node.names
        if alias.name.startswith("_") or any(part.startswith("_") for part in node.module.split("."))
    ]
    assert not private, f"{script} imports private names {private}"
