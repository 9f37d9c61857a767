"""Linear-probe protocols: how every probe of a scenario grid is trained, as one named value.

The paper's robustness numbers are linear probes, and a probe's result depends on its optimisation
as much as on the representation (a feature scale 20x smaller is a learning rate 20x smaller). So
the grid runs each representation under named protocols, side by side:

* :data:`PAPER_CIFAR_PROBE` (``paper_cifar``) -- the authors' CIFAR recipe
  (``PKU-ML/Beyond_Interpretability``, ``scripts/linear/cifar/*.yaml`` on solo-learn): features at
  their natural scale, LARS (lr 0.4, weight decay 1e-4, eta 0.02, ``clip_lr``, bias excluded; momentum
  0.9) with a per-step linear warmup (10 epochs) then cosine, batch 256, 50 epochs, the last epoch
  reported, training images augmented (random resized crop 0.08-1 + flip, here K views cached once per
  image). P2 called it ``paper``: :data:`PAPER_PROBE` is the same preset under that name (an alias,
  :func:`probe_protocol` warns), so P2's records still read.
* :data:`PAPER_IN100_PROBE` (``paper_in100``) -- the authors' ImageNet-100 recipe
  (``scripts/linear/imagenet-100/*label_noise*.yaml``), where the paper's largest gains are: plain SGD
  (no momentum), lr 1.5, weight decay 0, a constant rate (their step decay at epochs 60 / 80 never fires
  in 50 epochs), batch 256, 50 epochs, the last epoch, augmented views. fp32 here (their fp16 is a GPU
  speed setting).
* :data:`CONTROLLED_PROBE` -- what a practitioner can do to compare fairly: every representation
  rescaled to one mean L2 norm, AdamW at a constant rate chosen *per representation* from
  ``lr_grid`` (1e-5 ... 0.1) on a held-out part of the training rows with noisy labels
  (``selection_rate``; never the test split), 50 epochs. When a representation picks the grid's lowest
  rate, the grid is extended downward by a decade (:meth:`ProbeProtocol.extended_downward`) and the
  choice made again (:func:`hf_monosem.scenarios.grid.probe_records` does it and records it).

If a gain appears under one protocol and not the other, it is optimisation, not monosemanticity;
the results report both.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

from ..cached.probe_grid import PROBE_OPTIMIZERS, PROBE_SCHEDULES, train_probe_grid

__all__ = [
    "CONTROLLED_PROBE",
    "PAPER_CIFAR_PROBE",
    "PAPER_IN100_PROBE",
    "PAPER_PROBE",
    "PROBE_PROTOCOLS",
    "PROBE_PROTOCOL_ALIASES",
    "ProbeProtocol",
    "probe_protocol",
    "probe_protocol_names",
]


@dataclass(frozen=True)
class ProbeProtocol:
    """How the linear probes of a grid train (see the module docstring for the two presets).

    ``optimizer``, ``lr``, ``weight_decay``, ``momentum``, ``schedule``, ``warmup_epochs``,
    ``epochs`` and ``batch_size`` go to :func:`~hf_monosem.cached.train_probe_grid`.
    ``equalize_scale`` rescales every representation to the track's reference one's mean L2 norm;
    ``augmented_views`` trains on the track's cached augmented views where it has them; a non-empty
    ``lr_grid`` chooses ``lr`` per representation: probes train on ``1 - selection_fraction`` of the
    training rows with labels noised at ``selection_rate`` and are scored on the rest, against the
    same noisy labels (all a practitioner has).

    Example:
        >>> PAPER_CIFAR_PROBE.optimizer, PAPER_CIFAR_PROBE.lr, PAPER_CIFAR_PROBE.equalize_scale
        ('lars', 0.4, False)
        >>> PAPER_IN100_PROBE.optimizer, PAPER_IN100_PROBE.lr, PAPER_IN100_PROBE.momentum
        ('sgd', 1.5, 0.0)
        >>> ProbeProtocol("mine", optimizer="rmsprop")
        Traceback (most recent call last):
        ...
        ValueError: optimizer='rmsprop' is not valid; allowed: 'adam', 'sgd', 'lars'
    """

    name: str
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: str = "constant"
    warmup_epochs: float = 0
    epochs: int = 50
    batch_size: int = 256
    equalize_scale: bool = False
    augmented_views: bool = False
    lr_grid: tuple[float, ...] = field(default_factory=tuple)
    selection_rate: float = 0.3
    selection_fraction: float = 0.2

    def __post_init__(self):
        if self.optimizer not in PROBE_OPTIMIZERS:
            raise ValueError(
                f"optimizer={self.optimizer!r} is not valid; allowed: "
                f"{', '.join(map(repr, PROBE_OPTIMIZERS))}"
            )
        if self.schedule not in PROBE_SCHEDULES:
            raise ValueError(
                f"schedule={self.schedule!r} is not valid; allowed: {', '.join(map(repr, PROBE_SCHEDULES))}"
            )
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} is not valid; allowed: a positive integer")
        if not self.lr > 0 or any(not lr > 0 for lr in self.lr_grid):
            raise ValueError(f"lr={self.lr!r}, lr_grid={self.lr_grid!r} are not valid; allowed: numbers > 0")
        if not 0 < self.selection_fraction < 1:
            raise ValueError(
                f"selection_fraction={self.selection_fraction!r} is not valid; allowed: 0 < f < 1"
            )
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(
                f"warmup_epochs={self.warmup_epochs!r} is not valid; allowed: 0 <= warmup_epochs < "
                f"epochs={self.epochs}"
            )
        object.__setattr__(self, "lr_grid", tuple(float(lr) for lr in self.lr_grid))

    def with_budget(self, **changes: Any) -> ProbeProtocol:
        """A copy with other settings (e.g. fewer ``epochs`` for a quick run, warmup scaled along).

        Example:
            >>> PAPER_PROBE.with_budget(epochs=20).warmup_epochs
            4.0
        """
        if "epochs" in changes and "warmup_epochs" not in changes:
            changes["warmup_epochs"] = self.warmup_epochs * changes["epochs"] / self.epochs
        return replace(self, **changes)

    def extended_downward(self) -> ProbeProtocol:
        """A copy whose ``lr_grid`` reaches one decade lower: the lowest rate times 0.3 and 0.1 are added
        (the grid's 1-3 steps continued).

        Example:
            >>> CONTROLLED_PROBE.extended_downward().lr_grid[:3]
            (1e-06, 3e-06, 1e-05)
        """
        if not self.lr_grid:
            raise ValueError(f"protocol {self.name!r} has no lr_grid to extend")
        low = min(self.lr_grid)
        added = (float(f"{low * 0.1:.6g}"), float(f"{low * 0.3:.6g}"))
        return replace(self, lr_grid=tuple(sorted({*self.lr_grid, *added})))

    def training_kwargs(self, lr: float | Sequence[float] | None = None) -> dict[str, Any]:
        """Keyword arguments of :func:`~hf_monosem.cached.train_probe_grid` (at ``lr``, default
        ``self.lr``; a sequence gives one rate per probe)."""
        return {
            "epochs": self.epochs,
            "lr": self.lr if lr is None else lr,
            "weight_decay": self.weight_decay,
            "batch_size": self.batch_size,
            "optimizer": self.optimizer,
            "momentum": self.momentum,
            "schedule": self.schedule,
            "warmup_epochs": self.warmup_epochs,
        }

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "lr_grid": list(self.lr_grid)}

    def select_lr(
        self,
        train_features: torch.Tensor,
        noisy_labels: torch.Tensor,
        num_labels: int,
        seeds: list[int],
        selection_rows: torch.Tensor,
        scores: dict[float, float] | None = None,
    ) -> tuple[float, dict[float, float]]:
        """``(lr, {lr: held-out accuracy})``: the ``lr_grid`` value whose probes (one per seed, trained on
        the rows not in ``selection_rows``) best predict ``noisy_labels`` on ``selection_rows``; ties go
        to the smaller rate. Without a grid, ``(self.lr, {})``. ``scores`` already measured (the same
        inputs, e.g. before the grid was extended) are reused, not trained again; the other rates train
        in one :func:`~hf_monosem.cached.train_probe_grid` call (rates x seeds, a rate per probe), the
        same probes as one call per rate.

        ``train_features`` may be ``[K, N, F]`` augmented views; held-out rows are scored on view 0
        only if no un-augmented matrix is given, so pass ``[N, F]`` features for scoring where you have them.
        """
        if not self.lr_grid:
            return self.lr, {}
        n = train_features.shape[-2]
        held_out = torch.zeros(n, dtype=torch.bool)
        held_out[selection_rows] = True
        fit_rows = torch.arange(n)[~held_out]
        plain = train_features if train_features.dim() == 2 else train_features[0]
        scores = {lr: s for lr, s in (scores or {}).items() if lr in self.lr_grid}
        pending = [lr for lr in self.lr_grid if lr not in scores]
        if pending:  # every rate not yet scored in one grid (rates x seeds): its probes share their batches
            count = len(pending) * len(seeds)
            rates = [lr for lr in pending for _ in seeds]
            grid = train_probe_grid(
                train_features,
                noisy_labels.expand(count, -1),
                num_labels,
                rows=fit_rows.expand(count, -1),
                seeds=[s for _ in pending for s in seeds],
                **self.training_kwargs(rates),
            )
            accuracy = grid.accuracy(plain[selection_rows], noisy_labels[selection_rows])
            for i, lr in enumerate(pending):
                scores[lr] = float(accuracy[i * len(seeds) : (i + 1) * len(seeds)].mean())
        best = max(scores.values())
        return min(lr for lr, s in scores.items() if s == best), dict(sorted(scores.items()))


PAPER_CIFAR_PROBE = ProbeProtocol(
    "paper_cifar",
    optimizer="lars",
    lr=0.4,
    weight_decay=1e-4,
    schedule="warmup_cosine",
    warmup_epochs=10,
    epochs=50,
    batch_size=256,
    equalize_scale=False,
    augmented_views=True,
)
PAPER_IN100_PROBE = ProbeProtocol(
    "paper_in100",
    optimizer="sgd",
    lr=1.5,
    weight_decay=0.0,
    momentum=0.0,
    schedule="constant",
    epochs=50,
    batch_size=256,
    equalize_scale=False,
    augmented_views=True,
)
CONTROLLED_PROBE = ProbeProtocol(
    "controlled", optimizer="adam", lr=1e-3, epochs=50, batch_size=256, equalize_scale=True,
    lr_grid=(1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1),
)  # fmt: skip
#: P2's name of :data:`PAPER_CIFAR_PROBE`: the same settings, records tagged ``"paper"`` as P2's were
PAPER_PROBE = replace(PAPER_CIFAR_PROBE, name="paper")
#: the named presets
PROBE_PROTOCOLS = {p.name: p for p in (PAPER_CIFAR_PROBE, PAPER_IN100_PROBE, CONTROLLED_PROBE)}
#: old names still accepted by :func:`probe_protocol` (with a DeprecationWarning): name -> preset
PROBE_PROTOCOL_ALIASES = {"paper": PAPER_PROBE}


def probe_protocol_names() -> list[str]:
    """Every name :func:`probe_protocol` accepts: the presets, then the deprecated aliases.

    Example:
        >>> probe_protocol_names()
        ['paper_cifar', 'paper_in100', 'controlled', 'paper']
    """
    return [*PROBE_PROTOCOLS, *PROBE_PROTOCOL_ALIASES]


def probe_protocol(name: str) -> ProbeProtocol:
    """The preset called ``name``, or a clear error naming the allowed ones. ``"paper"`` (P2's name of
    ``paper_cifar``) still works, with a DeprecationWarning, and keeps its name in the records.

    Example:
        >>> probe_protocol("controlled").lr_grid
        (1e-05, 3e-05, 0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1)
        >>> probe_protocol("paper") == replace(PAPER_CIFAR_PROBE, name="paper")
        True
    """
    if name in PROBE_PROTOCOL_ALIASES:
        preset = PROBE_PROTOCOL_ALIASES[name]
        warnings.warn(
            f"probe protocol {name!r} is P2's name of 'paper_cifar' (same settings); use 'paper_cifar' or "
            "'paper_in100'",
            DeprecationWarning,
            stacklevel=2,
        )
        return preset
    if name not in PROBE_PROTOCOLS:
        raise ValueError(
            f"probe protocol {name!r} is not valid; allowed: {', '.join(map(repr, probe_protocol_names()))}"
        )
    return PROBE_PROTOCOLS[name]
