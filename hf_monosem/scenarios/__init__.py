"""Robust-learning scenarios over :mod:`datasets`: label noise, input noise, few-shot, domain shift.

Every function returns a NEW dataset (the input is never modified), is seeded and reproducible, and
works on the whole column at once (numpy / Arrow / torch), never with a Python loop over examples.
Arguments are checked before any work is done; a bad one raises :class:`ValueError` naming the bad
value and what is allowed.

The scenarios follow the paper this package builds on (Zhang et al., ICLR 2025; see DESIGN.md):

- label noise: symmetric, a fraction ``rate`` of the labels moved uniformly to one of the *other*
  classes (so ``rate`` is the true corruption rate), or asymmetric class-pair flips;
- input noise on normalised tensors: ``x + s * N(0, 1)`` (Gaussian) or ``x + s * U[0, 1)`` (uniform),
  applied on the fly and deterministic per (seed, example);
- text noise: word deletion, word substitution, character typos;
- few-shot: exactly ``k`` examples per class;
- domain shift: train on some domains, test on others; CIFAR-C style image corruptions.

Example:
    >>> from datasets import Dataset
    >>> ds = Dataset.from_dict({"x": list(range(10)), "label": [0, 1] * 5})
    >>> noisy = add_label_noise(ds, 0.4, seed=0)
    >>> sum(a != b for a, b in zip(noisy["label"], noisy["clean_label"]))
    4
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F
from datasets import ClassLabel, Dataset, DatasetDict, Value

__all__ = [
    "CLEAN_LABEL_COLUMN",
    "CORRUPTIONS",
    "IMAGE_NOISE_KINDS",
    "INDEX_COLUMN",
    "LABEL_NOISE_KINDS",
    "TEXT_NOISE_KINDS",
    "add_image_corruption",
    "add_image_noise",
    "add_label_noise",
    "add_text_noise",
    "corrupt_images",
    "few_shot",
    "perturb_images",
    "split_by_domain",
]

LABEL_NOISE_KINDS = ("symmetric", "asymmetric")
IMAGE_NOISE_KINDS = ("gaussian", "uniform")
TEXT_NOISE_KINDS = ("delete", "substitute", "typo")
CORRUPTIONS = ("gaussian_blur", "contrast", "rotate", "invert", "elastic")
SEVERITIES = (1, 2, 3, 4, 5)

#: column that keeps the original label next to a noisy one
CLEAN_LABEL_COLUMN = "clean_label"
#: column of original row numbers, added so on-the-fly noise is tied to the example, not its position
INDEX_COLUMN = "__index__"

# Severity tables, one entry per severity 1..5.
# CIFAR-10-C (Hendrycks & Dietterich 2019) values where the corruption exists there.
_BLUR_SIGMA = (0.4, 0.6, 0.7, 0.8, 1.0)  # pixels at 32x32, scaled up for larger images
_CONTRAST = (0.75, 0.5, 0.4, 0.3, 0.15)  # factor on the distance to the per-channel mean
_ROTATE_DEG = (6.0, 12.0, 18.0, 24.0, 30.0)
_INVERT_QUANTILE = (0.8, 0.6, 0.4, 0.2, 0.0)  # solarise pixels above this per-image quantile; 0 = full
_ELASTIC_DISPLACEMENT = (0.02, 0.04, 0.06, 0.08, 0.10)  # max displacement, fraction of image side

_INT_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
_STRING_DTYPES = ("string", "large_string")

DatasetLike = TypeVar("DatasetLike", Dataset, DatasetDict)


# ----------------------------------------------------------------------------------------------
# argument checks (all raise ValueError naming the bad value and the allowed ones)
# ----------------------------------------------------------------------------------------------
def _check_choice(name: str, value: Any, allowed: Sequence[Any]) -> None:
    if not isinstance(value, Hashable) or value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; allowed values: {list(allowed)}")


def _check_fraction(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name}={value!r} is outside the allowed range [0, 1]")
    return float(value)


def _check_strength(value: Any) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"strength={value!r} is not allowed; allowed: a finite number >= 0")
    return float(value)


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name}={value!r} is not allowed; allowed: an integer >= {minimum}")
    return int(value)


def _check_seed(seed: Any) -> int:
    return _check_int("seed", seed, 0)


def _check_severity(severity: Any) -> int:
    if isinstance(severity, bool) or not isinstance(severity, numbers.Integral) or severity not in SEVERITIES:
        raise ValueError(f"severity={severity!r} is not allowed; allowed values: {list(SEVERITIES)}")
    return int(severity)


def _check_column(dataset: Dataset, column: str, role: str) -> None:
    if column not in dataset.column_names:
        raise ValueError(f"{role} column {column!r} not found; available columns: {dataset.column_names}")


def _has_custom_transform(dataset: Dataset) -> bool:
    return dataset.format.get("type") == "custom"


def _column_array(dataset: Dataset, column: str) -> pa.Array:
    """The column as one Arrow array, in the dataset's row order (indices mapping applied)."""
    chunked = dataset.with_format("arrow")[column]
    return chunked.combine_chunks() if isinstance(chunked, pa.ChunkedArray) else chunked


