"""The report as a Hub dataset repository: a card (``README.md``) beside ``report.md``, ``results.json``
and the plots, pushed without the caches.

Example:
    >>> import json, os, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> with open(os.path.join(folder, "results.json"), "w") as f:
    ...     json.dump({"model": "org/bert", "dataset": "reviews.csv", "verdicts": ["- **few_shot** ..."]}, f)
    >>> card = save_report_for_hub(folder)
    >>> open(card).read().splitlines()[:3]
    ['---', 'tags:', '- hf-monosem']
"""

from __future__ import annotations

import json
import os

__all__ = ["REPORT_FILES_IGNORED", "push_report_to_hub", "save_report_for_hub"]

#: what stays on the machine: the caches a resumed run reads
REPORT_FILES_IGNORED = ["cache/*", "cache/**"]

_CARD = """---
tags:
- hf-monosem
- robustness
- monosemanticity
pretty_name: "hf-monosem report: {model} on {dataset}"
---

# hf-monosem report: {model} on {dataset}

Does a monosemantic representation of `{model}` make linear probes on `{dataset}` more robust, and is it
the features or the optimisation? Made with [hf_monosem](https://github.com/) `hf-monosem report`.

## Verdicts

{verdicts}

The full report is [report.md](report.md); every number is in [results.json](results.json) (run records in
hf_monosem's results schema, under `"results"`).
"""


def save_report_for_hub(output_dir: str | os.PathLike) -> str:
    """Write the dataset card ``README.md`` into the report folder (from its ``results.json``); returns its
    path. The folder is then what :func:`push_report_to_hub` uploads, less :data:`REPORT_FILES_IGNORED`."""
    with open(os.path.join(output_dir, "results.json"), encoding="utf-8") as f:
        results = json.load(f)
    card = _CARD.format(
        model=results["model"], dataset=results["dataset"], verdicts="\n".join(results.get("verdicts", []))
    )
    path = os.path.join(output_dir, "README.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write(card)
    return path


def push_report_to_hub(output_dir: str | os.PathLike, repo_id: str, token: str | None = None) -> str:
    """Push the report folder as the dataset repository ``repo_id`` (created if missing); returns its URL."""
    from huggingface_hub import HfApi

    save_report_for_hub(output_dir)
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="dataset", exist_ok=True)
    api.upload_folder(
        folder_path=os.fspath(output_dir),
        repo_id=repo_id,
        repo_type="dataset",
        ignore_patterns=REPORT_FILES_IGNORED,
        commit_message="hf-monosem report",
    )
    return f"https://huggingface.co/datasets/{repo_id}"
