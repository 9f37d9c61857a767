"""Examples use the machine's cores when ``accelerate launch``, not the user, chose one thread."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from hf_monosem.training.threads import accelerate_defaulted_to_one_thread

SCRIPT = """
import torch
from hf_monosem.training import use_available_cores
print("THREADS", use_available_cores(), torch.get_num_threads())
"""
CORES = len(os.sched_getaffinity(0))


def _launch(tmp_path, *launch_args: str, omp: str | None = None) -> int:
    # one script file per launch: launches may run side by side, and none may read another's half-written file
    script = tmp_path / f"threads_{'_'.join(launch_args).strip('-')}_{omp}.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS" and not k.startswith("ACCELERATE_")}
    if omp is not None:
        env["OMP_NUM_THREADS"] = omp
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--num_processes",
            "1",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            *launch_args,
            str(script),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    line = next(line for line in out.stdout.splitlines() if line.startswith("THREADS"))
    reported, actual = map(int, line.split()[1:])
    assert reported == actual
    return actual


@pytest.mark.skipif(CORES < 2, reason="needs at least 2 cores to tell one thread from all")
def test_accelerate_default_of_one_thread_is_raised_to_the_cores(tmp_path):
    assert _launch(tmp_path) == CORES


def test_a_users_thread_choice_is_kept(tmp_path):
    # two independent launches (each one thread, as chosen): side by side, one launch's wall time on 2 cores
    with ThreadPoolExecutor(2) as pool:
        by_omp = pool.submit(_launch, tmp_path, omp="1")
        by_flag = pool.submit(_launch, tmp_path, "--num_cpu_threads_per_process", "1")
        assert by_omp.result() == 1
        assert by_flag.result() == 1


def test_outside_accelerate_nothing_changes():
    assert not accelerate_defaulted_to_one_thread({"OMP_NUM_THREADS": "1"}, [], ["python", "x.py"])
    assert not accelerate_defaulted_to_one_thread(
        {"OMP_NUM_THREADS": "4", "ACCELERATE_X": "1"}, [], ["accelerate"]
    )
