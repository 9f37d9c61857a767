"""Input noise and CIFAR-C style corruptions on normalised image tensors and image datasets.

:func:`perturb_images` / :func:`corrupt_images` work on tensors; :func:`add_image_noise` /
:func:`add_image_corruption` apply the same on the fly to a dataset's image column (a format
transform), with noise that depends only on ``(seed, original row index)``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset

from .checks import (
    DatasetLike,
    apply_to_splits,
    check_choice,
    check_column,
    check_seed,
    check_strength,
    has_custom_transform,
)
from .hashing import content_keys, hash_noise, row_keys

__all__ = [
    "CORRUPTIONS",
    "IMAGE_NOISE_KINDS",
    "INDEX_COLUMN",
    "SEVERITIES",
    "add_image_corruption",
    "add_image_noise",
    "corrupt_images",
    "perturb_images",
]

IMAGE_NOISE_KINDS = ("gaussian", "uniform")
CORRUPTIONS = ("gaussian_blur", "contrast", "rotate", "invert", "elastic")
SEVERITIES = (1, 2, 3, 4, 5)

#: column of original row numbers, added so on-the-fly noise is tied to the example, not its position
INDEX_COLUMN = "__index__"

# Severity tables, one entry per severity 1..5.
# CIFAR-10-C (Hendrycks & Dietterich 2019) values where the corruption exists there.
_BLUR_SIGMA = (0.4, 0.6, 0.7, 0.8, 1.0)  # pixels at 32x32, scaled up for larger images
_CONTRAST = (0.75, 0.5, 0.4, 0.3, 0.15)  # factor on the distance to the per-channel mean
_ROTATE_DEG = (6.0, 12.0, 18.0, 24.0, 30.0)
_INVERT_QUANTILE = (0.8, 0.6, 0.4, 0.2, 0.0)  # solarise pixels above this per-image quantile; 0 = full
_ELASTIC_DISPLACEMENT = (0.02, 0.04, 0.06, 0.08, 0.10)  # max displacement, fraction of image side


def _check_severity(severity: Any) -> int:
    if isinstance(severity, bool) or not isinstance(severity, numbers.Integral) or severity not in SEVERITIES:
        raise ValueError(f"severity={severity!r} is not allowed; allowed values: {list(SEVERITIES)}")
    return int(severity)


# ----------------------------------------------------------------------------------------------
# image noise
# ----------------------------------------------------------------------------------------------
def _check_image_tensor(pixel_values: Any, min_dim: int = 1) -> torch.Tensor:
    if not isinstance(pixel_values, torch.Tensor) or not pixel_values.is_floating_point():
        got = pixel_values.dtype if isinstance(pixel_values, torch.Tensor) else type(pixel_values).__name__
        raise ValueError(
            f"pixel_values of type {got} is not supported; allowed: a floating-point torch.Tensor"
        )
    if pixel_values.dim() < min_dim:
        raise ValueError(f"pixel_values with shape {tuple(pixel_values.shape)} has too few dimensions")
    return pixel_values


def perturb_images(
    pixel_values: torch.Tensor,
    kind: str = "gaussian",
    strength: float = 0.1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Add input noise to normalised images: ``x + s * N(0, 1)`` or ``x + s * U[0, 1)`` (the paper's).

    Returns a new tensor (the input is not modified). Any shape works; pass a seeded
    ``torch.Generator`` for reproducible noise.

    Example:
        >>> import torch
        >>> x = torch.zeros(2, 3, 4, 4)
        >>> y = perturb_images(x, "uniform", 0.5, generator=torch.Generator().manual_seed(0))
        >>> bool((y >= 0).all() and (y < 0.5).all())
        True
    """
    check_choice("kind", kind, IMAGE_NOISE_KINDS)
    strength = check_strength(strength)
    x = _check_image_tensor(pixel_values)
    device = generator.device if generator is not None else x.device
    draw = torch.randn if kind == "gaussian" else torch.rand
    noise = draw(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)
    noisy = x + strength * noise
    if x.is_floating_point() and not bool(torch.isfinite(noisy).all()) and bool(torch.isfinite(x).all()):
        # a finite Python float can still overflow the pixels' dtype (1e39 in float32): inf pixels
        raise ValueError(
            f"strength={strength!r} overflows {x.dtype} pixels to inf; allowed: a strength whose noise "
            f"stays below {torch.finfo(x.dtype).max:.3g} (the dtype's largest value)"
        )
    return noisy


