"""Memory-mapped feature shards: the same matrix as in memory, checked files, and RAM that does not grow.

* ``extract_pooled_features(memory_map=True)`` through a real (tiny) BERT gives the in-memory matrix,
  in shards of ``rows_per_shard`` rows, and a second call reads the shards without running the model;
* a damaged shard, a missing manifest (a run killed mid-way) or another key is never used silently;
* a child process extracting a 164 MB matrix (40,000 x 1,024 float32, a 0-layer BERT whose output is
  its embedding: real, cheap) to shards and reading it back in blocks grows its peak resident memory
  by well under the matrix's size, where the in-memory route (the control, same child) grows by more
  than the matrix: the measurement can tell the two apart.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import datasets
import pytest
import torch
from peak_memory import run_child
from tiny_models import tiny_bert_config

from hf_monosem import extract_pooled_features
from hf_monosem.cached.feature_shards import MANIFEST, ShardWriter, open_shards, write_manifest


def bert_and_rows(rows: int = 37):
    from transformers import BertModel

    torch.manual_seed(0)
    bert = BertModel(tiny_bert_config()).eval()
    ids = torch.randint(1, 100, (rows, 6), generator=torch.Generator().manual_seed(1))
    return bert, datasets.Dataset.from_dict({"input_ids": ids.tolist()})


def test_memory_mapped_extraction_equals_the_in_memory_matrix_and_is_reused(tmp_path):
    bert, rows = bert_and_rows()
    in_memory = extract_pooled_features(bert, rows, batch_size=8, pooling="mean")
    sharded = extract_pooled_features(
        bert, rows, batch_size=8, pooling="mean", cache_dir=tmp_path, memory_map=True, rows_per_shard=10
    )
    assert sharded.shape == tuple(in_memory.shape) and [s["rows"] for s in sharded.shards] == [10, 10, 10, 7]
    assert torch.equal(sharded.to_tensor(), in_memory)
    assert torch.equal(sharded[9:21], in_memory[9:21])  # across shard borders
    picked = torch.tensor([36, 0, 19, 19, -1])
    assert torch.equal(sharded[picked], in_memory[picked]) and torch.equal(sharded[-2], in_memory[-2])
    assert torch.equal(torch.cat(list(sharded.chunks(8))), in_memory)

    calls = []
    hook = bert.register_forward_hook(lambda *args: calls.append(1))
    again = extract_pooled_features(
        bert, rows, batch_size=8, pooling="mean", cache_dir=tmp_path, memory_map=True, rows_per_shard=10
    )
    hook.remove()
    assert calls == [] and torch.equal(again.to_tensor(), in_memory)  # read from disk, model not run


def test_bad_shards_are_named_and_never_used(tmp_path):
    writer = ShardWriter(tmp_path, rows_per_shard=4)
    writer.write(torch.arange(30.0).view(10, 3))
    shards = writer.close()
    assert open_shards(tmp_path) is None  # no manifest yet: a run killed before the end is no cache
    write_manifest(tmp_path, [shards], width=3, key="k")
    assert open_shards(tmp_path, key="k") is not None
    with pytest.warns(UserWarning, match="written for key='k', not 'other'"):
        assert open_shards(tmp_path, key="other") is None
    shard = tmp_path / shards[1]["file"]
    data = bytearray(shard.read_bytes())
    data[5] ^= 0xFF  # one flipped byte
    shard.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="does not match its hash"):
        assert open_shards(tmp_path, key="k") is None
    shard.write_bytes(bytes(data[:-4]))  # truncated
    with pytest.warns(UserWarning, match="should hold 48 bytes, found 44"):
        assert open_shards(tmp_path, key="k") is None
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.warns(UserWarning, match="manifest cannot be read"):
        assert open_shards(tmp_path, key="k") is None


def test_bad_arguments_fail_before_any_work(tmp_path):
    bert, rows = bert_and_rows(4)
    with pytest.raises(ValueError, match="memory_map=True needs cache_dir"):
        extract_pooled_features(bert, rows, memory_map=True)
    with pytest.raises(ValueError, match="rows_per_shard=0 is not valid"):
        extract_pooled_features(bert, rows, cache_dir=tmp_path, memory_map=True, rows_per_shard=0)
    with pytest.raises(ValueError, match="needs a cache key"):
        extract_pooled_features(bert, rows.to_list(), cache_dir=tmp_path, memory_map=True)
    with pytest.raises(ValueError, match=r"rows must be \[B, width=3\]"):
        ShardWriter(tmp_path, width=3).write(torch.zeros(2, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(IndexError, match="out of range"):
            _ = open_shards(_written(tmp_path / "m"))[torch.tensor([5])]


def _written(folder: Path) -> Path:
    writer = ShardWriter(folder, rows_per_shard=2)
    writer.write(torch.zeros(3, 2))
    write_manifest(folder, [writer.close()], width=2, key="k")
    return folder


CHILD = """
import json, sys
import datasets, torch
from transformers import BertConfig, BertModel
from hf_monosem import extract_pooled_features

ROWS, WIDTH = 40_000, 1024
torch.manual_seed(0)
bert = BertModel(BertConfig(vocab_size=64, hidden_size=WIDTH, num_hidden_layers=0, num_attention_heads=1,
                            intermediate_size=8, max_position_embeddings=8)).eval()
rows = datasets.Dataset.from_dict({"input_ids": [[1 + i % 60, 2] for i in range(ROWS)]})
common = dict(batch_size=500, pooling="mean", cache_dir=sys.argv[1])
extract_pooled_features(bert, rows.select(range(1000)), **common)  # every code path loaded once
before = peak()  # defined by peak_memory.PEAK_MEMORY
if sys.argv[2] == "memory_map":
    matrix = extract_pooled_features(bert, rows, memory_map=True, rows_per_shard=4096, **common)
    total = sum(float(block.sum()) for block in matrix.chunks(1024))  # read back, block by block
else:
    matrix = extract_pooled_features(bert, rows, **common)
    total = float(matrix.sum())
print(json.dumps({"growth": peak() - before, "bytes": ROWS * WIDTH * 4, "rows": len(matrix), "sum": total}))
"""


@pytest.mark.slow  # two child processes writing / holding 164 MB: 10-20 s each idle, ~1 min under load
@pytest.mark.parametrize("route", ["memory_map", "in_memory"])
def test_a_matrix_larger_than_the_memory_it_may_use_goes_through_disk(tmp_path, route):
    report = run_child(CHILD, str(tmp_path / "cache"), route, workdir=tmp_path)
    assert report["rows"] == 40_000
    if route == "memory_map":  # a batch and a block at a time: under a quarter of the matrix
        assert report["growth"] < report["bytes"] / 4, report
    else:  # the control: the measurement sees a matrix held in memory
        assert report["growth"] > report["bytes"], report
