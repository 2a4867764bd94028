"""`ubmd status` output: one line per finished iteration, phases only for the one in progress."""

from __future__ import annotations

from ubmd.campaign.status import render_status


def _status(n_done: int) -> dict:
    done = {"train": "1/1 members", "calibrate": "done", "explore": "2/2 explorers",
            "select": "done", "labels": "8 result files", "report": "done"}  # fmt: skip
    running = {**done, "explore": "1/2 explorers", "select": "-", "labels": "0 result files",
               "report": "-"}  # fmt: skip
    report = {"test": {"force_rmse_eV_A": 0.2, "energy_rmse_eV_atom": 0.01},
              "ramachandran_coverage": 0.5}  # fmt: skip
    iterations = [{"iteration": 0, "phases": {"initial labels": "16 result files"}, "report": {}}]
    iterations += [{"iteration": i, "phases": done, "report": report} for i in range(1, n_done + 1)]
    iterations.append({"iteration": n_done + 1, "phases": running, "report": {}})
    return {"name": "c", "directory": "/x", "iterations": iterations, "final": None,
            "labels_by_status": {"ok": 16}, "ok_labels_by_iteration": {0: 16}}  # fmt: skip


def test_finished_iterations_take_one_line_in_80_columns(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "80")
    render_status(_status(10))
    lines = capsys.readouterr().out.splitlines()
    rows = [line for line in lines if line.startswith("│")]
    assert len(rows) == 12  # iteration 0, ten finished, one running: no wrapped lines
    assert all(len(line) <= 80 for line in lines)
    assert "explore 1/2" in rows[-1]
    assert sum("done" in r for r in rows) == 11


def test_the_newest_explorers_say_where_their_time_went(tmp_path, monkeypatch, capsys):
    import json

    from ubmd.campaign.layout import CampaignLayout
    from ubmd.campaign.status import _explorers

    layout = CampaignLayout(tmp_path)
    config = {"exploration": {"explorers": 3}}
    assert _explorers(layout, config) is None  # no iteration yet
    for it, rate in ((1, 1000.0), (2, 3000.0)):
        for e in range(2 if it == 2 else 3):  # iteration 2: one explorer still running
            path = layout.explorer_stats(it, e)
            path.parent.mkdir(parents=True, exist_ok=True)
            stats = {"warmup_s": 2.0 + e, "steady_atom_steps_per_s": rate + 1000 * e,
                     "stop_reasons": {"uncertainty": 3, "n_steps": e}}  # fmt: skip
            path.write_text(json.dumps(stats))
    newest = _explorers(layout, config)
    assert newest["iteration"] == 2 and len(newest["stats"]) == 2
    monkeypatch.setenv("COLUMNS", "200")
    render_status({**_status(2), "explorers": newest})
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("explorers"))
    assert line == (
        "explorers (iteration 2): 2/3 done; start-up 2.5 s; 3,500 atom-steps/s each; "
        "stops n_steps 1, uncertainty 6"
    )
