"""The report's section of a model card, built offline: added once, updated in place, the rest of the card
(metadata, text, another data set's section) kept."""

from __future__ import annotations

from huggingface_hub import ModelCard

from hf_monosem.report.model_card import card_with_report

EXISTING = """---
license: apache-2.0
tags:
- sentence-similarity
---

# My encoder

Trained on my data. Use it for search.
"""


def results(dataset: str, verdict: str) -> dict:
    return {
        "model": "me/encoder",
        "dataset": dataset,
        "verdicts": [f"- **label_noise**, raw -> sae_k8: controlled {verdict}"],
        "monosemanticity": {"raw": {"l0": 32.0, "dead_fraction": 0.0, "class_consistency": 0.61}},
    }


def test_the_section_is_added_once_and_updated_in_place():
    first = card_with_report(EXISTING, results("reviews.csv", "tie"), report_repo_id="me/encoder-report")
    card = ModelCard(first)
    assert card.data.license == "apache-2.0" and card.data.tags == ["sentence-similarity", "hf-monosem"]
    assert card.text.startswith(ModelCard(EXISTING).text.rstrip("\n"))  # the user's text, unchanged
    assert "## Monosemanticity report: reviews.csv" in first and "controlled tie" in first
    assert "| raw | 32 | 0 | 0.61 |" in first
    assert "(https://huggingface.co/datasets/me/encoder-report)" in first

    other = card_with_report(first, results("tweets", "**win**"))  # another data set: its own section
    updated = card_with_report(other, results("reviews.csv", "**loss**"))  # a rerun: replaced, not added
    assert updated.count("## Monosemanticity report: reviews.csv") == 1
    assert "controlled **loss**" in updated and "controlled tie" not in updated
    assert "## Monosemanticity report: tweets" in updated and "controlled **win**" in updated
    assert updated.index("reviews.csv") < updated.index("report: tweets")  # updated where it was
    assert ModelCard(updated).data.tags == ["sentence-similarity", "hf-monosem"]  # the tag once


def test_a_card_without_metadata_or_text_gets_both():
    card = ModelCard(card_with_report("", results("reviews.csv", "tie")))
    assert card.data.tags == ["hf-monosem"]
    assert card.text.startswith("<!-- hf-monosem report: reviews.csv -->\n## Monosemanticity report")
