"""Settings for the whole suite: the tests under tests/ and the docstring examples under hf_monosem/."""

import os

import torch

# No network at run time: every Hub id resolves from the local cache or fails.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models run fastest single-threaded; more threads only add contention on the 2 shared cores.
torch.set_num_threads(1)

# Property-based tests: random examples on a developer machine (new cases get found), but the same
# examples on every CI run (CI set, as GitHub Actions and most CI services do), so that a CI failure
# is reproducible and never flaky, with no per-example deadline (shared runners are slow). Recent
# hypothesis has a built-in "ci" profile it loads by itself under CI; it is extended here, and loaded
# explicitly, so the suite does not depend on that (hypothesis is unpinned in the dev extra).
try:
    from hypothesis import settings
    from hypothesis.errors import InvalidArgument
except ImportError:  # hypothesis is a dev dependency; the doctests run without it
    pass
else:
    try:
        _builtin_ci = settings.get_profile("ci")
    except InvalidArgument:  # an older hypothesis without one
        _builtin_ci = None
    settings.register_profile("ci", _builtin_ci, derandomize=True, deadline=None, print_blob=True)
    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
        settings.load_profile("ci")

# The deprecated alias modules hold no doctests, and importing one warns (an error in the suite):
# tests/test_deprecation.py imports each on purpose instead.
collect_ignore = [
    "hf_monosem/assets.py",
    "hf_monosem/metrics.py",
    "hf_monosem/probe_grid.py",
    "hf_monosem/projector_fitting.py",
    "hf_monosem/evaluation/metrics.py",
]