def _as_image_batch(images: Any) -> torch.Tensor | list[torch.Tensor]:
    """A batch from a transform (tensor, list of tensors or nested lists) as a float tensor.

    Returns a list of tensors when the images have different shapes.
    """
    if isinstance(images, torch.Tensor):
        return images if images.is_floating_point() else images.float()
    items = [
        torch.as_tensor(np.asarray(im, dtype=np.float32)) if not isinstance(im, torch.Tensor) else im
        for im in images
    ]
    if len({tuple(t.shape) for t in items}) > 1:
        return [t if t.is_floating_point() else t.float() for t in items]
    return torch.stack(items).float() if items else torch.empty(0)


class _ImageColumnTransform:
    """Format transform that rewrites one image column with ``op(batch_tensor, keys)``.

    It chains after an existing transform of the dataset (e.g. one that turns PIL images into
    ``pixel_values``). A class, not a closure, so DataLoader workers can pickle it.
    """

    def __init__(
        self,
        op: Callable[[torch.Tensor, np.ndarray | None], torch.Tensor],
        image_column: str,
        seed: int,
        needs_keys: bool,
        inner: Callable | None,
    ) -> None:
        self.op = op
        self.image_column = image_column
        self.seed = seed
        self.needs_keys = needs_keys
        self.inner = inner

    def _keys(self, index: Any, x: torch.Tensor) -> np.ndarray | None:
        if not self.needs_keys:
            return None
        if index is not None:
            return row_keys(self.seed, np.asarray(index, dtype=np.int64))
        # the index column was removed (e.g. Trainer's remove_unused_columns): tie noise to content
        return content_keys(self.seed, x)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        index = batch.get(INDEX_COLUMN)
        out = dict(self.inner(batch)) if self.inner is not None else dict(batch)
        out.pop(INDEX_COLUMN, None)
        if self.image_column not in out:
            raise ValueError(f"image column {self.image_column!r} not in the batch; available: {sorted(out)}")
        images = _as_image_batch(out[self.image_column])
        if isinstance(images, list):  # ragged batch (images of different sizes): rare, per image
            rows = index if index is not None else [None] * len(images)
            out[self.image_column] = [
                self.op(im[None], self._keys(None if i is None else [i], im[None]))[0]
                for im, i in zip(images, rows)
            ]
        else:
            out[self.image_column] = self.op(images, self._keys(index, images))
        return out


def _with_image_transform(
    dataset: Dataset,
    image_column: str,
    op: Callable[[torch.Tensor, np.ndarray | None], torch.Tensor],
    seed: int,
    needs_keys: bool,
) -> Dataset:
    fmt = dataset.format
    inner = fmt["format_kwargs"].get("transform") if fmt.get("type") == "custom" else None
    if needs_keys and INDEX_COLUMN not in dataset.column_names:
        dataset = dataset.add_column(INDEX_COLUMN, np.arange(len(dataset), dtype=np.int64))
    columns = fmt.get("columns")
    if columns is not None and set(columns) >= set(dataset.column_names) - {INDEX_COLUMN}:
        columns = None
    elif columns is not None and needs_keys:
        columns = [*columns, INDEX_COLUMN]
    transform = _ImageColumnTransform(op, image_column, seed, needs_keys, inner)
    return dataset.with_transform(
        transform, columns=columns, output_all_columns=fmt.get("output_all_columns", False)
    )


def _check_image_column(dataset: Dataset, image_column: str) -> None:
    # a column made by an existing transform (e.g. pixel_values from "image") is only seen at read time
    if not has_custom_transform(dataset):
        check_column(dataset, image_column, "image")


