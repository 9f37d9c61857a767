"""The scenario grid: the robustness scenarios on one data set + backbone, as batched linear probes.

A *track* (:class:`Track`) hands over representations of its data (feature matrices, extracted
once) and, for the fine-tune mode (:mod:`hf_monosem.scenarios.finetune`), model factories and
datasets. A track holds inputs only: this module reads it and *returns* what it computes, result records,
one per (method, scenario, level, seed), never writing onto the track:

* :func:`label_noise_probe_grid` -- linear probes trained on symmetric-noise draws of the training
  labels (rates x seeds, one batched grid, :func:`hf_monosem.cached.train_probe_grid`), scored on
  clean test labels and on the labels each probe was trained on (how much noise it memorised);
* :func:`probe_records` -- every scenario on every representation of a track with the same probe
  budget: label noise, test-time input noise on the probes trained on clean labels, k-shot training
  and domain shift (train on one domain, test in-domain and on the shifted domain); it returns them with
  the probe learning rate chosen per representation (:class:`ProbeResults`).

Label draws (:func:`noisy_label_draws`) and k-shot subsets (:func:`few_shot_rows`) come from
:func:`~hf_monosem.scenarios.symmetric_label_noise` (the draw of ``add_label_noise``) and
:func:`~hf_monosem.scenarios.few_shot`, so the
same seed gives the same draw in both modes and in every script.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from datasets import Dataset, Features

from ..cached.probe_grid import ProbeGrid, train_probe_grid
from ..cached.scaling import equalize_scales
from .labels import symmetric_label_noise
from .protocols import ProbeProtocol
from .splits import few_shot

__all__ = [
    "DOMAIN_SHIFTED",
    "DOMAIN_TEST",
    "DOMAIN_TRAIN",
    "TEST",
    "TRAIN",
    "LabelNoiseProbes",
    "ProbeResults",
    "TensorRows",
    "Timer",
    "Track",
    "few_shot_rows",
    "label_noise_probe_grid",
    "mean_by",
    "noisy_label_draws",
    "probe_records",
    "selection_labels",
]

logger = logging.getLogger(__name__)

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
    ``datasets.Dataset`` or :class:`TensorRows`). ``train_views[representation]`` are optional
    ``[K, N_train, F]`` augmented views of the training rows (for protocols with
    ``augmented_views``), and ``scale_reference`` the representation whose mean norm protocols with
    ``equalize_scale`` rescale the others to (default: the first pair's poly side).

    Only inputs: the grid reads a track and never writes to it. What is measured on the way lives in
    returned objects: :func:`probe_records` returns the chosen probe rates with its records
    (:class:`ProbeResults`), and the track builder returns the representations' fit reports and
    monosemanticity beside the track (:class:`hf_monosem.report.tracks.TrackFits`). Per-representation
    input scales are no field either: a protocol with ``equalize_scale`` computes them from
    ``features`` and ``scale_reference`` each time it probes, so they are neither an input nor kept.
    """

    name: str
    description: str
    num_labels: int
    label_feature: Any
    pairs: list[tuple[str, str]]
    features: dict[str, dict[str, torch.Tensor]]
    labels: dict[str, torch.Tensor]
    noise_cells: list[tuple[str, float, str]]
    finetune_models: dict[str, Callable[[], torch.nn.Module]] = field(default_factory=dict)
    finetune_pairs: list[tuple[str, str]] = field(default_factory=list)
    datasets: dict[str, Any] = field(default_factory=dict)
    collator: Callable | None = None
    train_views: dict[str, torch.Tensor] = field(default_factory=dict)
    scale_reference: str | None = None
    #: classes of the domain-shift task when it is another data set (default ``num_labels``)
    domain_num_labels: int | None = None


class TensorRows(torch.utils.data.Dataset):
    """Model-ready rows held as tensors (``pixel_values``, ``label``): the small vision runs batch them
    ~30x faster than Arrow rows of nested lists, which would otherwise take 40% of a fine-tune step.

    Example:
        >>> rows = TensorRows(pixel_values=torch.zeros(4, 1, 2, 2), label=torch.tensor([0, 1, 2, 0]))
        >>> len(rows), rows.select([2, 0])[0]["label"].item()
        (4, 2)
    """

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


