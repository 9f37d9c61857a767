"""Robust-learning scenarios over :mod:`datasets`: label noise, input noise, few-shot, domain shift.

Every function returns a NEW dataset (the input is never modified), is seeded and reproducible, and
works on the whole column at once (numpy / Arrow / torch), never with a Python loop over examples.
Arguments are checked before any work is done; a bad one raises :class:`ValueError` naming the bad
value and what is allowed.

The scenarios follow the paper this package builds on (Zhang et al., ICLR 2025), one module per family:

- :mod:`~hf_monosem.scenarios.labels` -- label noise: symmetric, a fraction ``rate`` of the labels
  moved uniformly to one of the *other* classes (so ``rate`` is the true corruption rate), or
  asymmetric class-pair flips;
- :mod:`~hf_monosem.scenarios.images` -- input noise on normalised tensors: ``x + s * N(0, 1)``
  (Gaussian) or ``x + s * U[0, 1)`` (uniform), applied on the fly and deterministic per (seed,
  example) (random numbers from :mod:`~hf_monosem.scenarios.hashing`); CIFAR-C style corruptions;
- :mod:`~hf_monosem.scenarios.text` -- text noise: word deletion, word substitution, character typos;
- :mod:`~hf_monosem.scenarios.splits` -- few-shot (exactly ``k`` examples per class) and domain shift
  (train on some domains, test on others).

The scenario *grid* that runs all of them on one data set + backbone (batched linear probes on
cached features, or one full fine-tune per cell with a resumable state file) is in
:mod:`hf_monosem.scenarios.grid` and :mod:`hf_monosem.scenarios.finetune`; import those modules
explicitly (``from hf_monosem.scenarios import grid``). The paper's own toy analyses (Sections 4.2 and
4.3: two features under noise, a toy model of superposition) are in :mod:`hf_monosem.scenarios.paper_toy`.

Example:
    >>> from datasets import Dataset
    >>> ds = Dataset.from_dict({"x": list(range(10)), "label": [0, 1] * 5})
    >>> noisy = add_label_noise(ds, 0.4, seed=0)
    >>> sum(a != b for a, b in zip(noisy["label"], noisy["clean_label"]))
    4
"""

from __future__ import annotations

from . import images, labels, splits, text
from .checks import DatasetLike  # noqa: F401 - the type of "a Dataset or a DatasetDict", for annotations
from .images import *  # noqa: F403
from .labels import *  # noqa: F403
from .splits import *  # noqa: F403
from .text import *  # noqa: F403

__all__ = [*labels.__all__, *images.__all__, *text.__all__, *splits.__all__]
