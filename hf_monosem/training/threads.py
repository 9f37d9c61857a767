"""CPU threads under ``accelerate launch``: use the machine's cores when accelerate, not the user, chose one.

``accelerate launch`` (1.15) exports ``OMP_NUM_THREADS=1`` to the script whenever the user set neither
``OMP_NUM_THREADS`` nor ``--num_cpu_threads_per_process`` and did not pass ``--cpu``: on a machine
without GPUs every README command then trains on one core. The launched script cannot see that
choice in its own environment (a user's ``OMP_NUM_THREADS=1`` looks the same), so
:func:`use_available_cores` looks at the launcher process itself (Linux ``/proc``): only when the
launcher's own environment has no ``OMP_NUM_THREADS`` and its command line no
``--num_cpu_threads_per_process`` does it raise torch's intra-op threads to the cores per local
process. Anything the user set is left alone.
"""

from __future__ import annotations

import logging
import os

import torch

__all__ = ["accelerate_defaulted_to_one_thread", "use_available_cores"]

logger = logging.getLogger(__name__)

_THREADS_FLAG = "--num_cpu_threads_per_process"


def _read_proc(pid: int, name: str) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as f:
            return [part.decode(errors="replace") for part in f.read().split(b"\0") if part]
    except OSError:
        return None


def accelerate_defaulted_to_one_thread(
    environ: dict[str, str] | None = None,
    launcher_environ: list[str] | None = None,
    launcher_cmdline: list[str] | None = None,
) -> bool:
    """Whether this process runs with ``OMP_NUM_THREADS=1`` only because ``accelerate launch`` chose it.

    The arguments default to this process's environment and its parent's ``/proc`` entries (given
    explicitly, they make the decision testable).

    Example:
        >>> accelerate_defaulted_to_one_thread(
        ...     {"OMP_NUM_THREADS": "1", "ACCELERATE_MIXED_PRECISION": "no"},
        ...     ["PATH=/usr/bin"], ["python", "-m", "accelerate.commands.launch", "x.py"])
        True
        >>> accelerate_defaulted_to_one_thread({"OMP_NUM_THREADS": "1", "ACCELERATE_MIXED_PRECISION": "no"},
        ...                                    ["OMP_NUM_THREADS=1"], ["accelerate", "launch", "x.py"])
        False
    """
    environ = dict(os.environ) if environ is None else environ
    if environ.get("OMP_NUM_THREADS") != "1" or not any(key.startswith("ACCELERATE_") for key in environ):
        return False
    if launcher_environ is None or launcher_cmdline is None:
        parent = os.getppid()
        launcher_environ = _read_proc(parent, "environ") if launcher_environ is None else launcher_environ
        launcher_cmdline = _read_proc(parent, "cmdline") if launcher_cmdline is None else launcher_cmdline
        if launcher_environ is None or launcher_cmdline is None:
            return False  # not Linux, or no access: do not guess
    if not any("accelerate" in part for part in launcher_cmdline):
        return False
    user_set_threads = any(entry.startswith("OMP_NUM_THREADS=") for entry in launcher_environ) or any(
        part == _THREADS_FLAG or part.startswith(_THREADS_FLAG + "=") for part in launcher_cmdline
    )
    return not user_set_threads


def use_available_cores() -> int:
    """Raise torch's threads to the cores per local process if accelerate defaulted to one; return the count.

    Call it at the start of a script that ``accelerate launch`` may run on CPU.

    Example:
        >>> use_available_cores() >= 1
        True
    """
    if not accelerate_defaulted_to_one_thread():
        return torch.get_num_threads()
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")) or 1)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cores // max(local_processes, 1))
    if threads > 1:
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)  # for child processes (data-loader workers)
        logger.info(
            "accelerate launch set OMP_NUM_THREADS=1 by default; using %d threads per process on %d cores "
            "(set OMP_NUM_THREADS or --num_cpu_threads_per_process to choose)",
            threads,
            cores,
        )
    return torch.get_num_threads()
