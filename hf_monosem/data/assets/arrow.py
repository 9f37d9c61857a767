"""Arrow / :mod:`datasets` helpers shared by the asset loaders: dataset info, stratified splits, image
columns."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
from datasets import Array3D, ClassLabel, Dataset, DatasetInfo, Features, Value

__all__ = ["dataset_info", "image_dataset", "stratified_split"]


def dataset_info(
    description: str, features: Features, citation: str = "", homepage: str = "", license: str = ""
) -> DatasetInfo:
    return DatasetInfo(
        description=description, features=features, citation=citation, homepage=homepage, license=license
    )


def stratified_split(strata: np.ndarray, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Seeded stratified split: indices per part, each part in a random (seeded) order."""
    n = len(strata)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    codes = pd.factorize(strata)[0]
    s = pd.Series(codes[order])
    pos = s.groupby(s).cumcount().to_numpy()
    size = s.map(s.value_counts()).to_numpy()
    q = (pos + 0.5) / size
    bounds = np.cumsum(fractions)[:-1]
    part = np.searchsorted(bounds, q, side="right")
    return [order[part == k] for k in range(len(fractions))]


def _image_column(x: np.ndarray, feature: Array3D) -> pa.ExtensionArray:
    """Arrow column for a float32 [N, C, H, W] array (vectorised; avoids per-row conversion)."""
    arr: pa.Array = pa.array(np.ascontiguousarray(x, dtype=np.float32).reshape(-1))
    for d in reversed(x.shape[1:]):
        arr = pa.ListArray.from_arrays(pa.array(np.arange(0, len(arr) + 1, d, dtype=np.int32)), arr)
    return pa.ExtensionArray.from_storage(feature(), arr)


def image_dataset(
    x: np.ndarray, y: np.ndarray, label: ClassLabel, info_kwargs: dict, **extra: np.ndarray
) -> Dataset:
    feature = Array3D(shape=tuple(x.shape[1:]), dtype="float32")
    features = Features({"pixel_values": feature, "label": label, **{k: Value("string") for k in extra}})
    cols = {"pixel_values": _image_column(x, feature), "label": pa.array(np.asarray(y, dtype=np.int64))}
    cols.update({k: pa.array(np.asarray(v, dtype=object), type=pa.string()) for k, v in extra.items()})
    table = pa.table(cols).cast(features.arrow_schema)
    return Dataset(table, info=dataset_info(features=features, **info_kwargs)).with_format("torch")
