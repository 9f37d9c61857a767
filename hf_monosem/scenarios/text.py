"""Text noise: word deletion, word substitution and character typos, on whole Arrow columns."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, Value

from .checks import (
    STRING_DTYPES,
    DatasetLike,
    apply_to_splits,
    check_choice,
    check_column,
    check_fraction,
    check_seed,
    column_array,
    exact_count,
    replace_column,
)

__all__ = ["TEXT_NOISE_KINDS", "add_text_noise"]

TEXT_NOISE_KINDS = ("delete", "substitute", "typo")

_TYPO_ALPHABET = np.array(list("abcdefghijklmnopqrstuvwxyz"))


def _typos(words: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random character edit per word (swap, delete, insert or substitute), vectorised."""
    from numpy.dtypes import StringDType

    s = np.asarray(words, dtype=StringDType())
    length = np.strings.str_len(s)
    op = rng.integers(0, 4, size=s.size)
    op = np.where((op < 2) & (length < 2), 3, op)  # swap/delete need 2 chars; else substitute
    pos = np.floor(rng.random(s.size) * np.where(op == 0, length - 1, np.maximum(length, 1))).astype(np.int64)
    choice = rng.integers(0, _TYPO_ALPHABET.size, size=s.size)
    here = np.strings.slice(s, pos, pos + 1)
    # swapping two equal letters ("ll") would be no typo: substitute the first one instead
    op = np.where((op == 0) & (here == np.strings.slice(s, pos + 1, pos + 2)), 3, op)
    # a substitution by the same letter would be no typo: take the next letter instead
    same = (op == 3) & (np.strings.lower(here) == _TYPO_ALPHABET[choice].astype(StringDType()))
    letter = _TYPO_ALPHABET[np.where(same, (choice + 1) % _TYPO_ALPHABET.size, choice)].astype(StringDType())
    pre = np.strings.slice(s, 0, pos)
    rest = np.strings.slice(s, pos + 1, length)
    swapped = pre + np.strings.slice(s, pos + 1, pos + 2) + here + np.strings.slice(s, pos + 2, length)
    deleted = pre + rest
    inserted = pre + letter + np.strings.slice(s, pos, length)
    substituted = pre + letter + rest
    return np.select([op == 0, op == 1, op == 2], [swapped, deleted, inserted], substituted)


def add_text_noise(
    dataset: DatasetLike,
    kind: str = "delete",
    rate: float = 0.1,
    seed: int = 0,
    text_column: str = "text",
    *,
    splits: str | Sequence[str] | None = None,
) -> DatasetLike:
    """Word deletion, word substitution or character typos on a fraction ``rate`` of all words.

    Words are whitespace-separated; exactly ``round(rate * total_words)`` words of the column are
    picked by a seeded permutation. ``"delete"`` drops them (a text never loses its last word, so the
    realised rate can be slightly lower); ``"substitute"`` replaces each by a different word drawn
    uniformly from the column's own vocabulary; ``"typo"`` makes one character edit per picked word
    (swap, delete, insert or substitute a letter). Texts that were changed are re-joined with single
    spaces; untouched texts are kept byte for byte. Computed with Arrow / numpy string kernels over
    the whole column. For a DatasetDict every split is noised unless ``splits`` says otherwise.

    Example:
        >>> from datasets import Dataset
        >>> ds = Dataset.from_dict({"text": ["the cat sat on the mat", "a dog"]})
        >>> add_text_noise(ds, "delete", 0.0)["text"][:] == ds["text"][:]
        True
    """
    check_choice("kind", kind, TEXT_NOISE_KINDS)
    rate = check_fraction("rate", rate)
    seed = check_seed(seed)

    def validate(ds: Dataset) -> None:
        check_column(ds, text_column, "text")
        feature = ds.features[text_column]
        if not (isinstance(feature, Value) and feature.dtype in STRING_DTYPES):
            raise ValueError(f"text column {text_column!r} has feature {feature}; allowed: a string column")

    def work(ds: Dataset, _: Any) -> Dataset:
        texts = column_array(ds, text_column)
        n = len(texts)
        lists = pc.utf8_split_whitespace(texts.fill_null(""))
        words = lists.flatten()
        parents = pc.list_parent_indices(lists).to_numpy()
        nonempty = pc.greater(pc.utf8_length(words), 0).to_numpy(zero_copy_only=False)
        words = words.filter(pa.array(nonempty))
        parents = parents[nonempty]
        lengths = np.bincount(parents, minlength=n)
        total = len(words)
        rng = np.random.default_rng(seed)
        chosen = rng.permutation(total)[: exact_count(rate, total)]
        if kind == "delete":
            keep = np.ones(total, dtype=bool)
            keep[chosen] = False
            # texts that would lose every word keep one of them, picked at random
            emptied = np.flatnonzero((np.bincount(parents[keep], minlength=n) == 0) & (lengths > 0))
            starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if n else np.zeros(0, dtype=np.int64)
            keep[starts[emptied] + np.floor(rng.random(emptied.size) * lengths[emptied]).astype(np.int64)] = (
                True
            )
            new_words = words.filter(pa.array(keep))
            parents_out = parents[keep]
        elif kind == "substitute":
            encoded = pc.dictionary_encode(words)
            vocab = encoded.dictionary
            ids = encoded.indices.to_numpy().astype(np.int64)
            if len(vocab) > 1:  # a shift in [1, V) modulo V never gives back the same word
                ids[chosen] = (ids[chosen] + rng.integers(1, len(vocab), size=chosen.size)) % len(vocab)
            new_words = vocab.take(pa.array(ids))
            parents_out = parents
        else:
            replaced = words.to_numpy(zero_copy_only=False).astype(object)
            replaced[chosen] = _typos(replaced[chosen], rng).astype(object)
            new_words = pa.array(replaced, type=pa.string())
            parents_out = parents
        new_lengths = np.bincount(parents_out, minlength=n)
        offsets = pa.array(np.concatenate([[0], np.cumsum(new_lengths)]).astype(np.int64))
        joined = pc.binary_join(pa.LargeListArray.from_arrays(offsets, new_words), " ")
        changed = pa.array(np.bincount(parents[chosen], minlength=n) > 0)
        result = pc.if_else(changed, joined.cast(texts.type), texts)
        return replace_column(ds, text_column, result, ds.features[text_column])

    return apply_to_splits(dataset, splits, None, validate, work)
