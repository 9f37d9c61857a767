"""The scenario grid (hf_monosem.scenarios.grid / .finetune) on small in-memory tracks.

The end-to-end run of ``robustness_benchmark.py`` is a slow test in ``test_examples.py``; here the
pieces are checked fast: every (representation, scenario, level, seed) cell gets exactly one record,
probes learn separable data, representations are rescaled to one mean norm, and the fine-tune grid
trains real ``MonoSemanticForImageClassification`` models with the real Trainer and resumes from
its state file without training a finished cell again.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from datasets import ClassLabel, Dataset, Features
from transformers import ResNetConfig, default_data_collator

from hf_monosem import MonoSemanticConfig, MonoSemanticForImageClassification
from hf_monosem.cached.probe_grid import train_probe_grid
from hf_monosem.cached.scaling import equalize_scales, feature_stats, standardize, unit_rms
from hf_monosem.scenarios import add_label_noise, finetune, grid
from hf_monosem.scenarios.protocols import CONTROLLED_PROBE, PAPER_CIFAR_PROBE

LABELS = ClassLabel(names=["a", "b", "c"])
KEYS = (grid.TRAIN, grid.TEST, grid.DOMAIN_TRAIN, grid.DOMAIN_TEST, grid.DOMAIN_SHIFTED, "gaussian0.5")


def _separable(n: int, seed: int, shift: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = torch.randn(n, 6, generator=g) * 0.3
    x[torch.arange(n), y] += 3.0
    return x + shift, y


def _track(**extra) -> grid.Track:
    features, labels = {"poly": {}, "mono": {}}, {}
    for i, key in enumerate(KEYS):
        x, y = _separable(
            60 if key == grid.TRAIN else 30, seed=i, shift=1.0 if key == grid.DOMAIN_SHIFTED else 0.0
        )
        features["poly"][key], features["mono"][key] = x, x.relu() * 2
        labels[key] = y
    return grid.Track(
        name="toy",
        description="toy",
        num_labels=3,
        label_feature=LABELS,
        pairs=[("poly", "mono")],
        features=features,
        labels=labels,
        noise_cells=[("gaussian_noise", 0.5, "gaussian0.5")],
        **extra,
    )


def test_probe_records_cover_every_cell_once_and_learn_separable_data():
    rates, shots, seeds = [0.0, 0.4], [1, 5], [0, 1, 2]
    records = grid.probe_records(_track(), rates, shots, seeds, epochs=30, lr=0.05).records
    cells = {(r["method"], r["scenario"], r["level"], r["seed"]) for r in records}
    per_method = (
        len(rates) + 1 + len(shots) + 2
    )  # label noise, the input-noise cell, k-shot, domain in/shifted
    assert len(records) == len(cells) == 2 * per_method * len(seeds)
    assert {r["mode"] for r in records} == {"probe"} and {r["track"] for r in records} == {"toy"}
    clean = [r["accuracy"] for r in records if r["scenario"] == "label_noise" and r["level"] == 0.0]
    assert min(clean) > 0.9  # classes are 10 std apart: a probe that fails here is broken
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in records)


def _same(a, b) -> bool:
    """Equal values, tensors compared element by element, dicts and lists field by field."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def test_probe_records_only_reads_the_track_and_returns_what_it_chose():
    """A Track is the grid's inputs: probing (a rescaling protocol choosing its rate, and one on augmented
    views) leaves every field of the track as it was; the chosen rates come back in the result."""
    track = _track()
    train = track.features["poly"][grid.TRAIN]
    track.train_views = {"poly": torch.stack([train, train + 0.1])}
    before = copy.deepcopy(track)
    protocols = [
        CONTROLLED_PROBE.with_budget(lr_grid=(1e-3, 0.05), epochs=3, batch_size=16),
        PAPER_CIFAR_PROBE.with_budget(epochs=3, batch_size=16),
    ]
    runs = [grid.probe_records(track, [0.0], [1], [0], protocol=p) for p in protocols]
    changed = [
        f.name
        for f in dataclasses.fields(track)
        if not _same(getattr(before, f.name), getattr(track, f.name))
    ]
    assert changed == []
    assert all(set(run.selection) == {"poly", "mono"} for run in runs)
    assert (
        runs[0].selection["poly"]["lr"] in (1e-3, 0.05)
        and runs[1].selection["poly"]["held_out_accuracy"] == {}
    )
    assert {r["probe_lr"] for r in runs[0].records if r["method"] == "mono"} == {
        runs[0].selection["mono"]["lr"]
    }