def _integer_labels(dataset: Dataset, column: str) -> np.ndarray:
    _check_column(dataset, column, "label")
    feature = dataset.features[column]
    if not (isinstance(feature, ClassLabel) or (isinstance(feature, Value) and feature.dtype in _INT_DTYPES)):
        raise ValueError(
            f"label column {column!r} has feature {feature}; allowed: integer class ids "
            f"(ClassLabel or Value with dtype in {list(_INT_DTYPES)})"
        )
    array = _column_array(dataset, column)
    if array.null_count:
        raise ValueError(f"label column {column!r} has {array.null_count} missing labels; allowed: no nulls")
    labels = array.to_numpy(zero_copy_only=False).astype(np.int64)
    if labels.size and labels.min() < 0:
        raise ValueError(
            f"label column {column!r} holds negative label {int(labels.min())}; allowed: class ids >= 0"
        )
    return labels


def _resolve_splits(
    dataset: DatasetDict, splits: str | Sequence[str] | None, default: Sequence[str] | None
) -> list[str]:
    if splits is None:
        chosen = [s for s in (default or []) if s in dataset] or list(dataset)
    else:
        chosen = [splits] if isinstance(splits, str) else list(splits)
    unknown = [s for s in chosen if s not in dataset]
    if unknown:
        raise ValueError(f"splits={unknown!r} not found; available splits: {list(dataset)}")
    return chosen


def _apply(
    dataset: DatasetLike,
    splits: str | Sequence[str] | None,
    default_splits: Sequence[str] | None,
    validate: Callable[[Dataset], Any],
    work: Callable[[Dataset, Any], Dataset],
) -> DatasetLike:
    """Validate every target split first, then transform: nothing is computed if an argument is bad."""
    if isinstance(dataset, DatasetDict):
        names = _resolve_splits(dataset, splits, default_splits)
        checked = {name: validate(dataset[name]) for name in names}
        return DatasetDict(
            {name: work(ds, checked[name]) if name in checked else ds for name, ds in dataset.items()}
        )
    if not isinstance(dataset, Dataset):
        raise ValueError(
            f"dataset of type {type(dataset).__name__} is not supported; allowed: Dataset, DatasetDict"
        )
    if splits is not None:
        raise ValueError(f"splits={splits!r} only applies to a DatasetDict; got a Dataset")
    return work(dataset, validate(dataset))


def _replace_column(
    dataset: Dataset, name: str, values: np.ndarray | pa.Array | list, feature: Any
) -> Dataset:
    """A copy of ``dataset`` with column ``name`` set to ``values``, keeping the column order."""
    order = list(dataset.column_names)
    if isinstance(values, pa.Array):
        values = values.to_pylist() if not pa.types.is_integer(values.type) else values.to_numpy()
    if name not in order:
        return dataset.add_column(name, values, feature=feature)
    # add under a temporary name first: removing a dataset's only column would leave it with 0 rows
    temporary = f"{name}__hf_monosem_new"
    dataset = dataset.add_column(temporary, values, feature=feature).remove_columns(name)
    return dataset.rename_column(temporary, name).select_columns(order)


def _exact_count(rate: float, n: int) -> int:
    # round half up: Python's round() is banker's rounding, which would make 0.5 * 5 -> 2
    return min(n, int(math.floor(rate * n + 0.5)))


