"""Fault injection: a long phase killed (SIGKILL) at a point inside it, then rerun, ends exactly like an
uninterrupted run and redoes only the work whose result was not yet on disk.

The phases: the cached route (feature extraction with its cache, SAE and contrastive projector fits saved
together as one representation cache, a probe grid, the result file), the fine-tune grid (one Trainer run
per cell, finished cells appended to a JSONL state file) and contrastive pretraining
(``examples/pretrain_ncl.py``: ContrastiveTrainer checkpoints, resumed with ``--resume_from_checkpoint``).
A kill can land inside a write (an atomic cache file, a state line being appended, a checkpoint being
saved): the rerun must never trust half of one.

The fine-tune grid and pretraining are killed at a random point drawn from a seeded generator (the seed
and the point are printed and named in every assertion message, so a failure can be replayed): after the
k-th unit of work (cell, training step) has started, plus a random delay. Counting units in the log of the
killed process makes the point land inside the phase whatever the machine's load.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from hf_monosem.training.checkpoints import last_complete_checkpoint

SCRIPT = r"""
import json, os, sys
import torch
from datasets import Dataset
from transformers import BertConfig, BertModel
from hf_monosem import extract_pooled_features
from hf_monosem.cached import (fit_contrastive_projector, load_feature_layers, save_feature_layers,
                               tensors_sha256, train_probe_grid, train_sae_layer)
from hf_monosem.models import FeatureLayerSettings, build_feature_layer
from hf_monosem.training.checkpoints import write_json

out = sys.argv[1]
torch.set_num_threads(1)
torch.manual_seed(0)
bert = BertModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64)).eval()
g = torch.Generator().manual_seed(1)
y = torch.arange(256) % 2
ids = 10 + 40 * y[:, None] + torch.randint(0, 40, (256, 24), generator=g)
data = Dataset.from_dict({"input_ids": ids.numpy(), "label": y.numpy()})
cache = os.path.join(out, "cache")
present = os.path.isdir(cache) and os.listdir(cache)
print("phase: extract" + (" (cache present)" if present else ""), flush=True)
x = extract_pooled_features(bert, data, batch_size=16, cache_dir=cache)
path = os.path.join(out, "representations.safetensors")
fingerprint = tensors_sha256({"x": x})
layers = load_feature_layers(path, fingerprint)
if layers is None:
    print("phase: fit", flush=True)
    torch.manual_seed(0)
    settings = FeatureLayerSettings(feature_dim=64, topk=8, sae_normalize_input=True)
    sae = build_feature_layer(settings, 32, kind="topk")
    report = train_sae_layer(sae, x, epochs=40, batch_size=32, progress=False)
    projector, _ = fit_contrastive_projector(
        x, feature_dim=32, projector_hidden_dim=32, epochs=40, progress=False
    )
    save_feature_layers(path, {"sae": (sae.eval(), {"ev": report["final_explained_variance"]}),
                               "ncl": (projector, {})}, fingerprint)
    layers = load_feature_layers(path, fingerprint)
with torch.no_grad():
    features = {name: layer(x)[0] for name, (layer, _) in layers.items()}
print("phase: probe", flush=True)
result = {}
for name, f in features.items():
    grid = train_probe_grid(f, y[None], 2, epochs=60, batch_size=32, seeds=[0])
    accuracy = ((f @ grid.weight[0] + grid.bias[0]).argmax(1) == y).float().mean()
    result[name] = {"accuracy": float(accuracy), "weight_sum": float(grid.weight.double().sum())}
write_json(os.path.join(out, "result.json"), result)
print("phase: done", flush=True)
"""


#: the phases of SCRIPT, in the order it prints them; each is killed once, half-way through it
ROUTE_PHASES = ("extract", "fit", "probe")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_killed_cached_route_reruns_to_the_uninterrupted_result_redoing_only_missing_work(tmp_path):
    script = tmp_path / "route.py"
    script.write_text(SCRIPT)
    log, marks = _run_until([sys.executable, str(script), str(tmp_path / "full")], "phase:")
    assert "phase: done" in log and len(marks) == len(ROUTE_PHASES) + 1, log
    expected = json.loads((tmp_path / "full" / "result.json").read_text())

    def kill_in_phase_and_rerun(index: int) -> None:
        """SIGKILL half of the uninterrupted run's phase ``index`` after the phase started, then rerun."""
        phase = ROUTE_PHASES[index]
        out = tmp_path / f"killed_{phase}"
        cmd = [sys.executable, str(script), str(out)]
        killed, _ = _run_until(cmd, f"phase: {phase}", 1, 0.5 * (marks[index + 1] - marks[index]))
        assert "phase: done" not in killed, (phase, killed)  # the kill landed before the end
        had_cache = (out / "cache").is_dir() and any((out / "cache").glob("*.safetensors"))
        had_layers = (out / "representations.safetensors").is_file()
        rerun, _ = _run_until(cmd, "phase:")
        assert "phase: done" in rerun, (phase, rerun)
        # atomic writes: no half file was ever left under a cache name
        assert "is not used" not in rerun, rerun
        assert ("(cache present)" in rerun) == had_cache, rerun
        assert ("phase: fit" in rerun) == (not had_layers), rerun  # fitted layers on disk are not refitted
        assert json.loads((out / "result.json").read_text()) == expected, (phase, rerun)

    # The three kill-and-rerun runs share nothing on disk: side by side they take about half the wall time
    # on 2 cores. Each kill is timed from its own phase's start line, so a slower (shared) run is still
    # killed inside the phase: a slowed phase lasts longer than half of its uninterrupted duration.
    with ThreadPoolExecutor(len(ROUTE_PHASES)) as pool:
        for done in [pool.submit(kill_in_phase_and_rerun, i) for i in range(len(ROUTE_PHASES))]:
            done.result()


