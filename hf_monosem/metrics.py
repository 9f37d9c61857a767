"""Deprecated import path: use :mod:`hf_monosem.evaluation` (moved in 0.2; this alias goes in 0.3)."""

import warnings as _warnings

from .evaluation import *  # noqa: F401,F403
from .evaluation import __all__  # noqa: F401

_warnings.warn(
    "hf_monosem.metrics moved to hf_monosem.evaluation; the old path is an alias kept for one release",
    DeprecationWarning,
    stacklevel=2,
)


def __getattr__(name):  # private helpers too, for code that reached into the old module
    from importlib import import_module

    return getattr(import_module("hf_monosem.evaluation.metrics"), name)
