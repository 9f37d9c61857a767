"""Extraction under ``accelerate launch --num_processes 2`` (CPU, gloo) splits the rows, equals one process.

Each process runs the one inference loop over its own contiguous block of rows only (counted with a
forward hook on the real BERT backbone), the blocks are gathered back in dataset order, and every
process returns exactly the matrix one process computes (``torch.equal``: the batches are the same,
since the first block's 12 rows are a whole number of batches of 4, and the launch runs one thread per
process like the reference). Only the main process writes the cache file. The memory-mapped route
writes each process's block as its own shards, one manifest, and reads back the same matrix.
"""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest
import torch
from tiny_models import tiny_bert_config
from training_toys import accelerate_launch

from hf_monosem import extract_pooled_features
from hf_monosem.cached.distributed import row_block

TESTS = Path(__file__).resolve().parents[1]
SEARCH_PATH = f"{TESTS}|{Path(__file__).resolve().parent}"
ROWS, BATCH, WORLD = 23, 4, 2


def bert_and_rows() -> tuple[torch.nn.Module, datasets.Dataset]:
    """A real (tiny) BERT with fixed weights and 23 rows of text of different lengths (padded)."""
    from transformers import BertModel

    torch.manual_seed(0)  # the same weights in every process and in the reference
    bert = BertModel(tiny_bert_config(hidden_dropout_prob=0.1)).eval()
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(2, 9, (ROWS,), generator=g)
    ids = torch.randint(1, 100, (ROWS, 8), generator=g) * (torch.arange(8) < lengths[:, None])
    mask = (torch.arange(8) < lengths[:, None]).long()
    rows = datasets.Dataset.from_dict(
        {"input_ids": ids.tolist(), "attention_mask": mask.tolist(), "label": list(range(ROWS))}
    )
    return bert, rows


SCRIPT = """
import os, sys
import torch
sys.path[:0] = sys.argv[2].split("|")
from accelerate import Accelerator
from test_distributed_extraction import BATCH, bert_and_rows
from hf_monosem import extract_pooled_features

torch.set_num_threads(1)
accelerator = Accelerator(cpu=True)  # joins the gloo process group (ACCELERATE_USE_CPU=1)
bert, rows = bert_and_rows()
seen = []
hook = bert.embeddings.register_forward_hook(lambda module, args, out: seen.append(out.shape[0]))
out = sys.argv[1]
split = extract_pooled_features(bert, rows, batch_size=BATCH, cache_dir=f"{out}/cache", pooling="mean",
                                split_processes=True)
rows_run = sum(seen)
hook.remove()
alone = extract_pooled_features(bert, rows, batch_size=BATCH, pooling="mean", split_processes=False)
again = extract_pooled_features(bert, rows, batch_size=BATCH, cache_dir=f"{out}/cache", pooling="mean",
                                split_processes=True)
sharded = extract_pooled_features(bert, rows, batch_size=BATCH, cache_dir=f"{out}/shards", pooling="mean",
                                  memory_map=True, rows_per_shard=5, split_processes=True)
shards = [s["rows"] for s in sharded.shards]
torch.save({"world": accelerator.num_processes, "split": split, "alone": alone, "again": again,
            "rows_run": rows_run, "sharded": sharded.to_tensor(), "shards": shards},
           f"{out}/rank{accelerator.process_index}.pt")
from hf_monosem.cached.distributed import end_process_group

end_process_group()  # every launched script ends so: none aborts at exit (see its docstring)
"""


@pytest.mark.distributed
def test_two_processes_extract_half_the_rows_each_and_return_what_one_process_returns(tmp_path):
    script = tmp_path / "extract.py"
    script.write_text(SCRIPT)
    result = accelerate_launch(script, tmp_path, SEARCH_PATH)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    torch.set_num_threads(1)  # as in the launched processes: the same kernels, hence the same bits
    bert, rows = bert_and_rows()
    reference = extract_pooled_features(bert, rows, batch_size=BATCH, pooling="mean")
    for rank, r in enumerate(ranks):
        assert r["world"] == WORLD
        # each process ran its own block of rows through the backbone, not the whole dataset
        assert r["rows_run"] == len(row_block(ROWS, rank, WORLD)) == (12, 11)[rank]
        for name in ("split", "alone", "again", "sharded"):
            assert torch.equal(r[name], reference), (rank, name)
        # each process's block in shards of at most 5 rows, in rank order: 12 = 5 + 5 + 2, 11 = 5 + 5 + 1
        assert r["shards"] == [5, 5, 2, 5, 5, 1]
    # one cache file, written by the main process; one shard folder with one manifest
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 1
    assert len(list((tmp_path / "shards").glob("*/manifest.json"))) == 1
    assert not list(tmp_path.glob("**/.*.tmp"))  # no temporary file left behind
