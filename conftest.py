"""Settings for the whole suite: the tests under tests/ and the docstring examples under hf_monosem/."""

import os

import torch

# No network at run time: every Hub id resolves from the local cache or fails.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models run fastest single-threaded; more threads only add contention on the 2 shared cores.
torch.set_num_threads(1)
