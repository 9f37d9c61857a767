"""The one results schema of the package: run records (one per seed) and result records (mean ± std).

The robustness tables and plots (:mod:`hf_monosem.evaluation.reporting`) and the model cards
(:mod:`hf_monosem.hub`) read their numbers through this module. A source of records is a JSON file
(a list, or a dict with the list under ``"results"``), such a list or such a dict; records come in
two shapes:

* a **run record**, what a benchmark writes, one per (scenario, level, method, seed); every numeric
  field other than :data:`RUN_FIELDS` (and the optional ``task``/``dataset``/``split``) is a metric::

    {"method": "nonneg", "scenario": "label_noise", "level": 0.4, "seed": 0,
     "accuracy": 0.81, "class_consistency": 0.9}

* a **result record**, one number with its spread over seeds, one per (dataset, split, scenario,
  level, method, metric); its fields are :data:`RESULT_FIELDS` plus ``split``::

    {"task": "text-classification",  # HF task type; optional, default: the model's pipeline tag
     "dataset": "tweets",            # dataset id or name (required)
     "split": "test",                # optional, default "test"
     "scenario": "label_noise",      # "clean", "label_noise", "gaussian_noise", "uniform_noise",
                                     # "few_shot", "domain_shift", ... (required)
     "level": 0.4,                   # noise rate / scale / shots / target domain; null for clean
     "method": "nonneg",             # the feature layer: "linear" (= poly baseline), "nonneg", "sae", "topk"
     "metric": "accuracy",           # metric type (required)
     "value": 0.812,                 # mean over seeds (required, a number)
     "std": 0.011,                   # std over seeds (optional)
     "seeds": 3}                     # number of seeds, or the list of seeds (optional)

A record holding ``metric`` or ``value`` is a result record, any other a run record.
:func:`summarize_robustness` is the one per-seed summary (run records -> mean, std and count per
scenario, level, method and metric); :func:`load_results` gives validated result records, from
result records or from run records (summarised the same way, per dataset and split).

Example:
    >>> runs = [{"dataset": "tweets", "method": "nonneg", "scenario": "label_noise", "level": 0.4,
    ...          "seed": s, "accuracy": 0.8 + s / 100} for s in range(3)]
    >>> record = load_results(runs)[0]
    >>> record["metric"], round(record["value"], 3), round(record["std"], 3), record["seeds"]
    ('accuracy', 0.81, 0.01, 3)
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

__all__ = [
    "POLY_METHODS",
    "RESULT_FIELDS",
    "RUN_FIELDS",
    "SUMMARY_COLUMNS",
    "load_results",
    "read_records",
    "scenario_label",
    "summarize_robustness",
]

#: the fields of one result record (see the module docstring); ``split`` is accepted too.
RESULT_FIELDS = ("task", "dataset", "scenario", "level", "method", "metric", "value", "std", "seeds")
_REQUIRED_FIELDS = ("dataset", "scenario", "method", "metric", "value")

#: the fields that identify one run record; every other numeric field of the record is a metric.
RUN_FIELDS = ("scenario", "level", "method", "seed")
# optional fields of a run record that name its data (kept apart when summarising for a card)
_DATA_FIELDS = ("task", "dataset", "split")

#: the columns of :func:`summarize_robustness`.
SUMMARY_COLUMNS = ("scenario", "level", "method", "metric", "mean", "std", "n")

#: method names that mean the polysemantic baseline in results tables.
POLY_METHODS = ("linear", "poly", "polysemantic")


# ------------------------------------------------------------------------------------------ reading
def read_records(source: Any) -> list[dict]:
    """The records of ``source``: a JSON file path, a list of dicts or a dict with the list under
    ``"results"``.

    Example:
        >>> read_records({"results": [{"method": "linear", "accuracy": 0.9}]})
        [{'method': 'linear', 'accuracy': 0.9}]
    """
    if isinstance(source, (str, os.PathLike)):
        with open(source, encoding="utf-8") as f:
            source = json.load(f)
    if isinstance(source, Mapping):
        if "results" not in source:
            raise ValueError(
                f"a results dict must hold the records under 'results'; got keys {sorted(source)}"
            )
        source = source["results"]
    if isinstance(source, (str, bytes)) or not isinstance(source, Iterable):
        raise ValueError(f"results must be a list of records, got {type(source).__name__}")
    records = list(source)
    for i, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise ValueError(f"results[{i}] is a {type(record).__name__}, expected a dict")
    return [dict(record) for record in records]


def is_finite_number(value: Any) -> bool:
    """A real, finite number that is not a bool (what a results ``value`` / ``std`` must be)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _plain(value: Any) -> Any:
    """A pandas/numpy scalar as a plain Python value (NaN as None)."""
    value = value.item() if hasattr(value, "item") else value
    return None if _is_missing(value) else value


