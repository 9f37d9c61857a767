"""Tests for hf_monosem.evaluation.explain: top-activating examples, image grids, text snippets."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from datasets import Dataset

from hf_monosem.evaluation.explain import (
    TopExamples,
    image_grid_for_feature,
    text_snippets_for_feature,
    top_activating_examples,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_top_activating_examples_order_and_cap():
    feats = torch.tensor([[0.1, 5.0], [0.9, 0.0], [0.5, 1.0], [0.7, 2.0]])
    top = top_activating_examples(feats, 0, 3)
    assert isinstance(top, TopExamples)
    assert top.indices.tolist() == [1, 3, 2] and torch.allclose(top.values, torch.tensor([0.9, 0.7, 0.5]))
    assert top_activating_examples(feats.numpy(), 1, 10).indices.tolist() == [0, 3, 2, 1]  # k capped at N


def test_image_grid_from_tensor_and_dataset_column(tmp_path):
    g = torch.Generator().manual_seed(0)
    feats = torch.rand(10, 3, generator=g)
    images = torch.randn(10, 3, 8, 8, generator=g)
    path = image_grid_for_feature(
        feats,
        images,
        2,
        k=4,
        path=tmp_path / "rgb.png",
        labels=list("abcdefghij"),
        mean=[0.5, 0.5, 0.5],
        std=[0.2, 0.2, 0.2],
    )
    assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 1000
    gray = Dataset.from_dict({"pixel_values": torch.rand(10, 1, 6, 6, generator=g).tolist()})
    path = image_grid_for_feature(feats, gray["pixel_values"], 0, k=3, path=tmp_path / "sub" / "gray.png")
    assert path.exists() and path.read_bytes()[:8] == PNG_MAGIC
    path = image_grid_for_feature(
        feats, np.random.default_rng(0).random((10, 5, 5)), 1, k=10, path=tmp_path / "hw.png"
    )
    assert path.stat().st_size > 0


def test_text_snippets_plain_and_token_level():
    texts = ["short one", "x" * 300, "the flight was delayed again"]
    feats = torch.tensor([[0.1], [0.5], [0.9]])
    plain = text_snippets_for_feature(feats, texts, 0, k=2, max_chars=50)
    assert [s["index"] for s in plain] == [2, 1]
    assert plain[0]["snippet"] == texts[2] and plain[1]["snippet"] == "x" * 50 + "…"
    assert plain[0]["activation"] == pytest.approx(0.9)

    tokens = [["short", "one"], ["x"], ["the", "flight", "was", "del", "##ayed", "again"]]
    acts = torch.zeros(3, 6, 2)
    acts[2, 1, 0], acts[2, 3, 0], acts[2, 4, 0] = 0.9, 0.5, 0.4  # "flight" and "delayed" fire
    marked = text_snippets_for_feature(feats, texts, 0, k=1, token_activations=acts, tokens=tokens)
    assert marked[0]["snippet"] == "the «flight» was «del»«ayed» again"
    windowed = text_snippets_for_feature(
        feats, texts, 0, k=1, token_activations=acts[..., 0], tokens=tokens, window=1
    )
    assert windowed[0]["snippet"] == "the «flight» was …"  # window of 1 token around "flight"


def test_sentencepiece_tokens_are_joined():
    tokens = [["▁The", "▁engine", "s", "▁roared"]]
    acts = torch.tensor([[0.0, 1.0, 1.0, 0.0]])
    out = text_snippets_for_feature(
        torch.ones(1, 1), ["The engines roared"], 0, token_activations=acts, tokens=tokens
    )
    assert out[0]["snippet"] == "The «engine»«s» roared"


BAD_CALLS = [
    ("feature_index=5", lambda: top_activating_examples(torch.zeros(3, 2), 5, 1)),
    ("k=0", lambda: top_activating_examples(torch.zeros(3, 2), 0, 0)),
    ("(3,)", lambda: top_activating_examples(torch.zeros(3), 0, 1)),
    ("images has 2 items", lambda: image_grid_for_feature(torch.zeros(3, 1), torch.zeros(2, 1, 4, 4), 0)),
    ("texts has 1 items", lambda: text_snippets_for_feature(torch.zeros(3, 1), ["a"], 0)),
    ("both or neither", lambda: text_snippets_for_feature(torch.zeros(1, 1), ["a"], 0, tokens=[["a"]])),
]


@pytest.mark.parametrize(("expected", "call"), BAD_CALLS, ids=[b[0] for b in BAD_CALLS])
def test_bad_arguments_raise_value_error_naming_value(expected, call):
    with pytest.raises(ValueError, match=re.escape(expected)):
        call()
