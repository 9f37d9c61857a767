"""Linear-probe protocols: how every probe of a scenario grid is trained, as one named value.

The paper's robustness numbers are linear probes, and a probe's result depends on its optimisation
as much as on the representation (a feature scale 20x smaller is a learning rate 20x smaller). So
the grid runs each representation under named protocols, side by side:

* :data:`PAPER_PROBE` -- the authors' recipe (``PKU-ML/Beyond_Interpretability``,
  ``scripts/linear/cifar/*.yaml`` on solo-learn): features at their natural scale, LARS
  (lr 0.4, weight decay 1e-4, eta 0.02, ``clip_lr``, bias excluded; momentum 0.9) with a per-step
  linear warmup (10 epochs) then cosine, batch 256, 50 epochs, the last epoch reported, training
  images augmented (random resized crop 0.08-1 + flip, here K views cached once per image).
* :data:`CONTROLLED_PROBE` -- what a practitioner can do to compare fairly: every representation
  rescaled to one mean L2 norm, AdamW at a constant rate chosen *per representation* from
  ``lr_grid`` on a held-out part of the training rows with noisy labels (``selection_rate``;
  never the test split), 50 epochs.

If a gain appears under one protocol and not the other, it is optimisation, not monosemanticity;
the results report both.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

from ..cached.probe_grid import PROBE_OPTIMIZERS, PROBE_SCHEDULES, train_probe_grid

__all__ = ["CONTROLLED_PROBE", "PAPER_PROBE", "PROBE_PROTOCOLS", "ProbeProtocol", "probe_protocol"]


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
        >>> PAPER_PROBE.optimizer, PAPER_PROBE.lr, PAPER_PROBE.equalize_scale
        ('lars', 0.4, False)
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
                f"optimizer={self.optimizer!r} is not valid; allowed: {', '.join(map(repr, PROBE_OPTIMIZERS))}"
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
                f"warmup_epochs={self.warmup_epochs!r} is not valid; allowed: 0 <= warmup_epochs < epochs={self.epochs}"
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

    def training_kwargs(self, lr: float | None = None) -> dict[str, Any]:
        """Keyword arguments of :func:`~hf_monosem.cached.train_probe_grid` (at ``lr``, default ``self.lr``)."""
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
    ) -> tuple[float, dict[float, float]]:
        """``(lr, {lr: held-out accuracy})``: the ``lr_grid`` value whose probes (one per seed, trained on
        the rows not in ``selection_rows``) best predict ``noisy_labels`` on ``selection_rows``; ties go
        to the smaller rate. Without a grid, ``(self.lr, {})``.

        ``train_features`` may be ``[K, N, F]`` augmented views; held-out rows are scored on view 0
        only if no un-augmented matrix is given, so pass ``[N, F]`` features for scoring where you have them.
        """
        if not self.lr_grid:
            return self.lr, {}
        n = train_features.shape[-2]
        held_out = torch.zeros(n, dtype=torch.bool)
        held_out[selection_rows] = True
        fit_rows = torch.arange(n)[~held_out].expand(len(seeds), -1)
        plain = train_features if train_features.dim() == 2 else train_features[0]
        labels = noisy_labels.expand(len(seeds), -1)
        scores = {}
        for lr in self.lr_grid:
            grid = train_probe_grid(train_features, labels, num_labels, rows=fit_rows, seeds=seeds,
                                    **self.training_kwargs(lr))  # fmt: skip
            scores[lr] = float(grid.accuracy(plain[selection_rows], noisy_labels[selection_rows]).mean())
        best = max(scores.values())
        return min(lr for lr, s in scores.items() if s == best), scores


PAPER_PROBE = ProbeProtocol(
    "paper",
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
CONTROLLED_PROBE = ProbeProtocol(
    "controlled", optimizer="adam", lr=1e-3, epochs=50, batch_size=256, equalize_scale=True,
    lr_grid=(3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1),
)  # fmt: skip
#: the named presets
PROBE_PROTOCOLS = {p.name: p for p in (PAPER_PROBE, CONTROLLED_PROBE)}


def probe_protocol(name: str) -> ProbeProtocol:
    """The preset called ``name``, or a clear error naming the allowed ones.

    Example:
        >>> probe_protocol("controlled").lr_grid
        (0.0003, 0.001, 0.003, 0.01, 0.03, 0.1)
    """
    if name not in PROBE_PROTOCOLS:
        raise ValueError(
            f"probe protocol {name!r} is not valid; allowed: {', '.join(map(repr, PROBE_PROTOCOLS))}"
        )
    return PROBE_PROTOCOLS[name]
