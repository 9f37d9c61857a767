"""The fine-tune grid's resume state cannot go stale or be trusted blindly.

Before: the cell key left out the input-noise cells (an added noise cell got no records), an edited or
emptied state line was trusted, and one garbled line stopped the run with a raw ``JSONDecodeError``.
"""

from __future__ import annotations

import json

import pytest
from test_scenario_grid import _image_track

from hf_monosem.scenarios import finetune

BUDGET = finetune.FinetuneBudget(epochs=1, few_shot_steps=2, batch_size=8, train_size=12)


def _run(track, tmp_path):
    kwargs = dict(state_file=str(tmp_path / "cells.jsonl"), work_dir=str(tmp_path / "work"), progress=False)
    return finetune.finetune_records(track, [0.0], [], [0], BUDGET, **kwargs)


def test_an_added_noise_cell_reruns_the_clean_label_cells_and_gets_its_records(tmp_path):
    calls: list[str] = []
    track = _image_track(calls)
    _run(track, tmp_path)
    track.noise_cells = [*track.noise_cells, ("uniform_noise", 0.5, "gaussian0.5")]
    calls.clear()
    records = _run(track, tmp_path)
    assert sorted(calls) == ["linear", "nonneg"]  # the clean-label cells; domain shift reused
    assert len([r for r in records if r["scenario"] == "uniform_noise"]) == 2


@pytest.mark.parametrize(
    "damage, why",
    [
        (
            lambda entry: {**entry, "records": [{**entry["records"][0], "accuracy": 1.0}]},
            "does not match its hash",
        ),
        (lambda entry: {**entry, "records": []}, "holds no records"),
        (lambda entry: {k: v for k, v in entry.items() if k != "sha256"}, "lacks the fields"),
        (None, "not JSON"),
    ],
    ids=["edited", "emptied", "no-hash", "garbled"],
)
def test_a_damaged_state_line_is_named_and_its_cell_runs_again(tmp_path, damage, why):
    calls: list[str] = []
    track = _image_track(calls)
    records = _run(track, tmp_path)
    state = tmp_path / "cells.jsonl"
    lines = state.read_text().splitlines()
    entry = json.loads(lines[0])
    lines[0] = "{garbled" if damage is None else json.dumps(damage(entry))
    state.write_text("\n".join(lines) + "\n")
    calls.clear()
    with pytest.warns(UserWarning, match=f"cells.jsonl line 1 is not used: .*{why}"):
        again = _run(track, tmp_path)
    assert calls == ["linear"] and sorted(map(json.dumps, again)) == sorted(map(json.dumps, records))
