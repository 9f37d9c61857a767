"""Autocast kept out of our own training loops: a caller's ``torch.autocast`` region caches a low-precision
copy of each leaf weight for its whole length, so an optimiser's updates would never reach the forward.

Used by the trainers (``MonoSemanticTrainer.train``) and by every fitter of :mod:`hf_monosem.cached`.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch

__all__ = ["autocast_off", "no_autocast"]


@contextlib.contextmanager
def no_autocast(device: torch.device | str) -> Iterator[None]:
    """Autocast off for ``device``'s type (and for CPU), whatever the caller's context turned on."""
    device_type = torch.device(device).type
    with contextlib.ExitStack() as stack:
        for kind in {device_type, "cpu"}:
            stack.enter_context(torch.autocast(device_type=kind, enabled=False))
        yield


_F = TypeVar("_F", bound=Callable[..., Any])


def autocast_off(function: _F) -> _F:
    """Decorator: ``function`` runs with autocast off on CPU and CUDA (our own training loops)."""

    @functools.wraps(function)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
            return function(*args, **kwargs)

    return wrapped
