"""examples/paper_toy.py: bad arguments are refused before any work, naming the value and what is allowed;
the --quick run writes the page, its JSON and the three plots (slow)."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="module")
def paper_toy():
    sys.path.insert(0, str(EXAMPLES))
    try:
        yield importlib.import_module("paper_toy")
    finally:
        sys.path.remove(str(EXAMPLES))


@pytest.mark.parametrize(
    "argv,named,allowed",
    [
        (["--seeds", "0,x"], "0,x", "integers"),
        (["--seeds", "3"], "'3'", "at least 2 distinct"),
        (["--seeds", "1,1"], "'1,1'", "at least 2 distinct"),
        (["--seeds=-1,2"], "'-1,2'", ">= 0"),
        (["--probe_protocols", "paper_cifar,lbfgs"], "lbfgs", "paper_cifar, paper_in100, controlled"),
        (["--probe_protocols", ""], "--probe_protocols ''", "one or more of"),
        (["--output_dir", " "], "--output_dir", "a folder path"),
    ],
)
def test_bad_arguments_are_refused_naming_the_value(paper_toy, capsys, monkeypatch, argv, named, allowed):
    def no_work(*args, **kwargs):  # the checks must come before any work
        raise AssertionError("work started before the arguments were checked")

    monkeypatch.setattr(paper_toy, "section_43", no_work)
    with pytest.raises(SystemExit) as info:
        paper_toy.main(argv)
    assert info.value.code != 0
    message = capsys.readouterr().err
    assert named in message and allowed in message, message


def test_good_arguments_parse(paper_toy):
    args, seeds, protocols = paper_toy.parse_args(["--seeds", "2,0", "--probe_protocols", "controlled"])
    assert seeds == [2, 0] and [p.name for p in protocols] == ["controlled"]


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_quick_run_writes_the_page_json_and_plots(paper_toy, tmp_path):
    results = paper_toy.main(["--quick", "--seeds", "0,1", "--output_dir", str(tmp_path)])
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["paper_toy.json", "paper_toy.md", "paper_toy_42.png", "paper_toy_43_gaussian.png",
                     "paper_toy_43_label.png"]  # fmt: skip
    page = (tmp_path / "paper_toy.md").read_text()
    assert "not a result" in page and "separability measure was not found" in page
    assert json.loads((tmp_path / "paper_toy.json").read_text())["seeds"] == results["seeds"] == [0, 1]
    for name in ("paper_toy.md", "paper_toy.json"):  # the output folder, a machine path, is never written
        assert str(tmp_path) not in (tmp_path / name).read_text(), name
