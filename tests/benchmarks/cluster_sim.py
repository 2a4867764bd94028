"""A cluster-sized campaign, both modes, simulated from the task durations a real run recorded.

A discrete-event simulation of the two drivers' scheduling rules (``ubmd/pipeline/driver.py``
and ``ubmd/pipeline/streaming.py``) on a cluster: E explorer GPUs, L label nodes, one trainer per
ensemble member. Task durations are drawn (bootstrap) from a real streaming run's
``stream/roles.json`` (explore segments, selections, training members and bundles), each role
scaled by a factor for the cluster's hardware; label durations can be set to a cluster code's
(e.g. CP2K on one node) because no label here costs what DFT costs there.

Iterations mode: train, calibrate, explore (E trajectories of ``segments_per_trajectory``
segments; the phase ends with the slowest), select, label the batch on L nodes, report; repeat.
Streaming mode: every explorer runs segment after segment; a selection runs when
``pool_factor x batch`` fresh candidates from at least ``segments_per_label x picks`` fresh
segments (``streaming.explore_steps_per_label``; by default as much exploration per label as
the iterations mode) are pooled and no pick waits for a label slot (it
consumes the pool; candidates more than ``max_staleness`` model versions old are dropped);
labels run as soon as they are picked, at most ``in_flight`` at once; a new model version
is trained (warm start) when ``train_every`` new labels are stored and no training runs.
Both stop at the label budget and then train a final model.

    python tests/benchmarks/cluster_sim.py --from-run DIR [--explorers 32 --label-nodes 16 \\
        --budget 2000 --batch 16 --label-s 150 --explore-scale 0.1 --train-scale 0.1]

Prints one table (time to the budget, utilisation of each role's slots) and, last, the ratio
streaming / iterations.
"""

from __future__ import annotations

import argparse
import heapq
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Durations:
    """Samples of each role's task durations (s) and the training cost against labels."""

    segment: np.ndarray
    select: np.ndarray
    label: np.ndarray
    bundle: np.ndarray
    train_fit: tuple[float, float]  # member seconds = a + b * labels
    train_cap_s: float = float("inf")  # a max_steps cap bounds fine-tuning

    def train_s(self, n_labels: int) -> float:
        a, b = self.train_fit
        return float(min(a + b * n_labels, self.train_cap_s))


@dataclass(frozen=True)
class Cluster:
    explorers: int
    label_nodes: int
    budget: int
    initial: int
    batch: int
    segments_per_trajectory: int
    candidates_per_segment: int
    pool_factor: float
    segments_per_label: float
    in_flight: int
    train_every: int
    max_staleness: int


def load_durations(run: Path, *, initial: int, train_every: int) -> Durations:
    """Per-role duration samples from a streaming run's ``stream/roles.json``."""
    spans = json.loads((run / "stream" / "roles.json").read_text())["spans"]

    def of(kind: str) -> list[dict]:
        return sorted((s for s in spans if s["task"] == kind), key=lambda s: s["start"])

    def seconds(kind: str) -> np.ndarray:
        out = np.array([s["end"] - s["start"] for s in of(kind)])
        if out.size == 0:
            raise SystemExit(f"{run}: no {kind!r} task in stream/roles.json")
        return out

    members = seconds("member")
    # version v (1-based, in start order) was trained on about initial + (v - 1) * train_every
    labels = initial + train_every * np.arange(members.size)
    b, a = np.polyfit(labels, members, 1) if members.size > 1 else (0.0, members[0])
    return Durations(
        segment=seconds("segment"),
        select=seconds("select"),
        label=seconds("label"),
        bundle=seconds("bundle"),
        train_fit=(float(a), float(max(b, 0.0))),
    )


def scaled(d: Durations, *, explore: float, train: float, select: float, label_s: float | None):
    """The run's durations on the cluster's hardware; label times keep their recorded spread."""
    label = d.label if label_s is None else d.label / np.median(d.label) * label_s
    a, b = d.train_fit
    return Durations(
        segment=d.segment * explore,
        select=d.select * select,
        label=label,
        bundle=d.bundle * train,
        train_fit=(a * train, b * train),
        train_cap_s=d.train_cap_s * train,
    )


def list_schedule(durations: list[float], slots: int) -> tuple[float, float]:
    """Makespan of tasks started in order on ``slots`` workers, and their summed work."""
    ends = [0.0] * slots
    for d in durations:
        heapq.heapreplace(ends, ends[0] + d)
    return max(ends), float(sum(durations))


