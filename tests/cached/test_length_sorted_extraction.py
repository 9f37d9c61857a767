"""``sort_by_length=True``: texts run longest first (little padding per batch), come back in dataset order.

On a real (tiny) BERT with unpadded token rows of very different lengths, padded per batch by
``DataCollatorWithPadding``: the vectors equal those of the dataset-order run (mean pooling over the
attended tokens; only float rounding of other batch shapes differs), the labels come back in order, and
the backbone sees fewer padded positions (counted with a forward hook on the embeddings).
"""

from __future__ import annotations

import datasets
import pytest
import torch
from tiny_models import tiny_bert_config
from transformers import BertModel, DataCollatorWithPadding, PreTrainedTokenizerFast

from hf_monosem import extract_pooled_features
from hf_monosem.cached.extraction import collect_outputs


def _collator() -> DataCollatorWithPadding:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    vocab = {"[PAD]": 0, **{f"w{i}": i for i in range(1, 100)}}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab)), pad_token="[PAD]")
    return DataCollatorWithPadding(tokenizer)


def _rows() -> datasets.Dataset:
    g = torch.Generator().manual_seed(0)
    lengths = [int(n) for n in torch.randint(1, 40, (30,), generator=g)]
    ids = [torch.randint(1, 100, (n,), generator=g).tolist() for n in lengths]
    return datasets.Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * n for n in lengths],
                                       "label": list(range(30))})  # fmt: skip


def test_sorted_run_returns_dataset_order_with_less_padding():
    torch.manual_seed(0)
    bert = BertModel(tiny_bert_config()).eval()
    rows, collate = _rows(), _collator()
    seen: list[int] = []
    hook = bert.embeddings.register_forward_hook(
        lambda module, args, out: seen.append(out.shape[0] * out.shape[1])
    )
    plain = collect_outputs(bert, rows, 8, outputs=("pooler_output",), collate_fn=collate, with_labels=True)
    positions_plain, seen[:] = sum(seen), []
    ordered = extract_pooled_features(bert, rows, 8, pooling="mean", collate_fn=collate)
    seen.clear()
    sorted_run = extract_pooled_features(
        bert, rows, 8, pooling="mean", collate_fn=collate, sort_by_length=True
    )
    positions_sorted = sum(seen)
    hook.remove()
    tokens = sum(len(r) for r in rows["input_ids"])
    assert positions_sorted < positions_plain  # padding computed: plain - tokens, sorted - tokens
    assert positions_sorted - tokens < 0.5 * (positions_plain - tokens)
    torch.testing.assert_close(sorted_run, ordered, atol=1e-5, rtol=1e-5)
    assert plain["labels"].tolist() == list(range(30))
    labels = collect_outputs(
        bert, rows, 8, outputs=(), collate_fn=collate, with_labels=True, sort_by_length=True
    )
    assert labels["labels"].tolist() == list(range(30))  # every field back in dataset order


def test_sorting_is_refused_where_rows_stream_in_order(tmp_path):
    bert = BertModel(tiny_bert_config()).eval()
    with pytest.raises(ValueError, match="sort_by_length=True with memory_map=True is not allowed"):
        extract_pooled_features(bert, _rows(), 8, cache_dir=tmp_path, memory_map=True, sort_by_length=True)
    with pytest.raises(ValueError, match="sort_by_length=True with on_batch is not allowed"):
        collect_outputs(bert, _rows(), 8, on_batch=lambda values: None, sort_by_length=True)
