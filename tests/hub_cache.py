"""A Hub repository laid out in a local Hub cache, as ``huggingface_hub`` downloads leave it.

``models--{org}--{name}/blobs/<sha>``, ``snapshots/<commit>/<file>`` (links into the blobs) and
``refs/<branch>`` (the commit). With ``HF_HUB_OFFLINE=1`` (the suite's root conftest sets it) a Hub id
then resolves from that cache, by branch or by commit, exactly as a downloaded one does.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path


def add_to_hub_cache(
    cache_dir: str | os.PathLike,
    repo_id: str,
    folder: str | os.PathLike,
    *,
    branch: str = "main",
    repo_type: str = "model",
) -> str:
    """Put the files of ``folder`` into ``cache_dir`` as one commit of ``repo_id`` on ``branch``; returns
    the commit id (derived from the files, so the same files give the same commit)."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    digest = hashlib.sha1()
    for path in files:
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes())
    commit = digest.hexdigest()
    repo = Path(cache_dir) / f"{repo_type}s--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for path in files:
        blob = repo / "blobs" / hashlib.sha256(path.read_bytes()).hexdigest()
        if not blob.exists():
            shutil.copyfile(path, blob)
        target = repo / "snapshots" / commit / path.relative_to(folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            os.symlink(os.path.relpath(blob, target.parent), target)
    (repo / "refs" / branch).write_text(commit)
    return commit
