"""Checkpoints saved before the package was laid out by job (v0.1 flat layout) still load, with
identical logits: the fixture was written by ``tests/models/fixtures/checkpoints_v0_1/make_fixture.py`` on
the pre-layout main and is never regenerated."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification

import hf_monosem  # noqa: F401  (registers the Auto classes)

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "checkpoints_v0_1"
EXPECTED = load_file(str(FIXTURE / "expected_outputs.safetensors"))


@pytest.mark.parametrize("kind", ["linear", "nonneg", "sae", "topk"])
def test_text_checkpoint_from_the_flat_layout_gives_identical_logits(kind):
    model = AutoModelForSequenceClassification.from_pretrained(FIXTURE / f"text-{kind}").eval()
    assert model.config.feature_layer == kind
    with torch.no_grad():
        out = model(
            input_ids=EXPECTED[f"text-{kind}.input_ids"],
            attention_mask=EXPECTED[f"text-{kind}.attention_mask"],
        )
    torch.testing.assert_close(out.logits, EXPECTED[f"text-{kind}.logits"], rtol=0, atol=1e-6)
    torch.testing.assert_close(out.features, EXPECTED[f"text-{kind}.features"], rtol=0, atol=1e-6)


def test_image_checkpoint_from_the_flat_layout_gives_identical_logits():
    model = AutoModelForImageClassification.from_pretrained(FIXTURE / "image-topk").eval()
    with torch.no_grad():
        out = model(pixel_values=EXPECTED["image-topk.pixel_values"])
    torch.testing.assert_close(out.logits, EXPECTED["image-topk.logits"], rtol=0, atol=1e-6)
