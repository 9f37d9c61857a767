"""``hf-monosem report``'s time estimate, printed before any work: measured step times x the planned steps.

The fits and the probe grids are loops of optimizer steps whose count the plan fixes in advance (rows,
batch size, epochs). :func:`planned_work` lists them, one :class:`Work` per call of a fit or probe grid
(its kind, the shape a step's time depends on, its steps). :func:`measure_work` times each distinct
shape on this machine: the real function (:func:`~.tracks.sae_layer` fitted by
:func:`~hf_monosem.cached.train_sae_layer`, :func:`~.tracks.fit_projector`,
:func:`~hf_monosem.cached.train_probe_grid`) on random rows of the real width (at most one batch), run
for 1 and for 2 epochs, twice each (the faster of the two counts, as ``timeit`` takes the best): a cost
per step (the difference) and a cost per call outside the steps (the rest).
The extraction is timed by the caller on one real batch (:func:`estimate_seconds` adds it).
:func:`estimate_seconds` multiplies. Random draws happen inside ``fork_rng`` with Python's and NumPy's
generators restored, so measuring changes no result of the run.

Not counted: a call's work that grows with all its rows rather than with its steps (e.g. the
nearest-neighbour positives of the ``authors-nn`` recipe over every training row, measured here on
the few rows of the timing run), a protocol's ``lr_grid`` extensions (data-dependent), and the data
parallelism of ``accelerate launch`` (the estimate is one process's).
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..cached import MiniBatches, ncl_recipe, train_probe_grid, train_sae_layer
from ..scenarios.protocols import ProbeProtocol
from .tracks import RepresentationPlan, fit_projector, sae_layer, sae_sweep

__all__ = ["STAGES", "Work", "estimate_line", "estimate_seconds", "measure_work", "planned_work"]

#: the stages of the estimate, in the order they run
STAGES = ("extraction", "fitting", "probes")
#: epochs of the timing runs of every shape (on at most one batch of rows: one step an epoch); each runs
#: twice, so measuring costs 6 steps per shape
_TIMING_EPOCHS = (1, 2)
#: SAE and projector fits step through batches of 256 rows (their defaults, which the report keeps)
_FIT_BATCH = 256


@dataclass(frozen=True)
class Work:
    """``calls`` runs of one fit or probe grid, each ``steps`` optimizer steps, in ``stage``.

    ``kind`` is ``"sae"`` (``shape``: input width, latents, k, Adam's rate, rows timed), ``"projector"``
    (``"simclr"`` or ``"ncl"``, input width, the number of encoder-level views it draws from, rows timed)
    or ``"probe grid"`` (protocol name, feature width, seeds, probes per seed, views, classes, rows timed).
    The rows timed are the call's, at most one batch. A step's time depends only on ``(kind, shape)``,
    measured once per pair.

    Example:
        >>> Work("fitting", "sae", (32, 32, 8, None, 256), steps=10).seconds((0.5, 0.01))
        0.6
    """

    stage: str
    kind: str
    shape: tuple
    steps: int
    calls: int = 1

    def seconds(self, timing: tuple[float, float]) -> float:
        """The work's seconds at ``timing`` ``(seconds per call outside the steps, seconds per step)``."""
        per_call, per_step = timing
        return self.calls * (per_call + per_step * self.steps)


def _steps(rows: int, batch_size: int, epochs: int, min_size: int = 1) -> int:
    """Optimizer steps of ``epochs`` over ``rows`` rows, counted by the loops' own batcher."""
    return MiniBatches(rows, batch_size, 0, epochs=epochs, min_size=min_size).total_steps


def planned_work(
    train_rows: int,
    width: int,
    plan: RepresentationPlan,
    num_views: int,
    protocols: Sequence[ProbeProtocol],
    rates: Sequence[float],
    shots: Sequence[int],
    seeds: Sequence[int],
    num_labels: int,
    *,
    views_for_probes: bool = False,
    domain_rows: int = 0,
) -> list[Work]:
    """Every fit and probe grid ``hf-monosem report`` runs for ``plan`` on ``train_rows`` training vectors
    of ``width``, as :class:`Work`: the SAEs, the SimCLR / NCL projectors and the SAEs on the SimCLR
    output (:func:`~.tracks.fit_representations`), then per protocol and representation the probe grids
    of :func:`~hf_monosem.scenarios.grid.probe_records` (learning-rate selection on the held-out share,
    label noise at every rate, one few-shot grid per k, the domain grid when ``domain_rows``).

    Example:
        >>> plan = RepresentationPlan(sae_topk=(8,), sae_overcomplete=0, epochs=2, projector_width=None)
        >>> [(w.kind, w.steps) for w in planned_work(600, 32, plan, 0, [], [0.0], [], [0], 2)]
        [('sae', 6)]
    """
    work = []
    sae_steps = _steps(train_rows, _FIT_BATCH, plan.epochs)
    timed_rows = min(train_rows, _FIT_BATCH)
    for _, latents, k in sae_sweep(plan.sae_topk, plan.sae_overcomplete, width):
        work.append(Work("fitting", "sae", (width, latents, k, plan.sae_lr, timed_rows), sae_steps))
    widths = {
        "raw": width,
        **{name: width for name, _, _ in sae_sweep(plan.sae_topk, plan.sae_overcomplete, width)},
    }
    if plan.projector_width is not None:
        pw = plan.projector_width
        projector_views = num_views if ncl_recipe(plan.ncl_recipe, "nonneg")[0] == "dropout" else 0
        projector_steps = _steps(
            train_rows, _FIT_BATCH, plan.epochs, min_size=2
        )  # as fit_contrastive_projector
        for name in ("simclr", "ncl"):
            shape = (name, width, projector_views, timed_rows)
            work.append(Work("fitting", "projector", shape, projector_steps))
            widths[name] = pw
        if plan.sae_on_projector:
            for name, latents, k in sae_sweep(plan.sae_topk, 0, pw):
                work.append(Work("fitting", "sae", (pw, latents, k, plan.sae_lr, timed_rows), sae_steps))
                widths[f"simclr_{name}"] = pw
    for protocol in protocols:
        views = num_views if views_for_probes and protocol.augmented_views else 0

        def grid(
            f: int, groups: int, rows: int, calls: int, protocol: ProbeProtocol = protocol, views: int = views
        ) -> Work:
            shape = (
                protocol.name,
                f,
                len(seeds),
                groups,
                views,
                num_labels,
                min(rows, protocol.batch_size),
            )
            return Work(
                "probes", "probe grid", shape, _steps(rows, protocol.batch_size, protocol.epochs), calls
            )

        for f in sorted(set(widths.values())):
            reps = sum(w == f for w in widths.values())
            if protocol.lr_grid:  # probes on the rows not held out for scoring the rates
                held_out = max(1, int(train_rows * protocol.selection_fraction))
                work.append(grid(f, len(protocol.lr_grid), train_rows - held_out, reps))
            work.append(grid(f, len(rates), train_rows, reps))
            work.extend(grid(f, 1, k * num_labels, reps) for k in shots)
            if domain_rows:
                work.append(grid(f, 1, domain_rows, reps))
    return work


@contextlib.contextmanager
def _random_state_kept() -> Iterator[None]:
    """torch's, Python's and NumPy's global generators as they were, whatever the block draws."""
    python, numpy = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        random.setstate(python)
        np.random.set_state(numpy)


def _timed(run: Callable[[int], None], steps: Callable[[int], int]) -> tuple[float, float]:
    """``(seconds per call outside the steps, seconds per step)`` of ``run(epochs)``, from the faster of two
    runs of each of :data:`_TIMING_EPOCHS`, taken in turn (a load spike on shared cores slows one run, not
    the minimum of two; the first run pays the first-call costs, as the real calls do once)."""
    seconds = [float("inf")] * len(_TIMING_EPOCHS)
    for _ in range(2):
        for i, epochs in enumerate(_TIMING_EPOCHS):
            start = time.perf_counter()
            run(epochs)
            seconds[i] = min(seconds[i], time.perf_counter() - start)
    few, many = (steps(e) for e in _TIMING_EPOCHS)
    per_step = max((seconds[1] - seconds[0]) / max(many - few, 1), 0.0)
    return max(seconds[0] - per_step * few, 0.0), per_step


def measure_work(
    work: Sequence[Work], plan: RepresentationPlan, protocols: Sequence[ProbeProtocol]
) -> dict[tuple, tuple[float, float]]:
    """``{(kind, shape): (seconds per call outside the steps, seconds per step)}`` of every distinct
    ``(kind, shape)`` of ``work``, timed here on random rows of the real width (the call's rows, at most
    one batch of the real batch size: one step an epoch); the global random state is left as it was.

    Example:
        >>> plan = RepresentationPlan(sae_topk=(4,), sae_overcomplete=0, epochs=2, projector_width=None)
        >>> work = planned_work(300, 8, plan, 0, [], [0.0], [], [0], 2)
        >>> timing = measure_work(work, plan, [])
        >>> list(timing), all(t >= 0 for t in timing[("sae", (8, 8, 4, None, 256))])
        ([('sae', (8, 8, 4, None, 256))], True)
    """
    by_name = {p.name: p for p in protocols}
    out: dict[tuple, tuple[float, float]] = {}
    with _random_state_kept():
        g = torch.Generator().manual_seed(0)
        for item in work:
            key = (item.kind, item.shape)
            if key not in out:
                out[key] = _measure(item, plan, by_name, g)
    return out


def _measure(
    item: Work, plan: RepresentationPlan, protocols: dict[str, ProbeProtocol], g: torch.Generator
) -> tuple[float, float]:
    """One shape's timing: the real fit or probe grid on random rows (see :func:`measure_work`)."""
    if item.kind == "sae":
        width, latents, k, lr, rows = item.shape
        x = torch.randn(rows, width, generator=g)

        def sae(epochs: int) -> None:
            train_sae_layer(sae_layer(width, latents, k), x, epochs=epochs, lr=lr, seed=0, progress=False)

        return _timed(sae, lambda e: _steps(len(x), _FIT_BATCH, e))
    if item.kind == "projector":
        name, width, num_views, rows = item.shape
        x = torch.randn(rows, width, generator=g)
        views = torch.randn(num_views, *x.shape, generator=g) if num_views else None

        def projector(epochs: int) -> None:
            fit_projector(x, plan, name, views, epochs=epochs, progress=False)

        return _timed(projector, lambda e: _steps(len(x), _FIT_BATCH, e, min_size=2))
    protocol_name, width, num_seeds, groups, num_views, classes, rows = item.shape
    protocol = protocols[protocol_name]
    x = torch.randn(*((num_views,) if num_views else ()), rows, width, generator=g)
    labels = torch.randint(classes, (num_seeds * groups, rows), generator=g)
    seeds = [s for _ in range(groups) for s in range(num_seeds)]  # grouped as the report's grids are

    def probes(epochs: int) -> None:
        kwargs = {**protocol.training_kwargs(), "epochs": epochs}
        kwargs["warmup_epochs"] = min(kwargs["warmup_epochs"], epochs - 1)  # the same schedule, shorter
        train_probe_grid(x, labels, classes, seeds=seeds, **kwargs)

    return _timed(probes, lambda e: _steps(rows, protocol.batch_size, e))


def estimate_seconds(
    extraction_seconds: float, work: Sequence[Work], timing: dict[tuple, tuple[float, float]]
) -> dict[str, float]:
    """Seconds per stage: ``extraction_seconds`` (the caller's, from a timed batch), the fits and probes as
    every :class:`Work`'s planned steps x its measured ``timing`` (:func:`measure_work`).

    Example:
        >>> work = [Work("fitting", "sae", ("s",), steps=100), Work("probes", "probe grid", ("p",), 50, 2)]
        >>> timing = {("sae", ("s",)): (1.0, 0.1), ("probe grid", ("p",)): (0.0, 0.2)}
        >>> estimate_seconds(10.0, work, timing)
        {'extraction': 10.0, 'fitting': 11.0, 'probes': 20.0, 'total': 41.0}
    """
    out = {"extraction": float(extraction_seconds), "fitting": 0.0, "probes": 0.0}
    for item in work:
        out[item.stage] += item.seconds(timing[(item.kind, item.shape)])
    out = {stage: round(seconds, 3) for stage, seconds in out.items()}
    out["total"] = round(sum(out.values()), 3)
    return out


def estimate_line(estimate: dict[str, float]) -> str:
    """The line ``hf-monosem report`` prints before the work: the total and every stage.

    Example:
        >>> print(estimate_line({"extraction": 10.0, "fitting": 11.0, "probes": 20.0, "total": 41.0}))
        ... # doctest: +NORMALIZE_WHITESPACE
        [hf-monosem report] estimated time: about 41 s (extraction 10 s, fitting 11 s, probes 20 s;
        measured steps x planned steps; stages a previous run finished are loaded instead)
    """
    stages = ", ".join(f"{stage} {estimate[stage]:.0f} s" for stage in STAGES)
    return (
        f"[hf-monosem report] estimated time: about {estimate['total']:.0f} s ({stages}; measured steps x "
        "planned steps; stages a previous run finished are loaded instead)"
    )
