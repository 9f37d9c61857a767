"""A feature matrix larger than memory: streamed to fixed-size shard files, read back memory-mapped.

An ImageNet-sized extraction (1.3M x 2048 float32, ~10 GB) does not fit in RAM next to a model, but
it never has to: :class:`ShardWriter` appends each extracted batch to the current shard file (raw
float32 rows, ``rows_per_shard`` per file) and :class:`ShardedFeatures` reads rows back through
``numpy.memmap`` shard by shard, so a process holds one batch or one requested block at a time.

The files are as trustworthy as :mod:`.cache_files`' safetensors: each shard is written under a
temporary name, ``fsync``-ed and renamed; its SHA-256 is computed while its bytes are written; a JSON
manifest (written last, atomically) names every shard with its rows and hash, the matrix's shape and
what it was written for (``key``). :func:`open_shards` checks all of it (reading each shard once, in
chunks, for the hash) and returns ``None`` with a warning naming the folder and the reason when
anything differs, so the caller extracts again: a run killed mid-way leaves no manifest, hence no cache.

Example:
    >>> import tempfile, torch
    >>> folder = tempfile.mkdtemp()
    >>> writer = ShardWriter(folder, width=3, rows_per_shard=4)
    >>> for start in range(0, 10, 3):  # batches of 3 rows, shards of 4
    ...     writer.write(torch.arange(start * 3, min(start + 3, 10) * 3, dtype=torch.float32).view(-1, 3))
    >>> write_manifest(folder, [writer.close()], width=3, key="abc")
    >>> matrix = open_shards(folder, key="abc")
    >>> matrix.shape, [s["rows"] for s in matrix.shards]
    ((10, 3), [4, 4, 2])
    >>> matrix[3:6].tolist()
    [[9.0, 10.0, 11.0], [12.0, 13.0, 14.0], [15.0, 16.0, 17.0]]
    >>> torch.equal(matrix[torch.tensor([9, 0])], torch.tensor([[27.0, 28.0, 29.0], [0.0, 1.0, 2.0]]))
    True
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

__all__ = ["MANIFEST", "ShardWriter", "ShardedFeatures", "open_shards", "write_manifest"]

#: the manifest's file name inside a shard folder
MANIFEST = "manifest.json"
_DTYPE = np.dtype("<f4")  # float32, little-endian on every machine that reads the files
_HASH_CHUNK = 1 << 24  # bytes read at a time when a shard's hash is checked


class ShardWriter:
    """Streams float32 rows ``[B, width]`` into shard files ``{prefix}{i:05d}.bin`` of ``rows_per_shard``
    rows each (the last one shorter); :meth:`close` returns the shard entries for :func:`write_manifest`.
    ``width`` defaults to the first batch's.

    Several writers (one per process of a launch, each with its own ``prefix``) may write into one
    folder; their entries, in rank order, make one manifest.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        width: int | None = None,
        rows_per_shard: int = 65536,
        prefix: str = "shard-",
    ):
        if width is not None and (isinstance(width, bool) or not isinstance(width, int) or width < 1):
            raise ValueError(
                f"width={width!r} is not valid; allowed: an integer >= 1 (None: the first batch's)"
            )
        if isinstance(rows_per_shard, bool) or not isinstance(rows_per_shard, int) or rows_per_shard < 1:
            raise ValueError(f"rows_per_shard={rows_per_shard!r} is not valid; allowed: an integer >= 1")
        self.folder, self.width, self.rows_per_shard, self.prefix = (
            os.fspath(folder),
            width,
            rows_per_shard,
            prefix,
        )
        os.makedirs(self.folder, exist_ok=True)
        self.shards: list[dict[str, Any]] = []
        self._file: Any = None
        self._tmp = ""
        self._rows = 0
        self._digest: Any = None

    def write(self, rows: torch.Tensor) -> None:
        """Append ``rows`` ``[B, width]`` (any float dtype; stored as float32)."""
        if self.width is None and rows.dim() == 2:
            self.width = int(rows.shape[1])
        if rows.dim() != 2 or rows.shape[1] != self.width:
            raise ValueError(f"rows must be [B, width={self.width}], got shape {tuple(rows.shape)}")
        data = rows.detach().to("cpu", torch.float32).contiguous().numpy().astype(_DTYPE, copy=False)
        while len(data):
            if self._file is None:
                self._open()
            take = min(len(data), self.rows_per_shard - self._rows)
            chunk = data[:take].tobytes()
            self._file.write(chunk)
            self._digest.update(chunk)
            self._rows += take
            data = data[take:]
            if self._rows == self.rows_per_shard:
                self._finish()

    def close(self) -> list[dict[str, Any]]:
        """Finish the last shard; the entries ``{"file", "rows", "sha256"}`` of every shard, in order."""
        if self._file is not None:
            self._finish()
        return list(self.shards)

    def _open(self) -> None:
        fd, self._tmp = tempfile.mkstemp(dir=self.folder, prefix=".", suffix=".tmp")
        self._file = os.fdopen(fd, "wb")
        self._rows, self._digest = 0, hashlib.sha256()

    def _finish(self) -> None:
        name = f"{self.prefix}{len(self.shards):05d}.bin"
        self._file.flush()
        os.fsync(self._file.fileno())  # on disk before the rename gives it the shard's name
        self._file.close()
        os.replace(self._tmp, os.path.join(self.folder, name))
        self.shards.append({"file": name, "rows": self._rows, "sha256": self._digest.hexdigest()})
        self._file = None


