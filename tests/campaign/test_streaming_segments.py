"""Streaming explorer segments: which replicas go on in the next segment, with what
(positions, velocities, step count and bias windows), and how long their trajectories have run
(``streaming.max_trajectory_steps``)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from ase import Atoms

from ubmd.campaign.frames import write_frames
from ubmd.campaign.layout import write_json_atomic
from ubmd.campaign.streaming import (
    _segment_starts,
    going_on,
    read_continuations,
    trajectory_step_cap,
)
from ubmd.md.continuation import Continuation


def _end(step: int, z: float = 0.74) -> Continuation:
    return Continuation(
        numbers=np.array([1, 1]), positions=np.array([[0, 0, 0], [0, 0, z]], dtype=float),
        velocities=np.full((2, 3), 0.01), cell=np.zeros((3, 3)), pbc=np.zeros(3, dtype=bool),
        step=step, windows={"win_f2": np.ones(10)},
    )  # fmt: skip


@pytest.mark.parametrize(
    ("max_steps", "going"), [(None, [0, 2]), (1000, [0, 2]), (700, [0]), (300, [])]
)
def test_a_replica_goes_on_until_its_trajectory_is_long_enough(max_steps, going):
    # replicas 0 and 2 reached the segment's end (1 stopped on a rule: no end), 2 is 700 steps in
    ends = {2: _end(700), 0: _end(300)}
    assert list(going_on(ends, max_steps=max_steps)) == going


@pytest.mark.parametrize(("setting", "cap"), [(None, 1500), (0, None), (700, 700)])
def test_trajectories_are_as_long_as_the_iterations_modes_unless_set(setting, cap):
    from ubmd.campaign.config import CampaignConfig

    config = CampaignConfig.model_validate(
        {
            "name": "cap", "directory": "c", "systems": [{"name": "h2", "structure": "h2.xyz"}],
            "exploration": {"settings": {"n_steps": 1500}},
            "streaming": {"max_trajectory_steps": setting},
        }
    )  # fmt: skip
    assert trajectory_step_cap(config) == cap


def test_the_default_cap_is_validated_and_zero_means_none():
    from ubmd.campaign.config import StreamingSpec

    assert StreamingSpec().max_trajectory_steps is None
    assert StreamingSpec(max_trajectory_steps=0).max_trajectory_steps == 0
    with pytest.raises(ValueError, match="max_trajectory_steps"):
        StreamingSpec(max_trajectory_steps=-1)


def _config(replicas: int = 3):
    return SimpleNamespace(
        exploration=SimpleNamespace(replicas=replicas),
        streaming=SimpleNamespace(segment_steps=300),
        seed=0,
    )


def test_the_next_segment_goes_on_with_what_the_last_one_left(tmp_path):
    starts = tmp_path / "starts.extxyz"
    write_frames(starts, [Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]])])
    previous = tmp_path / "s00002.next.json"
    write_json_atomic(previous, {"1": _end(600, z=0.8).to_json()})
    frames, carried = _segment_starts(_config(), str(starts), str(previous), 0, 3)
    assert [c is not None for c in carried] == [False, True, False]
    assert carried[1].step == 600 and carried[1].windows["win_f2"].shape == (10,)
    np.testing.assert_array_equal(carried[1].velocities, np.full((2, 3), 0.01))
    assert frames[1].positions[1, 2] == pytest.approx(0.8)
    assert frames[0].positions[1, 2] == pytest.approx(0.74)
    assert all(a.info == {} for a in frames)
    assert _segment_starts(_config(), str(starts), None, 0, 0)[1] == [None, None, None]


def test_a_continuation_file_of_an_older_ubmd_starts_its_replicas_again(tmp_path):
    # older versions wrote positions only, as extxyz: those replicas start afresh
    old = tmp_path / "s00002.next.extxyz"
    go_on = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.8]])
    go_on.info = {"replica": 1, "md_step": 600}
    write_frames(old, [go_on])
    assert read_continuations(old) == {}
    assert read_continuations(tmp_path / "s00002.next.json") == {}  # its new name, not there
    with pytest.raises(FileNotFoundError):
        read_continuations(tmp_path / "s00007.next.json")  # neither: a bug, not skipped