# ----------------------------------------------------------------------------------------------
# label noise
# ----------------------------------------------------------------------------------------------
def add_label_noise(
    dataset: DatasetLike,
    rate: float,
    *,
    kind: str = "symmetric",
    seed: int = 0,
    label_column: str = "label",
    num_classes: int | None = None,
    transition: Mapping[int, int] | None = None,
    splits: str | Sequence[str] | None = None,
) -> DatasetLike:
    """Corrupt a fraction ``rate`` of the labels; the original label is kept in ``clean_label``.

    - ``kind="symmetric"``: exactly ``round(rate * n)`` examples (a seeded permutation picks them)
      get a label drawn uniformly from the *other* classes, so ``rate`` is the true corruption rate.
    - ``kind="asymmetric"``: class-pair flips ``c -> transition[c]`` (default ``c -> (c + 1) % C``);
      exactly ``round(rate * n_eligible)`` of the examples whose class is flipped by ``transition``
      are changed (with the default transition every example is eligible).

    A ``clean_label`` column that already exists is kept (noise applied twice still remembers the
    original labels); the noise is applied to the current ``label_column``. ``num_classes`` defaults
    to the ``ClassLabel``'s size, else ``max(label) + 1``. For a :class:`~datasets.DatasetDict` only
    the ``"train"`` split is corrupted unless ``splits`` says otherwise (the paper's protocol: noisy
    training labels, clean evaluation); every split uses the same ``seed``.

    Example:
        >>> from datasets import Dataset
        >>> ds = Dataset.from_dict({"label": [0, 1, 2, 0, 1, 2]})
        >>> noisy = add_label_noise(ds, 0.5, kind="asymmetric", seed=1)
        >>> noisy["clean_label"][:], sum(a != b for a, b in zip(noisy["label"], noisy["clean_label"]))
        ([0, 1, 2, 0, 1, 2], 3)
    """
    rate = _check_fraction("rate", rate)
    _check_choice("kind", kind, LABEL_NOISE_KINDS)
    seed = _check_seed(seed)
    if num_classes is not None:
        num_classes = _check_int("num_classes", num_classes, 1)
    if transition is not None and kind != "asymmetric":
        raise ValueError(f"transition={transition!r} is only used with kind='asymmetric'; got kind={kind!r}")
    if label_column == CLEAN_LABEL_COLUMN:
        raise ValueError(
            f"label_column={label_column!r} is reserved for the clean labels; allowed: any other column"
        )

    def validate(ds: Dataset) -> tuple[np.ndarray, int, np.ndarray | None]:
        labels = _integer_labels(ds, label_column)
        feature = ds.features[label_column]
        n_cls = num_classes or (
            feature.num_classes if isinstance(feature, ClassLabel) else int(labels.max(initial=-1)) + 1
        )
        if labels.size and labels.max() >= n_cls:
            raise ValueError(
                f"num_classes={n_cls} but label column {label_column!r} holds label {int(labels.max())}; "
                f"allowed: num_classes > max label"
            )
        mapping = None
        if kind == "symmetric":
            if n_cls < 2 and _exact_count(rate, labels.size) > 0:
                raise ValueError(
                    f"num_classes={n_cls} is not allowed for symmetric noise; allowed: at least 2 classes"
                )
        else:
            mapping = np.arange(n_cls)
            pairs = transition if transition is not None else {c: (c + 1) % n_cls for c in range(n_cls)}
            if not isinstance(pairs, Mapping):
                raise ValueError(
                    f"transition={transition!r} is not allowed; allowed: a dict {{class: class}}"
                )
            for src, dst in pairs.items():  # loop over classes, not examples
                for value in (src, dst):
                    if (
                        isinstance(value, bool)
                        or not isinstance(value, numbers.Integral)
                        or not 0 <= value < n_cls
                    ):
                        raise ValueError(
                            f"transition entry {src!r}: {dst!r} is not allowed; allowed: class ids in [0, {n_cls})"
                        )
                mapping[int(src)] = int(dst)
        return labels, n_cls, mapping

    def work(ds: Dataset, checked: tuple[np.ndarray, int, np.ndarray | None]) -> Dataset:
        labels, n_cls, mapping = checked
        rng = np.random.default_rng(seed)
        noisy = labels.copy()
        if kind == "symmetric":
            chosen = rng.permutation(labels.size)[: _exact_count(rate, labels.size)]
            if chosen.size:  # a shift in [1, C) mod C is uniform over the other classes, never the same
                noisy[chosen] = (labels[chosen] + rng.integers(1, n_cls, size=chosen.size)) % n_cls
        else:
            eligible = np.flatnonzero(mapping[labels] != labels)
            chosen = rng.permutation(eligible)[: _exact_count(rate, eligible.size)]
            noisy[chosen] = mapping[labels[chosen]]
        feature = ds.features[label_column]
        if CLEAN_LABEL_COLUMN not in ds.column_names:
            ds = _replace_column(ds, CLEAN_LABEL_COLUMN, labels, feature)
        return _replace_column(ds, label_column, noisy, feature)

    return _apply(dataset, splits, ("train",), validate, work)


