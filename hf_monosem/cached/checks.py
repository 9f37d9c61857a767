"""Entry checks and numerics of the cached route: finite, in-range inputs named by their first bad
row; our own training loops run with autocast off.

Every fitter of this folder trains small layers on a feature matrix. One NaN/inf in it gives NaN
weights or a probe at chance with no error; values beyond ~1e19 overflow float32 squared norms (the
SAE's L2 normalisation then turns rows into zeros and reports explained variance 1.0). So each
entry point calls :func:`check_features` before any work. And a caller's
``torch.autocast("cpu", torch.bfloat16)`` block (or ``--bf16`` around a script) must not reach our
loops: autocast caches a bf16 copy of each leaf weight for the whole region, so the optimiser's
updates would never be seen by the forward (probe accuracy 0.975 -> 0.75); :func:`no_autocast` turns
it off for the device the loop runs on.

Example:
    >>> import torch
    >>> check_features(torch.tensor([[0.0, 1.0], [float("nan"), 2.0]]))
    Traceback (most recent call last):
    ...
    ValueError: features hold nan at row 1, column 0 (the first non-finite value); clean or drop those rows first
"""  # noqa: E501

from __future__ import annotations

import torch

from ..training.precision import autocast_off, no_autocast

__all__ = ["MAX_FEATURE_MAGNITUDE", "autocast_off", "check_features", "no_autocast"]

#: larger magnitudes overflow float32 sums of squares (norms, variances) of realistic widths.
MAX_FEATURE_MAGNITUDE = 1e15


def check_features(
    x: torch.Tensor, what: str = "features", max_abs: float = MAX_FEATURE_MAGNITUDE, row_offset: int = 0
) -> None:
    """Raise ``ValueError`` naming the first non-finite or out-of-range value of ``x`` (``[N, F]`` or
    ``[K, N, F]``), by view, row and column; ``row_offset`` is added to the row (for chunks)."""
    if not x.is_floating_point() or x.numel() == 0:
        return
    # one pass, no temporaries (~20x faster than isfinite().all() and abs().max()): the extremes are NaN
    # when any value is (aminmax propagates NaN), +-inf when any value is, so `<=` fails on both
    low, high = torch.aminmax(x)
    if float(torch.maximum(-low, high)) <= max_abs:
        return
    bad = ~torch.isfinite(x)
    reason = "the first non-finite value"
    if not bool(bad.any()):
        bad = x.abs() > max_abs
        reason = (
            f"beyond {max_abs:g} in magnitude: float32 norms and variances overflow; rescale the features"
        )
    index = [int(i) for i in bad.nonzero()[0]]
    where = (
        f"row {index[-2] + row_offset}, column {index[-1]}" if x.dim() > 1 else f"row {index[0] + row_offset}"
    )
    if x.dim() == 3:
        where = f"view {index[0]}, {where}"
    value = float(x[tuple(index)])
    fix = "clean or drop those rows first" if reason.startswith("the first") else ""
    raise ValueError(f"{what} hold {value:g} at {where} ({reason}){'; ' + fix if fix else ''}")
