"""The apps' task priorities: on an executor several roles share (a laptop's), queued labels start
first and exploration last."""

from __future__ import annotations

import subprocess
import time
from types import SimpleNamespace

import pytest

from ubmd.pipeline.apps import PRIORITY_OF_STEP, Apps, _run_step
from ubmd.pipeline.sites import SiteConfig

ROLES = ("train", "explore", "select", "label")


def _site(workers: int) -> SiteConfig:
    spec = {"provider": "local", "max_workers_per_node": workers, "cores_per_worker": 1}
    return SiteConfig(name="shared", executors={"c": spec}, roles=dict.fromkeys(ROLES, "c"))


def test_every_app_submits_its_steps_priority(monkeypatch):
    import parsl

    submitted = []

    def fake_python_app(function, executors):
        return lambda *args, **kwargs: submitted.append((args[0], kwargs))

    monkeypatch.setattr(parsl, "python_app", fake_python_app)
    apps = Apps(_site(1))
    for step in Apps.ROLE_OF_STEP:
        getattr(apps, step)()
    got = {step: kwargs["parsl_resource_specification"] for step, kwargs in submitted}
    assert got == {step: {"priority": PRIORITY_OF_STEP[step]} for step in Apps.ROLE_OF_STEP}
    order = sorted(Apps.ROLE_OF_STEP, key=PRIORITY_OF_STEP.__getitem__)
    assert order[0] == "label_task" and order[-1] in ("explore_task", "segment_task")


@pytest.mark.timeout(120)
def test_one_worker_starts_the_queued_label_before_the_queued_segment(tmp_path):
    """Tasks queued behind a running one, submitted exploration first: the worker takes them
    in the order of their priorities (parsl's interchange), whatever the submission order."""
    import parsl

    from ubmd.pipeline.parsl_config import make_config

    started = tmp_path / "started"
    dfk = parsl.load(make_config(_site(1), tmp_path))
    try:
        blocker = parsl.python_app(subprocess.check_output, executors=["c"])
        running = blocker(["/bin/sh", "-c", f"touch {started}; sleep 2"])
        deadline = time.monotonic() + 90
        while not started.exists():  # the worker is busy: what comes next waits in the queue
            assert not running.done(), running.result()
            assert time.monotonic() < deadline, "the first task never started"
            time.sleep(0.05)
        # a step that costs nothing, through the apps' own worker function
        step_app = parsl.python_app(_run_step, executors=["c"])
        finished: list[str] = []
        steps = sorted(PRIORITY_OF_STEP, key=PRIORITY_OF_STEP.__getitem__, reverse=True)
        futures = []
        for step in steps:  # the least urgent first
            spec = {"priority": PRIORITY_OF_STEP[step]}
            fut = step_app("task_seed", 1, SimpleNamespace(seed=0), step,
                           parsl_resource_specification=spec)  # fmt: skip
            fut.add_done_callback(lambda f, step=step: finished.append(step))
            futures.append(fut)
        for fut in futures:
            fut.result(timeout=60)
        running.result(timeout=60)
    finally:
        dfk.cleanup()
        parsl.clear()
    ranks = [PRIORITY_OF_STEP[step] for step in finished]
    assert ranks == sorted(ranks), finished
    assert finished[0] == "label_task"


def test_a_task_alone_runs_with_the_threads_the_driver_gives_it(monkeypatch):
    """The worker function receives the site's threads, or the driver's override when the
    task runs alone on its executor; the worker pins torch to that count."""
    import parsl
    import torch

    submitted = []

    def fake_python_app(function, executors):
        return lambda *args, **kwargs: submitted.append(args[:2])

    monkeypatch.setattr(parsl, "python_app", fake_python_app)
    apps = Apps(_site(3))
    apps.train_task()
    apps.train_task(threads_override=apps.threads_alone("train_task", 1))
    assert submitted == [("train_task", 1), ("train_task", 3)]
    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # restored after the test; _run_step sets it
    try:
        got = _run_step("task_seed", 2, SimpleNamespace(seed=0), "x")
        assert isinstance(got, int) and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