def write_manifest(
    folder: str | os.PathLike, shards: list[list[dict[str, Any]]], width: int, key: str
) -> None:
    """Write the manifest of ``folder`` atomically: the shard entries of every writer (in order), the
    matrix's shape and ``key`` (what the features were extracted for). The folder is a cache only once
    this file exists."""
    entries = [entry for writer in shards for entry in writer]
    manifest = {
        "format": "hf_monosem-feature-shards-1",
        "dtype": "float32",
        "rows": sum(e["rows"] for e in entries),
        "width": width,
        "key": key,
        "shards": entries,
    }
    folder = os.fspath(folder)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(manifest, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(folder, MANIFEST))
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class ShardedFeatures:
    """A ``[rows, width]`` float32 matrix kept in shard files, indexed lazily like a tensor.

    ``matrix[i]``, ``matrix[a:b]`` (step 1) and ``matrix[index_tensor]`` read only the rows asked for
    and return CPU tensors: a range is read from the files straight into the result, scattered rows
    through a ``numpy.memmap`` of each shard touched (released after the read);
    :meth:`chunks` walks the matrix block by block; :meth:`to_tensor` loads it all (when it fits).
    """

    def __init__(self, folder: str | os.PathLike, manifest: dict[str, Any]):
        self.folder = os.fspath(folder)
        self.shards: list[dict[str, Any]] = manifest["shards"]
        self.shape: tuple[int, int] = (int(manifest["rows"]), int(manifest["width"]))
        self.dtype = torch.float32
        self.key: str = manifest["key"]
        self._starts = np.cumsum([0] + [s["rows"] for s in self.shards])

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the shape and of every shard's rows and hash, in order: read from the manifest alone
        (no row is read), equal for two copies of the same shard files (how processes check that they
        hold one matrix)."""
        listed = [list(self.shape), [[s["rows"], s["sha256"]] for s in self.shards]]
        return hashlib.sha256(json.dumps(listed).encode()).hexdigest()

    def __repr__(self) -> str:
        return f"ShardedFeatures(shape={self.shape}, shards={len(self.shards)})"

    def __getitem__(self, index: Any) -> torch.Tensor:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                return self[torch.arange(start, stop, step)]
            return self._read_range(start, max(start, stop))
        if isinstance(index, (int, np.integer)) and not isinstance(index, bool):
            row = int(index) + (len(self) if index < 0 else 0)
            if not 0 <= row < len(self):
                raise IndexError(f"row {index} is out of range for {len(self)} rows")
            return self._read_range(row, row + 1)[0]
        rows = torch.as_tensor(index)
        if rows.dtype == torch.bool or rows.is_floating_point() or rows.dim() != 1:
            raise TypeError(f"index with an int, a slice or a 1-d integer tensor, got {index!r}")
        rows = torch.where(rows < 0, rows + len(self), rows)
        if len(rows) and (int(rows.min()) < 0 or int(rows.max()) >= len(self)):
            raise IndexError(f"rows {index!r} are out of range for {len(self)} rows")
        out = torch.empty(len(rows), self.shape[1])
        shard_of = np.searchsorted(self._starts, rows.numpy(), side="right") - 1
        for shard in np.unique(shard_of):
            where = np.nonzero(shard_of == shard)[0]
            local = rows.numpy()[where] - self._starts[shard]
            with self._mapped(int(shard)) as mapped:
                out[torch.from_numpy(where)] = torch.from_numpy(np.array(mapped[local]))
        return out

    def chunks(self, rows: int = 65536) -> Iterator[torch.Tensor]:
        """The matrix in order, ``rows`` rows at a time (the last block shorter)."""
        for start in range(0, len(self), rows):
            yield self[start : start + rows]

    def to_tensor(self) -> torch.Tensor:
        """The whole matrix in memory."""
        return self[:]

    def _read_range(self, start: int, stop: int) -> torch.Tensor:
        out = torch.empty(stop - start, self.shape[1])
        first = int(np.searchsorted(self._starts, start, side="right") - 1)
        for shard in range(max(first, 0), len(self.shards)):
            lo, hi = max(start, self._starts[shard]), min(stop, self._starts[shard + 1])
            if lo >= stop:
                break
            if lo < hi:  # read straight into the result: no mapping, no intermediate copy
                target = out[lo - start : hi - start].numpy()
                with open(os.path.join(self.folder, self.shards[shard]["file"]), "rb") as f:
                    f.seek(int(lo - self._starts[shard]) * self.shape[1] * _DTYPE.itemsize)
                    if f.readinto(memoryview(target).cast("B")) != target.nbytes:
                        name = self.shards[shard]["file"]
                        raise OSError(f"shard {name} in {self.folder} is shorter than its manifest says")
        return out

    def _mapped(self, shard: int) -> _Mapped:
        return _Mapped(
            os.path.join(self.folder, self.shards[shard]["file"]), self.shards[shard]["rows"], self.shape[1]
        )


class _Mapped:
    """One shard as a read-only ``numpy.memmap`` for the span of a ``with`` (unmapped after it, so mapped
    pages do not pile up in the process's resident memory across a pass over the whole matrix)."""

    def __init__(self, path: str, rows: int, width: int):
        self.path, self.rows, self.width = path, rows, width

    def __enter__(self) -> np.memmap:
        self.map = np.memmap(self.path, dtype=_DTYPE, mode="r", shape=(self.rows, self.width))
        return self.map

    def __exit__(self, *exc: Any) -> None:
        self.map._mmap.close()  # numpy keeps the mapping while any view lives; the rows were copied out
        del self.map


def open_shards(
    folder: str | os.PathLike, key: str | None = None, verify: bool = True
) -> ShardedFeatures | None:
    """The matrix :func:`write_manifest` describes in ``folder``, or ``None``: silently when there is no
    manifest (nothing written, or a run killed before the end), with a warning naming the folder and
    why when the manifest cannot be read, was written for another ``key``, a shard is missing or has
    the wrong size, or (``verify``, the default: each shard is read once, in chunks) its bytes do not
    match their hash."""
    folder = os.fspath(folder)
    path = os.path.join(folder, MANIFEST)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            manifest = json.load(f)
        shards, width = manifest["shards"], int(manifest["width"])
        if (
            manifest.get("format") != "hf_monosem-feature-shards-1"
            or sum(s["rows"] for s in shards) != manifest["rows"]
        ):
            return _reject(folder, "its manifest is not a feature-shard manifest of this version")
    except (OSError, ValueError, KeyError, TypeError) as error:
        return _reject(folder, f"its manifest cannot be read ({type(error).__name__}: {error})")
    if key is not None and manifest["key"] != key:
        return _reject(folder, f"it was written for key={manifest['key']!r}, not {key!r}")
    for shard in shards:
        file = os.path.join(folder, shard["file"])
        size = shard["rows"] * width * _DTYPE.itemsize
        if not os.path.exists(file) or os.path.getsize(file) != size:
            got = os.path.getsize(file) if os.path.exists(file) else "no file"
            return _reject(folder, f"shard {shard['file']} should hold {size} bytes, found {got}")
        if verify and _file_sha256(file) != shard["sha256"]:
            return _reject(folder, f"shard {shard['file']} does not match its hash (changed or damaged)")
    return ShardedFeatures(folder, manifest)


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _reject(folder: str, why: str) -> Any:  # always None ("not used"), typed for the caller
    warnings.warn(f"feature shards in {folder} are not used: {why}; extracting again", stacklevel=3)
    return None
