"""The decisions of a streaming campaign, as plain functions of its state: when to stop, and
what the next selection pools (:class:`ubmd.pipeline.streaming.StreamingDriver` acts on them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ubmd.campaign.stream_state import StreamState
from ubmd.campaign.streaming import segments_per_selection


def stop_reason(
    config: Any,
    state: StreamState,
    *,
    starved: str,
    picks_on_the_way: bool,
    newest_force_rmse: float | None,
    elapsed_s: float,
) -> str:
    """Why the campaign stops now ("" to go on). ``starved``: why the last selection found
    nothing new ("" if it did); ``picks_on_the_way``: a selection runs or waits to, or picks
    are not stored yet; ``newest_force_rmse``: the newest model's held-out force RMSE, if
    reported."""
    stopping, spec = config.stopping, config.streaming
    if state.n_ok_al >= stopping.label_budget:
        return f"label budget reached ({state.n_ok_al} >= {stopping.label_budget})"
    # nothing will come: no training, no picks to wait for and no new label to train on
    stuck = state.training is None and not picks_on_the_way and state.n_ok == state.ok_in_snapshot
    if stuck and starved and stopping.stop_when_no_candidates:
        return starved
    if stuck and state.picks_left(spec.max_picks_per_model) == 0:
        return (f"model v{state.version} picked its {spec.max_picks_per_model} "
                "labels (max_picks_per_model) and none was labelled ok")  # fmt: skip
    if state.version >= stopping.max_iterations:
        return f"reached max_iterations = {stopping.max_iterations} model versions"
    target = stopping.target_force_rmse_eV_A
    if target is not None and newest_force_rmse is not None and newest_force_rmse <= target:
        return f"held-out force RMSE {newest_force_rmse:.4f} <= target {target} (v{state.version})"
    limit = spec.wall_time_limit_s
    if limit is not None and elapsed_s >= limit:
        return f"wall-time limit of {limit:g} s reached"
    return ""


@dataclass(frozen=True)
class SelectionPool:
    """What the next selection takes: finished segments (candidate files) and the model version
    of each, the segments it drops as too stale, and how many labels it picks."""

    segments: list[str]
    versions: list[int]
    stale: list[str]
    batch_size: int


def next_selection_pool(
    config: Any, state: StreamState, *, min_pool_version: int
) -> SelectionPool | None:
    """The pool of the next selection once its time has come, or None (not yet, or never
    under the newest model). ``min_pool_version``: after a selection found nothing new, only
    candidates of models from this version on are news."""
    spec = config.streaming
    room = config.stopping.label_budget - state.n_ok_al - len(state.outstanding)
    cap = spec.max_picks_per_model
    left = state.picks_left(cap)
    if left == 0:  # the newest model picked its share: wait for the next one
        return None
    batch = config.selection.batch_size if left is None else min(config.selection.batch_size, left)
    oldest = max(state.version - spec.max_staleness, min_pool_version)
    # what a model that picked its share went on to find is not asked for either
    usable = {v for _, v, _ in state.pool if v >= oldest and state.picks_left(cap, v) != 0}
    fresh = [(path, v) for path, v, _ in state.pool if v in usable]
    pooled = sum(n for _, v, n in state.pool if v in usable)
    if room <= 0 or pooled < spec.select_pool_factor * batch:
        return None
    # labels run first on shared cores: without this wait, explorers would get only the
    # gaps between labels, and each label would be chosen from far less exploration
    picks = min(batch, room)
    if len(fresh) < segments_per_selection(config, picks):
        return None
    return SelectionPool(
        segments=[path for path, _ in fresh],
        versions=[v for _, v in fresh],
        stale=[path for path, v, _ in state.pool if v not in usable],
        batch_size=picks,
    )
