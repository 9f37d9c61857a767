"""Resume: a run killed mid-epoch (SIGKILL) and resumed ends exactly where an uninterrupted run ends.

The end-to-end test runs ``examples/finetune_noisy.py`` on the built-in 8x8 digits with the small
ResNet (offline, about 10 s a run on one core); the unit tests cover how a resume point is chosen.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_monosem import MonoSemanticTrainer
from hf_monosem.training.checkpoints import (
    last_complete_checkpoint,
    read_json,
    resume_checkpoint,
    wants_resume,
    write_json,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

TINY_RUN = [
    "--dataset_name", "digits", "--feature_layers", "nonneg", "--max_train_samples", "128",
    "--max_eval_samples", "128", "--num_train_epochs", "3", "--per_device_train_batch_size", "16",
    "--save_strategy", "steps", "--save_steps", "4", "--use_cpu", "--disable_tqdm", "True",
    "--report_to", "none", "--seed", "0", "--logging_steps", "1",
]  # fmt: skip
# 128 rows / 16 = 8 steps an epoch, 24 in all; the kill comes at a checkpoint in the second epoch
STEPS_PER_EPOCH, STEPS, KILL_AT_STEP = 8, 24, 12


def finetune_noisy(output_dir: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("WORLD_SIZE", None)
    # stdout (the Trainer's printed log lines) and stderr apart, so that warnings never split a log line;
    # each process's files are written afresh: the resumed run's log is its own
    log = open(output_dir.with_suffix(".log"), "w")  # noqa: SIM115 (closed with the process)
    err = open(output_dir.with_suffix(".err"), "w")  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "finetune_noisy.py"), *TINY_RUN, "--output_dir", str(output_dir),
         *extra],
        env=env, stdout=log, stderr=err, cwd=str(EXAMPLES),
    )  # fmt: skip
    log.close(), err.close()  # the child holds its own copies
    return process


def wait(process: subprocess.Popen, output_dir: Path, timeout: float = 240) -> None:
    process.wait(timeout=timeout)
    tail = (
        output_dir.with_suffix(".log").read_text()[-1500:]
        + output_dir.with_suffix(".err").read_text()[-3000:]
    )
    assert process.returncode == 0, tail


def logged_steps(output_dir: Path) -> list[int]:
    """The training steps the last process run in ``output_dir`` computed, read from its printed logs:
    with ``--logging_steps 1`` the Trainer prints one ``{'loss': ..., 'epoch': ...}`` line per step."""
    steps = []
    for line in output_dir.with_suffix(".log").read_text().splitlines():
        if line.startswith("{"):
            entry = ast.literal_eval(line)
            if "loss" in entry:
                steps.append(round(float(entry["epoch"]) * STEPS_PER_EPOCH))
    return steps


def results(output_dir: Path) -> dict:
    payload = json.loads((output_dir / "results.json").read_text())["results"]
    return {kind: {k: v for k, v in r.items() if k != "checkpoint"} for kind, r in payload.items()}


@pytest.mark.slow
def test_killed_and_resumed_run_matches_uninterrupted_run(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    reference = finetune_noisy(straight)  # runs alongside the one to be killed
    victim = finetune_noisy(killed)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and victim.poll() is None:
            found = last_complete_checkpoint(killed / "nonneg")
            if found and int(found.rsplit("-", 1)[1]) >= KILL_AT_STEP:
                victim.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
        victim.wait(timeout=60)
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
    assert victim.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (killed / "results.json").exists()
    checkpoint = last_complete_checkpoint(killed / "nonneg")
    step = int(checkpoint.rsplit("-", 1)[1])
    assert KILL_AT_STEP <= step < STEPS  # killed mid-run, after an epoch boundary (eval history to restore)
    labels_before = json.loads((killed / "scenario.json").read_text())

    resumed = finetune_noisy(killed, "--resume_from_checkpoint", "True")
    wait(resumed, killed)
    wait(reference, straight)

    # a real resume: the resumed process started at the checkpoint's step and never ran an earlier one
    # (a silent restart ends with the same weights, a fresh run being deterministic, but logs steps 1..)
    assert logged_steps(straight) == list(range(1, STEPS + 1))
    assert logged_steps(killed) == list(range(step + 1, STEPS + 1))
    # the label-noise draw was reused, not drawn again
    assert json.loads((killed / "scenario.json").read_text()) == labels_before
    assert labels_before == json.loads((straight / "scenario.json").read_text())
    a, b = results(killed), results(straight)
    assert a.keys() == b.keys() == {"nonneg"}
    for key, value in b["nonneg"].items():
        if isinstance(value, float):
            assert a["nonneg"][key] == pytest.approx(value, abs=1e-6), key
        else:
            assert a["nonneg"][key] == value, key
    # the resumed run started from the checkpoint, not from scratch: its history holds the first epochs
    state = json.loads((Path(last_complete_checkpoint(killed / "nonneg")) / "trainer_state.json").read_text())
    assert state["global_step"] == STEPS and any(
        e.get("epoch") == 1.0 and "eval_loss" in e for e in state["log_history"]
    )
    final_a = load_file(killed / "nonneg" / "model.safetensors")
    final_b = load_file(straight / "nonneg" / "model.safetensors")
    assert final_a.keys() == final_b.keys()
    for name in final_b:
        torch.testing.assert_close(final_a[name], final_b[name], rtol=0, atol=1e-6, msg=name)


# ---- MonoSemanticTrainer in-process (fast) -----------------------------------------------------------


class CountingTrainer(MonoSemanticTrainer):
    """Counts the training steps this trainer computed (a silent restart would compute all of them)."""

    steps_computed = 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            self.steps_computed += 1
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


IN_PROCESS_STEPS, SAVE_EVERY = 8, 4  # 32 rows / 4 = 8 steps: the checkpoint is mid-epoch


def counting_trainer(output_dir) -> CountingTrainer:
    from tiny_models import tiny_resnet_config
    from training_toys import toy_images, training_args

    from hf_monosem import MonoSemanticConfig, MonoSemanticForImageClassification

    torch.manual_seed(0)
    model = MonoSemanticForImageClassification(
        MonoSemanticConfig(
            backbone_config=tiny_resnet_config(), feature_layer="sae", feature_dim=16, num_labels=3
        )
    )
    args = training_args(
        output_dir,
        max_steps=IN_PROCESS_STEPS,
        save_strategy="steps",
        save_steps=SAVE_EVERY,
        per_device_train_batch_size=4,
        logging_steps=1,
        seed=3,
    )
    return CountingTrainer(model=model, args=args, train_dataset=toy_images(n=32))


def test_monosemantic_trainer_resume_computes_only_the_steps_after_the_checkpoint(tmp_path):
    full = counting_trainer(tmp_path / "full")
    with contextlib.redirect_stdout(io.StringIO()):
        full.train()
    assert full.steps_computed == IN_PROCESS_STEPS
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(tmp_path / "full" / f"checkpoint-{SAVE_EVERY}", resumed_dir / f"checkpoint-{SAVE_EVERY}")
    resumed = counting_trainer(resumed_dir)
    with contextlib.redirect_stdout(io.StringIO()):
        resumed.train(resume_from_checkpoint=True)
    # this process computed steps 5..8 only, and its log of them is the uninterrupted run's
    assert resumed.steps_computed == IN_PROCESS_STEPS - SAVE_EVERY
    assert resumed.state.global_step == IN_PROCESS_STEPS
    losses = {h["step"]: h["loss"] for h in full.state.log_history if "loss" in h}
    resumed_losses = {h["step"]: h["loss"] for h in resumed.state.log_history if "loss" in h}
    after = range(SAVE_EVERY + 1, IN_PROCESS_STEPS + 1)
    assert [resumed_losses[s] for s in after] == pytest.approx([losses[s] for s in after], rel=1e-5, abs=1e-6)
    for name, value in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], value, rtol=1e-5, atol=1e-6, msg=name)


# ---- choosing the resume point (fast) ---------------------------------------------------------------


def fake_checkpoint(folder: Path, step: int, complete: bool = True) -> Path:
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"")
    if complete:
        (path / "trainer_state.json").write_text("{}")
    return path


def test_last_complete_checkpoint_skips_one_cut_off_while_saving(tmp_path):
    assert last_complete_checkpoint(tmp_path / "missing") is None
    assert last_complete_checkpoint(tmp_path) is None
    fake_checkpoint(tmp_path, 8)
    good = fake_checkpoint(tmp_path, 12)
    fake_checkpoint(tmp_path, 16, complete=False)  # killed while writing it
    (tmp_path / "checkpoint-99.tmp").mkdir()
    assert last_complete_checkpoint(tmp_path) == str(good)
    assert MonoSemanticTrainer.last_checkpoint(tmp_path) == str(good)


def test_checkpoint_discovery_keeps_its_old_import_paths():
    import hf_monosem.training
    import hf_monosem.training.trainer

    assert hf_monosem.training.trainer.last_complete_checkpoint is last_complete_checkpoint
    assert hf_monosem.training.last_complete_checkpoint is last_complete_checkpoint
    assert hf_monosem.training.trainer.TRAINER_STATE_FILE == "trainer_state.json"


@pytest.mark.parametrize("value, expected", [
    (None, False), (False, False), ("", False), ("False", False), ("false", False), ("None", False),
    (True, True), ("True", True), ("true", True), ("runs/x/checkpoint-8", True),
])  # fmt: skip
def test_wants_resume_reads_the_command_line_value(value, expected):
    assert wants_resume(value) is expected


def test_resume_checkpoint_per_run_folder(tmp_path):
    run = tmp_path / "k5" / "linear"
    assert (
        resume_checkpoint(run, None) is None and resume_checkpoint(run, "True") is None
    )  # nothing saved: afresh
    fake_checkpoint(run, 3)
    good = fake_checkpoint(run, 12)
    fake_checkpoint(run, 20, complete=False)  # cut off while saving
    assert resume_checkpoint(run, "True") == resume_checkpoint(run, True) == str(good)
    assert resume_checkpoint(str(run), str(run / "checkpoint-3")) == str(run / "checkpoint-3")
    other = tmp_path / "k5" / "nonneg"
    assert resume_checkpoint(other, str(run / "checkpoint-3")) is None  # a path inside another run's folder
    fake_checkpoint(other, 4)
    assert resume_checkpoint(other, str(run / "checkpoint-3")) == str(other / "checkpoint-4")
    assert resume_checkpoint(run, "") is None and resume_checkpoint(run, False) is None


def test_write_json_is_atomic_and_writes_arrays_and_dataclasses(tmp_path, monkeypatch):
    import dataclasses

    import numpy as np

    @dataclasses.dataclass
    class Spec:
        rate: float = 0.4

    path = tmp_path / "new" / "run" / "result.json"  # the folder is created
    write_json(
        path, {"labels": np.arange(3), "accuracy": np.float32(0.5), "spec": Spec(), "loss": torch.tensor(1.5)}
    )
    assert read_json(path) == {"labels": [0, 1, 2], "accuracy": 0.5, "spec": {"rate": 0.4}, "loss": 1.5}
    assert sorted(p.name for p in path.parent.iterdir()) == ["result.json"]  # no temporary file left

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("hf_monosem.training.checkpoints.os.replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_json(path, {"labels": []})
    assert read_json(path)["labels"] == [0, 1, 2]  # the old file is intact, the temporary one removed
    assert sorted(p.name for p in path.parent.iterdir()) == ["result.json"]