# ------------------------------------------------------------------------------ run records -> summary
def _run_frame(records: Any) -> pd.DataFrame:
    """Run records as a DataFrame, checked: not empty, ``method``/``scenario`` named on every record."""
    frame = (
        records.reset_index(drop=True)
        if isinstance(records, pd.DataFrame)
        else pd.DataFrame(read_records(records))
    )
    if frame.empty:
        raise ValueError(
            "records is empty; allowed: at least one record with 'method', 'scenario' and a metric"
        )
    missing = [c for c in ("method", "scenario") if c not in frame.columns]
    if missing:
        raise ValueError(
            f"records lack keys {missing}; allowed: records with 'method', 'scenario', 'level', 'seed', "
            f"metrics"
        )
    for key in ("method", "scenario"):
        unnamed = frame.index[frame[key].isna()]
        if len(unnamed):
            raise ValueError(
                f"results[{unnamed[0]}] has {key}=None; allowed: a name such as 'nonneg' / 'clean'"
            )
    if "level" not in frame.columns:
        frame["level"] = None
    return frame


def _summary(frame: pd.DataFrame, by: list[str], sort: bool = True) -> pd.DataFrame:
    """Mean, sample std and count of every metric of ``frame`` per ``by`` (the one per-seed summary)."""
    metrics = [
        c
        for c in frame.columns
        if c not in RUN_FIELDS
        and c not in _DATA_FIELDS
        and pd.api.types.is_numeric_dtype(frame[c])
        and not pd.api.types.is_bool_dtype(frame[c])
    ]
    if not metrics:
        raise ValueError(f"records have no numeric metric; got keys {list(frame.columns)}")
    long = frame.melt(id_vars=by, value_vars=metrics, var_name="metric").dropna(subset=["value"])
    return (
        long.groupby([*by, "metric"], sort=sort, dropna=False)["value"]
        .agg(mean="mean", std="std", n="count")
        .reset_index()
    )


def summarize_robustness(records: Any) -> pd.DataFrame:
    """Mean and standard deviation over seeds per (scenario, level, method, metric).

    ``records`` are run records (a list, a DataFrame, a JSON file or ``{"results": [...]}``). Returns
    a tidy DataFrame with columns ``scenario, level, method, metric, mean, std, n`` (``std`` is the
    sample std, NaN with a single seed; ``n`` counts the non-missing values). ``level`` defaults to 0
    when absent (a clean run) and must otherwise be a number. Rows are sorted by scenario, level,
    method, metric.

    Example:
        >>> df = summarize_robustness([{"method": "linear", "scenario": "clean", "seed": s,
        ...                             "accuracy": 0.9 + s / 100} for s in range(2)])
        >>> round(float(df.loc[0, "mean"]), 3), round(float(df.loc[0, "std"]), 4)
        (0.905, 0.0071)
    """
    frame = _run_frame(records)
    levels = frame["level"].astype(object).where(frame["level"].notna(), 0.0)
    try:
        frame["level"] = pd.to_numeric(levels, errors="raise").astype(float)
    except (ValueError, TypeError):
        for i, level in enumerate(levels):
            try:
                float(level)
            except (ValueError, TypeError):
                raise ValueError(
                    f"results[{i}] has level={level!r}; allowed: a number (noise rate, scale, shots) or None "
                    f"for 0"
                ) from None
        raise
    summary = _summary(frame, ["scenario", "level", "method"])
    return summary[list(SUMMARY_COLUMNS)].reset_index(drop=True)


# ------------------------------------------------------------------------------------ result records
def _n_seeds(seeds: Any, where: str) -> int | None:
    if seeds is None:
        return None
    if isinstance(seeds, numbers.Integral) and not isinstance(seeds, bool):
        return int(seeds)
    if isinstance(seeds, (list, tuple)):
        return len(seeds)
    raise ValueError(f"{where}['seeds']={seeds!r} is not allowed; allowed: a count or a list of seeds")


