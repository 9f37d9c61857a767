"""What ``hf-monosem report`` writes, for a person first: ``report.md`` (one verdict line per scenario and
pair under each probe protocol, then the tables), one PNG of mono − poly gaps per scenario family,
``results.json`` (run records in the package's one results schema, under ``"results"``) and the top
examples of a few features of each monosemantic representation.

Example:
    >>> overall([{"verdict": "win"}, {"verdict": "tie"}]), overall([{"verdict": "win"}, {"verdict": "loss"}])
    ('win', 'mixed')
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import torch

from ..evaluation.explain import image_grid_for_feature, text_snippets_for_feature
from ..evaluation.reporting import mono_poly_gaps, plot_gap_panel, robustness_markdown_table
from ..evaluation.results import summarize_robustness
from ..models.configuration import public_name
from ..scenarios.grid import TEST, Timer, Track
from ..scenarios.protocols import ProbeProtocol
from ..training.checkpoints import public_record, write_json
from .arguments import ReportArguments
from .inputs import ReportInputs
from .tracks import TrackFits

__all__ = ["SCENARIO_FAMILIES", "monosemanticity_table", "overall", "verdict_lines", "write_report"]

#: one PNG per family: the scenarios drawn in it
SCENARIO_FAMILIES = {
    "label_noise": ("label_noise",),
    "input_noise": ("typo_noise", "gaussian_noise", "uniform_noise"),
    "few_shot": ("few_shot",),
    "domain_shift": ("domain_shift_in_domain", "domain_shift_shifted"),
}


def overall(cells: Sequence[dict[str, Any]]) -> str:
    """One word for a scenario's cells (its levels): ``win`` / ``loss`` where some cell is one and none is
    the other, ``mixed`` where both occur, ``tie`` otherwise (``n/a`` without a spread)."""
    verdicts = {c["verdict"] for c in cells}
    if verdicts <= {"n/a"}:
        return "n/a"
    if "win" in verdicts and "loss" in verdicts:
        return "mixed"
    return "win" if "win" in verdicts else ("loss" if "loss" in verdicts else "tie")


def verdict_lines(gaps: Sequence[dict[str, Any]], protocols: Sequence[str]) -> list[str]:
    """``report.md``'s verdicts: one line per (scenario, pair), its verdict under each protocol with the
    counts over levels, and whether the protocols agree (if not: the optimisation, not the features).

    Example:
        >>> gaps = [{"scenario": "label_noise", "poly": "raw", "mono": "sae", "protocol": p, "verdict": v}
        ...         for p, v in [("paper_cifar", "win"), ("controlled", "tie")]]
        >>> print(verdict_lines(gaps, ["paper_cifar", "controlled"])[0])  # doctest: +NORMALIZE_WHITESPACE
        - **label_noise**, raw -> sae: paper_cifar **win** (1 win); controlled tie (1 tie) -- differs
        between protocols: the probe's optimisation, not only the features
    """
    lines = []
    keys = list(dict.fromkeys((g["scenario"], g["poly"], g["mono"]) for g in gaps))
    for scenario, poly, mono in keys:
        parts, words = [], []
        for protocol in protocols:
            cells = [
                g
                for g in gaps
                if (g["scenario"], g["poly"], g["mono"], g["protocol"]) == (scenario, poly, mono, protocol)
            ]
            if not cells:
                continue
            word = overall(cells)
            words.append(word)
            counts = {v: sum(c["verdict"] == v for c in cells) for v in ("win", "loss", "tie", "n/a")}
            shown = ", ".join(f"{n} {v}" for v, n in counts.items() if n)
            parts.append(f"{protocol} {'**' + word + '**' if word in ('win', 'loss') else word} ({shown})")
        agree = (
            "the same under every protocol"
            if len(set(words)) == 1
            else "differs between protocols: the probe's optimisation, not only the features"
        )
        lines.append(f"- **{scenario}**, {poly} -> {mono}: {'; '.join(parts)} -- {agree}")
    return lines


def monosemanticity_table(track: Track, fits: TrackFits) -> list[str]:
    """The Markdown lines of a track's monosemanticity table (test rows), one row per representation (the
    report's and the benchmark's): ``fits`` (from :func:`~hf_monosem.report.tracks.build_track`) holds the
    measures, ``track`` the representations' widths."""
    width = {name: next(iter(f.values())).shape[1] for name, f in track.features.items()}
    lines = [
        "| representation | L0 (active of width) | zero fraction | class consistency | dead fraction |",
        "|---|---|---|---|---|",
    ]
    for name, m in fits.monosemanticity.items():
        lines.append(
            f"| {name} | {m['l0']:.1f} of {width[name]} | {m['zero_fraction']:.3f} | "
            f"{m['class_consistency']:.3f} | {m['dead_fraction']:.3f} |"
        )
    return lines