# ----------------------------------------------------------------------------------------------
# counter-based random numbers: noise tied to (seed, example) without a loop over examples
# ----------------------------------------------------------------------------------------------
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


def _row_keys(seed: int, index: np.ndarray) -> np.ndarray:
    """One 64-bit key per example from (seed, row index)."""
    return _mix64(np.asarray(index, dtype=np.uint64) * _GAMMA + _seed_key(seed, 0))


def _content_keys(seed: int, x: torch.Tensor) -> np.ndarray:
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


def _hash_noise(keys: np.ndarray, shape: Sequence[int], kind: str) -> torch.Tensor:
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
    _check_choice("kind", kind, IMAGE_NOISE_KINDS)
    strength = _check_strength(strength)
    x = _check_image_tensor(pixel_values)
    device = generator.device if generator is not None else x.device
    draw = torch.randn if kind == "gaussian" else torch.rand
    noise = draw(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)
    return x + strength * noise


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
            return _row_keys(self.seed, np.asarray(index, dtype=np.int64))
        # the index column was removed (e.g. Trainer's remove_unused_columns): tie noise to content
        return _content_keys(self.seed, x)

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
    if not _has_custom_transform(dataset):
        _check_column(dataset, image_column, "image")


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
    _check_choice("kind", kind, IMAGE_NOISE_KINDS)
    strength = _check_strength(strength)
    seed = _check_seed(seed)

    def op(x: torch.Tensor, keys: np.ndarray | None) -> torch.Tensor:
        return x + strength * _hash_noise(keys, x.shape, kind).to(device=x.device, dtype=x.dtype)

    return _apply(
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
    _check_choice("corruption", corruption, CORRUPTIONS)
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
    seed = _check_seed(seed)
    random = corruption == "elastic"

    def op(x: torch.Tensor, keys: np.ndarray | None) -> torch.Tensor:
        if x.dim() not in (3, 4):
            raise ValueError(
                f"image column {image_column!r} has shape {tuple(x.shape)}; allowed: [B, C, H, W]"
            )

        def noise(shape: tuple) -> torch.Tensor:
            return (_hash_noise(keys, shape, "uniform") * 2 - 1).to(x.device)

        return _batched_corrupt(x, corruption, severity, noise)

    return _apply(
        dataset,
        splits,
        None,
        lambda ds: _check_image_column(ds, image_column),
        lambda ds, _: _with_image_transform(ds, image_column, op, seed, needs_keys=random),
    )


# ----------------------------------------------------------------------------------------------
# text noise
# ----------------------------------------------------------------------------------------------
_TYPO_ALPHABET = np.array(list("abcdefghijklmnopqrstuvwxyz"))


def _typos(words: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random character edit per word (swap, delete, insert or substitute), vectorised."""
    from numpy.dtypes import StringDType

    s = np.asarray(words, dtype=StringDType())
    length = np.strings.str_len(s)
    op = rng.integers(0, 4, size=s.size)
    op = np.where((op < 2) & (length < 2), 3, op)  # swap/delete need 2 chars; else substitute
    pos = np.floor(rng.random(s.size) * np.where(op == 0, length - 1, np.maximum(length, 1))).astype(np.int64)
    choice = rng.integers(0, _TYPO_ALPHABET.size, size=s.size)
    here = np.strings.slice(s, pos, pos + 1)
    # a substitution by the same letter would be no typo: take the next letter instead
    same = (op == 3) & (np.strings.lower(here) == _TYPO_ALPHABET[choice].astype(StringDType()))
    letter = _TYPO_ALPHABET[np.where(same, (choice + 1) % _TYPO_ALPHABET.size, choice)].astype(StringDType())
    pre = np.strings.slice(s, 0, pos)
    rest = np.strings.slice(s, pos + 1, length)
    swapped = pre + np.strings.slice(s, pos + 1, pos + 2) + here + np.strings.slice(s, pos + 2, length)
    deleted = pre + rest
    inserted = pre + letter + np.strings.slice(s, pos, length)
    substituted = pre + letter + rest
    return np.select([op == 0, op == 1, op == 2], [swapped, deleted, inserted], substituted)


def add_text_noise(
    dataset: DatasetLike,
    kind: str = "delete",
    rate: float = 0.1,
    seed: int = 0,
    text_column: str = "text",
    *,
    splits: str | Sequence[str] | None = None,
) -> DatasetLike:
    """Word deletion, word substitution or character typos on a fraction ``rate`` of all words.

    Words are whitespace-separated; exactly ``round(rate * total_words)`` words of the column are
    picked by a seeded permutation. ``"delete"`` drops them (a text never loses its last word, so the
    realised rate can be slightly lower); ``"substitute"`` replaces each by a different word drawn
    uniformly from the column's own vocabulary; ``"typo"`` makes one character edit per picked word
    (swap, delete, insert or substitute a letter). Texts that were changed are re-joined with single
    spaces; untouched texts are kept byte for byte. Computed with Arrow / numpy string kernels over
    the whole column. For a DatasetDict every split is noised unless ``splits`` says otherwise.

    Example:
        >>> from datasets import Dataset
        >>> ds = Dataset.from_dict({"text": ["the cat sat on the mat", "a dog"]})
        >>> add_text_noise(ds, "delete", 0.0)["text"][:] == ds["text"][:]
        True
    """
    _check_choice("kind", kind, TEXT_NOISE_KINDS)
    rate = _check_fraction("rate", rate)
    seed = _check_seed(seed)

    def validate(ds: Dataset) -> None:
        _check_column(ds, text_column, "text")
        feature = ds.features[text_column]
        if not (isinstance(feature, Value) and feature.dtype in _STRING_DTYPES):
            raise ValueError(f"text column {text_column!r} has feature {feature}; allowed: a string column")

    def work(ds: Dataset, _: Any) -> Dataset:
        texts = _column_array(ds, text_column)
        n = len(texts)
        lists = pc.utf8_split_whitespace(texts.fill_null(""))
        words = lists.flatten()
        parents = pc.list_parent_indices(lists).to_numpy()
        nonempty = pc.greater(pc.utf8_length(words), 0).to_numpy(zero_copy_only=False)
        words = words.filter(pa.array(nonempty))
        parents = parents[nonempty]
        lengths = np.bincount(parents, minlength=n)
        total = len(words)
        rng = np.random.default_rng(seed)
        chosen = rng.permutation(total)[: _exact_count(rate, total)]
        if kind == "delete":
            keep = np.ones(total, dtype=bool)
            keep[chosen] = False
            # texts that would lose every word keep one of them, picked at random
            emptied = np.flatnonzero((np.bincount(parents[keep], minlength=n) == 0) & (lengths > 0))
            starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if n else np.zeros(0, dtype=np.int64)
            keep[starts[emptied] + np.floor(rng.random(emptied.size) * lengths[emptied]).astype(np.int64)] = (
                True
            )
            new_words = words.filter(pa.array(keep))
            parents_out = parents[keep]
        elif kind == "substitute":
            encoded = pc.dictionary_encode(words)
            vocab = encoded.dictionary
            ids = encoded.indices.to_numpy().astype(np.int64)
            if len(vocab) > 1:  # a shift in [1, V) modulo V never gives back the same word
                ids[chosen] = (ids[chosen] + rng.integers(1, len(vocab), size=chosen.size)) % len(vocab)
            new_words = vocab.take(pa.array(ids))
            parents_out = parents
        else:
            replaced = words.to_numpy(zero_copy_only=False).astype(object)
            replaced[chosen] = _typos(replaced[chosen], rng).astype(object)
            new_words = pa.array(replaced, type=pa.string())
            parents_out = parents
        new_lengths = np.bincount(parents_out, minlength=n)
        offsets = pa.array(np.concatenate([[0], np.cumsum(new_lengths)]).astype(np.int64))
        joined = pc.binary_join(pa.LargeListArray.from_arrays(offsets, new_words), " ")
        changed = pa.array(np.bincount(parents[chosen], minlength=n) > 0)
        result = pc.if_else(changed, joined.cast(texts.type), texts)
        return _replace_column(ds, text_column, result, ds.features[text_column])

    return _apply(dataset, splits, None, validate, work)


# ----------------------------------------------------------------------------------------------
# few-shot and domain shift
# ----------------------------------------------------------------------------------------------
def few_shot(
    dataset: DatasetLike,
    k: int,
    seed: int = 0,
    label_column: str = "label",
    *,
    splits: str | Sequence[str] | None = None,
) -> DatasetLike:
    """Exactly ``k`` examples per class, drawn by a seeded stratified sample; rows keep their order.

    Classes are those of the ``ClassLabel`` (so an empty class is reported) or the labels present.
    With the same seed the ``k``-shot set is contained in the ``k'``-shot set for ``k < k'``.
    Raises ``ValueError`` naming every class with fewer than ``k`` examples. For a DatasetDict only
    ``"train"`` is subsampled unless ``splits`` says otherwise.

    Example:
        >>> from datasets import Dataset
        >>> ds = Dataset.from_dict({"label": [0, 0, 0, 1, 1, 1, 2, 2]})
        >>> sorted(few_shot(ds, 2, seed=0)["label"])
        [0, 0, 1, 1, 2, 2]
    """
    k = _check_int("k", k, 1)
    seed = _check_seed(seed)

    def validate(ds: Dataset) -> np.ndarray:
        labels = _integer_labels(ds, label_column)
        feature = ds.features[label_column]
        size = max(
            feature.num_classes if isinstance(feature, ClassLabel) else 0, int(labels.max(initial=-1)) + 1
        )
        counts = np.bincount(labels, minlength=size)
        classes = np.arange(size) if isinstance(feature, ClassLabel) else np.unique(labels)
        short = classes[counts[classes] < k]
        if short.size:

            def name(c: int) -> str:
                return f"{c} ({feature.int2str(int(c))!r})" if isinstance(feature, ClassLabel) else str(c)

            detail = ", ".join(f"class {name(c)} has {counts[c]}" for c in short)
            raise ValueError(f"k={k} examples per class requested but {detail} examples in {label_column!r}")
        if labels.size == 0:
            raise ValueError(f"few_shot(k={k}) needs a non-empty dataset; got 0 rows")
        return labels

    def work(ds: Dataset, labels: np.ndarray) -> Dataset:
        rng = np.random.default_rng(seed)
        order = rng.permutation(labels.size)
        order = order[np.argsort(labels[order], kind="stable")]  # grouped by class, random within class
        grouped = labels[order]
        rank = np.arange(labels.size) - np.searchsorted(grouped, grouped, side="left")
        return ds.select(np.sort(order[rank < k]))

    return _apply(dataset, splits, ("train",), validate, work)


def _as_values(value: Any) -> list[Any]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        return [value]
    return list(value)


def split_by_domain(
    dataset: Dataset,
    domain_column: str,
    source: Any,
    target: Any,
) -> DatasetDict:
    """Domain-shift split: ``train`` = rows whose domain is in ``source``, ``test`` = in ``target``.

    ``source`` and ``target`` are one value or a list of values of ``domain_column``; each must
    occur in the column and they must not overlap. Row order is kept.

    Example:
        >>> from datasets import Dataset
        >>> ds = Dataset.from_dict({"topic": ["air", "apple", "air", "cars"], "label": [0, 1, 0, 1]})
        >>> dd = split_by_domain(ds, "topic", "air", ["apple", "cars"])
        >>> dd["train"].num_rows, dd["test"].num_rows
        (2, 2)
    """
    if not isinstance(dataset, Dataset):
        raise ValueError(f"dataset of type {type(dataset).__name__} is not supported; allowed: Dataset")
    _check_column(dataset, domain_column, "domain")
    values = np.asarray(_column_array(dataset, domain_column).to_pylist(), dtype=object)
    present = set(values.tolist())
    sources, targets = _as_values(source), _as_values(target)
    shown = sorted(present, key=str)[:30]
    for role, wanted in (("source", sources), ("target", targets)):
        missing = [v for v in wanted if v not in present]
        if not wanted or missing:
            raise ValueError(
                f"{role}={missing or wanted!r} not found in domain column {domain_column!r}; "
                f"allowed values: {shown}{' ...' if len(present) > 30 else ''}"
            )
    overlap = set(sources) & set(targets)
    if overlap:
        raise ValueError(f"source and target share {sorted(overlap, key=str)!r}; allowed: disjoint domains")
    in_source = np.isin(values, np.asarray(sources, dtype=object))
    in_target = np.isin(values, np.asarray(targets, dtype=object))
    return DatasetDict(
        train=dataset.select(np.flatnonzero(in_source)), test=dataset.select(np.flatnonzero(in_target))
    )
