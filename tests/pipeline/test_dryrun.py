"""The dry run's cost estimate follows the training budget (epochs capped by max_steps); in
mode streaming it renders the streaming roles and estimates the time with the roles overlapping."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ubmd.campaign.config import load_campaign
from ubmd.pipeline.dryrun import CostModel, dry_run, format_report, load_costs
from ubmd.pipeline.dryrun_streaming import streaming_dag
from ubmd.pipeline.sites import load_site

ROOT = Path(__file__).resolve().parents[2]


# the cost model's defaults before they were set to measured figures: pinned numbers below
OLD_DEFAULTS = CostModel(
    train_s_per_epoch_per_100_structures=2.0,
    md_ms_per_step_per_replica=5.0,
    label_minutes={"xtb": 0.05, "emt": 0.001, "amber": 0.01, "cp2k": 15.0, "vasp": 30.0},
    calibrate_minutes=1.0,
    select_minutes=1.0,
    report_minutes=1.0,
)


def _core_hours(overrides: dict, costs: CostModel = OLD_DEFAULTS) -> tuple[float, str]:
    config = load_campaign(ROOT / "workflows" / "ala2_paper" / "campaign.yaml", overrides=overrides)
    text = format_report(dry_run(config, load_site("local"), costs=costs))
    return float(re.search(r"([\d.]+) core-hours", text).group(1)), text


def test_capped_fine_tuning_costs_less_and_is_said():
    capped, text = _core_hours({"model.fine_tuning.max_steps": 1500})
    uncapped, text_uncapped = _core_hours({"model.fine_tuning.max_steps": None})
    assert "at most 1500 optimizer steps" in text
    assert "optimizer steps" not in text_uncapped
    assert capped < uncapped


# ------------------------------------------------------------------------------- mode streaming
STREAMING = {
    "segment_steps": 40,
    "select_pool_factor": 2.0,
    "max_labels_in_flight": 4,
    "train_every_labels": 6,
    "max_staleness": 1,
}
# labels the bottleneck: 10 min each, 4 at once (60 labels: 150 min); 20 selections of 3 (20 min)
SLOW_LABELS = {"label_minutes": {"xtb": 10.0}}


def _two_executor_site(tmp_path: Path):
    """Labels on their own executor ("cpu", 4 workers), the rest on "gpu" (2 workers); fixed
    worker counts, so the estimate does not depend on this machine's cores."""
    path = tmp_path / "two.yaml"
    path.write_text(
        "name: two\n"
        "executors:\n"
        "  cpu: {provider: local, max_workers_per_node: 4}\n"
        "  gpu: {provider: local, max_workers_per_node: 2}\n"
        "roles: {train: gpu, explore: gpu, select: gpu, label: cpu}\n"
    )
    return load_site(path)


def _streaming_campaign(shrunk, **overrides):
    path = shrunk(name="s", iterations=20, mode="streaming", streaming=STREAMING)
    return load_campaign(path, overrides={"stopping.label_budget": 60, **overrides})


def _dry_text(config, site, costs: dict) -> str:
    from ubmd.pipeline.dryrun import CostModel

    return format_report(dry_run(config, site, costs=CostModel(**costs)))


def _minutes(text: str, pattern: str) -> float:
    """The duration printed after ``pattern`` (as ``12.5 s``, ``12.5 min`` or ``1.2 h``), in min."""
    match = re.search(pattern + r" ([\d.]+) (s|min|h)\b", text)
    assert match, f"{pattern!r} not in:\n{text}"
    return float(match.group(1)) * {"s": 1 / 60, "min": 1.0, "h": 60.0}[match.group(2)]