FINETUNE_SCRIPT = r"""
import sys
import torch
sys.path[:0] = [sys.argv[2], f"{sys.argv[2]}/scenarios"]  # tests/: the grid tests' tiny image track
from test_scenario_grid import _image_track
from hf_monosem.scenarios import finetune
from hf_monosem.training.checkpoints import write_json


class PrintedCalls(list):
    def append(self, kind):  # the track's model factory calls this once per cell it trains
        print("cell:", kind, flush=True)  # the test counts these lines
        super().append(kind)


out = sys.argv[1]
torch.set_num_threads(1)
track = _image_track(PrintedCalls())  # seeds torch first: the same pretrained start in every process
budget = finetune.FinetuneBudget(epochs=2, few_shot_steps=3, batch_size=8, train_size=16)
records = finetune.finetune_records(
    track, [0.0, 0.5], [1], [0, 1], budget, state_file=f"{out}/cells.jsonl", work_dir=f"{out}/work",
    progress=False,
)
write_json(f"{out}/records.json", records)
print("phase: done", flush=True)
"""
TESTS = str(Path(__file__).resolve().parent)
#: cells of FINETUNE_SCRIPT's grid: 2 methods x (2 label-noise rates x 2 seeds + 1 shot x 2 seeds + 2 domain
#: seeds), trained in that order
FINETUNE_CELLS = 2 * (2 * 2 + 2 + 2)


