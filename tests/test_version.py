"""The version is written once (pyproject.toml) and read from the installed metadata."""

import importlib.metadata
import re
from pathlib import Path

import tomllib

import hf_monosem


def test_version_comes_from_the_installed_metadata():
    assert hf_monosem.__version__ == importlib.metadata.version("hf_monosem")


def test_the_version_is_written_in_one_place():
    root = Path(__file__).resolve().parents[1]
    assert re.fullmatch(
        r"\d+\.\d+\.\d+", tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]
    )
    written = [
        str(path.relative_to(root))
        for path in (root / "hf_monosem").rglob("*.py")
        if re.search(r"""__version__\s*=\s*["']\d+\.\d+""", path.read_text())
    ]
    assert not written, f"a version literal in {written}: read it from importlib.metadata"
