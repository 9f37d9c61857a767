"""Cache files that cannot lie or run code: safetensors written atomically, every read checked.

A cache is only worth its speed if a bad file can never change a result. So:

* :func:`save_tensors` writes safetensors (tensors + string metadata, no pickle: loading runs no code)
  through a temporary file in the same folder, ``fsync`` and ``os.replace``: a run killed mid-write
  leaves the old file or none, never a 0-byte or half file under the cache's name;
* the metadata records a SHA-256 of every tensor's bytes, names, dtypes and shapes, and what the file
  was written for (a fingerprint / key the caller chooses); :func:`load_tensors` checks all of it and
  returns ``None`` with a warning naming the file and the reason when anything differs (truncated,
  bytes flipped, written for other inputs, wrong shape), so the caller rebuilds it: never a crash loop,
  never silent reuse;
* :func:`save_feature_layers` / :func:`load_feature_layers` keep fitted feature layers (SAEs, projectors)
  as their state dicts plus JSON settings instead of pickled modules.

Example:
    >>> import os, tempfile, torch
    >>> path = os.path.join(tempfile.mkdtemp(), "x.safetensors")
    >>> save_tensors(path, {"x": torch.arange(6.0).reshape(2, 3)}, {"key": "abc"})
    >>> load_tensors(path, {"key": "abc"})["x"].shape
    torch.Size([2, 3])
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     load_tensors(path, {"key": "other"}) is None  # written for other inputs: the caller rebuilds it
    True
    >>> "written for key='abc', not 'other'" in str(caught[0].message)
    True
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Mapping
from typing import Any

import torch

from ..models.feature_layers import FeatureLayer, build_feature_layer, feature_layer_class

__all__ = ["load_feature_layers", "load_tensors", "save_feature_layers", "save_tensors", "tensors_sha256"]

logger = logging.getLogger(__name__)

_HASH_KEY = "content_sha256"


def tensors_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of every tensor's name, dtype, shape and bytes (in name order)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_tensors(
    path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> None:
    """Write ``tensors`` as safetensors at ``path`` atomically (temp file, fsync, rename), with ``metadata``
    and a content hash that :func:`load_tensors` checks."""
    from safetensors.torch import save_file

    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tensors = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    meta[_HASH_KEY] = tensors_sha256(tensors)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())  # on disk before the rename makes it the cache file
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_tensors(
    path: str | os.PathLike,
    expected: Mapping[str, str] | None = None,
    shapes: Mapping[str, tuple[int | None, ...]] | None = None,
) -> dict[str, torch.Tensor] | None:
    """The tensors of a :func:`save_tensors` file, or ``None`` (with a warning naming the file and why)
    when it is missing its content hash, cannot be read, fails the hash, or its metadata / shapes differ
    from ``expected`` / ``shapes`` (``None`` in a shape matches any size). A missing file is ``None``
    without a warning."""
    from safetensors import safe_open

    path = os.fspath(path)
    if not os.path.exists(path):
        return None
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as error:  # safetensors raises its own error types for truncated / garbled files
        return _reject(path, f"it cannot be read ({type(error).__name__}: {error})")
    if _HASH_KEY not in meta:
        return _reject(path, "it has no content hash (written by an older version or another program)")
    if tensors_sha256(tensors) != meta[_HASH_KEY]:
        return _reject(path, "its content does not match its hash (the file was changed or damaged)")
    for key, value in (expected or {}).items():
        if meta.get(key) != str(value):
            return _reject(path, f"it was written for {key}={meta.get(key)!r}, not {str(value)!r}")
    for name, shape in (shapes or {}).items():
        got = tuple(tensors[name].shape) if name in tensors else None
        if got is None or len(got) != len(shape) or any(s is not None and s != g for s, g in zip(shape, got)):
            return _reject(path, f"tensor {name!r} has shape {got}, expected {tuple(shape)}")
    return tensors


def _reject(path: str, why: str) -> None:
    warnings.warn(f"cache file {path} is not used: {why}; rebuilding it", stacklevel=3)
    return None


def save_feature_layers(
    path: str | os.PathLike, layers: Mapping[str, tuple[FeatureLayer, dict[str, Any]]], fingerprint: str
) -> None:
    """Save fitted feature layers ``{name: (layer, report)}`` as one safetensors file: each layer's state
    dict, and in the metadata its kind, input width and settings (JSON) and the JSON report."""
    tensors, spec = {}, {}
    for name, (layer, report) in layers.items():
        for key, value in layer.state_dict().items():
            tensors[f"{name}/{key}"] = value
        spec[name] = {
            "kind": layer.kind,
            "input_dim": layer.input_dim,
            "settings": dataclasses.asdict(layer.settings),
            "report": report,
        }
    save_tensors(path, tensors, {"fingerprint": fingerprint, "layers": json.dumps(spec, default=float)})


def load_feature_layers(
    path: str | os.PathLike, fingerprint: str
) -> dict[str, tuple[FeatureLayer, dict[str, Any]]] | None:
    """The layers :func:`save_feature_layers` wrote for ``fingerprint`` (in eval mode), or ``None`` with a
    warning naming the file when it is damaged or was written for other inputs."""
    from safetensors import safe_open

    tensors = load_tensors(path, {"fingerprint": fingerprint})
    if tensors is None:
        return None
    with safe_open(os.fspath(path), framework="pt") as f:
        spec = json.loads(f.metadata()["layers"])
    layers = {}
    try:
        for name, entry in spec.items():
            cls = feature_layer_class(entry["kind"])
            layer = build_feature_layer(
                cls.settings_class(**entry["settings"]), entry["input_dim"], kind=entry["kind"]
            )
            prefix = f"{name}/"
            layer.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
            layers[name] = (layer.eval(), entry["report"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        return _reject(os.fspath(path), f"its layers cannot be rebuilt ({type(error).__name__}: {error})")
    return layers