def _run_until(cmd: list[str], marker: str, count: int = 0, delay: float = 0.0) -> tuple[str, list[float]]:
    """Run ``cmd``; with ``count``, SIGKILL it ``delay`` seconds after its ``count``-th output line holding
    ``marker``. Returns its output and the times (``time.perf_counter``) at which it printed each marker
    line: their number is how many units of work started, their differences how long each took."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",  # the Trainer's log lines must reach the pipe as they are printed
    }
    run = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert run.stdout is not None
    lines: list[str] = []
    marks: list[float] = []
    for line in run.stdout:
        lines.append(line)
        if marker in line:
            marks.append(time.perf_counter())
            if len(marks) == count:
                time.sleep(delay)
                run.send_signal(signal.SIGKILL)
                break
    rest, _ = run.communicate(timeout=600)
    return "".join(lines) + (rest or ""), marks


def _complete_state_lines(state: Path) -> int:
    """Cells whose line in the JSONL state file is whole (a kill mid-append leaves half a line)."""
    if not state.is_file():
        return 0
    return sum(1 for line in state.read_bytes().splitlines(keepends=True) if line.endswith(b"\n"))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_killed_finetune_grid_reruns_to_the_uninterrupted_records_training_only_the_missing_cells(tmp_path):
    script = tmp_path / "grid.py"
    script.write_text(FINETUNE_SCRIPT)
    full_log, cells = _run_until([sys.executable, str(script), str(tmp_path / "full"), TESTS], "cell:")
    assert "phase: done" in full_log and len(cells) == FINETUNE_CELLS, full_log
    grid_seconds = cells[-1] - cells[0]
    expected = json.loads((tmp_path / "full" / "records.json").read_text())

    seed = int(os.environ.get("FAULT_SEED", time.time_ns() % 10_000))
    rng = random.Random(seed)
    # one random point per run of the test: each costs two more runs of the grid
    out = tmp_path / "killed"
    # never after the last cell started (the run could end first); at most 0.8 of a mean cell after the
    # k-th started, so the kill lands in cell k or k + 1 (the last two cells are the longest)
    k, delay = (
        rng.randint(1, FINETUNE_CELLS - 1),
        rng.uniform(0.0, 0.8 * grid_seconds / (FINETUNE_CELLS - 1)),
    )
    where = f"FAULT_SEED={seed}: SIGKILL {delay:.2f} s after cell {k} of {FINETUNE_CELLS} started"
    print(where)
    log, _ = _run_until([sys.executable, str(script), str(out), TESTS], "cell:", k, delay)
    finished = _complete_state_lines(out / "cells.jsonl")
    assert "phase: done" not in log and finished < FINETUNE_CELLS, (where, log)  # killed inside the grid
    rerun, trained = _run_until([sys.executable, str(script), str(out), TESTS], "cell:")
    assert "phase: done" in rerun, (where, rerun)
    assert "is not used" not in rerun, (where, rerun)  # a half line is dropped silently, never trusted
    # only the cells without a whole line in the state file are trained again
    assert len(trained) == FINETUNE_CELLS - finished, (where, finished, rerun)
    assert _complete_state_lines(out / "cells.jsonl") == FINETUNE_CELLS, where
    assert json.loads((out / "records.json").read_text()) == expected, where  # exact: every float


ROOT = Path(__file__).resolve().parents[1]
#: examples/pretrain_ncl.py on 64 digits: two methods x 2 epochs x 8 steps, a checkpoint (and an evaluation)
#: at the end of each epoch, one log line per step, then probes on the pretrained features
PRETRAIN_ARGS = (
    "--dataset_name digits --max_train_samples 64 --max_eval_samples 64 --num_train_epochs 2 "
    "--per_device_train_batch_size 8 --per_device_eval_batch_size 32 --logging_steps 1 --probe_epochs 10 "
    "--probe_seeds 1 --feature_dim 32 --projector_hidden_dim 32 --disable_tqdm true --use_cpu true --seed 0"
).split()
PRETRAIN_METHODS, STEPS_PER_METHOD = ("simclr", "ncl"), 16
STEP_LINE = "'contrastive_loss'"  # in every training step's log line (an evaluation logs 'eval_...')


def _comparable(value: Any) -> Any:
    """A results file without what differs between two identical runs: the command line (its output folder)
    and wall-clock times."""
    if isinstance(value, dict):
        return {
            k: _comparable(v)
            for k, v in value.items()
            if k != "command" and "runtime" not in k and "per_second" not in k
        }
    if isinstance(value, list):
        return [_comparable(v) for v in value]
    return value


def _steps_left(out: Path) -> int:
    """Training steps a resumed run must still compute: none for a method whose run finished (its
    run_result.json is written), else those after its last complete checkpoint."""
    left = 0
    for method in PRETRAIN_METHODS:
        if not (out / method / "run_result.json").is_file():
            checkpoint = last_complete_checkpoint(out / method)
            left += STEPS_PER_METHOD - (int(checkpoint.rsplit("-", 1)[1]) if checkpoint else 0)
    return left


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_killed_pretraining_resumes_to_the_uninterrupted_run_computing_only_the_missing_steps(tmp_path):
    def command(out: Path, *extra: str) -> list[str]:
        return [sys.executable, str(ROOT / "examples" / "pretrain_ncl.py"), *PRETRAIN_ARGS, "--output_dir",
                str(out), *extra]  # fmt: skip

    total = len(PRETRAIN_METHODS) * STEPS_PER_METHOD
    full_log, steps = _run_until(command(tmp_path / "full"), STEP_LINE)
    seconds = steps[-1] - steps[0]
    assert len(steps) == total and (tmp_path / "full" / "results.json").is_file(), full_log

    seed = int(os.environ.get("FAULT_SEED", time.time_ns() % 10_000))
    rng = random.Random(seed)
    # any step but the last, up to 0.8 of a mean step after it (the mean counts the evaluations and saves
    # between the steps): the kill lands in a step, an evaluation or a checkpoint save of pretraining
    k, delay = rng.randint(1, total - 1), rng.uniform(0.0, 0.8 * seconds / (total - 1))
    where = f"FAULT_SEED={seed}: SIGKILL {delay:.2f} s after training step {k} of {total}"
    print(where)
    out = tmp_path / "killed"
    log, _ = _run_until(command(out), STEP_LINE, k, delay)
    assert not (out / "results.json").is_file(), (where, log)
    left = _steps_left(out)
    assert 0 < left <= total - k + STEPS_PER_METHOD, (where, left)  # at most one epoch since a checkpoint

    rerun, computed = _run_until(command(out, "--resume_from_checkpoint", "True"), STEP_LINE)
    assert (out / "results.json").is_file(), (where, rerun)
    assert len(computed) == left, (
        where,
        computed,
        left,
        rerun,
    )  # finished methods and checkpointed steps: not redone
    expected = _comparable(json.loads((tmp_path / "full" / "results.json").read_text()))
    assert _comparable(json.loads((out / "results.json").read_text())) == expected, where  # exact
    for method in PRETRAIN_METHODS:
        weights = load_file(out / method / "model.safetensors")
        for name, value in load_file(tmp_path / "full" / method / "model.safetensors").items():
            assert torch.equal(weights[name], value), (where, method, name)  # bit-identical
