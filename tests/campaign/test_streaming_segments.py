"""Streaming explorer segments: which replicas go on in the next segment, and how long their
trajectories have run (``streaming.max_trajectory_steps``)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from ase import Atoms

from ubmd import keys
from ubmd.campaign.frames import write_frames
from ubmd.campaign.streaming import _continuations, _segment_starts


def _segment_data(stops: dict[int, str]) -> dict[str, np.ndarray]:
    """Candidate arrays of one segment: two frames per replica, the last with its stop reason."""
    replicas = [r for r in stops for _ in range(2)]
    n = len(replicas)
    return {
        keys.N_ATOMS: np.full(n, 2),
        keys.NUMBERS: np.tile([1, 1], n),
        keys.POSITIONS: np.arange(n * 6, dtype=float).reshape(-1, 3),
        keys.CELL: np.zeros((n, 3, 3)),
        keys.PBC: np.zeros((n, 3), dtype=bool),
        keys.REPLICA: np.array(replicas),
        keys.STOP_REASON: np.array([stops[r] if i % 2 else "" for i, r in enumerate(replicas)]),
    }


@pytest.mark.parametrize(
    ("max_steps", "going_on"), [(None, [0, 2]), (1000, [0, 2]), (700, [0]), (300, [])]
)
def test_a_replica_goes_on_until_a_stop_rule_or_its_trajectory_is_long_enough(max_steps, going_on):
    # replica 0 fresh, 1 stopped on the uncertainty, 2 already 400 steps into its trajectory
    data = _segment_data({0: "max_steps", 1: "uncertainty", 2: "max_steps"})
    ends = _continuations(data, steps_before=[0, 300, 400], segment_steps=300, max_steps=max_steps)
    assert [a.info["replica"] for a in ends] == going_on
    ran = {0: 300, 2: 700}
    assert [a.info["md_step"] for a in ends] == [ran[r] for r in going_on]
    # each goes on from its last frame (replica 0's is frame 1: atoms 2-3)
    if going_on:
        np.testing.assert_array_equal(ends[0].positions, data[keys.POSITIONS][2:4])


def test_the_next_segment_counts_the_steps_its_continuations_ran(tmp_path):
    config = SimpleNamespace(
        exploration=SimpleNamespace(replicas=3),
        streaming=SimpleNamespace(segment_steps=300),
        seed=0,
    )
    starts = tmp_path / "starts.extxyz"
    write_frames(starts, [Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]])])
    previous = tmp_path / "previous.extxyz"
    go_on = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.8]])
    go_on.info = {"replica": 1, "md_step": 600}
    old = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.9]])
    old.info = {"replica": 2}  # written before trajectories were counted
    write_frames(previous, [go_on, old])
    frames, steps_before = _segment_starts(config, str(starts), str(previous), 0, 3)
    assert steps_before == [0, 600, 300]
    assert frames[1].positions[1, 2] == pytest.approx(0.8)
    assert all(a.info == {} for a in frames)
    assert _segment_starts(config, str(starts), None, 0, 0)[1] == [0, 0, 0]
