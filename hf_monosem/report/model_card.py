"""The report's verdicts as a "Monosemanticity report" section of a model repository's card (``README.md``).

:func:`card_with_report` is the whole logic and needs no network: it takes the card's current text and
the report's ``results.json`` content and returns the new text, with the section added at the end or,
when the card already has one for the same data set, replaced in place (a rerun updates it; a report on
another data set adds its own section). The card's metadata is kept and gains the ``hf-monosem`` tag.
:func:`push_report_to_model_card` is the thin Hub call around it (``ModelCard.load`` / ``push_to_hub``,
optionally as a pull request).

Example:
    >>> results = {"model": "org/bert", "dataset": "reviews.csv", "verdicts": ["- **few_shot**: tie"]}
    >>> card = card_with_report("---\\nlicense: mit\\n---\\n# My model\\n", results)
    >>> card.splitlines()[:5]
    ['---', 'license: mit', 'tags:', '- hf-monosem', '---']
    >>> "## Monosemanticity report: reviews.csv" in card, card_with_report(card, results) == card
    (True, True)
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from huggingface_hub import ModelCard

__all__ = ["card_with_report", "check_repo_id", "push_report_to_model_card", "report_section"]

TAG = "hf-monosem"


def check_repo_id(option: str, repo_id: str) -> None:
    """A ``ValueError`` naming ``--option`` and its value unless ``repo_id`` is a valid Hub repository id.

    Example:
        >>> check_repo_id("model_card_repo_id", "me/my-model")
        >>> check_repo_id("model_card_repo_id", "me/my model")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: --model_card_repo_id 'me/my model' is not a Hub repository id; allowed: ...
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise ValueError(
            f"--{option} {repo_id!r} is not a Hub repository id; allowed: 'name' or 'namespace/name' of "
            "letters, digits, '-', '_', '.' (at most 96 characters)"
        ) from None


def _markers(dataset: str) -> tuple[str, str]:
    # HTML comments: invisible on the Hub, and they find the section again whatever the user edited around it
    return f"<!-- hf-monosem report: {dataset} -->", f"<!-- end of hf-monosem report: {dataset} -->"


def report_section(results: dict[str, Any], report_repo_id: str | None = None) -> str:
    """The section of one report: its verdict lines, the monosemanticity of each representation and, when the
    report was pushed as the dataset repository ``report_repo_id``, a link to it."""
    start, end = _markers(results["dataset"])
    lines = [
        start,
        f"## Monosemanticity report: {results['dataset']}",
        "",
        f"Made with `hf-monosem report` on `{results['dataset']}`: do monosemantic representations of "
        "this model's vectors make linear probes more robust, and is it the features or the optimisation? "
        "A win or a loss is a mono - poly accuracy gap beyond 2 pooled standard deviations over seeds, "
        "under each probe protocol.",
        "",
        *results.get("verdicts", []),
    ]
    mono = results.get("monosemanticity") or {}
    if mono:
        lines += ["", "| representation | L0 | dead fraction | class consistency |", "|---|---|---|---|"]
        for name, row in mono.items():
            cells = [row.get(k) for k in ("l0", "dead_fraction", "class_consistency")]
            lines.append(f"| {name} | " + " | ".join("" if c is None else f"{c:.3g}" for c in cells) + " |")
    if report_repo_id:
        lines += [
            "",
            f"The full report: [{report_repo_id}](https://huggingface.co/datasets/{report_repo_id}).",
        ]
    return "\n".join([*lines, end])


def card_with_report(card_text: str, results: dict[str, Any], report_repo_id: str | None = None) -> str:
    """``card_text`` (a model card, with or without metadata) with the report's section (see the module
    docstring): the card's text is otherwise unchanged."""
    card = ModelCard(card_text, ignore_metadata_errors=True)
    section = report_section(results, report_repo_id)
    start, end = _markers(results["dataset"])
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    text = card.text
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text, count=1)
    else:
        text = text.rstrip("\n") + ("\n\n" if text.strip() else "") + section + "\n"
    tags = list(card.data.tags or [])
    if TAG not in tags:
        card.data.tags = [*tags, TAG]
    card.text = text
    return str(card)


def push_report_to_model_card(
    output_dir: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    create_pr: bool = False,
    report_repo_id: str | None = None,
) -> str:
    """Add (or update) the report's section in the card of the model repository ``repo_id`` and push it,
    as a pull request when ``create_pr``; returns the commit or pull request URL."""
    from huggingface_hub.errors import EntryNotFoundError

    with open(os.path.join(output_dir, "results.json"), encoding="utf-8") as f:
        results = json.load(f)
    try:
        current = ModelCard.load(repo_id, token=token).content
    except EntryNotFoundError:  # a repository without a README.md: the section starts one
        current = ""
    card = ModelCard(card_with_report(current, results, report_repo_id))
    return str(
        card.push_to_hub(
            repo_id, token=token, create_pr=create_pr, commit_message="Add the hf-monosem report's verdicts"
        )
    )
