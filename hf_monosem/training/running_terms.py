"""RunningTerms: the window means of named loss terms and feature activity between two logs."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["RunningTerms"]


class RunningTerms:
    """Sums of scalar terms and feature activity over a logging window, kept on the device.

    Nothing here synchronises with the device until :meth:`summarize` (one ``.tolist()`` per log),
    so collecting the terms every step costs no host round trip.
    """

    def __init__(self, activation_threshold: float = 0.0):
        self.activation_threshold = float(activation_threshold)
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.ever_active: torch.Tensor | None = None

    def add(self, name: str, value: torch.Tensor | float) -> None:
        value = (
            value.detach().float().reshape(())
            if isinstance(value, torch.Tensor)
            else torch.tensor(float(value))
        )
        self.sums[name] = self.sums[name] + value if name in self.sums else value
        self.counts[name] = self.counts.get(name, 0) + 1

    def add_features(self, features: torch.Tensor) -> None:
        """Record ``active_fraction`` of this batch and which features fired at least once."""
        features = features.detach()
        active = features.abs() > self.activation_threshold
        self.add("active_fraction", active.float().mean())
        fired = active.reshape(-1, active.shape[-1]).any(dim=0)
        if self.ever_active is None or self.ever_active.shape != fired.shape:
            self.ever_active = fired
        else:
            self.ever_active = self.ever_active | fired

    def summarize(self, accelerator: Any = None) -> dict[str, float]:
        """Window means (summed over processes first when distributed), then reset.

        Must be called on every process when distributed (it is a collective).
        """
        names = sorted(self.sums)
        if not names and self.ever_active is None:
            return {}
        values = [self.sums[n] for n in names]
        device = values[0].device if values else self.ever_active.device
        packed = None
        if names:
            counts = [torch.tensor(float(self.counts[n]), device=device) for n in names]
            packed = torch.stack([v.to(device) for v in values] + counts)
        ever_active = self.ever_active
        if accelerator is not None and getattr(accelerator, "num_processes", 1) > 1:
            if packed is not None:
                packed = accelerator.reduce(packed, reduction="sum")
            if ever_active is not None:
                ever_active = accelerator.reduce(ever_active.float(), reduction="sum") > 0
        out: dict[str, float] = {}
        if packed is not None:
            flat = packed.tolist()
            for i, name in enumerate(names):
                out[name] = flat[i] / max(flat[len(names) + i], 1.0)
        if ever_active is not None:
            out["dead_fraction"] = 1.0 - float(ever_active.float().mean())
        self.reset()
        return out