def test_label_noise_probe_grid_is_the_inline_grid_it_replaced():
    """Same seeds, same numbers as the grid the example scripts built by hand before."""
    track = _track()
    x_train, x_test = track.features["poly"][grid.TRAIN], track.features["poly"][grid.TEST]
    y_train, y_test = track.labels[grid.TRAIN], track.labels[grid.TEST]
    rates, seeds = [0.0, 0.4], [0, 1, 2]
    probes = grid.label_noise_probe_grid(
        x_train, x_test, y_train, y_test, LABELS, rates, seeds, epochs=5, lr=0.05, batch_size=16
    )
    table = Dataset.from_dict({"label": y_train.tolist()}, features=Features({"label": LABELS}))
    labels = torch.stack(
        [torch.tensor(add_label_noise(table, r, seed=s)["label"]) for r in rates for s in seeds]
    )
    by_hand = train_probe_grid(
        x_train, labels, 3, seeds=[s for _ in rates for s in seeds], epochs=5, lr=0.05, batch_size=16
    )
    assert torch.equal(probes.labels, labels) and torch.equal(probes.grid.weight, by_hand.weight)
    assert torch.equal(probes.test_accuracy, by_hand.accuracy(x_test, y_test).view(2, 3))
    assert torch.equal(probes.train_fit, by_hand.accuracy(x_train, labels).view(2, 3))
    assert torch.equal(probes.at(0.0).weight, by_hand.weight[:3]) and torch.equal(
        probes.at(0.4).bias, by_hand.bias[3:]
    )
    summary = probes.summary(["clean", "noisy"])
    assert summary["noisy"]["per_seed"] == probes.test_accuracy[1].tolist()
    assert summary["clean"]["test_accuracy"] == pytest.approx(float(probes.test_accuracy[0].mean()))
    with pytest.raises(ValueError, match="must name each"):
        probes.summary(["clean"])


def test_probe_input_scalings():
    x = torch.tensor([[3.0, 0.0, -4.0], [0.0, 0.0, 0.0]])
    assert torch.allclose(unit_rms(x).pow(2).mean(-1), torch.tensor([1.0, 0.0]))  # zero rows stay zero
    train, test = standardize(x, x[:1])
    mean, std = feature_stats(x)
    assert torch.allclose(train.mean(0), torch.zeros(3), atol=1e-6) and torch.equal(
        test, (x[:1] - mean) / std
    )


def test_equalize_scales_gives_every_representation_the_reference_norm():
    track = _track()
    before = track.features["mono"][grid.TEST].clone()
    scales = equalize_scales(track.features, "poly")
    norm = {name: float(f[grid.TRAIN].norm(dim=1).mean()) for name, f in track.features.items()}
    assert scales["poly"] == pytest.approx(1.0) and norm["mono"] == pytest.approx(norm["poly"], rel=1e-5)
    assert torch.allclose(track.features["mono"][grid.TEST], before * scales["mono"])  # every key, one factor


def test_bad_rates_and_budgets_are_refused_by_the_helpers():
    with pytest.raises(ValueError, match="1.5"):
        grid.noisy_label_draws(torch.tensor([0, 1, 2, 0]), LABELS, [1.5], [0])


def _image_track(calls: list[str]) -> grid.Track:
    torch.manual_seed(0)
    backbone = ResNetConfig(
        num_channels=1, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic"
    )
    source = MonoSemanticForImageClassification(
        MonoSemanticConfig(backbone_config=backbone, feature_layer="nonneg", feature_dim=16, num_labels=3)
    ).monosemantic

    def factory(kind):
        def make():
            calls.append(kind)
            model = MonoSemanticForImageClassification(
                MonoSemanticConfig(backbone_config=backbone, feature_layer=kind, feature_dim=16, num_labels=3)
            )
            model.monosemantic.load_state_dict(source.state_dict(), strict=False)  # same pretrained start
            return model

        return make

    datasets, labels = {}, {}
    for i, key in enumerate(KEYS):
        g = torch.Generator().manual_seed(i)
        y = torch.arange(24) % 3
        datasets[key] = grid.TensorRows(
            pixel_values=torch.randn(24, 1, 8, 8, generator=g) + y.view(-1, 1, 1, 1), label=y
        )
        labels[key] = y
    return grid.Track(
        name="images",
        description="images",
        num_labels=3,
        label_feature=LABELS,
        pairs=[],
        features={},
        labels=labels,
        noise_cells=[("gaussian_noise", 0.5, "gaussian0.5")],
        finetune_models={"poly": factory("linear"), "mono": factory("nonneg")},
        finetune_pairs=[("poly", "mono")],
        datasets=datasets,
        collator=default_data_collator,
    )