def _result_record(record: Mapping, where: str) -> dict:
    missing = [k for k in _REQUIRED_FIELDS if record.get(k) is None]
    if missing:
        raise ValueError(f"{where} lacks {missing}; required: {list(_REQUIRED_FIELDS)}")
    if not is_finite_number(record["value"]):
        raise ValueError(f"{where}['value']={record['value']!r} is not a finite number")
    std = record.get("std")
    if std is not None and not is_finite_number(std):
        raise ValueError(f"{where}['std']={std!r} is not a finite number")
    level = record.get("level")
    if isinstance(level, float) and not math.isfinite(level):
        raise ValueError(f"{where}['level']={level!r} is not finite")
    return {
        "task": record.get("task"),
        "dataset": str(record["dataset"]),
        "split": str(record.get("split") or "test"),
        "scenario": str(record["scenario"]),
        "level": level,
        "method": str(record["method"]),
        "metric": str(record["metric"]),
        "value": float(record["value"]),
        "std": None if std is None else float(std),
        "seeds": _n_seeds(record.get("seeds"), where),
    }


def _results_of_runs(records: list[dict]) -> list[dict]:
    """Result records of run records: :func:`summarize_robustness`'s summary, per dataset and split too."""
    frame = _run_frame(records)
    unnamed = [i for i, r in enumerate(records) if _is_missing(r.get("dataset"))]
    if unnamed:
        raise ValueError(f"results[{unnamed[0]}] (a run record) lacks ['dataset']; required to report it")
    by = [c for c in _DATA_FIELDS if c in frame.columns] + ["scenario", "level", "method"]
    summary = _summary(frame.astype({c: object for c in by}), by, sort=False)
    rows = summary.astype(object).to_dict(orient="records")
    return [
        {
            **{key: _plain(row.get(key)) for key in (*_DATA_FIELDS, "scenario", "level", "method", "metric")},
            "value": _plain(row["mean"]),
            "std": _plain(row["std"]),
            "seeds": int(row["n"]),
        }
        for row in rows
    ]


def load_results(results: Any) -> list[dict]:
    """Read and validate results (schema in the module docstring); returns normalised result records.

    ``results`` is a ``results.json`` path, a list of records or ``{"results": [...]}``; run records
    are summarised over seeds first (mean as ``value``, sample std, seed count as ``seeds``). Errors
    name the record and the bad value.

    Example:
        >>> load_results([{"dataset": "tweets", "scenario": "clean", "method": "nonneg",
        ...                "metric": "accuracy", "value": 0.8, "seeds": [0, 1, 2]}])[0]["seeds"]
        3
    """
    records = read_records(results)
    if records and not any("metric" in r or "value" in r for r in records):
        records = _results_of_runs(records)
    checked = [_result_record(record, f"results[{i}]") for i, record in enumerate(records)]
    return _merge_per_seed_results(checked, records)


_RESULT_KEY = ("task", "dataset", "split", "scenario", "level", "method", "metric")


def _merge_per_seed_results(checked: list[dict], raw: list[Mapping]) -> list[dict]:
    """Result records of one (dataset, split, scenario, level, method, metric), one per ``seed``, become one
    record: their mean, sample std and count, as :func:`summarize_robustness` gives for run records (a card
    would otherwise list the same result once per seed, with no mean). Repeats without a ``seed`` each are
    refused: nothing says which of them to report."""
    groups: dict[tuple, list[int]] = {}
    for i, record in enumerate(checked):
        groups.setdefault(tuple(repr(record[k]) for k in _RESULT_KEY), []).append(i)
    merged = []
    for rows in groups.values():
        if len(rows) == 1:
            merged.append(checked[rows[0]])
            continue
        first = checked[rows[0]]
        seeds = [raw[i].get("seed") for i in rows]
        if any(_is_missing(seed) for seed in seeds) or len(set(map(repr, seeds))) != len(seeds):
            raise ValueError(
                f"results{rows} repeat {first['metric']!r} of method {first['method']!r} on "
                f"{first['dataset']!r} ({scenario_label(first['scenario'], first['level'])}) without one "
                f"distinct 'seed' each; "
                "allowed: one record per seed (they are averaged) or one record with 'value', 'std', 'seeds'"
            )
        values = pd.Series([checked[i]["value"] for i in rows], dtype=float)
        merged.append(
            {**first, "value": float(values.mean()), "std": float(values.std()), "seeds": len(rows)}
        )
    return merged


def scenario_label(scenario: str, level: Any) -> str:
    """How a (scenario, level) pair is named in tables and in a card's ``model-index``.

    Example:
        >>> scenario_label("clean", None), scenario_label("label_noise", 0.4)
        ('clean', 'label_noise=0.4')
    """
    return scenario if level is None else f"{scenario}={level}"
