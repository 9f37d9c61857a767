"""A Python script run in a fresh process where hf_monosem cannot be imported: what a user of a remote-code
checkpoint has (torch and transformers only).

Imported by the tests as ``from fresh_process import run_without_hf_monosem`` (``tests/`` is on
``sys.path`` through its conftest).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

#: prepended to every script: importing hf_monosem (or any of its modules) raises ImportError
BLOCK_HF_MONOSEM = textwrap.dedent(
    """
    import importlib.abc, sys
    class BlockHfMonosem(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "hf_monosem" or name.startswith("hf_monosem."):
                raise ImportError(f"{name} is hidden in this process")
    sys.meta_path.insert(0, BlockHfMonosem())
    """
)


def run_without_hf_monosem(script: str, *args: str, workdir: Path) -> dict:
    """Run ``script`` (its arguments in ``sys.argv[1:]``) offline in ``workdir`` with hf_monosem hidden;
    return the JSON object its last line of output prints."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(workdir / "modules"), TRANSFORMERS_VERBOSITY="error")
    proc = subprocess.run(
        [sys.executable, "-c", BLOCK_HF_MONOSEM + textwrap.dedent(script), *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
