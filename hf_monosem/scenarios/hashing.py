"""Counter-based random numbers: noise tied to (seed, example) without a loop over examples.

A SplitMix64 hash of ``(seed, row index)`` (or of the image bytes, when the row index was dropped)
gives every example its own 64-bit key; hashing ``(key, stream, counter)`` then gives the example's
uniform or normal noise, so a whole batch is drawn at once and an example gets the same noise in
any order, batch or worker.

:func:`row_keys`, :func:`content_keys` and :func:`hash_noise` are what the scenario modules draw their
noise with (``images``); they are not user API (``__all__`` stays empty).

Example:
    >>> import numpy as np
    >>> keys = row_keys(0, np.arange(3))
    >>> a = hash_noise(keys, (3, 4), "gaussian"); b = hash_noise(keys[1:2], (1, 4), "gaussian")
    >>> bool((a[1] == b[0]).all())
    True
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__: list[str] = []

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser, in place on a uint64 array (wrap-around arithmetic is intended)."""
    z ^= z >> np.uint64(30)
    z *= _M1
    z ^= z >> np.uint64(27)
    z *= _M2
    z ^= z >> np.uint64(31)
    return z


def _seed_key(seed: int, stream: int) -> np.uint64:
    return _mix64(np.array([(seed * 0x10001 + stream) & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64) + _GAMMA)[0]


def row_keys(seed: int, index: np.ndarray) -> np.ndarray:
    """One 64-bit key per example from (seed, row index)."""
    return _mix64(np.asarray(index, dtype=np.uint64) * _GAMMA + _seed_key(seed, 0))


def content_keys(seed: int, x: torch.Tensor) -> np.ndarray:
    """One key per example from (seed, pixel bytes): the fallback when the row index was dropped."""
    flat = x.detach().to(torch.float32).reshape(x.shape[0], -1).contiguous().cpu().numpy()
    bits = flat.view(np.uint32).astype(np.uint64)
    bits += np.arange(bits.shape[1], dtype=np.uint64) * _GAMMA
    return _mix64(_mix64(bits).sum(axis=1, dtype=np.uint64) + _seed_key(seed, 1))


def _hash_uniform_pairs(keys: np.ndarray, pairs: int, stream: int) -> tuple[np.ndarray, np.ndarray]:
    """Two [len(keys), pairs] float32 uniforms in [0, 1) with 24-bit resolution, from one 64-bit hash
    per entry; entry (i, j) depends only on (keys[i], stream, j)."""
    counters = (np.arange(pairs, dtype=np.uint64) + np.uint64(1)) * _GAMMA
    z = keys[:, None] ^ _seed_key(stream, 2)
    z = z + counters[None, :]
    _mix64(z)
    scale = np.float32(1.0 / (1 << 24))
    high = (z >> np.uint64(40)).astype(np.float32) * scale
    low = ((z >> np.uint64(8)) & np.uint64(0xFFFFFF)).astype(np.float32) * scale
    return high, low


def hash_noise(keys: np.ndarray, shape: Sequence[int], kind: str) -> torch.Tensor:
    """Per-example noise of ``shape`` (batch first): uniform [0, 1) or standard normal (Box-Muller)."""
    numel = int(np.prod(shape[1:]))
    pairs = (numel + 1) // 2
    first, second = _hash_uniform_pairs(keys, pairs, 10 if kind == "uniform" else 11)
    if kind == "uniform":
        noise = np.concatenate([first, second], axis=1)
    else:  # Box-Muller: each pair of uniforms gives two independent normals
        radius = np.sqrt(np.float32(-2.0) * np.log1p(-first))  # 1 - u is in (0, 1]
        angle = np.float32(2.0 * np.pi) * second
        noise = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    return torch.from_numpy(np.ascontiguousarray(noise[:, :numel])).reshape(tuple(shape))
