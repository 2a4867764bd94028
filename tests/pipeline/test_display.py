"""The log line a campaign prints per phase change says what the store holds, also on resume."""

from __future__ import annotations

from ubmd.pipeline.apps import TaskTracker
from ubmd.pipeline.display import Display


def _line(capsys, **state) -> str:
    display = Display(TaskTracker(), enabled=False)
    display.update(**state)
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_fresh_run_counts_what_it_stored(capsys):
    line = _line(capsys, iteration=2, phase="label", labels_stored=16, labels_failed=1)
    assert "iteration 2 label: labels stored 16, failed 1" in line


def test_resumed_run_shows_the_store_total_and_this_run(capsys):
    # a resume of a campaign that had 285 labels: "8" alone would read as a lost store
    line = _line(capsys, iteration=35, phase="train", labels_before=285, labels_stored=8)
    assert "labels stored 293 (8 this run), failed 0" in line
