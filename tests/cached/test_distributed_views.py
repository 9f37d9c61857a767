"""Text and image views under ``accelerate launch --num_processes 2`` (CPU, gloo) split the blocks, equal one
process's.

Each process runs only its contiguous run of the (global) blocks of rows of every view, counted with a
forward hook on the real backbone, and the blocks are gathered back in order. Every block draws from its
own generator (seed, view, block) (SimCSE dropout: torch's global generator seeded from it inside
``fork_rng``), so the result is ``torch.equal`` to one process's: the tiny BERT with dropout on, its
rows sorted by length (the blocks are cut from the global order); the masked views; the augmented images
through a tiny ViT. Only the main process writes the cache file.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_distributed_extraction import ROWS, bert_and_rows
from tiny_models import tiny_vit_config
from training_toys import launch_and_load

from hf_monosem.cached import augmented_view_features, text_view_features
from hf_monosem.training import ImageViews

TESTS = Path(__file__).resolve().parents[1]
SEARCH_PATH = f"{TESTS}|{Path(__file__).resolve().parent}"
BLOCK, VIEWS, IMAGES = 4, 3, 10  # 23 rows: 6 blocks (3 per process); 10 images: 3 blocks (2 + 1)


def vit_and_images() -> tuple[torch.nn.Module, torch.Tensor]:
    """A real (tiny) ViT with fixed weights and 10 random images of its size."""
    from transformers import ViTModel

    torch.manual_seed(0)
    vit = ViTModel(tiny_vit_config(), add_pooling_layer=False).eval()
    size = vit.config.image_size
    return vit, torch.rand(IMAGES, 3, size, size, generator=torch.Generator().manual_seed(2))


def all_views(split: bool, cache_dir: str | None = None, seen: list | None = None) -> dict[str, torch.Tensor]:
    """The text views (dropout, sorted by length; masked) and the image views, split or not; ``seen`` gets
    the batch size of every BERT forward pass."""
    bert, rows = bert_and_rows()
    if seen is not None:
        bert.embeddings.register_forward_hook(lambda module, args, out: seen.append(out.shape[0]))
    common = {"batch_size": BLOCK, "pooling": "mean", "split_processes": split}
    vit, images = vit_and_images()

    def encode(x: torch.Tensor) -> torch.Tensor:
        return vit(pixel_values=x).last_hidden_state[:, 0]

    with torch.no_grad():
        image = augmented_view_features(encode, images, ImageViews(size=(16, 16)), VIEWS, seed=3,
                                        batch_size=BLOCK, split_processes=split)  # fmt: skip
    return {
        "dropout": text_view_features(
            bert, rows, VIEWS, seed=5, sort_by_length=True, cache_dir=cache_dir, **common
        ),  # fmt: skip
        "mask": text_view_features(bert, rows, 2, kind="mask", mask_token_id=3, mask_rate=0.3, **common),
        "image": image,
    }


SCRIPT = """
import sys
import torch
sys.path[:0] = sys.argv[2].split("|")
from accelerate import Accelerator
from test_distributed_views import all_views

torch.set_num_threads(1)
accelerator = Accelerator(cpu=True)  # joins the gloo process group (ACCELERATE_USE_CPU=1)
out = sys.argv[1]
seen = []
split = all_views(True, f"{out}/cache", seen)
torch.save({"world": accelerator.num_processes, "split": split, "rows_run": sum(seen)},
           f"{out}/rank{accelerator.process_index}.pt")
from hf_monosem.cached.distributed import end_process_group

end_process_group()  # every launched script ends so: none aborts at exit (see its docstring)
"""


@pytest.mark.distributed
@pytest.mark.usefixtures("one_thread")  # as in the launched processes: the same kernels, hence the same bits
def test_two_processes_compute_half_the_view_blocks_each_and_return_what_one_process_returns(tmp_path):
    ranks = launch_and_load(tmp_path, SCRIPT, SEARCH_PATH)
    reference = all_views(False)
    assert reference["dropout"].shape == (VIEWS, ROWS, 32) and reference["image"].shape[:2] == (VIEWS, IMAGES)
    for rank, r in enumerate(ranks):
        assert r["world"] == 2
        # each process ran its 3 blocks of the 6 (12 rows, then 11) per view: 3 dropout + 2 masked views
        assert r["rows_run"] == (VIEWS + 2) * (12, 11)[rank]
        for name in ("dropout", "mask", "image"):
            assert torch.equal(r["split"][name], reference[name]), (rank, name)
    assert len(list((tmp_path / "cache").glob("views-*.safetensors"))) == 1  # written once, by process 0
    assert not list(tmp_path.glob("**/.*.tmp"))