def test_streaming_dry_run_renders_the_streaming_roles_and_an_estimate(shrunk, tmp_path):
    config = _streaming_campaign(shrunk)
    text = _dry_text(config, _two_executor_site(tmp_path), SLOW_LABELS)
    assert "== one iteration" not in text and "core-hours" not in text
    assert "== streaming roles (mode: streaming)" in text
    roles = text.split("== streaming roles")[1].split("== estimate")[0]
    # each task on the executor its role maps to (reports run on the select executor)
    where = {"initial": "cpu", "segment": "gpu", "select": "gpu", "label": "cpu"}
    where |= {"train": "gpu", "bundle": "gpu", "report": "gpu"}
    for task, executor in where.items():
        assert re.search(rf"^  {task} .* on {executor} \(local\)", roles, re.M), (task, roles)
    # the streaming section's values, named
    assert "40 MD steps x 2 replicas" in roles
    assert ">= 6 candidates (select_pool_factor 2 x batch_size 3)" in roles
    # the shrunk quickstart explores 2 explorers x 2 replicas x 60 steps per batch of 3:
    # 80 steps per label, 240 per selection, 3 segments of 2 x 40 steps
    assert ">= 3 segments (80 replica MD steps per label, explore_steps_per_label)" in roles
    # by default a trajectory is as long as an iterations-mode one (n_steps 60)
    assert "until a stop rule or 60 steps of trajectory (max_trajectory_steps)\n" in roles
    capped = _streaming_campaign(shrunk, **{"streaming.max_trajectory_steps": 120})
    assert "until a stop rule or 120 steps of trajectory (max_trajectory_steps)" in "\n".join(
        streaming_dag(capped, _two_executor_site(tmp_path))
    )
    uncapped = _streaming_campaign(shrunk, **{"streaming.max_trajectory_steps": 0})
    assert "goes on where it ended until a stop rule\n" in "\n".join(
        streaming_dag(uncapped, _two_executor_site(tmp_path))
    )
    assert "newest - 1 (max_staleness)" in roles
    assert "at most 4 in flight (max_labels_in_flight)" in roles
    assert "once 6 new ok labels are stored (train_every_labels)" in roles
    assert "label_budget 60, max_iterations 20 model versions" in roles
    estimate = text.split("== estimate")[1]
    assert (
        "label    60 x 10 min, 4 at once (max_labels_in_flight 4, 4 worker(s) of cpu)" in estimate
    )
    assert "executor gpu (explore, select, train share its 2 worker(s))" in estimate
    assert "stops on label_budget (label the bottleneck)" in estimate
    assert _minutes(estimate, "after") == pytest.approx(150.0, rel=0.01)
    assert "mode iterations, for comparison:" in estimate
    assert text.rstrip().endswith("dry run: nothing was submitted")


def test_streaming_estimate_follows_the_cost_model(shrunk, tmp_path):
    config, site = _streaming_campaign(shrunk), _two_executor_site(tmp_path)

    def times(costs: dict, config=config) -> tuple[float, float, float]:
        text = _dry_text(config, site, costs)
        return (
            _minutes(text, "after"),  # of streaming, to the first stopping rule
            _minutes(text, "streaming, whole campaign:"),
            _minutes(text, "mode iterations, for comparison:"),
        )

    base = times(SLOW_LABELS)
    # labels are the bottleneck: twice the label minutes, twice the streaming time
    slower = times({"label_minutes": {"xtb": 20.0}})
    assert slower[0] == pytest.approx(2 * base[0], rel=0.01)
    assert slower[1] > base[1] and slower[2] > base[2]
    # ... and half the label slots, too
    fewer = _streaming_campaign(shrunk, **{"streaming.max_labels_in_flight": 2})
    assert times(SLOW_LABELS, fewer)[0] == pytest.approx(2 * base[0], rel=0.01)
    # the roles overlap: slower selections below the label bottleneck cost streaming nothing,
    # while mode iterations, which waits for each step, takes longer
    overlapped = times({**SLOW_LABELS, "select_minutes": 5.0})  # 20 x 5 = 100 min < 150 min
    assert overlapped[0] == pytest.approx(base[0]) and overlapped[2] > base[2]
    # until they are the slowest resource themselves
    text = _dry_text(config, site, {**SLOW_LABELS, "select_minutes": 10.0})
    assert "(select the bottleneck)" in text and _minutes(text, "after") == pytest.approx(
        200.0, rel=0.03
    )
    # slow MD: the explorers are the bottleneck (30 segments of 4 candidates, 2 at once)
    text = _dry_text(config, site, {"md_ms_per_step_per_replica": 3000.0})
    assert "(executor gpu the bottleneck)" in text or "(explore the bottleneck)" in text
    assert _minutes(text, "after") >= 15 * 40 * 2 * 3000.0 / 6e4 * 0.999


