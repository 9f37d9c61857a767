"""Input scalings for linear probes on cached features: unit RMS, standardisation, one mean norm for all.

A probe's effective learning rate grows with its input's norm (Adam steps are scale-free, the
logits they move are not), so comparing representations with one probe budget needs them on one
scale: :func:`unit_rms` per vector, :func:`standardize` per feature (training statistics), or
:func:`equalize_scales` (one factor per representation, to a reference's mean L2 norm).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = ["equalize_scales", "feature_stats", "standardize", "unit_rms"]


def unit_rms(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Every vector (last dimension) rescaled to unit root-mean-square; zeros and signs are kept.

    Example:
        >>> unit_rms(torch.tensor([[3.0, 0.0, -3.0, 0.0]]))
        tensor([[ 1.4142,  0.0000, -1.4142,  0.0000]])
    """
    return x / x.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(eps)


def feature_stats(train: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and standard deviation (clamped to ``eps``) of ``train`` ``[N, F]``.

    Example:
        >>> mean, std = feature_stats(torch.tensor([[0.0, 1.0], [2.0, 1.0]]))
        >>> mean.tolist(), std.tolist()
        ([1.0, 1.0], [1.4142135381698608, 9.999999974752427e-07])
    """
    return train.mean(0), train.std(0).clamp_min(eps)


def streamed_feature_stats(
    blocks: Iterable[torch.Tensor], eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`feature_stats` (float32, the standard deviation unbiased and clamped to ``eps``) of the rows
    of ``blocks`` ``[B_i, F]`` taken together, in one pass: each block's mean and sum of squared
    deviations in float64, merged as Chan et al. (1979) do, so no block need stay in memory (a matrix in
    shard files) and no cancellation creeps in. The same blocks give the same bits, however they are
    stored.

    Example:
        >>> x = torch.randn(1000, 3, generator=torch.Generator().manual_seed(0)) * 5 + 100
        >>> mean, std = streamed_feature_stats(x.split(300))
        >>> expected = feature_stats(x)
        >>> torch.allclose(mean, expected[0]), torch.allclose(std, expected[1])
        (True, True)
    """
    count, mean, squares = 0, torch.zeros(()), torch.zeros(())
    for block in blocks:
        rows = block.double()
        block_mean = rows.mean(0)
        block_squares = (rows - block_mean).pow(2).sum(0)
        if count == 0:
            mean, squares = block_mean, block_squares
        else:
            delta, total = block_mean - mean, count + len(rows)
            mean = mean + delta * (len(rows) / total)
            squares = squares + block_squares + delta.pow(2) * (count * len(rows) / total)
        count += len(rows)
    if count < 2:
        raise ValueError(f"{count} row(s) have no standard deviation; allowed: at least 2 rows")
    return mean.float(), (squares / (count - 1)).sqrt().float().clamp_min(eps)


def standardize(train: torch.Tensor, *others: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, ...]:
    """Per-feature z-scores of ``train`` and of every other matrix, all with ``train``'s statistics.

    Example:
        >>> train, test = standardize(torch.tensor([[0.0], [2.0]]), torch.tensor([[1.0]]))
        >>> train.flatten().tolist(), test.flatten().tolist()
        ([-0.7071067690849304, 0.7071067690849304], [0.0])
    """
    mean, std = feature_stats(train, eps)
    return tuple((x - mean) / std for x in (train, *others))


def equalize_scales(
    features: dict[str, dict[str, torch.Tensor]], reference: str, key: str = "train"
) -> dict[str, float]:
    """Rescale every representation (in place) to the ``reference`` one's mean L2 norm on ``key``.

    ``features[representation][split]`` are ``[N, F]`` matrices; every split of a representation is
    multiplied by the same factor. An L2-normalised SAE code would otherwise be probed ~20x more
    slowly than standardised raw features, which acts as implicit early stopping; with one mean norm
    for all, the probe budget really is the same. Returns the factor applied to each representation.

    Example:
        >>> features = {"raw": {"train": torch.ones(4, 4)}, "code": {"train": torch.ones(4, 4) / 10}}
        >>> {name: round(s, 3) for name, s in equalize_scales(features, "raw").items()}
        {'raw': 1.0, 'code': 10.0}
    """
    target = features[reference][key].norm(dim=1).mean()
    scales = {}
    for name, f in features.items():
        scales[name] = float(target / f[key].norm(dim=1).mean().clamp_min(1e-12))
        features[name] = {split: x * scales[name] for split, x in f.items()}
    return scales
