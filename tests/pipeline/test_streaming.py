"""Streaming campaigns (``mode: streaming``): the config section, selection never repeating a
labelled or in-flight structure, atomic model publication, the stopping rules and staleness
(unit level, no parsl), and a shrunk campaign end to end on parsl (HighThroughputExecutor +
LocalProvider)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml

from ubmd import keys
from ubmd.store import StructureStore

pytestmark = pytest.mark.timeout(900)


# ---------------------------------------------------------------------- config
ROOT = Path(__file__).resolve().parents[2]


def _campaign_data(tmp_path: Path, **extra) -> dict:
    return {
        "name": "c",
        "directory": str(tmp_path / "c"),
        "systems": [
            {"name": "ala2", "structure": str(ROOT / "data/ala2/alanine-dipeptide.extxyz")}
        ],
        **extra,
    }


def test_mode_defaults_to_iterations_and_leaves_campaign_yaml_unchanged(tmp_path):
    from ubmd.campaign.config import parse_campaign

    config = parse_campaign(_campaign_data(tmp_path))
    assert config.mode == "iterations"
    dumped = config.to_yaml_dict()
    # directories made before `mode` existed resume: their campaign.yaml has neither key
    assert "mode" not in dumped and "streaming" not in dumped
    streaming = parse_campaign(
        _campaign_data(tmp_path, mode="streaming", streaming={"segment_steps": 50})
    )
    assert streaming.streaming.segment_steps == 50
    assert streaming.to_yaml_dict()["mode"] == "streaming"


@pytest.mark.parametrize(
    ("streaming", "message"),
    [
        ({"segment_step": 10}, "did you mean 'segment_steps'"),
        ({"max_labels_in_flight": 0}, "max_labels_in_flight"),
        ({"select_pool_factor": 0.5}, "select_pool_factor"),
        ({"max_staleness": -1}, "max_staleness"),
    ],
)
def test_streaming_section_is_strict(tmp_path, streaming, message):
    from ubmd.campaign.config import parse_campaign
    from ubmd.strict import ConfigError

    with pytest.raises(ConfigError, match=message):
        parse_campaign(_campaign_data(tmp_path, mode="streaming", streaming=streaming))
    with pytest.raises(ConfigError, match="mode"):
        parse_campaign(_campaign_data(tmp_path, mode="stream"))


# ---------------------------------------------------------------------- selection
@pytest.mark.parametrize("method", ["max_det", "max_unc", "max_dist", "random"])
def test_selection_never_picks_a_labelled_or_in_flight_structure(method):
    from ubmd.campaign.streaming import pick_batch

    rng = np.random.default_rng(0)
    n_pool, k = 40, 6
    pool = rng.normal(size=(n_pool, k))
    pool_keys = [f"s{i}".encode() for i in range(n_pool)]
    labelled, in_flight = [0, 5, 9, 17], [3, 22, 30]
    # the most uncertain, most distant candidates are exactly the taken ones: a selection that
    # ignored what is labelled or being labelled would pick them first
    pool[labelled + in_flight] *= 50.0
    u = np.ones(n_pool)
    u[labelled + in_flight] = 1e3
    pool_keys[39] = pool_keys[3]  # the pool repeats an in-flight structure, too
    taken = {pool_keys[i] for i in labelled + in_flight}
    cond = pool[labelled + in_flight]
    for seed in range(5):
        picked = pick_batch(
            pool,
            pool_keys,
            condition_features=cond,
            taken=taken,
            batch_size=8,
            method=method,
            uncertainties=u,
            seed=seed,
        )
        assert len(picked) == 8
        assert not {pool_keys[i] for i in picked} & taken
        assert len({pool_keys[i] for i in picked}) == 8
    # all taken: nothing to pick
    assert len(pick_batch(pool[:1], pool_keys[:1], condition_features=cond, taken=taken,
                          batch_size=3, method=method)) == 0  # fmt: skip


# ---------------------------------------------------------------------- atomic publication
def test_a_model_version_is_never_read_before_it_is_complete(tmp_path, monkeypatch):
    from ubmd.campaign import stream_layout
    from ubmd.campaign.stream_layout import (
        StreamLayout,
        latest_version,
        publish_model,
        published_versions,
    )

    layout = StreamLayout(tmp_path)
    size = 1 << 20

    def content(v: int) -> bytes:
        return bytes([v % 256]) * size

    def slow_copy(src, dst):  # a writer that takes its time, so readers poll mid-write
        data = Path(src).read_bytes()
        with open(dst, "wb") as fh:
            for start in range(0, len(data), size // 8):
                fh.write(data[start : start + size // 8])
                fh.flush()
                threading.Event().wait(0.002)

    monkeypatch.setattr(stream_layout.shutil, "copyfile", slow_copy)
    # a writer killed mid-copy leaves its temporary file: it is never a version
    (layout.base / "models").mkdir(parents=True)
    (layout.base / "models" / ".v0001.pt.abc123.pt").write_bytes(content(1)[: size // 3])
    assert published_versions(layout) == [] and latest_version(layout) == 0

    n_versions, seen, errors = 12, [], []
    done = threading.Event()

    def reader():
        while not done.is_set():
            v = latest_version(layout)
            if v:
                data = layout.model(v).read_bytes()
                if data != content(v):
                    errors.append((v, len(data)))
                seen.append(v)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for v in range(1, n_versions + 1):
            src = tmp_path / f"bundle_{v}.pt"
            src.write_bytes(content(v))
            publish_model(layout, v, src)
    finally:
        done.set()
        thread.join()
    assert not errors, f"read a version before it was complete: {errors[:3]}"
    assert seen and seen == sorted(seen), "versions go forward only"
    assert published_versions(layout) == list(range(1, n_versions + 1))
    # publishing again never rewrites a published version
    publish_model(layout, 3, tmp_path / "bundle_5.pt")
    assert layout.model(3).read_bytes() == content(3)


def test_role_clock_busy_idle(tmp_path):
    from ubmd.campaign.roles import RoleClock, format_roles, plot_timeline

    clock = RoleClock(runs=[[0.0, 10.0]])
    clock.add("explore", "segment", (0.0, 4.0))
    clock.add("explore", "segment", (2.0, 6.0))  # overlapping: busy 6 s, 8 worker-seconds
    clock.add("label", "label", (7.0, 8.0))
    s = clock.summary()
    assert s["explore"] == {"busy_s": 6.0, "idle_s": 4.0, "worker_s": 8.0, "tasks": 2}
    assert s["label"]["busy_s"] == 1.0 and s["train"]["busy_s"] == 0.0
    assert "explore busy 60%" in format_roles(s)
    plot_timeline(clock, tmp_path / "timeline.png")
    assert (tmp_path / "timeline.png").stat().st_size > 0


# ---------------------------------------------------------------------- stopping rules
def _driver(tmp_path: Path, *, stopping: dict | None = None, streaming: dict | None = None):
    """A streaming driver over a fresh (empty) state: no parsl, no store, no task."""
    from types import SimpleNamespace

    from ubmd.campaign.config import parse_campaign
    from ubmd.campaign.stream_state import StreamState
    from ubmd.pipeline.streaming import StreamingDriver

    # no minimum exploration unless a test asks for one: the pools below count candidates
    streaming = {"explore_steps_per_label": 0, **(streaming or {})}
    data = _campaign_data(tmp_path, mode="streaming", streaming=streaming)
    data["stopping"] = {"label_budget": 20, "max_iterations": 8, **(stopping or {})}
    data["selection"] = {"batch_size": 4}
    config = parse_campaign(data)
    driver = StreamingDriver(config, None, None, SimpleNamespace(tracker=None))
    driver.state = StreamState(version=2, ok_in_snapshot=30, n_ok=30)
    return driver


def _write_report(driver, version: int, rmse: float) -> None:
    from ubmd.campaign.layout import write_json_atomic

    write_json_atomic(driver.layout.report(version), {"test": {"force_rmse_eV_A": rmse}})


def test_stop_on_the_label_budget_of_active_learning_labels(tmp_path):
    import time

    driver = _driver(tmp_path)
    now = time.monotonic()
    driver.state.n_ok, driver.state.n_ok_al = 200, 19  # the initial labels do not count
    assert driver._stop_reason(now) == ""
    driver.state.n_ok_al = 20
    assert driver._stop_reason(now) == "label budget reached (20 >= 20)"


def test_stop_on_max_iterations_model_versions(tmp_path):
    import time

    driver = _driver(tmp_path, stopping={"max_iterations": 3})
    driver.state.version = 2
    assert driver._stop_reason(time.monotonic()) == ""
    driver.state.version = 3
    assert driver._stop_reason(time.monotonic()) == "reached max_iterations = 3 model versions"
    # and no version beyond the cap is trained (it would take a snapshot of the store: None)
    driver.state.n_ok = 100
    driver._schedule_training()
    assert driver.state.training is None and not driver.running


def test_stop_on_the_target_force_rmse_of_the_newest_version(tmp_path):
    import time

    driver = _driver(tmp_path, stopping={"target_force_rmse_eV_A": 0.05})
    now = time.monotonic()
    assert driver._stop_reason(now) == ""  # no report of v2 yet
    _write_report(driver, 1, 0.01)  # an older version's report does not count
    assert driver._stop_reason(now) == ""
    _write_report(driver, 2, 0.051)
    assert driver._stop_reason(now) == ""
    _write_report(driver, 2, 0.05)
    assert driver._stop_reason(now) == "held-out force RMSE 0.0500 <= target 0.05 (v2)"
    # without a target, reports never stop the campaign
    plain = _driver(tmp_path)
    assert plain.layout.report(2).exists() and plain._stop_reason(now) == ""


def test_stop_on_the_wall_time_limit(tmp_path):
    import time

    driver = _driver(tmp_path, streaming={"wall_time_limit_s": 100})
    assert driver._stop_reason(time.monotonic() - 99.0) == ""
    assert driver._stop_reason(time.monotonic() - 100.0) == "wall-time limit of 100 s reached"
    assert _driver(tmp_path)._stop_reason(time.monotonic() - 1e6) == ""  # no limit: none


def test_stop_when_starved_only_with_nothing_new_to_train_on(tmp_path):
    import time

    driver = _driver(tmp_path)
    now = time.monotonic()
    driver.starved = "selection 3: no new candidates"
    assert driver._stop_reason(now) == driver.starved
    driver.state.n_ok += 1  # a new label: a new model first (new candidates)
    assert driver._stop_reason(now) == ""
    driver.state.n_ok -= 1
    driver.state.outstanding.add((3, 0))  # a label still to come
    assert driver._stop_reason(now) == ""
    patient = _driver(tmp_path, stopping={"stop_when_no_candidates": False})
    patient.starved = driver.starved
    assert patient._stop_reason(now) == ""


def _select_from(driver, monkeypatch, pool: list[tuple[str, int, int]]) -> dict | None:
    """Run ``_new_selection`` over ``pool`` (file, model version, frames); its request or None."""
    from ubmd.campaign import frames, streaming
    from ubmd.campaign.layout import read_json

    monkeypatch.setattr(streaming, "condition_frames", lambda store, in_flight: [])
    monkeypatch.setattr(frames, "write_frames", lambda path, atoms: None)
    driver.state.pool = list(pool)
    p = driver._new_selection()
    return None if p is None else read_json(driver.sl.selection_request(p))


def test_selection_pools_only_candidates_of_models_within_max_staleness(tmp_path, monkeypatch):
    driver = _driver(tmp_path, streaming={"max_staleness": 1, "select_pool_factor": 1.0})
    driver.state.version = 3
    pool = [("e0/s0", 1, 50), ("e1/s0", 2, 3), ("e0/s1", 3, 3), ("e1/s1", 1, 50)]
    # only v2 and v3 candidates count towards the pool: 3 of v2 are fewer than 1.0 x batch_size
    # 4, however many v1 candidates there are ...
    assert _select_from(driver, monkeypatch, pool[:2] + pool[3:]) is None
    # ... with v3's 3 they are enough; the v1 segments are dropped, never selected from
    request = _select_from(driver, monkeypatch, pool)
    assert request["segments"] == ["e1/s0", "e0/s1"] and request["versions"] == [2, 3]
    assert request["stale"] == ["e0/s0", "e1/s1"] and request["version"] == 3
    assert driver.state.pool == []  # taken or dropped: no later selection sees them
    # max_staleness 0: the newest model's candidates only
    newest = _driver(tmp_path, streaming={"max_staleness": 0, "select_pool_factor": 1.0})
    newest.state.version = 3
    assert _select_from(newest, monkeypatch, [("a", 2, 50), ("b", 3, 2)]) is None
    request = _select_from(newest, monkeypatch, [("a", 2, 50), ("b", 3, 4)])
    assert request["segments"] == ["b"] and request["stale"] == ["a"]


def test_selection_after_starving_pools_only_the_new_models_candidates(tmp_path, monkeypatch):
    driver = _driver(tmp_path, streaming={"max_staleness": 2, "select_pool_factor": 1.0})
    driver.state.version, driver.min_pool_version = 3, 3
    request = _select_from(driver, monkeypatch, [("a", 2, 50), ("b", 3, 4)])
    assert request["segments"] == ["b"] and request["stale"] == ["a"]


def test_explore_steps_per_label_defaults_to_what_the_iterations_mode_explores(tmp_path):
    from ubmd.campaign.config import parse_campaign
    from ubmd.campaign.streaming import explore_steps_per_label, segments_per_selection

    data = _campaign_data(tmp_path, mode="streaming", streaming={"segment_steps": 100})
    data["exploration"] = {"explorers": 2, "replicas": 8, "settings": {"n_steps": 1500}}
    data["selection"] = {"batch_size": 8}
    config = parse_campaign(data)
    # an iteration: 2 explorers x 8 replicas x 1500 steps for 8 labels
    assert explore_steps_per_label(config) == 3000
    assert segments_per_selection(config, 8) == 30  # of 8 x 100 steps
    assert segments_per_selection(config, 3) == 12  # a batch cut by the budget: ceil(11.25)
    data["streaming"]["explore_steps_per_label"] = 0
    assert segments_per_selection(parse_campaign(data), 8) == 0


def test_selection_waits_for_explore_steps_per_label_of_fresh_segments(tmp_path, monkeypatch):
    # 4 picks x 50 steps per label = 200 steps; a segment offers 8 replicas x 25 steps: 1 ...
    driver = _driver(
        tmp_path,
        streaming={"explore_steps_per_label": 150, "segment_steps": 25, "max_staleness": 1},
    )
    driver.state.version = 3
    # ... 600 steps: 3 segments of models v2 or v3, however many candidates fewer hold
    assert _select_from(driver, monkeypatch, [("a", 3, 500), ("b", 2, 500)]) is None
    # a stale segment (v1) is no exploration for this selection
    assert _select_from(driver, monkeypatch, [("a", 3, 5), ("b", 2, 5), ("c", 1, 5)]) is None
    request = _select_from(driver, monkeypatch, [("a", 3, 5), ("b", 2, 5), ("c", 3, 5)])
    assert request["segments"] == ["a", "b", "c"] and request["batch_size"] == 4


def test_selection_never_asks_for_more_than_the_label_budget_leaves(tmp_path, monkeypatch):
    driver = _driver(tmp_path, streaming={"select_pool_factor": 1.0})
    driver.state.n_ok_al = 15
    driver.state.outstanding = {(0, 0), (0, 1), (0, 2)}
    request = _select_from(driver, monkeypatch, [("a", 2, 50)])
    assert request["batch_size"] == 2  # 20 - 15 stored - 3 in flight
    driver.state.outstanding |= {(1, 0), (1, 1)}
    assert _select_from(driver, monkeypatch, [("b", 2, 50)]) is None


def test_a_model_picks_at_most_max_picks_per_model_then_selections_wait_for_the_next(
    tmp_path, monkeypatch
):
    driver = _driver(
        tmp_path, streaming={"max_picks_per_model": 6, "select_pool_factor": 1.0}
    )  # batch_size 4, model v2 the newest
    assert _select_from(driver, monkeypatch, [("a", 2, 50)])["batch_size"] == 4
    assert _select_from(driver, monkeypatch, [("b", 2, 50)])["batch_size"] == 2  # 6 - 4
    assert driver.state.picks_by_version == {2: 6}
    # v2 picked its share: no selection, whatever it goes on to find
    assert _select_from(driver, monkeypatch, [("c", 2, 50), ("d", 2, 50)]) is None
    # ... and v3 is trained as soon as v2's last label is in, on however few new labels
    driver.state.outstanding = {(1, 0)}
    assert not driver._waiting_for_model()
    driver.state.outstanding = set()
    assert driver._waiting_for_model()
    driver.state.n_ok += 1
    assert driver._stop_reason(0.0) == ""
    # v3 published: it picks again, from its own candidates only (v2's later ones are dropped)
    driver.state.version = 3
    request = _select_from(driver, monkeypatch, [("c", 2, 50), ("e", 3, 50)])
    assert request["segments"] == ["e"] and request["stale"] == ["c"]
    assert request["batch_size"] == 4 and request["version"] == 3
    # without a cap a model picks for as long as labels flow
    free = _driver(tmp_path / "free", streaming={"select_pool_factor": 1.0})
    for pool in ([("a", 2, 50)], [("b", 2, 50)], [("c", 2, 50)]):
        assert _select_from(free, monkeypatch, pool)["batch_size"] == 4
    assert not free._waiting_for_model()


def test_a_model_whose_picks_all_failed_stops_the_campaign_with_a_reason(tmp_path, monkeypatch):
    from ubmd.pipeline.streaming import _Task

    driver = _driver(tmp_path, streaming={"max_picks_per_model": 4, "select_pool_factor": 1.0})
    assert _select_from(driver, monkeypatch, [("a", 2, 50)]) is not None
    # while the selection runs, its picks are on the way: no stop, no early training
    driver.running = {"select-task": _Task("select", "select", {"pick": 0})}
    assert driver._stop_reason(0.0) == "" and not driver._waiting_for_model()
    driver.running = {}
    driver.state.pending_selection = 0  # (resumed: the request without its picks)
    assert driver._stop_reason(0.0) == "" and not driver._waiting_for_model()
    driver.state.pending_selection = None
    driver.state.outstanding = {(0, 0)}  # a pick being labelled
    assert driver._stop_reason(0.0) == ""
    # every pick in, none ok: no new label to train a new model on, nothing else to come
    driver.state.outstanding = set()
    assert driver._stop_reason(0.0) == (
        "model v2 picked its 4 labels (max_picks_per_model) and none was labelled ok"
    )


def test_picks_per_model_are_read_back_from_the_selection_requests(tmp_path, monkeypatch):
    from ubmd.campaign.stream_state import scan

    driver = _driver(tmp_path, streaming={"max_picks_per_model": 6, "select_pool_factor": 1.0})
    _select_from(driver, monkeypatch, [("a", 2, 50)])
    driver.state.version = 3
    _select_from(driver, monkeypatch, [("b", 3, 50)])
    _select_from(driver, monkeypatch, [("c", 3, 50)])
    with StructureStore.create(tmp_path / "store.h5") as store:
        state = scan(driver.sl, store, explorers=1)
    assert state.picks_by_version == {2: 4, 3: 6} == driver.state.picks_by_version
    assert (
        state.picks_left(6) == 6 and state.picks_left(6, 2) == 2 and state.picks_left(None) is None
    )


# ---------------------------------------------------------------------- end to end
def _streaming_config(shrunk, name: str, *, budget: int) -> Path:
    config = shrunk(
        name=name,
        iterations=20,
        mode="streaming",
        streaming={
            "segment_steps": 40,
            "select_pool_factor": 1.0,
            "max_labels_in_flight": 2,
            "train_every_labels": 3,
            "max_staleness": 1,
        },
    )
    data = yaml.safe_load(config.read_text())
    data["stopping"]["label_budget"] = budget
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    return config


def _run(config: Path, timeout: float = 800) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "ubmd.cli", "run", str(config), "--site", "local", "--no-live"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def test_streaming_campaign_end_to_end(shrunk):
    config = _streaming_config(shrunk, "stream", budget=6)
    root = Path(yaml.safe_load(config.read_text())["directory"])
    res = _run(config)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "label budget reached (6 >= 6)" in res.stdout, res.stdout
    check = subprocess.run(
        [sys.executable, "-m", "ubmd.cli", "store", "validate", str(root / "store.h5")],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    with StructureStore.open(root / "store.h5", mode="r") as store:
        arrays = store.read_arrays()
        hashes = [h.tobytes() for h in store.content_hashes()]
    assert len(set(hashes)) == len(hashes), "a structure stored twice"
    iteration = arrays[keys.ITERATION]
    assert np.count_nonzero(iteration == 0) == 10  # the initial data
    assert np.count_nonzero(iteration >= 1) == 6  # exactly the budget: nothing picked beyond it
    assert all(str(s) == "ok" for s in arrays[keys.STATUS])
    _check_versions(root, dict(zip(hashes, iteration.tolist(), strict=True)))
    assert _check_continuations(root, segment_steps=40) >= 1, "no replica went on"
    assert (root / "final" / "model.pt").is_file() and (root / "final" / "report.json").is_file()
    roles = json.loads((root / "stream" / "roles.json").read_text())["summary"]
    for role in ("explore", "select", "label", "train"):
        assert roles[role]["tasks"] >= 1 and roles[role]["busy_s"] > 0, (role, roles)
    assert (root / "reports" / "timeline.png").stat().st_size > 0
    status = subprocess.run(
        [sys.executable, "-m", "ubmd.cli", "status", str(root)],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert status.returncode == 0 and "roles: explore busy" in status.stdout, status.stdout
    # run again: nothing to do, nothing stored twice, the same final model
    before = (root / "final" / "model.pt").read_bytes()
    res = _run(config)
    assert res.returncode == 0, res.stderr[-4000:]
    with StructureStore.open(root / "store.h5", mode="r") as store:
        assert len(store) == len(hashes)
    assert (root / "final" / "model.pt").read_bytes() == before


def _check_continuations(root: Path, *, segment_steps: int) -> int:
    """Replicas that reached a segment's end go on in the explorer's next segment, their step
    count going on too. Returns how many segments continued a replica."""
    from ubmd.campaign.streaming import read_continuations
    from ubmd.md.writer import read_candidates

    went_on = 0
    for path in sorted((root / "stream" / "explore").glob("e*/s*.next.json")):
        ends = read_continuations(path)
        assert all(c.step > 0 and c.step % segment_steps == 0 for c in ends.values()), path
        following = path.with_name(f"s{int(path.name[1:6]) + 1:05d}.h5")
        if ends and following.exists():
            data = read_candidates(following)
            for r, c in ends.items():
                steps = data[keys.MD_STEP][data[keys.REPLICA] == r]
                assert steps.min() >= c.step, (following, r, c.step, steps)
            went_on += 1
    return went_on


def _check_versions(root: Path, version_of: dict[bytes, int], *, min_versions: int = 2) -> None:
    """Every active-learning label carries the model version whose explorer found it (the
    store's iteration column), that version was published, and it matches its pick."""
    from ubmd.campaign.frames import read_frames, structure_key
    from ubmd.campaign.stream_layout import StreamLayout, published_versions

    layout = StreamLayout(root)
    published = published_versions(layout)
    assert published and published == list(range(1, len(published) + 1))
    assert len(published) >= min_versions, "no model version trained on streamed labels"
    picked = 0
    for p in layout.selections():
        for atoms in read_frames(layout.selection(p)):
            key = structure_key(atoms)
            if key in version_of:
                assert version_of[key] == atoms.info["iteration"] in published
                picked += 1
    assert picked == sum(v >= 1 for v in version_of.values())
    for path in sorted((root / "stream" / "explore").glob("e*/s" + "[0-9]" * 5 + ".json")):
        assert json.loads(path.read_text())["version"] in published, path


def test_streaming_campaign_with_a_share_of_picks_per_model_reaches_its_budget(shrunk):
    from ubmd.campaign.layout import read_json

    config = _streaming_config(shrunk, "share", budget=6)
    data = yaml.safe_load(config.read_text())
    data["streaming"]["max_picks_per_model"] = 2  # batches of 3 cut to 2, one per model
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    root = Path(data["directory"])
    res = _run(config)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "label budget reached (6 >= 6)" in res.stdout, res.stdout
    asked: dict[int, int] = {}
    for request in sorted((root / "stream" / "select").glob("p[0-9]*.json")):
        r = read_json(request)
        asked[r["version"]] = asked.get(r["version"], 0) + r["batch_size"]
    assert asked and max(asked.values()) <= 2, asked
    assert len(asked) >= 3  # 6 labels, at most 2 per model: at least 3 models picked


def test_streaming_resume_after_sigkill_loses_and_repeats_nothing(shrunk):
    from test_campaign import _kill_group, _start, _wait_for

    from ubmd.campaign.frames import read_frames, structure_key
    from ubmd.campaign.stream_layout import StreamLayout

    config = _streaming_config(shrunk, "killed", budget=9)
    root = Path(yaml.safe_load(config.read_text())["directory"])
    stream = root / "stream"
    labels_on_disk: dict[Path, int] = {}
    phases = [
        ("a finished segment", lambda: list(stream.glob("explore/e*/s*.h5"))),
        ("a label result", lambda: list(stream.glob("labels/p*/*.npz"))),
        ("training version 2", lambda: (root / "iter_002" / "models").is_dir()),
        ("a third selection", lambda: (stream / "select" / "p0002.json").exists()),
        ("final training", lambda: (root / "final" / "models").is_dir()),
    ]
    for what, predicate in phases:
        proc = _start(config)
        _wait_for(predicate, proc, what)
        _kill_group(proc, root)
        # what a kill leaves behind holds no duplicate, and no label result is ever rewritten
        if (root / "store.h5").exists():
            with StructureStore.open(root / "store.h5", mode="r") as store:
                hashes = [h.tobytes() for h in store.content_hashes()]
            assert len(set(hashes)) == len(hashes)
        for path in stream.glob("labels/p*/*.npz"):
            assert (
                labels_on_disk.setdefault(path, path.stat().st_mtime_ns) == path.stat().st_mtime_ns
            )
    res = _run(config)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "label budget reached (9 >= 9)" in res.stdout, res.stdout
    for path, mtime in labels_on_disk.items():
        assert path.stat().st_mtime_ns == mtime, f"{path} was labelled again after the kill"
    with StructureStore.open(root / "store.h5", mode="r") as store:
        arrays = store.read_arrays()
        hashes = [h.tobytes() for h in store.content_hashes()]
    assert len(set(hashes)) == len(hashes), "a structure stored twice"
    assert np.count_nonzero(arrays[keys.ITERATION] >= 1) == 9
    # the progress line of the resumed run counts the labels stored before it too
    finished = [line for line in res.stderr.splitlines() if " finished: labels stored " in line]
    assert finished and f"labels stored {len(hashes)} (" in finished[-1], finished
    # every pick was labelled and stored: none lost
    layout = StreamLayout(root)
    picks = [
        structure_key(a) for p in layout.selections() for a in read_frames(layout.selection(p))
    ]
    assert set(picks) <= set(hashes) and len(picks) == 9
    # how many versions were published before the budget was reached depends on timing here
    # (labels take milliseconds, a kill restarts the training): one at least
    _check_versions(
        root, dict(zip(hashes, arrays[keys.ITERATION].tolist(), strict=True)), min_versions=1
    )
    assert (root / "final" / "model.pt").is_file()
