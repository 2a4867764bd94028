"""What a streaming campaign has done so far, read back from its artefacts (for resume).

Nothing but the files records state: published models, snapshots, segment and selection
requests and their results, label results and the store. A request without its result is a
task that was submitted (or about to be) when the driver stopped; it is submitted again as is.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ubmd import keys
from ubmd.campaign.frames import read_frames, structure_key
from ubmd.campaign.layout import read_json
from ubmd.campaign.stream_layout import StreamLayout, latest_version, publish_model


@dataclass
class StreamState:
    version: int = 0  # newest published model version
    training: int | None = None  # the version being trained (snapshot written)
    ok_in_snapshot: int = 0  # ok labels of the newest snapshot
    n_ok: int = 0  # ok labels in the store (all)
    n_ok_al: int = 0  # ok labels from active learning (iteration >= 1)
    next_segment: dict[int, int] = field(default_factory=dict)
    pending_segments: dict[int, int] = field(default_factory=dict)  # explorer -> segment to rerun
    # (candidate file, model version, frames) of finished segments no selection has taken yet
    pool: list[tuple[str, int, int]] = field(default_factory=list)
    n_selections: int = 0
    picks_by_version: dict[int, int] = field(default_factory=dict)  # newest model -> labels asked
    pending_selection: int | None = None  # a selection request without its picks
    picks: dict[int, list[Any]] = field(default_factory=dict)  # selection -> picked frames
    label_queue: deque[tuple[int, int]] = field(default_factory=deque)
    outstanding: set[tuple[int, int]] = field(default_factory=set)  # picked, not stored yet
    done_labels: list[Path] = field(default_factory=list)  # results on disk, not in the store

    def picks_left(self, cap: int | None, version: int | None = None) -> int | None:
        """Labels selections may still pick while model ``version`` (default: the newest) is
        the newest: ``cap`` (``streaming.max_picks_per_model``; None: no cap) less what the
        selections under it asked for."""
        v = self.version if version is None else version
        return None if cap is None else max(0, cap - self.picks_by_version.get(v, 0))

    def count_picks(self, version: int, n: int) -> None:
        """A selection made while ``version`` was the newest asked for ``n`` picks."""
        self.picks_by_version[version] = self.picks_by_version.get(version, 0) + n

    def in_flight_selections(self, layout: StreamLayout) -> list[Path]:
        return sorted({layout.selection(p) for p, _ in self.outstanding})


def scan(layout: StreamLayout, store: Any, *, explorers: int) -> StreamState:
    """The state of a streaming campaign from its files and store (empty for a new one)."""
    state = StreamState()
    _models(layout, state)
    its = store.read_arrays(status=keys.STATUS_OK)[keys.ITERATION]
    state.n_ok, state.n_ok_al = int(np.count_nonzero(its >= 0)), int(np.count_nonzero(its >= 1))
    consumed = _selections(layout, store, state)
    for e in range(explorers):
        segments = layout.segments_of(e)
        state.next_segment[e] = segments[-1] + 1 if segments else 0
        for s in segments:
            path = layout.segment(e, s)
            if not path.exists():  # only the last one can be unfinished
                state.pending_segments[e] = s
            elif str(path) not in consumed:
                version = int(read_json(layout.segment_request(e, s))["version"])
                state.pool.append((str(path), version, _n_frames(path)))
    return state


def _models(layout: StreamLayout, state: StreamState) -> None:
    """Publish what was calibrated but not published when the driver stopped; find the newest
    version and the one being trained."""
    from ubmd.campaign.stream_layout import snapshot_ok_labels

    campaign = layout.campaign
    v = 1
    while layout.snapshot(v).exists():
        if campaign.bundle(v).exists():
            publish_model(layout, v, campaign.bundle(v))
        v += 1
    state.version = latest_version(layout)
    newest = v - 1
    if newest > state.version:
        state.training = newest
    if newest >= 1:
        state.ok_in_snapshot = snapshot_ok_labels(layout.snapshot(newest))


def _selections(layout: StreamLayout, store: Any, state: StreamState) -> set[str]:
    """Selections done and pending; their picks not yet stored go back to the label queue (a
    result on disk is stored without running again). Returns the segments they consumed."""
    stored = {h.tobytes() for h in store.content_hashes()}
    consumed: set[str] = set()
    for p in layout.selections():
        request = read_json(layout.selection_request(p))
        consumed.update(request["segments"], request["stale"])
        state.n_selections = p + 1
        state.count_picks(int(request["version"]), int(request["batch_size"]))
        if not layout.selection(p).exists():
            state.pending_selection = p
            continue
        state.picks[p] = read_frames(layout.selection(p))
        for k, atoms in enumerate(state.picks[p]):
            if structure_key(atoms) in stored:
                continue
            state.outstanding.add((p, k))
            if layout.label(p, k).exists():
                state.done_labels.append(layout.label(p, k))
            else:
                state.label_queue.append((p, k))
    return consumed


def _n_frames(path: Path) -> int:
    import h5py

    with h5py.File(path, "r") as f:
        return int(f.attrs["n_frames"])


def label_record(path: Path) -> dict[str, Any]:
    """The provenance record of a label result file."""
    import json

    with np.load(path, allow_pickle=False) as data:
        return json.loads(str(data["record"]))
