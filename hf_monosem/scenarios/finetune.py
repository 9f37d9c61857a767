"""The scenario grid as full fine-tunes: one :class:`~hf_monosem.MonoSemanticTrainer` run per cell, resumable.

:func:`finetune_records` runs the scenarios of :func:`hf_monosem.scenarios.grid.probe_records`
(the same label draws and k-shot subsets) with every weight trained (backbone, feature layer,
head). Each finished cell is appended to a JSONL state file (``{"cell": key, "records": [...]}``,
one line per cell), so an interrupted grid resumes where it stopped and a rerun retrains nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from datasets import Dataset
from transformers import TrainingArguments

from ..training.trainer import MonoSemanticTrainer
from .grid import (
    DOMAIN_SHIFTED,
    DOMAIN_TEST,
    DOMAIN_TRAIN,
    TEST,
    TRAIN,
    TensorRows,
    Track,
    cell_record,
    few_shot_rows,
    noisy_label_draws,
)

__all__ = ["FinetuneBudget", "finetune_records"]


@dataclass
class FinetuneBudget:
    """The same fine-tuning budget for every method (AdamW, cosine schedule, no early stopping)."""

    epochs: float = 3.0
    few_shot_steps: int = 50
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 128
    train_size: int = 2000


def relabel(dataset, labels: torch.Tensor, label_feature):
    """``dataset`` with its ``label`` column replaced (a ``datasets.Dataset`` or :class:`TensorRows`)."""
    if isinstance(dataset, TensorRows):
        return TensorRows(**{**dataset.columns, "label": labels.clone()})
    return (
        dataset.remove_columns("label")
        .add_column("label", labels.tolist())
        .cast_column("label", label_feature)
    )


@torch.no_grad()
def _accuracy(trainer: MonoSemanticTrainer, dataset: Dataset) -> float:
    """Clean accuracy of the trained model on ``dataset`` (the Trainer's own column handling + collator)."""
    model = trainer.model.eval()
    correct = total = 0
    for batch in trainer.get_test_dataloader(dataset):
        labels = batch.pop("labels")
        logits = model(**batch).logits
        correct += int((logits.argmax(-1) == labels).sum())
        total += labels.numel()
    return correct / max(total, 1)


def _finetune(
    make_model,
    train: Dataset,
    budget: FinetuneBudget,
    seed: int,
    work_dir: str,
    collator,
    max_steps: int | None = None,
) -> MonoSemanticTrainer:
    args = TrainingArguments(
        output_dir=work_dir, per_device_train_batch_size=budget.batch_size, per_device_eval_batch_size=512,
        learning_rate=budget.lr, weight_decay=budget.weight_decay, lr_scheduler_type="cosine",
        num_train_epochs=budget.epochs, max_steps=max_steps or -1, save_strategy="no", eval_strategy="no",
        logging_strategy="no", report_to="none", disable_tqdm=True, seed=seed, data_seed=seed,
        dataloader_num_workers=0,
    )  # fmt: skip
    torch.manual_seed(seed)  # the head's initialisation
    trainer = MonoSemanticTrainer(model=make_model(), args=args, train_dataset=train, data_collator=collator)
    trainer.train()
    return trainer


def _load_state(state_file: str) -> dict[str, list[dict[str, Any]]]:
    """The finished cells of a state file: cell key -> its records (empty when there is no file).

    A last line without its newline was cut off by a kill while being appended: it is dropped from
    the file (that cell runs again), so the next cell's line starts on a line of its own. Every line
    carries a SHA-256 of its cell and records: a line that is not JSON, lacks a field, holds no records
    or fails its hash (edited by hand, damaged, or written before the hash existed) is named in a
    warning and its cell runs again, instead of stopping the run or being trusted.
    """
    done: dict[str, list[dict[str, Any]]] = {}
    if os.path.isfile(state_file):
        with open(state_file, "rb") as f:
            data = f.read()
        complete = data.rfind(b"\n") + 1
        if complete < len(data):
            with open(state_file, "r+b") as f:
                f.truncate(complete)
        for number, line in enumerate(data[:complete].decode("utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            why = None
            try:
                entry = json.loads(line)
            except ValueError as error:
                why = f"not JSON ({error})"
            else:
                if not isinstance(entry, dict) or not {"cell", "records", "sha256"} <= set(entry):
                    why = "it lacks the fields cell / records / sha256"
                elif not isinstance(entry["records"], list) or not entry["records"]:
                    why = "it holds no records"
                elif entry["sha256"] != _state_hash(entry["cell"], entry["records"]):
                    why = "its content does not match its hash (edited or damaged)"
            if why is not None:
                warnings.warn(
                    f"{state_file} line {number} is not used: {why}; that cell runs again", stacklevel=3
                )
                continue
            done[entry["cell"]] = entry["records"]
    return done


def _state_hash(cell: str, records: list[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps([cell, records], sort_keys=True).encode()).hexdigest()


def _append_state(state_file: str, cell: str, records: list[dict[str, Any]]) -> None:
    line = json.dumps({"cell": cell, "records": records, "sha256": _state_hash(cell, records)})
    # records round-trip through JSON (floats exactly): the hash a reader recomputes is this one
    with open(state_file, "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def finetune_records(
    track: Track,
    rates: list[float],
    shots: list[int],
    seeds: list[int],
    budget: FinetuneBudget,
    state_file: str,
    work_dir: str,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Fine-tune every method of ``track.finetune_models`` in every scenario cell (one run per cell).

    Label noise and input noise use ``budget.train_size`` training rows (the same rows for every
    method and seed; the noise draw differs per seed); k-shot runs train ``budget.few_shot_steps``
    steps; domain shift trains on ``domain_train``. Cells already in ``state_file`` (same track,
    budget and cell) are reused, so an interrupted benchmark loses at most the run in progress.
    """
    from tqdm.auto import tqdm

    done = _load_state(state_file)
    ds = track.datasets
    n = min(budget.train_size, len(ds[TRAIN]))
    pool = ds[TRAIN].select(range(n))
    y_pool = track.labels[TRAIN][:n]
    noisy = noisy_label_draws(y_pool, track.label_feature, rates, seeds)
    shot_rows = {k: few_shot_rows(y_pool, track.label_feature, k, seeds) for k in shots}
    budget_key = json.dumps({**budget.__dict__, "rates": rates, "shots": shots}, sort_keys=True)
    # a clean-label cell is also evaluated on every input-noise cell: those are part of its key, so an
    # added noise cell reruns it (before, it was reused without the new records)
    noise_cells_key = json.dumps([list(c) for c in track.noise_cells])

    cells = []
    for method in track.finetune_models:
        for i, r in enumerate(rates):
            for j, s in enumerate(seeds):
                cells.append((method, "label_noise", r, s, noisy[i * len(seeds) + j]))
        for k in shots:
            for j, s in enumerate(seeds):
                cells.append((method, "few_shot", k, s, shot_rows[k][j]))
        for s in seeds:
            cells.append((method, "domain_shift", 0, s, None))

    def record(method, scenario, level, seed, trainer, dataset, **extra):
        return cell_record(
            track.name, "finetune", method, scenario, level, seed, _accuracy(trainer, dataset), **extra
        )

    records = []
    bar = tqdm(cells, desc=f"fine-tune grid ({track.name})", disable=not progress)
    for method, scenario, level, seed, extra in bar:
        key = f"{track.description}|{budget_key}|{method}|{scenario}|{level}|{seed}"
        if scenario == "label_noise" and level == 0.0 and track.noise_cells:
            key += f"|{noise_cells_key}"
        cell = hashlib.sha256(key.encode()).hexdigest()
        if cell in done:
            records.extend(done[cell])
            continue
        bar.set_postfix(method=method, scenario=scenario, level=level, seed=seed)
        make_model = track.finetune_models[method]
        new = []
        if scenario == "label_noise":
            train = relabel(pool, extra, track.label_feature)
            trainer = _finetune(make_model, train, budget, seed, work_dir, track.collator)
            fit = _accuracy(trainer, train)  # agreement with the noisy training labels: memorisation
            new.append(record(method, scenario, level, seed, trainer, ds[TEST], train_fit=fit))
            if level == 0.0:
                for noise_scenario, noise_level, noise_key in track.noise_cells:
                    new.append(record(method, noise_scenario, noise_level, seed, trainer, ds[noise_key]))
        elif scenario == "few_shot":
            train = pool.select(extra.tolist())
            trainer = _finetune(
                make_model, train, budget, seed, work_dir, track.collator, max_steps=budget.few_shot_steps
            )
            new.append(record(method, scenario, level, seed, trainer, ds[TEST]))
        else:
            trainer = _finetune(make_model, ds[DOMAIN_TRAIN], budget, seed, work_dir, track.collator)
            new.append(record(method, "domain_shift_in_domain", 0, seed, trainer, ds[DOMAIN_TEST]))
            new.append(record(method, "domain_shift_shifted", 0, seed, trainer, ds[DOMAIN_SHIFTED]))
        del trainer
        records.extend(new)
        _append_state(state_file, cell, new)
    return records
