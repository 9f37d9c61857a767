"""Robustness tables and plots: mono-vs-poly Markdown tables, accuracy-vs-level figures.

Every function takes run records (the schema of :mod:`hf_monosem.evaluation.results`: one dict per
seed, e.g. ``{"method": "nonneg", "scenario": "label_noise", "level": 0.4, "seed": 0, "accuracy":
0.81}``) or their summary by :func:`~hf_monosem.evaluation.results.summarize_robustness` (mean ± std
over seeds, also importable from here). :func:`robustness_markdown_table` gives the mono-vs-poly
comparison the paper lacks (with error bars and a significance mark), :func:`plot_robustness`
figures and a JSON of the numbers, :func:`plot_robustness_panel` one overview figure.

Example:
    >>> records = [{"method": m, "scenario": "label_noise", "level": 0.4, "seed": s, "accuracy": a}
    ...            for m, a in [("linear", 0.70), ("nonneg", 0.80)] for s in range(3)]
    >>> summary = summarize_robustness(records)
    >>> [(m, round(v, 3), n) for m, v, n in summary[["method", "mean", "n"]].values.tolist()]
    [('linear', 0.7, 3), ('nonneg', 0.8, 3)]
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .results import SUMMARY_COLUMNS, summarize_robustness

__all__ = [
    "mono_poly_gaps",
    "plot_gap_panel",
    "plot_robustness",
    "plot_robustness_panel",
    "robustness_markdown_table",
]


def _as_summary(df: pd.DataFrame | Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    if isinstance(df, pd.DataFrame) and set(SUMMARY_COLUMNS) <= set(df.columns):
        return df
    return summarize_robustness(df)


def _pooled_std(s1: float, n1: int, s2: float, n2: int) -> float:
    if n1 < 2 or n2 < 2 or math.isnan(s1) or math.isnan(s2):
        return float("nan")
    return math.sqrt(((n1 - 1) * s1**2 + (n2 - 1) * s2**2) / (n1 + n2 - 2))


def mono_poly_gaps(
    df: pd.DataFrame | Iterable[Mapping[str, Any]], poly: str, mono: str, metric: str = "accuracy"
) -> list[dict[str, Any]]:
    """One dict per (scenario, level) both methods have: means, ``gap`` (mono − poly), ``pooled_std``
    and ``verdict`` (``"win"`` / ``"loss"`` where ``|gap| > 2 × pooled std`` over seeds, else ``"tie"``;
    ``"n/a"`` with fewer than 2 seeds).

    Example:
        >>> recs = [{"method": m, "scenario": "label_noise", "level": 0.4, "seed": s,
        ...          "accuracy": a + s / 1000}
        ...         for m, a in [("linear", 0.70), ("nonneg", 0.80)] for s in range(3)]
        >>> [(g["level"], round(g["gap"], 3), g["verdict"]) for g in mono_poly_gaps(recs, "linear", "nonneg")]
        [(0.4, 0.1, 'win')]
    """
    summary = _as_summary(df)
    table = summary[summary["metric"] == metric]
    cells = table.set_index(["scenario", "level", "method"])[["mean", "std", "n"]]
    gaps = []
    for scenario, level in table[["scenario", "level"]].drop_duplicates().itertuples(index=False):
        if (scenario, level, poly) not in cells.index or (scenario, level, mono) not in cells.index:
            continue
        base, other = cells.loc[(scenario, level, poly)], cells.loc[(scenario, level, mono)]
        gap = float(other["mean"] - base["mean"])
        pooled = _pooled_std(base["std"], int(base["n"]), other["std"], int(other["n"]))
        verdict = (
            "n/a"
            if math.isnan(pooled)
            else ("tie" if abs(gap) <= 2 * pooled else ("win" if gap > 0 else "loss"))
        )
        gaps.append(
            {
                "scenario": scenario,
                "level": float(level),
                "poly_mean": float(base["mean"]),
                "mono_mean": float(other["mean"]),
                "gap": gap,
                "pooled_std": pooled,
                "verdict": verdict,
            }
        )
    return gaps


def robustness_markdown_table(
    df: pd.DataFrame | Iterable[Mapping[str, Any]],
    poly: str = "linear",
    mono: str | Sequence[str] = ("nonneg", "sae"),
    metric: str = "accuracy",
    digits: int = 3,
) -> str:
    """Markdown table: one row per (scenario, level), ``mean ± std`` per method, and a ``Δ`` column
    per monosemantic method (mono minus poly), in **bold** where ``|Δ| > 2 × pooled std`` over seeds.

    ``df`` is the output of :func:`summarize_robustness` (or raw records). Cells without data show
    ``—``; with a single seed only the mean is shown and no gap is marked. A caption line follows.

    Example:
        >>> recs = [{"method": m, "scenario": "label_noise", "level": 0.4, "seed": s,
        ...          "accuracy": a + s / 1000}
        ...         for m, a in [("linear", 0.70), ("nonneg", 0.80)] for s in range(3)]
        >>> print(robustness_markdown_table(recs, mono="nonneg").splitlines()[2])
        | label_noise | 0.4 | 0.701 ± 0.001 | 0.801 ± 0.001 | **+0.100** |
    """
    summary = _as_summary(df)
    monos = [mono] if isinstance(mono, str) else list(mono)
    available = sorted(summary["metric"].unique())
    if metric not in available:
        raise ValueError(f"metric={metric!r} not in the records; allowed values: {available}")
    table = summary[summary["metric"] == metric]
    methods = sorted(table["method"].unique())
    unknown = [m for m in [poly, *monos] if m not in methods]
    if unknown:
        raise ValueError(f"methods {unknown} not in the records for {metric!r}; allowed values: {methods}")
    cells = table.set_index(["scenario", "level", "method"])[["mean", "std", "n"]]

    def cell(mean: float, std: float) -> str:
        return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"

    header = ["scenario", "level", poly]
    for m in monos:
        header += [m, f"Δ {m}"]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|",
    ]
    for scenario, level in table[["scenario", "level"]].drop_duplicates().itertuples(index=False):
        row = [str(scenario), f"{level:g}"]
        base = cells.loc[(scenario, level, poly)] if (scenario, level, poly) in cells.index else None
        row.append(cell(base["mean"], base["std"]) if base is not None else "—")
        for m in monos:
            if (scenario, level, m) not in cells.index:
                row += ["—", "—"]
                continue
            other = cells.loc[(scenario, level, m)]
            row.append(cell(other["mean"], other["std"]))
            if base is None:
                row.append("—")
                continue
            gap = other["mean"] - base["mean"]
            pooled = _pooled_std(base["std"], int(base["n"]), other["std"], int(other["n"]))
            text = f"{gap:+.{digits}f}"
            row.append(f"**{text}**" if not math.isnan(pooled) and abs(gap) > 2 * pooled else text)
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", f"{metric}: mean ± std over seeds; Δ = mono − {poly}, bold where |Δ| > 2 × pooled std."]
    return "\n".join(lines)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_") or "scenario"


def _metric_rows(
    df: pd.DataFrame | Iterable[Mapping[str, Any]], metric: str, methods: Sequence[str] | None
) -> tuple[pd.DataFrame, list[str]]:
    """The summary rows of ``metric`` and the methods to draw (all by default), checked by name."""
    summary = _as_summary(df)
    available = sorted(summary["metric"].unique())
    if metric not in available:
        raise ValueError(f"metric={metric!r} not in the records; allowed values: {available}")
    table = summary[summary["metric"] == metric]
    all_methods = sorted(table["method"].unique())
    chosen = list(methods) if methods is not None else all_methods
    unknown = [m for m in chosen if m not in all_methods]
    if unknown:
        raise ValueError(f"methods {unknown} not in the records; allowed values: {all_methods}")
    return table, chosen


def plot_robustness(
    df: pd.DataFrame | Iterable[Mapping[str, Any]],
    out_dir: str | Path,
    metric: str = "accuracy",
    methods: Sequence[str] | None = None,
) -> list[Path]:
    """Plot ``metric`` against noise level per scenario (one PNG each, error bars = std over seeds)
    and write every number of the summary to ``robustness_summary.json``. Returns the written paths.

    Uses matplotlib's object API with the Agg canvas, so it never touches the global backend.

    Example:
        >>> import tempfile
        >>> recs = [{"method": m, "scenario": "gaussian", "level": l, "seed": 0, "accuracy": 0.9 - l}
        ...         for m in ("linear", "nonneg") for l in (0.0, 0.3)]
        >>> [p.name for p in plot_robustness(recs, tempfile.mkdtemp())]
        ['robustness_gaussian_accuracy.png', 'robustness_summary.json']
    """
    from matplotlib.figure import Figure

    table, chosen = _metric_rows(df, metric, methods)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for scenario, part in table.groupby("scenario", sort=True):
        fig = Figure(figsize=(5.0, 3.6), dpi=120)
        ax = fig.add_subplot()
        for method in chosen:
            rows = part[part["method"] == method].sort_values("level")
            if rows.empty:
                continue
            ax.errorbar(
                rows["level"], rows["mean"], yerr=rows["std"].fillna(0.0), marker="o", capsize=3, label=method
            )
        ax.set_title(str(scenario))
        ax.set_xlabel("level")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out / f"robustness_{_slug(scenario)}_{_slug(metric)}.png"
        fig.savefig(path)
        paths.append(path)
    numbers = out / "robustness_summary.json"
    summary = _as_summary(df)
    rows = summary.astype(object).where(summary.notna(), None).to_dict(orient="records")
    numbers.write_text(json.dumps(rows, indent=2, default=float))
    paths.append(numbers)
    return paths


def plot_robustness_panel(
    df: pd.DataFrame | Iterable[Mapping[str, Any]],
    path: str | Path,
    metric: str = "accuracy",
    title: str | None = None,
    methods: Sequence[str] | None = None,
) -> Path:
    """One figure with a panel per scenario: ``metric`` vs level (error bars = std over seeds), or a bar
    per method for scenarios with a single level (e.g. domain shift). Returns the PNG's path.

    Example:
        >>> import tempfile, os
        >>> recs = [{"method": m, "scenario": s, "level": l, "seed": 0, "accuracy": 0.9 - l}
        ...         for m in ("linear", "nonneg")
        ...         for s, l in [("gaussian", 0.0), ("gaussian", 0.3), ("shift", 0)]]
        >>> plot_robustness_panel(recs, os.path.join(tempfile.mkdtemp(), "panel.png")).name
        'panel.png'
    """
    from matplotlib.figure import Figure

    table, chosen = _metric_rows(df, metric, methods)
    scenarios = list(dict.fromkeys(table["scenario"]))
    columns = min(4, len(scenarios))
    rows = math.ceil(len(scenarios) / columns)
    fig = Figure(figsize=(3.6 * columns, 3.0 * rows + (0.4 if title else 0)), dpi=110)
    colours = {m: f"C{i}" for i, m in enumerate(chosen)}
    for i, scenario in enumerate(scenarios):
        ax = fig.add_subplot(rows, columns, i + 1)
        part = table[table["scenario"] == scenario]
        if part["level"].nunique() == 1:
            for j, method in enumerate(chosen):
                cell = part[part["method"] == method]
                if not cell.empty:
                    ax.bar(
                        j,
                        cell["mean"].iloc[0],
                        yerr=float(cell["std"].fillna(0.0).iloc[0]),
                        capsize=3,
                        color=colours[method],
                        label=method,
                    )
            ax.set_xticks(range(len(chosen)), chosen, fontsize=7)
        else:
            for method in chosen:
                line = part[part["method"] == method].sort_values("level")
                if not line.empty:
                    ax.errorbar(
                        line["level"],
                        line["mean"],
                        yerr=line["std"].fillna(0.0),
                        marker="o",
                        markersize=3,
                        capsize=2,
                        color=colours[method],
                        label=method,
                    )
            ax.set_xlabel("level", fontsize=8)
        ax.set_title(str(scenario), fontsize=9)
        ax.set_ylabel(metric, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    handles, labels = fig.axes[0].get_legend_handles_labels() if fig.axes else ([], [])
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def plot_gap_panel(gaps: Iterable[Mapping[str, Any]], path: str | Path, title: str | None = None) -> Path:
    """The mono − poly gap a person reads at a glance: a panel per (protocol, scenario), one line per pair
    (``poly -> mono``) over the levels with its ±2 pooled-std band shaded (a gap outside the band is a win
    or a loss), a zero line. A scenario with one level draws each pair as a point with a ±2 pooled-std bar,
    side by side, named in the legend (no tick labels to overlap). ``gaps`` are
    :func:`mono_poly_gaps` dicts with ``poly``, ``mono`` and optionally ``protocol`` added. Returns the PNG.

    Example:
        >>> import tempfile, os
        >>> gaps = [{"poly": "raw", "mono": "sae", "protocol": "controlled", "scenario": s, "level": l,
        ...          "gap": 0.01 * l, "pooled_std": 0.01}
        ...         for s, l in [("noise", 0.1), ("noise", 0.3), ("shift", 0)]]
        >>> plot_gap_panel(gaps, os.path.join(tempfile.mkdtemp(), "gaps.png")).name
        'gaps.png'
    """
    from matplotlib.figure import Figure

    rows_of = [dict(g) for g in gaps]
    if not rows_of:
        raise ValueError("gaps is empty; allowed: at least one mono_poly_gaps dict")
    protocols = list(dict.fromkeys(g.get("protocol") for g in rows_of))
    scenarios = list(dict.fromkeys(g["scenario"] for g in rows_of))
    pairs = list(dict.fromkeys(f"{g['poly']} -> {g['mono']}" for g in rows_of))
    colours = {pair: f"C{i % 10}" for i, pair in enumerate(pairs)}
    # at least 7.5 inches wide: the legend (one entry per pair, three a row) must fit under one panel too
    width = max(7.5, 3.8 * len(scenarios))
    fig = Figure(figsize=(width, 2.9 * len(protocols) + 0.5 + 0.25 * len(pairs)), dpi=110)
    for r, protocol in enumerate(protocols):
        for c, scenario in enumerate(scenarios):
            ax = fig.add_subplot(len(protocols), len(scenarios), r * len(scenarios) + c + 1)
            cell = [g for g in rows_of if g.get("protocol") == protocol and g["scenario"] == scenario]
            single = len({g["level"] for g in cell}) == 1
            for j, pair in enumerate(pairs):
                line = sorted(
                    (g for g in cell if f"{g['poly']} -> {g['mono']}" == pair), key=lambda g: g["level"]
                )
                if not line:
                    continue
                gap = [g["gap"] for g in line]
                band = [2 * (0.0 if math.isnan(g["pooled_std"]) else g["pooled_std"]) for g in line]
                if single:
                    ax.errorbar([j], gap, yerr=band, fmt="o", capsize=3, color=colours[pair], label=pair)
                else:
                    levels = [g["level"] for g in line]
                    ax.plot(levels, gap, marker="o", markersize=3, color=colours[pair], label=pair)
                    low, high = [a - b for a, b in zip(gap, band)], [a + b for a, b in zip(gap, band)]
                    ax.fill_between(levels, low, high, color=colours[pair], alpha=0.15)
            ax.axhline(0.0, color="black", linewidth=0.8)
            if single:
                ax.set_xticks([])  # the pairs are named in the legend
            else:
                ax.set_xlabel("level", fontsize=8)
            name = str(scenario) if protocol is None else f"{scenario} ({protocol})"
            ax.set_title(name, fontsize=9)
            ax.set_ylabel("mono − poly accuracy", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
    handles, labels = {}, []
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in handles:
                handles[label] = handle
                labels.append(label)
    legend_rows = math.ceil(len(labels) / 3)
    bottom = min(0.4, (0.35 + 0.22 * legend_rows) / fig.get_figheight())
    fig.legend([handles[x] for x in labels], labels, loc="lower center", ncol=min(3, len(labels)), fontsize=8)
    if title:
        fig.suptitle(title + " (band: ±2 pooled std over seeds)", fontsize=10)
    fig.tight_layout(rect=(0, bottom, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