def test_finetune_records_train_every_cell_and_resume_from_the_state_file(tmp_path):
    calls: list[str] = []
    track = _image_track(calls)
    budget = finetune.FinetuneBudget(epochs=1, few_shot_steps=2, batch_size=8, train_size=12)
    kwargs = dict(state_file=str(tmp_path / "cells.jsonl"), work_dir=str(tmp_path / "work"), progress=False)
    records = finetune.finetune_records(track, [0.0, 0.5], [1], [0, 1], budget, **kwargs)
    runs_per_method = 2 * 2 + 1 * 2 + 2  # label-noise rates x seeds, k-shot x seeds, domain x seeds
    assert len(calls) == 2 * runs_per_method
    noisy = [r for r in records if r["scenario"] == "label_noise"]
    assert len(noisy) == 8 and all(0 <= r["train_fit"] <= 1 for r in noisy)
    # input noise is evaluated on the clean-label runs only; domain shift gives in-domain and shifted accuracy
    assert len([r for r in records if r["scenario"] == "gaussian_noise"]) == 4
    assert len([r for r in records if r["scenario"].startswith("domain_shift")]) == 8
    assert {r["mode"] for r in records} == {"finetune"}

    state = tmp_path / "cells.jsonl"
    assert len(state.read_text().splitlines()) == len(calls)  # one line per finished cell

    calls.clear()
    again = finetune.finetune_records(track, [0.0, 0.5], [1], [0, 1], budget, **kwargs)
    assert calls == [] and again == records  # nothing retrained, the same records
    assert len(state.read_text().splitlines()) == 2 * runs_per_method  # and nothing appended twice
    finetune.finetune_records(track, [0.0, 0.5], [1], [0, 1, 2], budget, **kwargs)
    assert len(calls) == 2 * (2 + 1 + 1)  # only the new seed's cells run


def test_finetune_state_file_cut_off_mid_line_reruns_only_that_cell(tmp_path):
    """A kill while a cell's line is appended leaves half a line: the rerun redoes that one cell, and the
    state file stays one complete line per cell afterwards."""
    calls: list[str] = []
    track = _image_track(calls)
    budget = finetune.FinetuneBudget(epochs=1, few_shot_steps=2, batch_size=8, train_size=12)
    state = tmp_path / "cells.jsonl"
    kwargs = dict(state_file=str(state), work_dir=str(tmp_path / "work"), progress=False)
    records = finetune.finetune_records(track, [0.0], [], [0], budget, **kwargs)
    assert calls == ["linear", "linear", "nonneg", "nonneg"]  # label noise 0 and domain shift, per method
    lines = state.read_bytes().splitlines(keepends=True)
    state.write_bytes(b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])  # killed mid-append

    calls.clear()
    again = finetune.finetune_records(track, [0.0], [], [0], budget, **kwargs)
    assert calls == ["nonneg"] and again == records  # only the cut-off (last) cell trained again
    calls.clear()
    assert finetune.finetune_records(track, [0.0], [], [0], budget, **kwargs) == records and calls == []
    assert state.read_bytes() == b"".join(lines)  # the cut-off line was replaced, not appended to


def test_tensor_rows_select_and_relabel_keep_other_columns():
    rows = grid.TensorRows(pixel_values=torch.arange(12.0).view(4, 1, 1, 3), label=torch.tensor([0, 1, 2, 0]))
    picked = rows.select([2, 0])
    assert len(picked) == 2 and picked[0]["label"] == 2 and picked[1]["pixel_values"].sum() == 3.0
    relabelled = finetune.relabel(rows, torch.tensor([1, 1, 1, 1]), LABELS)
    assert relabelled.columns["label"].tolist() == [1, 1, 1, 1] and rows.columns["label"].tolist() == [
        0,
        1,
        2,
        0,
    ]
    batch = default_data_collator(relabelled.__getitems__([0, 3]))
    assert batch["pixel_values"].shape == (2, 1, 1, 3) and batch["labels"].tolist() == [1, 1]
