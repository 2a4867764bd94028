"""Parsl apps of a streaming campaign's own tasks (explorer segments, selections).

Training, calibration, reports and labels use the iterations-mode apps
(:class:`ubmd.pipeline.apps.Apps`); these two run :mod:`ubmd.campaign.streaming` functions the
same way: the thread count pinned, the body's start and end returned for the role clock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from ubmd.pipeline.sites import SiteConfig


def _run_stream_step(step_name: str, threads: int, /, *args: Any, **kwargs: Any) -> Any:
    """Executed in a worker: pin the thread count, then call the named streaming step."""
    import importlib
    import os
    import time

    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)
    t0 = time.time()
    module = importlib.import_module("ubmd.campaign.streaming")
    out = getattr(module, step_name)(*args, **kwargs)
    return {**out, "_body_s": (t0, time.time())}


class StreamApps:
    """One parsl python_app per streaming step, bound to the executor of its role."""

    ROLE_OF_STEP: ClassVar[dict[str, str]] = {
        "segment_task": "explore",
        "select_stream_task": "select",
    }

    def __init__(self, site: SiteConfig) -> None:
        from parsl import python_app

        self._apps: dict[str, Callable[..., Any]] = {}
        for step, role in self.ROLE_OF_STEP.items():
            label = site.roles[role]
            threads = max(1, int(site.executors[label].cores_per_worker))
            app = python_app(_run_stream_step, executors=[label])
            self._apps[step] = _bind(app, step, threads)

    def __getattr__(self, step: str) -> Callable[..., Any]:
        try:
            return self.__dict__["_apps"][step]
        except KeyError:
            raise AttributeError(step) from None


def _bind(app: Callable[..., Any], step: str, threads: int) -> Callable[..., Any]:
    def submit(*args: Any, **kwargs: Any) -> Any:
        return app(step, threads, *args, **kwargs)

    submit.__name__ = step
    return submit