def iterations(d: Durations, c: Cluster, rng: np.random.Generator) -> dict:
    t, n, work = 0.0, c.initial, {"explore": 0.0, "label": 0.0, "train": 0.0}
    while n - c.initial < c.budget:
        train = d.train_s(n) + rng.choice(d.bundle)
        trajectories = rng.choice(d.segment, (c.explorers, c.segments_per_trajectory)).sum(1)
        picks = min(c.batch, c.budget - (n - c.initial))
        labels, label_work = list_schedule(list(rng.choice(d.label, picks)), c.label_nodes)
        t += train + trajectories.max() + rng.choice(d.select) + labels
        work["train"] += train
        work["explore"] += trajectories.sum()
        work["label"] += label_work
        n += picks
    return {"wall_s": t, "work": work}


@dataclass(order=True)
class _Event:
    time: float
    kind: str = field(compare=False)
    data: dict = field(compare=False, default_factory=dict)


class Streaming:
    """The streaming driver's rules as events (see the module docstring)."""

    def __init__(self, d: Durations, c: Cluster, rng: np.random.Generator) -> None:
        self.d, self.c, self.rng = d, c, rng
        self.t = 0.0
        self.events: list[_Event] = []
        self.version, self.training = 1, False
        # candidates pooled per model version (a dict: the pool can hold millions of segments'
        # candidates while slow labels keep selections waiting)
        self.pool: dict[int, int] = {}
        self.segments: dict[int, int] = {}  # fresh segments per model version, likewise
        self.queue = 0  # picks waiting for a label slot
        self.labelling, self.selecting = 0, False
        self.stored, self.in_snapshot, self.picked = 0, 0, 0
        self.work = {"explore": 0.0, "label": 0.0, "train": 0.0}

    def after(self, seconds: float, kind: str, **data) -> None:
        heapq.heappush(self.events, _Event(self.t + seconds, kind, data))
        if kind in ("segment", "label"):
            self.work["explore" if kind == "segment" else "label"] += seconds

    def run(self) -> dict:
        # model version 1 is trained on the initial labels before anything explores, as in
        # the first iteration
        first = self.d.train_s(self.c.initial) + self.rng.choice(self.d.bundle)
        self.t, self.work["train"] = first, first
        for _ in range(self.c.explorers):
            self.after(self.rng.choice(self.d.segment), "segment", version=self.version)
        while self.stored < self.c.budget:
            event = heapq.heappop(self.events)
            self.t = event.time
            getattr(self, f"on_{event.kind}")(**event.data)
            self.schedule()
        return {"wall_s": self.t, "work": self.work}

    def on_segment(self, version: int) -> None:
        self.pool[version] = self.pool.get(version, 0) + self.c.candidates_per_segment
        self.segments[version] = self.segments.get(version, 0) + 1
        self.after(self.rng.choice(self.d.segment), "segment", version=self.version)

    def on_select(self, picks: int) -> None:
        self.selecting = False
        self.queue += picks

    def on_label(self) -> None:
        self.labelling -= 1
        self.stored += 1

    def on_trained(self) -> None:
        self.training = False
        self.version += 1

    def schedule(self) -> None:
        c = self.c
        if not self.training and self.stored - self.in_snapshot >= c.train_every:
            self.training, self.in_snapshot = True, self.stored
            train = self.d.train_s(c.initial + self.stored) + self.rng.choice(self.d.bundle)
            self.work["train"] += train
            self.after(train, "trained")
        oldest = self.version - c.max_staleness
        pooled = sum(n for v, n in self.pool.items() if v >= oldest)
        explored = sum(n for v, n in self.segments.items() if v >= oldest)
        room = c.budget - self.picked
        picks = min(c.batch, room)
        enough = pooled >= c.pool_factor * c.batch and explored >= c.segments_per_label * picks
        if not self.selecting and not self.queue and room > 0 and enough:
            self.selecting, self.pool, self.segments = True, {}, {}
            self.picked += picks
            self.after(self.rng.choice(self.d.select), "select", picks=picks)
        while self.queue and self.labelling < min(c.in_flight, c.label_nodes):
            self.queue -= 1
            self.labelling += 1
            self.after(self.rng.choice(self.d.label), "label")