class Timer:
    """``with timer("name"):`` adds the span's wall time to ``timer.times[name]`` (seconds) and logs it.

    Example:
        >>> timer = Timer()
        >>> with timer("nothing"):
        ...     pass
        >>> list(timer.times)
        ['nothing']
    """

    def __init__(self):
        self.times: dict[str, float] = {}

    def __call__(self, name: str):
        timer = self

        class _Span:
            def __enter__(self):
                self.start = time.perf_counter()

            def __exit__(self, *exc):
                timer.times[name] = round(timer.times.get(name, 0.0) + time.perf_counter() - self.start, 1)
                logger.info("[%s] %.1fs", name, timer.times[name])

        return _Span()


def _label_table(labels: torch.Tensor, label_feature) -> Dataset:
    return Dataset.from_dict({"label": labels.tolist()}, features=Features({"label": label_feature}))


def noisy_label_draws(
    labels: torch.Tensor, label_feature, rates: Sequence[float], seeds: Sequence[int]
) -> torch.Tensor:
    """``[len(rates) * len(seeds), N]`` symmetric-noise label draws (rate-major), shared by both modes.

    Example:
        >>> from datasets import ClassLabel
        >>> draws = noisy_label_draws(
        ...     torch.tensor([0, 1, 2, 0]), ClassLabel(num_classes=3), [0.0, 0.5], [0, 1])
        >>> draws.shape, (draws != torch.tensor([0, 1, 2, 0])).sum(1).tolist()
        (torch.Size([4, 4]), [0, 0, 2, 2])
    """
    # the array draw itself (the one add_label_noise makes): no table built and read back per draw
    classes, array = label_feature.num_classes, labels.numpy()
    return torch.stack(
        [torch.from_numpy(symmetric_label_noise(array, r, classes, seed=s)) for r in rates for s in seeds]
    )


def few_shot_rows(labels: torch.Tensor, label_feature, k: int, seeds: Sequence[int]) -> torch.Tensor:
    """``[len(seeds), k * classes]`` row indices of seeded stratified k-shot subsets."""
    table = _label_table(labels, label_feature).add_column("row", list(range(len(labels))))
    return torch.stack([torch.tensor(few_shot(table, k, seed=s)["row"][:]) for s in seeds])


