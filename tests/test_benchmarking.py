"""Benchmark records: one shape for every script, and the appendix page generated from them."""

import json

import pytest

from analysis_lib.benchmarking import Measure, load, record
from analysis_lib.runner import benchmarks_markdown


def test_a_measure_has_a_goal_and_a_verdict_or_neither():
    assert Measure("speed", 2.0, "x", ">= 1.5", True).verdict == "PASS"
    assert Measure("speed", 1.0, "x", ">= 1.5", False).verdict == "FAIL"
    assert Measure("saved", 0.9).verdict == "reported"
    with pytest.raises(ValueError, match="goal, passed: give both or neither"):
        Measure("speed", 2.0, "x", ">= 1.5")


def test_records_are_written_with_the_machine_and_read_back(tmp_path, capsys):
    path = record("demo", "A demo", [Measure("wall", 12.5, "s", "<= 60 s", True, "plain loop: 900 s")],
                  details={"n": 3}, out=tmp_path)
    assert "wall" in capsys.readouterr().out
    data = json.loads(path.read_text())
    assert data["benchmark"] == "demo" and data["details"] == {"n": 3}
    assert {"cpu", "logical cpus", "cpu capability", "native bf16", "commit"} <= set(data["machine"])
    (tmp_path / "other.json").write_text('{"some": "older shape"}')
    (tmp_path / "broken.json").write_text("{")
    assert [r["benchmark"] for r in load(tmp_path)] == ["demo"]
    with pytest.raises(ValueError, match="measures"):
        record("empty", "nothing", [], out=tmp_path)


def test_the_appendix_shows_every_figure_next_to_its_goal_and_anchor(tmp_path):
    record("demo", "A demo", [Measure("wall", 12.5, "s", "<= 60 s", True, "plain loop: 900 s"),
                              Measure("memory", 5.0, "GiB", "<= 4", False, "TRL: 6.7 GiB"),
                              Measure("saved", 0.9, "of all")], out=tmp_path)
    md = benchmarks_markdown(load(tmp_path))
    assert "**1 of 2 goals met** over 1 benchmark(s)." in md and "## A demo" in md
    assert "| wall | 12.5 s | &lt;= 60 s | <span class=\"verdict v-reproduced\">PASS</span> | plain loop: 900 s |" in md
    assert "| memory | 5 GiB | &lt;= 4 | <span class=\"verdict v-failed\">FAIL</span> | TRL: 6.7 GiB |" in md
    assert "`benchmarks/bench_demo.py`" in md
    assert "No benchmark has been recorded" in benchmarks_markdown([])