def add_image_noise(
    dataset: DatasetLike,
    kind: str = "gaussian",
    strength: float = 0.1,
    seed: int = 0,
    image_column: str = "pixel_values",
    *,
    splits: str | Sequence[str] | None = None,
) -> DatasetLike:
    """Add Gaussian (``x + s * N(0, 1)``) or uniform (``x + s * U[0, 1)``) noise on the fly.

    The noise is applied by a format transform (``with_transform``) to the normalised float images
    in ``image_column`` whenever rows are read, and depends only on ``(seed, original row index)``:
    the same example gets the same noise every time, in any order or after ``select``/``shuffle``.
    A ``__index__`` column of row numbers is added for that; if it is later dropped (Trainer's
    ``remove_unused_columns``), the noise is keyed on the image content instead, still deterministic.
    An existing transform (e.g. one making ``pixel_values`` from PIL images) runs first. The random
    numbers come from a counter-based hash (SplitMix64), so a whole batch is drawn without a loop
    over examples. For a DatasetDict every split is noised unless ``splits`` says otherwise.

    Example:
        >>> from datasets import Dataset
        >>> ds = Dataset.from_dict({"pixel_values": [[[[0.0] * 4] * 4]] * 3, "label": [0, 1, 0]})
        >>> noisy = add_image_noise(ds, "gaussian", 0.5, seed=0)
        >>> bool((noisy[0]["pixel_values"] == noisy[0]["pixel_values"]).all())
        True
    """
    check_choice("kind", kind, IMAGE_NOISE_KINDS)
    strength = check_strength(strength)
    seed = check_seed(seed)

    def op(x: torch.Tensor, keys: np.ndarray | None) -> torch.Tensor:
        return x + strength * hash_noise(keys, x.shape, kind).to(device=x.device, dtype=x.dtype)

    return apply_to_splits(
        dataset,
        splits,
        None,
        lambda ds: _check_image_column(ds, image_column),
        lambda ds, _: _with_image_transform(ds, image_column, op, seed, needs_keys=True),
    )


# ----------------------------------------------------------------------------------------------
# image corruptions (CIFAR-C style)
# ----------------------------------------------------------------------------------------------
def _odd_kernel(sigma: float, height: int, width: int) -> int:
    size = 2 * math.ceil(3.0 * sigma) + 1
    limit = 2 * min(height, width) - 1  # reflect padding must stay inside the image
    return max(3, min(size, limit if limit % 2 else limit - 1))


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    from kornia.filters import gaussian_blur2d

    size = _odd_kernel(sigma, x.shape[-2], x.shape[-1])
    border = "reflect" if size // 2 < min(x.shape[-2:]) else "replicate"
    return gaussian_blur2d(x, (size, size), (sigma, sigma), border_type=border)


def _corrupt(
    x: torch.Tensor, corruption: str, severity: int, elastic_noise: torch.Tensor | None
) -> torch.Tensor:
    """``x``: [B, C, H, W] floats. ``elastic_noise``: [B, 2, H, W] uniform in [-1, 1] (elastic only)."""
    level = severity - 1
    height, width = x.shape[-2:]
    if corruption == "gaussian_blur":
        # CIFAR-C sigmas are for 32 px images; scale so larger images see a comparable blur
        return _blur(x, _BLUR_SIGMA[level] * max(1.0, max(height, width) / 32.0))
    if corruption == "contrast":
        mean = x.mean(dim=(-2, -1), keepdim=True)
        return (x - mean) * _CONTRAST[level] + mean
    if corruption == "rotate":
        from kornia.geometry.transform import rotate

        angle = torch.full((x.shape[0],), _ROTATE_DEG[level], dtype=x.dtype, device=x.device)
        # zero padding = the dataset mean colour on normalised tensors
        return rotate(x, angle, padding_mode="zeros")
    if corruption == "invert":
        # Normalisation is affine per channel, so inverting pixels is "constant - x"; the constant is
        # estimated as the image's min + max per channel. Severity lowers the solarisation threshold
        # from the 80% quantile to the minimum (severity 5 = the whole image inverted).
        flat = x.flatten(-2)
        low, high = flat.amin(-1, keepdim=True), flat.amax(-1, keepdim=True)
        k = int(_INVERT_QUANTILE[level] * (flat.shape[-1] - 1)) + 1
        threshold = flat.kthvalue(k, dim=-1, keepdim=True).values
        return torch.where(flat >= threshold, low + high - flat, flat).reshape(x.shape)
    # elastic: a smooth random displacement field, at most a fixed fraction of the image side
    from kornia.utils import create_meshgrid

    field = _blur(elastic_noise.to(x), max(1.0, min(height, width) / 8.0))
    field = field / field.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-8)
    field = field * (2.0 * _ELASTIC_DISPLACEMENT[level])  # normalised coordinates span 2 per side
    grid = create_meshgrid(height, width, normalized_coordinates=True, device=x.device, dtype=x.dtype)
    grid = grid + field.permute(0, 2, 3, 1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=True)