def _explain(
    args: ReportArguments, inputs: ReportInputs, track: Track, rows: dict[str, Any]
) -> tuple[dict[str, list[dict]], list[str]]:
    """The top examples of the ``--explain_features`` most active features of each mono representation."""
    if not args.explain_features:
        return {}, []
    monos = list(dict.fromkeys(mono for _, mono in track.pairs))
    names = inputs.label_feature.names
    test_labels = track.labels[TEST].tolist()
    explained: dict[str, list[dict]] = {}
    about = "The test rows that activate each feature most (of the features most active on average)."
    lines = ["## What a few features respond to", "", about]
    for rep in monos:
        x = track.features[rep][TEST]
        picked = torch.argsort(x.mean(0), descending=True)[: args.explain_features].tolist()
        explained[rep] = []
        lines += ["", f"### {rep}", ""]
        for index in picked:
            if inputs.modality == "text":
                texts = inputs.splits[TEST][inputs.column][:]
                top = text_snippets_for_feature(x, texts, index, k=3, max_chars=120)
                for t in top:
                    t["label"] = names[test_labels[t["index"]]]
                explained[rep].append({"feature": index, "examples": top})
                lines.append(
                    f"- feature {index}: " + " | ".join(f"{t['snippet']!r} ({t['label']})" for t in top)
                )
            else:
                path = os.path.join(args.output_dir, "explain", f"{rep}_feature{index}.png")
                image_grid_for_feature(
                    x, rows[TEST], index, k=8, path=path, labels=[names[i] for i in test_labels]
                )
                relative = os.path.relpath(path, args.output_dir)
                explained[rep].append({"feature": index, "grid": relative})
                lines.append(f"- feature {index}: ![{rep} feature {index}]({relative})")
    return explained, lines


def write_report(
    args: ReportArguments,
    inputs: ReportInputs,
    track: Track,
    fits: TrackFits,
    records: list[dict],
    selection: dict[str, dict[str, Any]],
    protocols: Sequence[ProbeProtocol],
    timer: Timer,
    estimate: dict[str, float],
    rows: dict[str, Any],
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Write ``report.md``, ``results.json``, the gap PNGs and the feature examples; return the results.

    ``fits`` is what :func:`~hf_monosem.report.tracks.build_track` measured beside ``track``; ``records``
    are every protocol's probe records and ``selection[protocol]`` its
    :attr:`~hf_monosem.scenarios.grid.ProbeResults.selection`."""
    dataset, model = public_name(args.dataset_name), public_name(args.model_name_or_path)
    records = [{"dataset": dataset, **r} for r in records]  # the schema's data field
    names = [p.name for p in protocols]
    summaries, gaps, tables = {}, [], []
    for protocol in names:
        part = [r for r in records if r["protocol"] == protocol]
        summary = summarize_robustness(part)
        summaries[protocol] = summary.to_dict(orient="records")
        tables += [f"### Probe protocol: {protocol}", ""]
        for poly in dict.fromkeys(p for p, _ in track.pairs):
            monos = [m for p, m in track.pairs if p == poly]
            tables += [robustness_markdown_table(summary, poly=poly, mono=monos), ""]
        gaps += [
            {"protocol": protocol, "poly": poly, "mono": mono, **g}
            for poly, mono in track.pairs
            for g in mono_poly_gaps(summary, poly, mono)
        ]
    plots = []
    for family, scenarios in SCENARIO_FAMILIES.items():
        part = [g for g in gaps if g["scenario"] in scenarios]
        if part:
            path = plot_gap_panel(part, os.path.join(args.output_dir, f"gaps_{family}.png"), title=family)
            plots.append(path.name)
    explained, explain_lines = _explain(args, inputs, track, rows)
    lines = [
        f"# hf-monosem report: {model} on {dataset}",
        "",
        "Do monosemantic features buy robustness on this model and data, and is it the features or the "
        "optimisation? Each verdict compares a monosemantic representation with its polysemantic source "
        "(poly -> mono) on linear probes: a **win** or **loss** where the accuracy gap exceeds 2 pooled "
        "std over seeds, a tie otherwise; a verdict that changes between the authors' probe (paper_*) and "
        "the controlled one is the optimisation's, not the features'.",
        "",
        *[f"- {d}" for d in inputs.decisions],
        f"- {inputs.label_feature.num_classes} classes, {len(track.labels['train'])} training rows, "
        f"{len(track.labels[TEST])} test rows, {args.seeds} seeds; label-noise rates {inputs.rates}",
        "",
        "## Verdicts",
        "",
        *verdict_lines(gaps, names),
        "",
        "## Gap plots",
        "",
        *[f"![{p}]({p})" for p in plots],
        "",
        "## Monosemanticity (test rows)",
        "",
        *monosemanticity_table(track, fits),
        "",
        "## Accuracy tables",
        "",
        *tables,
        *explain_lines,
        "",
        f"Wall time per stage (s): {timer.times}; estimated beforehand: {round(estimate['total'])} s.",
        "",
    ]
    with open(os.path.join(args.output_dir, "report.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    arguments = {k: public_name(v) for k, v in asdict(args).items() if k != "token"}  # no secret, no path
    payload = {
        "model": model,
        "dataset": dataset,
        "modality": inputs.modality,
        "decisions": inputs.decisions,
        "arguments": arguments,
        "label_names": list(inputs.label_feature.names),
        "pairs": track.pairs,
        "monosemanticity": fits.monosemanticity,
        "representation_fits": fits.fit_reports,
        "probe_protocols": {p.name: p.to_dict() for p in protocols},
        "probe_selection": selection,
        "estimate_s": estimate,
        "timings_s": timer.times,
        "results": records,
        "summary": summaries,
        "gaps": gaps,
        "verdicts": verdict_lines(gaps, names),
        "plots": plots,
        "explain": explained,
    }
    payload = public_record(payload, args.output_dir)
    write_json(os.path.join(args.output_dir, "results.json"), payload)
    say(f"[hf-monosem report] wrote report.md, results.json and {len(plots)} plots")
    for line in payload["verdicts"]:
        say(line)
    return payload
