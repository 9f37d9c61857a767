"""Deprecated import path: use :mod:`hf_monosem.data` (moved in 0.2.0; this alias goes in 0.3.0)."""

from ._deprecation import alias_module

__getattr__, __dir__, __all__ = alias_module(__name__, "hf_monosem.data", "hf_monosem.data.assets")