def simulate(d: Durations, c: Cluster, *, seed: int) -> dict[str, dict]:
    final = d.train_s(c.initial + c.budget) + float(np.median(d.bundle))
    out = {}
    for mode in ("iterations", "streaming"):
        rng = np.random.default_rng(seed)
        res = iterations(d, c, rng) if mode == "iterations" else Streaming(d, c, rng).run()
        wall = res["wall_s"] + final
        slots = {"explore": c.explorers, "label": c.label_nodes, "train": 1}
        out[mode] = {
            "wall_h": wall / 3600,
            **{f"{r}_util": res["work"][r] / (slots[r] * wall) for r in slots},
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--from-run", type=Path, required=True, help="a streaming campaign directory")
    p.add_argument("--explorers", type=int, default=32)
    p.add_argument("--label-nodes", type=int, default=16)
    p.add_argument("--budget", type=int, default=2000)
    p.add_argument("--initial", type=int, default=32, help="labels before the first model")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--segments-per-trajectory", type=int, default=10)
    p.add_argument("--candidates-per-segment", type=int, default=4)
    p.add_argument("--pool-factor", type=float, default=2.0)
    p.add_argument(
        "--segments-per-label",
        type=float,
        default=None,
        help="fresh segments a selection needs per pick (default: as the iterations mode, "
        "explorers x segments-per-trajectory / batch; 0: none)",
    )
    p.add_argument("--in-flight", type=int, default=16)
    p.add_argument("--train-every", type=int, default=16)
    p.add_argument("--max-staleness", type=int, default=1)
    p.add_argument("--run-initial", type=int, default=16, help="initial labels of --from-run")
    p.add_argument("--run-train-every", type=int, default=8, help="train_every_labels of it")
    p.add_argument("--label-s", type=float, default=None, help="median label seconds")
    p.add_argument("--explore-scale", type=float, default=1.0)
    p.add_argument("--train-scale", type=float, default=1.0)
    p.add_argument("--select-scale", type=float, default=1.0)
    p.add_argument("--train-cap-s", type=float, default=None, help="longest model training")
    p.add_argument("--seeds", type=int, default=5)
    a = p.parse_args()
    recorded = load_durations(a.from_run, initial=a.run_initial, train_every=a.run_train_every)
    d = scaled(
        recorded,
        explore=a.explore_scale,
        train=a.train_scale,
        select=a.select_scale,
        label_s=a.label_s,
    )
    if a.train_cap_s is not None:
        d.train_cap_s = a.train_cap_s
    per_label = a.segments_per_label
    if per_label is None:
        per_label = a.explorers * a.segments_per_trajectory / a.batch
    c = Cluster(
        explorers=a.explorers,
        label_nodes=a.label_nodes,
        budget=a.budget,
        initial=a.initial,
        batch=a.batch,
        segments_per_trajectory=a.segments_per_trajectory,
        candidates_per_segment=a.candidates_per_segment,
        pool_factor=a.pool_factor,
        segments_per_label=per_label,
        in_flight=a.in_flight,
        train_every=a.train_every,
        max_staleness=a.max_staleness,
    )
    print(
        f"durations (median s): segment {np.median(d.segment):.1f}, label "
        f"{np.median(d.label):.1f}, select {np.median(d.select):.2f}, train at "
        f"{c.initial} / {c.initial + c.budget} labels {d.train_s(c.initial):.0f} / "
        f"{d.train_s(c.initial + c.budget):.0f}"
    )
    runs = [simulate(d, c, seed=s) for s in range(a.seeds)]
    print(f"{'mode':<11} {'hours':>12} {'explore':>8} {'label':>8} {'train':>8}  (utilisation)")
    for mode in ("iterations", "streaming"):
        h = np.array([r[mode]["wall_h"] for r in runs])
        util = {
            k: np.mean([r[mode][f"{k}_util"] for r in runs]) for k in ("explore", "label", "train")
        }
        print(
            f"{mode:<11} {h.mean():6.1f} ± {h.std():4.1f} {util['explore']:8.0%} "
            f"{util['label']:8.0%} {util['train']:8.0%}"
        )
    ratio = np.mean([r["streaming"]["wall_h"] / r["iterations"]["wall_h"] for r in runs])
    print(f"time to {c.budget} labels, streaming / iterations: {ratio:.2f}")


if __name__ == "__main__":
    main()