def test_a_share_of_picks_per_model_is_rendered_and_chains_the_models(shrunk, tmp_path):
    site = _two_executor_site(tmp_path)
    free = _dry_text(_streaming_campaign(shrunk), site, SLOW_LABELS)
    assert "max_picks_per_model" not in free
    share = {"streaming.max_picks_per_model": 3, "stopping.max_iterations": 40}
    text = _dry_text(_streaming_campaign(shrunk, **share), site, SLOW_LABELS)
    roles = text.split("== streaming roles")[1].split("== estimate")[0]
    assert "at most 3 picks while one model is the newest (max_picks_per_model)" in roles
    assert "(train_every_labels) or its model's last pick is in (max_picks_per_model)" in roles
    # 60 labels, 3 per model: 20 models, each waiting for the 3 labels (one wave of 10 min)
    # of the one before: the chain, not the 4 label slots (150 min), sets the pace
    assert "models   20 one after another, each picking <= 3" in text
    assert "(model chain the bottleneck)" in text
    assert _minutes(text, "after") >= 20 * 10.0
    assert _minutes(text, "after") > _minutes(free, "after")
    assert "train    20 versions after v1 (one per 3 labels)" in text


def test_streaming_dry_run_starts_nothing(shrunk, tmp_path, monkeypatch):
    import parsl

    from ubmd.pipeline import streaming

    def refuse(*args, **kwargs):
        raise AssertionError("the dry run started something")

    monkeypatch.setattr(parsl, "load", refuse)
    monkeypatch.setattr(parsl.DataFlowKernel, "__init__", refuse)
    monkeypatch.setattr(streaming.StreamingDriver, "run", refuse)
    config = _streaming_campaign(shrunk)
    before = sorted(tmp_path.rglob("*"))
    _dry_text(config, load_site("local"), {})
    assert not config.campaign_dir.exists()
    assert sorted(tmp_path.rglob("*")) == before


def test_iterations_dry_run_is_unchanged(shrunk):
    """mode iterations prints one iteration's tasks and core-hours, whatever the (unused)
    streaming section says; the ala2_paper numbers are those before mode streaming existed."""
    _, text = _core_hours({"model.fine_tuning.max_steps": 1500})  # as it was shipped then
    assert "== one iteration (after the initial labels)" in text and "streaming" not in text
    assert "931 tasks, 21.6 core-hours, 0.0 GPU-hours" in text
    iterations = shrunk(name="i", iterations=3)
    with_section = shrunk(name="i", iterations=3, streaming=STREAMING)
    site = load_site("local")
    texts = [
        format_report(dry_run(load_campaign(p), site, costs=load_costs(None))).split("== one")[1]
        for p in (iterations, with_section)
    ]
    assert texts[0] == texts[1]
    assert re.search(r"^  label +x3 +on local \(local\) +after select", texts[0], re.M)


def test_default_costs_are_close_to_a_measured_campaign():
    """The default cost model against a real run: ala2_paper biased, fine-tuning uncapped as it
    was run (docs/results.md), took 3 h 8 min on 2 cores, 6.3 core-hours. The estimate is an
    upper bound of the same order, not the 28 core-hours the first guesses gave."""
    estimate, _ = _core_hours({"model.fine_tuning.max_steps": None}, CostModel())
    assert 6.3 / 2 < estimate < 6.3 * 2