@dataclass
class LabelNoiseProbes:
    """Linear probes trained on noisy training labels: ``len(rates) x len(seeds)`` probes, rate-major.

    ``grid`` holds the probes, ``labels [P, N]`` the training labels each one saw,
    ``test_accuracy [R, S]`` their accuracy on the clean test labels and ``train_fit [R, S]`` their
    agreement with their own (noisy) training labels: how much of the noise they memorised.
    """

    rates: list[float]
    seeds: list[int]
    grid: ProbeGrid
    labels: torch.Tensor
    test_accuracy: torch.Tensor
    train_fit: torch.Tensor

    def at(self, rate: float) -> ProbeGrid:
        """The ``len(seeds)`` probes trained at ``rate`` (e.g. ``0.0``: the clean-label probes)."""
        start = self.rates.index(rate) * len(self.seeds)
        stop = start + len(self.seeds)
        return ProbeGrid(self.grid.weight[start:stop], self.grid.bias[start:stop])

    def summary(self, names: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
        """Per rate (keyed by ``names``, default the rates): mean / std / per-seed test accuracy, fit."""
        names = list(self.rates) if names is None else list(names)
        if len(names) != len(self.rates):
            raise ValueError(f"names={names!r} must name each of the {len(self.rates)} rates {self.rates}")
        accs, fitted = self.test_accuracy, self.train_fit
        return {
            name: {
                "test_accuracy": float(accs[i].mean()),
                "test_accuracy_std": float(accs[i].std(unbiased=False)),
                "per_seed": accs[i].tolist(),
                "train_accuracy_vs_training_labels": float(fitted[i].mean()),
            }
            for i, name in enumerate(names)
        }


def label_noise_probe_grid(
    train_features: torch.Tensor,
    test_features: torch.Tensor,
    y_train: torch.Tensor,
    y_test: torch.Tensor,
    label_feature,
    rates: Sequence[float],
    seeds: Sequence[int],
    *,
    epochs: int = 50,
    lr: float = 1e-3,
    batch_size: int = 256,
    num_labels: int | None = None,
    label_draws: torch.Tensor | None = None,
    unaugmented_train_features: torch.Tensor | None = None,
    **training: Any,
) -> LabelNoiseProbes:
    """Linear probes on symmetric-noise training labels, every (rate, seed) in one batched grid.

    Probe ``(rate, seed)`` trains on :func:`~hf_monosem.scenarios.add_label_noise` at ``rate`` with
    ``seed`` (the draw, the probe's initialisation and its shuffling all use ``seed``), with the same
    Adam budget for all (fixed epochs, no early stopping on the noisy labels), and is scored on the
    clean ``y_test``. ``label_feature`` is the labels' ``ClassLabel``; ``num_labels`` defaults to its
    size. ``label_draws`` (from :func:`noisy_label_draws` with the same rates and seeds) lets several
    representations share one set of draws. ``train_features`` may be ``[K, N, F]`` augmented views;
    the fit to the training labels is then measured on ``unaugmented_train_features``. Other
    keyword arguments (``optimizer``, ``schedule``, ...) go to :func:`~hf_monosem.cached.train_probe_grid`.

    Example:
        >>> from datasets import ClassLabel
        >>> x = torch.randn(120, 4); y = (x[:, 0] > 0).long()
        >>> probes = label_noise_probe_grid(x[:80], x[80:], y[:80], y[80:], ClassLabel(num_classes=2),
        ...                                 [0.0, 0.3], [0, 1], epochs=20, lr=0.05, batch_size=16)
        >>> probes.test_accuracy.shape, bool(probes.test_accuracy[0].min() > 0.8)
        (torch.Size([2, 2]), True)
        >>> sorted(probes.summary(["clean", "noisy"])["noisy"])
        ['per_seed', 'test_accuracy', 'test_accuracy_std', 'train_accuracy_vs_training_labels']
    """
    rates, seeds = [float(r) for r in rates], [int(s) for s in seeds]
    if label_draws is None:
        label_draws = noisy_label_draws(y_train, label_feature, rates, seeds)
    if num_labels is None:
        num_labels = label_feature.num_classes
    grid = train_probe_grid(
        train_features,
        label_draws,
        num_labels,
        seeds=[s for _ in rates for s in seeds],
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        **training,
    )
    shape = (len(rates), len(seeds))
    if unaugmented_train_features is None:
        unaugmented_train_features = train_features if train_features.dim() == 2 else train_features[0]
    return LabelNoiseProbes(
        rates=rates,
        seeds=seeds,
        grid=grid,
        labels=label_draws,
        test_accuracy=grid.accuracy(test_features, y_test).view(shape),
        train_fit=grid.accuracy(unaugmented_train_features, label_draws).view(shape),
    )


def cell_record(track, mode, method, scenario, level, seed, accuracy, **extra) -> dict[str, Any]:
    """One grid cell's run record (the fields of :mod:`hf_monosem.evaluation.results`' run records).

    Shared by the probe grid here and the fine-tune grid (:mod:`.finetune`) so both write one schema."""
    return {
        "track": track,
        "mode": mode,
        "method": method,
        "scenario": scenario,
        "level": float(level),
        "seed": int(seed),
        "accuracy": float(accuracy),
        **extra,
    }


def _protocol_inputs(track: Track, protocol: ProbeProtocol) -> tuple[dict, dict]:
    """The track's features (and augmented training views) as ``protocol`` probes them."""
    features = dict(track.features)
    views = dict(track.train_views) if protocol.augmented_views else {}
    if protocol.equalize_scale:
        reference = track.scale_reference or track.pairs[0][0]
        features = {name: dict(f) for name, f in features.items()}
        scales = equalize_scales(features, reference)
        views = {name: v * scales[name] for name, v in views.items()}
    return features, views


def selection_labels(
    y_train: torch.Tensor, label_feature, protocol: ProbeProtocol, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy training labels (rate ``protocol.selection_rate``, ``seed``) and the held-out rows (a share
    ``protocol.selection_fraction``) on which :meth:`ProbeProtocol.select_lr` scores each learning rate.

    Example:
        >>> from datasets import ClassLabel
        >>> from hf_monosem.scenarios.protocols import CONTROLLED_PROBE
        >>> noisy, rows = selection_labels(
        ...     torch.zeros(10, dtype=torch.long), ClassLabel(num_classes=2), CONTROLLED_PROBE
        ... )
        >>> int((noisy != 0).sum()), len(rows)
        (3, 2)
    """
    noisy = noisy_label_draws(y_train, label_feature, [protocol.selection_rate], [seed])[0]
    n = len(y_train)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return noisy, order[: max(1, int(n * protocol.selection_fraction))]


def _selection_labels(track: Track, protocol: ProbeProtocol) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy training labels (rate ``selection_rate``, seed 0) and the held-out rows lr selection scores."""
    return selection_labels(track.labels[TRAIN], track.label_feature, protocol)


#: how many decades :func:`probe_records` extends an ``lr_grid`` downward at most (a rate 1e4 x below
#: the grid's lowest leaves a probe at its initialisation; the cap only guarantees the loop ends)
MAX_LR_GRID_EXTENSIONS = 4


def _select_rates(
    track: Track, protocol: ProbeProtocol, features: dict, views: dict, seeds: list[int]
) -> tuple[dict[str, tuple[float, dict[float, float]]], int]:
    """``({representation: (lr, held-out scores)}, extensions)`` for a protocol with an ``lr_grid``
    (``({}, 0)`` without one).

    Every representation picks its rate on the held-out noisy training rows; while any picks the grid's
    lowest rate, the grid (of every representation) is extended downward by a decade
    (:meth:`ProbeProtocol.extended_downward`) and the choice made again, reusing the scores already
    measured: the P3 protocol's rule. ``extensions`` counts the decades added (at most
    :data:`MAX_LR_GRID_EXTENSIONS`).
    """
    if not protocol.lr_grid:
        return {}, 0
    noisy, rows = _selection_labels(track, protocol)
    grid_protocol, picks, extensions = protocol, {}, 0
    while True:
        for name, f in features.items():
            train = views.get(name, f[TRAIN])
            known = picks.get(name, (None, None))[1]
            picks[name] = grid_protocol.select_lr(train, noisy, track.num_labels, seeds, rows, scores=known)
        lowest = min(grid_protocol.lr_grid)
        at_edge = sorted(name for name, (lr, _) in picks.items() if lr == lowest)
        if not at_edge or extensions == MAX_LR_GRID_EXTENSIONS:
            return picks, extensions
        logger.info(
            "%s: %s picked the lowest rate %g of the lr grid; extending it a decade downward",
            protocol.name, ", ".join(at_edge), lowest,
        )  # fmt: skip
        grid_protocol, extensions = grid_protocol.extended_downward(), extensions + 1


@dataclass
class ProbeResults:
    """What :func:`probe_records` computes under one protocol: ``records`` (one run record per
    representation, scenario, level and seed) and ``selection`` (per representation: the probe learning
    rate ``lr`` used, the ``held_out_accuracy`` of each rate tried when the protocol chooses one, and
    ``lr_grid_extensions`` for a protocol with an ``lr_grid``; written under ``"probe_selection"`` in the
    reports' ``results.json``, per protocol).

    Example:
        >>> run = ProbeResults(records=[{"method": "raw", "accuracy": 0.9}], selection={"raw": {"lr": 1e-3}})
        >>> len(run.records), run.selection["raw"]["lr"]
        (1, 0.001)
    """

    records: list[dict[str, Any]]
    selection: dict[str, dict[str, Any]]


def probe_records(
    track: Track,
    rates: list[float],
    shots: list[int],
    seeds: list[int],
    *,
    epochs: int = 50,
    lr: float = 1e-3,
    batch_size: int = 256,
    protocol: ProbeProtocol | None = None,
) -> ProbeResults:
    """Linear probes on every representation of ``track`` over all scenarios (same protocol for all).

    One record per (representation, scenario, level, seed): ``label_noise`` at each rate, every
    input-noise cell of the track (the clean-label probes on the perturbed test features; needs
    ``0.0`` in ``rates``), ``few_shot`` at each k, ``domain_shift_in_domain`` and
    ``domain_shift_shifted`` (where the track has ``domain_train`` rows).
    ``protocol`` (:mod:`hf_monosem.scenarios.protocols`) says how probes train; without one, AdamW at
    ``lr`` for ``epochs`` on the features as given (protocol name ``"fixed"``). Each record names its
    protocol and probe learning rate; the chosen rates come back in :attr:`ProbeResults.selection` (the
    track is only read). A protocol with an ``lr_grid`` extends it downward while any representation picks
    its lowest rate (:func:`_select_rates`); its records and the selection say how many decades were added
    (``lr_grid_extensions``).

    Example:
        >>> from datasets import ClassLabel
        >>> x = torch.randn(40, 3); y = torch.arange(40) % 2
        >>> track = Track("toy", "toy", 2, ClassLabel(num_classes=2), [], {"raw": {TRAIN: x, TEST: x}},
        ...               {TRAIN: y, TEST: y}, [])
        >>> run = probe_records(track, [0.0], [], [0, 1], epochs=2, lr=0.01)
        >>> len(run.records), run.selection
        (2, {'raw': {'lr': 0.01, 'held_out_accuracy': {}}})
    """
    if protocol is None:
        protocol = ProbeProtocol("fixed", lr=lr, epochs=epochs, batch_size=batch_size)
    features, views = _protocol_inputs(track, protocol)
    records = []
    y_train, y_test = track.labels[TRAIN], track.labels[TEST]
    draws = noisy_label_draws(y_train, track.label_feature, rates, seeds)
    shot_rows = {k: few_shot_rows(y_train, track.label_feature, k, seeds) for k in shots}
    chosen: dict[str, dict[str, Any]] = {}
    picks, extensions = _select_rates(track, protocol, features, views, seeds)
    for name, f in features.items():
        train = views.get(name, f[TRAIN])  # [K, N, F] augmented views where the protocol uses them
        lr_used, scores = picks.get(name, (protocol.lr, {}))
        chosen[name] = {"lr": lr_used, "held_out_accuracy": scores}
        budget = protocol.training_kwargs(lr_used)
        tags = {"protocol": protocol.name, "probe_lr": lr_used}
        if protocol.lr_grid:
            chosen[name]["lr_grid_extensions"] = extensions
            tags["lr_grid_extensions"] = extensions

        def add(scenario, level, accs, name=name, tags=tags):
            records.extend(
                cell_record(track.name, "probe", name, scenario, level, s, a, **tags)
                for s, a in zip(seeds, accs.tolist())
            )

        noisy = label_noise_probe_grid(
            train, f[TEST], y_train, y_test, track.label_feature, rates, seeds, num_labels=track.num_labels,
            label_draws=draws, unaugmented_train_features=f[TRAIN], **budget,
        )  # fmt: skip
        for i, r in enumerate(rates):
            records.extend(
                cell_record(track.name, "probe", name, "label_noise", r, s, a, train_fit=float(fit), **tags)
                for s, a, fit in zip(seeds, noisy.test_accuracy[i].tolist(), noisy.train_fit[i].tolist())
            )
        if 0.0 in rates:  # the probes trained on clean labels, tested on perturbed inputs
            clean = noisy.at(0.0)
            for scenario, level, key in track.noise_cells:
                add(scenario, level, clean.accuracy(f[key], track.labels[key]))
        for k, rows in shot_rows.items():
            grid = train_probe_grid(train, y_train.expand(len(seeds), -1), track.num_labels, rows=rows,
                                    seeds=seeds, **budget)  # fmt: skip
            add("few_shot", k, grid.accuracy(f[TEST], y_test))
        if DOMAIN_TRAIN not in track.labels:  # a track without domains has no domain-shift cells
            continue
        y_domain = track.labels[DOMAIN_TRAIN]
        domain_labels = track.domain_num_labels or track.num_labels
        grid = train_probe_grid(
            f[DOMAIN_TRAIN], y_domain.expand(len(seeds), -1), domain_labels, seeds=seeds, **budget
        )
        add("domain_shift_in_domain", 0, grid.accuracy(f[DOMAIN_TEST], track.labels[DOMAIN_TEST]))
        add("domain_shift_shifted", 0, grid.accuracy(f[DOMAIN_SHIFTED], track.labels[DOMAIN_SHIFTED]))
    return ProbeResults(records=records, selection=chosen)


def mean_by(records: list[dict[str, Any]], key: str) -> dict[tuple, float]:
    """Mean of ``key`` per (method, scenario, level) over the records that have it.

    Example:
        >>> mean_by([{"method": "m", "scenario": "s", "level": 0.0, "fit": 1.0},
        ...          {"method": "m", "scenario": "s", "level": 0.0, "fit": 0.5}], "fit")
        {('m', 's', 0.0): 0.75}
    """
    groups: dict[tuple, list[float]] = {}
    for r in records:
        if key in r:
            groups.setdefault((r["method"], r["scenario"], r["level"]), []).append(r[key])
    return {k: float(np.mean(v)) for k, v in groups.items()}
