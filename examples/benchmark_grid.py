"""The scenario grid of ``robustness_benchmark.py``: the same scenarios, run as linear probes or full fine-tunes.

A *track* (``benchmark_tracks.py``) hands over one :class:`Track`: representations of its data
(feature matrices, extracted once) and, for the fine-tune mode, model factories and datasets. This
module turns a track into result records, one per (method, scenario, level, seed):

* :func:`probe_records` -- linear probes on the cached features, all probes of a scenario in one
  batched grid (:func:`hf_monosem.cached.probe_grid.train_probe_grid`);
* :func:`finetune_records` -- every weight trained (backbone, feature layer, head) with
  :class:`hf_monosem.MonoSemanticTrainer`, one run per cell; finished cells are appended to a JSONL
  file, so an interrupted benchmark resumes where it stopped.

Scenarios (identical in both modes): symmetric label noise on the training labels, test-time input
noise on a model trained on clean labels, k-shot training, and domain shift (train on one domain,
test in-domain and on the shifted domain).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from datasets import Dataset, Features
from transformers import TrainingArguments

from hf_monosem import MonoSemanticTrainer
from hf_monosem.cached.probe_grid import ProbeGrid, train_probe_grid
from hf_monosem.scenarios import add_label_noise, few_shot

#: feature / dataset keys every track provides (besides its input-noise keys)
TRAIN, TEST = "train", "test"
DOMAIN_TRAIN, DOMAIN_TEST, DOMAIN_SHIFTED = "domain_train", "domain_test", "domain_shifted"


@dataclass
class Track:
    """Everything the scenario grid needs from one data set + backbone.

    ``features[representation][key]`` are ``[N, F]`` matrices and ``labels[key]`` their clean class
    ids, for the keys ``train``, ``test``, ``domain_train``, ``domain_test``, ``domain_shifted`` and one
    key per input-noise cell (``noise_cells``: ``(scenario, level, key)``, a perturbed copy of ``test``).
    ``pairs`` lists the (poly, mono) representations the tables compare. For the fine-tune mode,
    ``finetune_models`` maps a method to a factory of a fresh pretrained classifier, and
    ``datasets[key]`` holds the model-ready rows behind each feature key (with a ``label`` column; a
    ``datasets.Dataset`` or :class:`TensorRows`).
    """

    name: str
    description: str
    num_labels: int
    label_feature: Any
    pairs: list[tuple[str, str]]
    features: dict[str, dict[str, torch.Tensor]]
    labels: dict[str, torch.Tensor]
    noise_cells: list[tuple[str, float, str]]
    monosemanticity: dict[str, dict[str, float]] = field(default_factory=dict)
    fit_reports: dict[str, Any] = field(default_factory=dict)
    probe_input_scales: dict[str, float] = field(default_factory=dict)
    finetune_models: dict[str, Callable[[], torch.nn.Module]] = field(default_factory=dict)
    finetune_pairs: list[tuple[str, str]] = field(default_factory=list)
    datasets: dict[str, Any] = field(default_factory=dict)
    collator: Callable | None = None


class TensorRows(torch.utils.data.Dataset):
    """Model-ready rows held as tensors (``pixel_values``, ``label``): the small vision runs batch them
    ~30x faster than Arrow rows of nested lists, which would otherwise take 40% of a fine-tune step."""

    def __init__(self, **columns: torch.Tensor):
        self.columns = columns

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.columns.items()}

    def __getitems__(self, rows: list[int]) -> list[dict[str, torch.Tensor]]:
        return [self[i] for i in rows]

    def select(self, rows) -> TensorRows:
        rows = torch.as_tensor(rows, dtype=torch.long)
        return TensorRows(**{k: v[rows] for k, v in self.columns.items()})


def _with_labels(dataset, labels: torch.Tensor, label_feature):
    """``dataset`` with its ``label`` column replaced (a ``datasets.Dataset`` or :class:`TensorRows`)."""
    if isinstance(dataset, TensorRows):
        return TensorRows(**{**dataset.columns, "label": labels.clone()})
    return dataset.remove_columns("label").add_column("label", labels.tolist()).cast_column("label", label_feature)


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


class Timer:
    """``with timer("name"):`` records and prints the wall time of a span."""

    def __init__(self):
        self.times: dict[str, float] = {}

    def __call__(self, name: str):
        timer = self

        class _Span:
            def __enter__(self):
                self.start = time.perf_counter()

            def __exit__(self, *exc):
                timer.times[name] = round(timer.times.get(name, 0.0) + time.perf_counter() - self.start, 1)
                print(f"[{name}] {timer.times[name]:.1f}s", flush=True)

        return _Span()


def equalize_scales(features: dict[str, dict[str, torch.Tensor]], reference: str) -> dict[str, float]:
    """Rescale every representation (in place) to the ``reference`` one's mean L2 norm on ``train``.

    A probe's effective learning rate grows with its input's norm (Adam steps are scale-free, the
    logits they move are not): an L2-normalised SAE code would otherwise be probed ~20x more slowly
    than standardised raw features, which acts as implicit early stopping. With one mean norm for
    all, the probe budget really is the same. Returns the factor applied to each representation.
    """
    target = features[reference][TRAIN].norm(dim=1).mean()
    scales = {}
    for name, f in features.items():
        scales[name] = float(target / f[TRAIN].norm(dim=1).mean().clamp_min(1e-12))
        features[name] = {key: x * scales[name] for key, x in f.items()}
    return scales


def _label_table(labels: torch.Tensor, label_feature) -> Dataset:
    return Dataset.from_dict({"label": labels.tolist()}, features=Features({"label": label_feature}))


def noisy_label_draws(labels: torch.Tensor, label_feature, rates: list[float], seeds: list[int]) -> torch.Tensor:
    """``[len(rates) * len(seeds), N]`` symmetric-noise label draws (rate-major), shared by both modes."""
    table = _label_table(labels, label_feature)
    return torch.stack([torch.tensor(add_label_noise(table, r, seed=s)["label"]) for r in rates for s in seeds])


def few_shot_rows(labels: torch.Tensor, label_feature, k: int, seeds: list[int]) -> torch.Tensor:
    """``[len(seeds), k * classes]`` row indices of seeded stratified k-shot subsets."""
    table = _label_table(labels, label_feature).add_column("row", list(range(len(labels))))
    return torch.stack([torch.tensor(few_shot(table, k, seed=s)["row"]) for s in seeds])


def _record(track, mode, method, scenario, level, seed, accuracy, **extra) -> dict[str, Any]:
    return {"track": track, "mode": mode, "method": method, "scenario": scenario, "level": float(level),
            "seed": int(seed), "accuracy": float(accuracy), **extra}


def probe_records(track: Track, rates: list[float], shots: list[int], seeds: list[int], *, epochs: int,
                  lr: float) -> list[dict[str, Any]]:
    """Linear probes on every representation of ``track`` over all scenarios (same budget for all)."""
    records = []
    y_train, y_test = track.labels[TRAIN], track.labels[TEST]
    noisy = noisy_label_draws(y_train, track.label_feature, rates, seeds)
    shot_rows = {k: few_shot_rows(y_train, track.label_feature, k, seeds) for k in shots}
    budget = {"epochs": epochs, "lr": lr}
    for name, f in track.features.items():
        def add(scenario, level, accs, name=name):
            records.extend(_record(track.name, "probe", name, scenario, level, s, a)
                           for s, a in zip(seeds, accs.tolist()))

        grid = train_probe_grid(f[TRAIN], noisy, track.num_labels, seeds=[s for _ in rates for s in seeds], **budget)
        accs = grid.accuracy(f[TEST], y_test).view(len(rates), len(seeds))
        for i, r in enumerate(rates):
            add("label_noise", r, accs[i])
        if 0.0 in rates:  # the probes trained on clean labels, tested on perturbed inputs
            start = rates.index(0.0) * len(seeds)
            clean = ProbeGrid(grid.weight[start:start + len(seeds)], grid.bias[start:start + len(seeds)])
            for scenario, level, key in track.noise_cells:
                add(scenario, level, clean.accuracy(f[key], track.labels[key]))
        for k, rows in shot_rows.items():
            grid = train_probe_grid(f[TRAIN], y_train.expand(len(seeds), -1), track.num_labels, rows=rows,
                                    seeds=seeds, **budget)
            add("few_shot", k, grid.accuracy(f[TEST], y_test))
        y_domain = track.labels[DOMAIN_TRAIN]
        grid = train_probe_grid(f[DOMAIN_TRAIN], y_domain.expand(len(seeds), -1), track.num_labels, seeds=seeds,
                                **budget)
        add("domain_shift_in_domain", 0, grid.accuracy(f[DOMAIN_TEST], track.labels[DOMAIN_TEST]))
        add("domain_shift_shifted", 0, grid.accuracy(f[DOMAIN_SHIFTED], track.labels[DOMAIN_SHIFTED]))
    return records


@dataclass
class FinetuneBudget:
    """The same fine-tuning budget for every method (AdamW, cosine schedule, no early stopping)."""

    epochs: float = 3.0
    few_shot_steps: int = 50
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 128
    train_size: int = 2000


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


def _finetune(make_model, train: Dataset, budget: FinetuneBudget, seed: int, work_dir: str,
              collator, max_steps: int | None = None) -> MonoSemanticTrainer:
    args = TrainingArguments(
        output_dir=work_dir, per_device_train_batch_size=budget.batch_size, per_device_eval_batch_size=512,
        learning_rate=budget.lr, weight_decay=budget.weight_decay, lr_scheduler_type="cosine",
        num_train_epochs=budget.epochs, max_steps=max_steps or -1, save_strategy="no", eval_strategy="no",
        logging_strategy="no", report_to="none", disable_tqdm=True, seed=seed, data_seed=seed,
        dataloader_num_workers=0,
    )
    torch.manual_seed(seed)  # the head's initialisation
    trainer = MonoSemanticTrainer(model=make_model(), args=args, train_dataset=train, data_collator=collator)
    trainer.train()
    return trainer


def finetune_records(track: Track, rates: list[float], shots: list[int], seeds: list[int],
                     budget: FinetuneBudget, state_file: str, work_dir: str,
                     progress: bool = True) -> list[dict[str, Any]]:
    """Fine-tune every method of ``track.finetune_models`` in every scenario cell (one run per cell).

    Label noise and input noise use ``budget.train_size`` training rows (the same rows for every
    method and seed; the noise draw differs per seed); k-shot runs train ``budget.few_shot_steps``
    steps; domain shift trains on ``domain_train``. Cells already in ``state_file`` (same track,
    budget and cell) are reused, so an interrupted benchmark loses at most the run in progress.
    """
    from tqdm.auto import tqdm

    done: dict[str, list[dict[str, Any]]] = {}
    if os.path.isfile(state_file):
        with open(state_file, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    entry = json.loads(line)
                    done[entry["cell"]] = entry["records"]
    ds = track.datasets
    n = min(budget.train_size, len(ds[TRAIN]))
    pool = ds[TRAIN].select(range(n))
    y_pool = track.labels[TRAIN][:n]
    noisy = noisy_label_draws(y_pool, track.label_feature, rates, seeds)
    shot_rows = {k: few_shot_rows(y_pool, track.label_feature, k, seeds) for k in shots}
    budget_key = json.dumps({**budget.__dict__, "rates": rates, "shots": shots}, sort_keys=True)

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

    records = []
    bar = tqdm(cells, desc=f"fine-tune grid ({track.name})", disable=not progress)
    for method, scenario, level, seed, extra in bar:
        cell = hashlib.sha256(f"{track.description}|{budget_key}|{method}|{scenario}|{level}|{seed}".encode()).hexdigest()
        if cell in done:
            records.extend(done[cell])
            continue
        bar.set_postfix(method=method, scenario=scenario, level=level, seed=seed)
        make_model = track.finetune_models[method]
        new = []
        if scenario == "label_noise":
            train = _with_labels(pool, extra, track.label_feature)
            trainer = _finetune(make_model, train, budget, seed, work_dir, track.collator)
            fit = _accuracy(trainer, train)  # agreement with the noisy training labels: memorisation
            new.append(_record(track.name, "finetune", method, scenario, level, seed, _accuracy(trainer, ds[TEST]),
                               train_fit=fit))
            if level == 0.0:
                for noise_scenario, noise_level, key in track.noise_cells:
                    new.append(_record(track.name, "finetune", method, noise_scenario, noise_level, seed,
                                       _accuracy(trainer, ds[key])))
        elif scenario == "few_shot":
            train = pool.select(extra.tolist())
            trainer = _finetune(make_model, train, budget, seed, work_dir, track.collator,
                                max_steps=budget.few_shot_steps)
            new.append(_record(track.name, "finetune", method, scenario, level, seed, _accuracy(trainer, ds[TEST])))
        else:
            trainer = _finetune(make_model, ds[DOMAIN_TRAIN], budget, seed, work_dir, track.collator)
            new.append(_record(track.name, "finetune", method, "domain_shift_in_domain", 0, seed,
                               _accuracy(trainer, ds[DOMAIN_TEST])))
            new.append(_record(track.name, "finetune", method, "domain_shift_shifted", 0, seed,
                               _accuracy(trainer, ds[DOMAIN_SHIFTED])))
        del trainer
        records.extend(new)
        with open(state_file, "a", encoding="utf-8") as f:
            f.write(json.dumps({"cell": cell, "records": new}) + "\n")
    return records


def mean_by(records: list[dict[str, Any]], key: str) -> dict[tuple, float]:
    """Mean of ``key`` per (method, scenario, level) over the records that have it."""
    groups: dict[tuple, list[float]] = {}
    for r in records:
        if key in r:
            groups.setdefault((r["method"], r["scenario"], r["level"]), []).append(r[key])
    return {k: float(np.mean(v)) for k, v in groups.items()}