def _batched_corrupt(
    x: torch.Tensor, corruption: str, severity: int, elastic_noise: Callable[[tuple], torch.Tensor]
) -> torch.Tensor:
    squeeze = x.dim() == 3
    batch = x[None] if squeeze else x
    noise = elastic_noise((batch.shape[0], 2, *batch.shape[-2:])) if corruption == "elastic" else None
    out = _corrupt(batch, corruption, severity, noise)
    return out[0] if squeeze else out


def _check_corruption_args(corruption: Any, severity: Any) -> int:
    check_choice("corruption", corruption, CORRUPTIONS)
    return _check_severity(severity)


def corrupt_images(
    pixel_values: torch.Tensor,
    corruption: str,
    severity: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Apply a CIFAR-C style corruption to normalised images ``[B, C, H, W]`` (or ``[C, H, W]``).

    ``corruption`` is one of ``"gaussian_blur"``, ``"contrast"``, ``"rotate"``, ``"invert"``,
    ``"elastic"``; ``severity`` is 1..5. Blur and contrast use the CIFAR-10-C parameters (blur sigma
    scaled with image size above 32 px); rotate turns by 6..30 degrees (zero = mean-colour padding);
    invert solarises the pixels above a per-image quantile (80% .. 0%, i.e. full inversion at 5);
    elastic warps by a smooth random field of at most 2..10% of the image side (``generator``
    makes it reproducible). Returns a new tensor.

    Example:
        >>> import torch
        >>> x = torch.randn(2, 3, 16, 16)
        >>> corrupt_images(x, "contrast", 5).std() < x.std()
        tensor(True)
    """
    severity = _check_corruption_args(corruption, severity)
    x = _check_image_tensor(pixel_values, min_dim=3)
    if x.dim() > 4:
        raise ValueError(
            f"pixel_values with shape {tuple(x.shape)} is not supported; allowed: [B, C, H, W] or [C, H, W]"
        )
    device = generator.device if generator is not None else x.device

    def noise(shape: tuple) -> torch.Tensor:
        return torch.rand(shape, generator=generator, device=device, dtype=torch.float32).to(x.device) * 2 - 1

    return _batched_corrupt(x, corruption, severity, noise)


def add_image_corruption(
    dataset: DatasetLike,
    corruption: str,
    severity: int,
    seed: int = 0,
    image_column: str = "pixel_values",
    *,
    splits: str | Sequence[str] | None = None,
) -> DatasetLike:
    """Apply :func:`corrupt_images` on the fly (a format transform), like :func:`add_image_noise`.

    Only ``"elastic"`` is random; its displacement field depends on ``(seed, row index)`` so every
    read of an example gives the same warp. For a DatasetDict every split is corrupted unless
    ``splits`` says otherwise.

    Example:
        >>> from datasets import Dataset
        >>> ds = Dataset.from_dict({"pixel_values": [[[[0.0, 1.0] * 4] * 8]] * 2})
        >>> tuple(add_image_corruption(ds, "gaussian_blur", 3)[0]["pixel_values"].shape)
        (1, 8, 8)
    """
    severity = _check_corruption_args(corruption, severity)
    seed = check_seed(seed)
    random = corruption == "elastic"

    def op(x: torch.Tensor, keys: np.ndarray | None) -> torch.Tensor:
        if x.dim() not in (3, 4):
            raise ValueError(
                f"image column {image_column!r} has shape {tuple(x.shape)}; allowed: [B, C, H, W]"
            )

        def noise(shape: tuple) -> torch.Tensor:
            return (hash_noise(keys, shape, "uniform") * 2 - 1).to(x.device)

        return _batched_corrupt(x, corruption, severity, noise)

    return apply_to_splits(
        dataset,
        splits,
        None,
        lambda ds: _check_image_column(ds, image_column),
        lambda ds, _: _with_image_transform(ds, image_column, op, seed, needs_keys=random),
    )
