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
    "report": 6,
}
#: top-level modules any folder may import: they import nothing of the package themselves
LEAVES = {"_deprecation"}


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
        if dst not in LEAVES and (dst not in RANK or RANK[dst] >= RANK[src])
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


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_level_imports(path: Path, name: str) -> set[str]:
    """Package modules ``name`` imports while it is being imported (module level, not inside functions)."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    targets = set()
    body = list(ast.parse(path.read_text()).body)
    while body:  # module level includes the branches of if / try at module level
        node = body.pop()
        if isinstance(node, (ast.If, ast.Try)):
            body.extend([*node.body, *node.orelse, *getattr(node, "finalbody", [])])
            body.extend(stmt for handler in getattr(node, "handlers", []) for stmt in handler.body)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            base = base[: len(base) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            for alias in node.names:  # `from . import sae` imports the submodule sae
                sub = f"{module}.{alias.name}"
                targets.add(sub if (ROOT / Path(*sub.split("."))).with_suffix(".py").exists() else module)
        elif isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
    # a module's own ancestors (its parent packages) are imported before it: not an edge
    return {t for t in targets if t.startswith("hf_monosem") and not name.startswith(t + ".") and t != name}


def test_no_import_circle_anywhere():
    graph = {_module_name(p): _module_level_imports(p, _module_name(p)) for p in PACKAGE.rglob("*.py")}
    circles, done = [], set()

    def visit(module: str, stack: list[str]) -> None:
        if module in stack:
            circles.append(" -> ".join([*stack[stack.index(module) :], module]))
            return
        if module in done or module not in graph:
            return
        for target in sorted(graph[module]):
            visit(target, [*stack, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    assert not circles, "import circles:\n" + "\n".join(sorted(set(circles)))


def _is_private(name: str) -> bool:
    """``_name`` is private; dunder names (``__version__``, ``__all__``) are not."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _is_package_module(dotted: str) -> bool:
    """Whether ``dotted`` names a module (file or folder) of hf_monosem."""
    where = ROOT / Path(*dotted.split("."))
    return dotted.split(".")[0] == "hf_monosem" and (where.with_suffix(".py").is_file() or where.is_dir())


def _private_reaches(path: Path) -> list[str]:
    """Every place where ``path`` uses a private name of *another* module of hf_monosem.

    Caught: ``from X import _name``, ``from X._private_module import name`` (except the LEAVES, which any
    folder may import), and ``X._name`` where ``X`` is bound to a package module (``import hf_monosem.x as
    X``, ``from hf_monosem import x``, ``hf_monosem.x._name``). A module's own privates are fine, as are
    privates of other libraries (torch's, transformers') and attributes of objects (only modules are
    followed: ``model._keep_in_fp32_modules`` is transformers' protocol, not a reach into our code).
    """
    own = _module_name(path) if path.is_relative_to(PACKAGE) else None
    package = (own if path.name == "__init__.py" else own.rpartition(".")[0]) if own else ""
    tree = ast.parse(path.read_text())
    bound: dict[str, str] = {}  # local name -> the dotted package name it is bound to
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            if module.split(".")[0] != "hf_monosem" or module == own:
                continue
            hidden = [part for part in module.split(".")[1:] if _is_private(part) and part not in LEAVES]
            if hidden:
                found.append(f"line {node.lineno}: from {module} import ... (private module {hidden[0]})")
            for alias in node.names:
                if _is_private(alias.name) and not (module == "hf_monosem" and alias.name in LEAVES):
                    found.append(f"line {node.lineno}: from {module} import {alias.name}")
                bound[alias.asname or alias.name] = f"{module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "hf_monosem":
                    bound[alias.asname or "hf_monosem"] = alias.name if alias.asname else "hf_monosem"
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and _is_private(node.attr)):
            continue
        chain, value = [], node.value
        while isinstance(value, ast.Attribute):
            chain.append(value.attr)
            value = value.value
        if isinstance(value, ast.Name) and value.id in bound:
            module = ".".join([bound[value.id], *reversed(chain)])
            if module != own and _is_package_module(module):
                found.append(f"line {node.lineno}: {module}.{node.attr}")
    return found


def test_no_module_uses_another_modules_private_names():
    # a helper another module needs is public API of its module (named without underscore, documented;
    # in __all__ only if it is meant for users) or it moves to where it belongs
    bad = [
        f"{path.relative_to(ROOT)} {reach}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for reach in _private_reaches(path)
    ]
    assert not bad, "private names used across modules of hf_monosem:\n" + "\n".join(bad)


def test_examples_benchmarks_and_tests_use_no_private_names_of_the_package():
    # they use the package as its users do; a test of a helper tests the (public) helper
    files = [
        path
        for folder in ("examples", "benchmarks", "tests")
        for path in sorted((ROOT / folder).rglob("*.py"))
    ]
    bad = [f"{path.relative_to(ROOT)} {reach}" for path in files for reach in _private_reaches(path)]
    assert not bad, "private names of hf_monosem used:\n" + "\n".join(bad)


def test_a_bare_copy_of_models_imports_in_any_order(tmp_path):
    # the remote-code layout: models/*.py next to the weights, no hf_monosem installed; transformers may
    # import any of the files first (the config before the modeling code). One copy per first file, all
    # checked in one interpreter (torch and transformers load once).
    import shutil
    import subprocess
    import sys

    firsts = ("sae", "configuration", "feature_layers", "modeling")
    for first in firsts:
        copy = tmp_path / f"copy_{first}"
        copy.mkdir()
        (copy / "__init__.py").write_text("")
        for path in (PACKAGE / "models").glob("*.py"):
            if path.name != "__init__.py":
                shutil.copy(path, copy / path.name)
    check = (
        "import importlib, sys\n"
        "sys.modules['hf_monosem'] = None  # a user without the package\n"
        "from transformers import BertConfig\n"
        "for first in sys.argv[1:]:\n"
        "    importlib.import_module(f'copy_{first}.{first}')\n"
        "    config = importlib.import_module(f'copy_{first}.configuration')\n"
        "    config.MonoSemanticConfig(backbone_config=BertConfig(), feature_layer='topk')\n"
        "    kinds = importlib.import_module(f'copy_{first}.feature_layers').FEATURE_LAYERS\n"
        "    print(first, sorted(kinds))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", check, *firsts], cwd=tmp_path, capture_output=True, text=True, timeout=170
    )
    assert run.returncode == 0, run.stderr[-3000:]
    kinds = ["gated", "jumprelu", "linear", "nonneg", "sae", "topk"]
    assert run.stdout.splitlines() == [f"{first} {kinds}" for first in firsts]
