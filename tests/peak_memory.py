"""A script run in a fresh process that measures its own peak resident memory: how the tests show that
a matrix larger than the memory a step may use goes through disk, not RAM.

Imported by the tests as ``from peak_memory import PEAK_MEMORY, run_child`` (``tests/`` is on
``sys.path`` through its conftest). A script defines ``peak()`` by starting with :data:`PEAK_MEMORY`,
warms up every code path it measures (imports, first calls), takes ``before = peak()``, does the work
and prints a JSON object as its last line, e.g. ``{"growth": peak() - before, "bytes": ...}``. The
process's high-water mark (``ru_maxrss``) only rises, so each growth is since ``before``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

#: prepended to every script: ``peak()``, the process's peak resident memory so far, in bytes
PEAK_MEMORY = textwrap.dedent(
    """
    import resource
    peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # bytes (Linux: KiB)
    """
)


def run_child(script: str, *args: str, workdir: Path, timeout: int = 170) -> dict:
    """Run ``script`` (its arguments in ``sys.argv[1:]``) in a fresh process on one thread, from a file in
    ``workdir``; return the JSON object its last line of output prints."""
    path = workdir / "child.py"
    path.write_text(PEAK_MEMORY + textwrap.dedent(script))
    result = subprocess.run(
        [sys.executable, str(path), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])
