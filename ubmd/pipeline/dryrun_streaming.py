"""The dry run of a streaming campaign (``mode: streaming``): its roles and a time estimate.

In a streaming campaign every role runs at once (docs/streaming.md), so the time to the label
budget is not a sum of phases, as in the iterations mode, but the time of the busiest
resource: the label slots, the explorers producing candidates, the selections (one at a time),
or an executor several roles share. Task durations come from the iterations dry run's cost model
(:class:`ubmd.pipeline.dryrun.CostModel`); the iterations mode's time is printed beside it.
Nothing here starts parsl or writes a file.
"""

from __future__ import annotations

import math
from typing import Any

from ubmd.campaign.config import CampaignConfig
from ubmd.campaign.streaming import (
    explore_steps_per_label,
    segments_per_selection,
    trajectory_step_cap,
)
from ubmd.pipeline.dryrun import (
    CostModel,
    initial_labels,
    label_minutes,
    md_minutes,
    train_minutes,
)
from ubmd.pipeline.sites import SiteConfig

# the executor role of each streaming task (as Apps.ROLE_OF_STEP binds them)
TASK_ROLE = {
    "initial": "label",
    "segment": "explore",
    "select": "select",
    "label": "label",
    "train": "train",
    "bundle": "train",
    "report": "select",
}


# ------------------------------------------------------------------------------- the roles
def streaming_dag(config: CampaignConfig, site: SiteConfig) -> list[str]:
    """One line per streaming task: how many at once, where, and what starts it."""
    s, x = config.streaming, config.exploration
    m, b = config.model.ensemble_size, config.selection.batch_size
    pool = s.select_pool_factor * b
    restart = "a stop rule"
    cap = trajectory_step_cap(config)
    if cap is not None:
        restart += f" or {cap} steps of trajectory (max_trajectory_steps)"
    share = "" if s.max_picks_per_model is None else (
        f"; at most {s.max_picks_per_model} picks while one model is the newest "
        "(max_picks_per_model), then only the next one's candidates")  # fmt: skip
    train_early = "" if s.max_picks_per_model is None else (
        " or its model's last pick is in (max_picks_per_model)")  # fmt: skip
    rows = [
        ("initial", f"x{config.initial_data.random_displacements * len(config.systems)}",
         "first: the initial labels; model v1 is trained on them (the one barrier)"),
        ("segment", f"x{x.explorers}",
         f"continuously, per explorer one segment after another: {s.segment_steps} MD steps x "
         f"{x.replicas} replicas with the newest published model (segment_steps); a replica "
         f"goes on where it ended until {restart}"),
        ("select", "x1",
         f"one at a time, once >= {pool:g} candidates (select_pool_factor {s.select_pool_factor:g}"
         f" x batch_size {b}) and >= {segments_per_selection(config, b)} segments "
         f"({explore_steps_per_label(config)} replica MD steps per label, "
         f"explore_steps_per_label) of models >= newest - {s.max_staleness} (max_staleness) are "
         "pooled and no pick waits for a label slot; conditioned on labelled + in-flight "
         f"structures{share}"),
        ("label", f"<={s.max_labels_in_flight}",
         f"each pick at once, at most {s.max_labels_in_flight} in flight "
         "(max_labels_in_flight); stored as it arrives"),
        ("train", f"x{m}",
         f"once {s.train_every_labels} new ok labels are stored (train_every_labels){train_early}"
         " and no training runs: version v+1 on a store snapshot, warm-started from v"),
        ("bundle", "x1", f"after all {m} train task(s): calibrate, publish stream/models/vNNNN.pt"),
        ("report", "x1",
         "per published version" if _reports(config)
         else "none (streaming.reports off or no evaluation test set)"),
    ]  # fmt: skip
    lines = []
    for task, count, when in rows:
        label = site.roles[TASK_ROLE[task]]
        where = f"{label} ({site.executors[label].provider})"
        lines.append(f"{task:<10} {count:<5} on {where:<22} {when}")
    lines.append(_stop_line(config))
    lines.append("then: the tasks in flight finish; the final model is trained on every label")
    return lines


def _stop_line(config: CampaignConfig) -> str:
    stopping, s = config.stopping, config.streaming
    rules = [
        f"label_budget {stopping.label_budget}",
        f"max_iterations {stopping.max_iterations} model versions",
    ]
    if stopping.target_force_rmse_eV_A is not None:
        rules.append(f"target_force_rmse_eV_A {stopping.target_force_rmse_eV_A:g}")
    if s.wall_time_limit_s is not None:
        rules.append(f"wall_time_limit_s {s.wall_time_limit_s:g}")
    if stopping.stop_when_no_candidates:
        rules.append("no new candidates and no new label to train on")
    return "stop on the first of: " + ", ".join(rules)


def _reports(config: CampaignConfig) -> bool:
    evaluation = config.evaluation
    return config.streaming.reports and bool(evaluation.test_set or evaluation.test_sets)


def streaming_checks(config: CampaignConfig, built: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Notes on streaming settings that run but cannot do what they seem to ask for."""
    out = []
    s = config.streaming
    # the target is the force RMSE on evaluation.test_set in the newest version's report
    target = config.stopping.target_force_rmse_eV_A
    if target is not None and not (s.reports and config.evaluation.test_set):
        out.append(
            ("streaming", "note", "target_force_rmse_eV_A is never met: it reads the "
             "per-version reports' evaluation.test_set errors (streaming.reports off or no "
             "test_set)")
        )  # fmt: skip
    record_every = built["explore"].record_every
    if s.segment_steps < record_every:
        out.append(
            ("streaming", "note", f"segment_steps {s.segment_steps} < record_every "
             f"{record_every}: a segment's candidates are only where each replica stops")
        )  # fmt: skip
    return out


# ------------------------------------------------------------------------------- the estimate
class StreamingPace:
    """Task durations (minutes, from the cost model) and parallelism of a streaming campaign on
    a site: what each resource needs to reach a number of active-learning labels."""

    def __init__(
        self, config: CampaignConfig, site: SiteConfig, built: dict[str, Any], costs: CostModel
    ) -> None:
        self.config, self.site, self.built, self.costs = config, site, built, costs
        s = config.streaming
        self.label = label_minutes(config, costs)
        self.segment = md_minutes(config, costs, n_steps=s.segment_steps)
        # a replica records a candidate every record_every steps and where its segment ends
        per_replica = math.ceil(s.segment_steps / built["explore"].record_every)
        self.frames = config.exploration.replicas * per_replica
        self.n0 = initial_labels(config, built)
        self.report = costs.report_minutes if _reports(config) else 0.0

    def slots(self, role: str) -> int:
        """Workers of the executor ``role`` runs on, every block of it up."""
        spec = self.site.executors[self.site.roles[role]]
        return spec.workers_per_node() * spec.nodes_per_block * spec.max_blocks

    @property
    def every(self) -> int:
        """Labels per model version: train_every_labels, or a model's share of picks when that
        is smaller (max_picks_per_model: the next version is trained once they are in)."""
        s = self.config.streaming
        share = s.max_picks_per_model
        return s.train_every_labels if share is None else min(share, s.train_every_labels)

    def versions(self, labels: int) -> int:
        """Model versions by ``labels`` labels: one per ``every`` labels, capped."""
        return min(self.config.stopping.max_iterations, 1 + labels // self.every)

    def member_minutes(self, version: int) -> float:
        n_train = self.n0 + (version - 1) * self.every
        return train_minutes(self.config, self.built, self.costs, version=version, n_train=n_train)

    def period(self, version: int) -> float:
        """Wall minutes of training ``version``: its members in waves of the train workers,
        then the bundle (calibration)."""
        waves = math.ceil(self.config.model.ensemble_size / self.slots("train"))
        return waves * self.member_minutes(version) + self.costs.calibrate_minutes

    def work(self, labels: int) -> dict[str, float]:
        """Worker-minutes each executor role spends on the way to ``labels`` labels."""
        trained = range(2, self.versions(labels) + 1)
        m = self.config.model.ensemble_size
        return {
            "label": labels * self.label,
            "explore": self.segments(labels) * self.segment,
            # the per-version reports run on the select executor (Apps.ROLE_OF_STEP)
            "select": self.selections(labels) * self.costs.select_minutes
            + len(trained) * self.report,
            "train": sum(
                m * self.member_minutes(v) + self.costs.calibrate_minutes for v in trained
            ),
        }

    def segments(self, labels: int) -> int:
        """Segments explored for ``labels`` labels: enough candidates and enough MD steps."""
        by_candidates = math.ceil(labels * self.config.streaming.select_pool_factor / self.frames)
        return max(by_candidates, segments_per_selection(self.config, labels))

    def selections(self, labels: int) -> int:
        return math.ceil(labels / self.config.selection.batch_size)

    def bounds(self, labels: int) -> dict[str, float]:
        """Minutes each resource needs, alone at full speed, for ``labels`` labels; the roles
        overlap, so the largest is the time to them (training only in a shared executor: the
        loop never waits for it, slow training only means fewer versions, each on more labels)."""
        s, x = self.config.streaming, self.config.exploration
        label_at_once = min(s.max_labels_in_flight, self.slots("label"))
        explore_at_once = min(x.explorers, self.slots("explore"))
        return {
            "label": math.ceil(labels / label_at_once) * self.label,
            "explore": math.ceil(self.segments(labels) / explore_at_once) * self.segment,
            "select": self.selections(labels) * self.costs.select_minutes,  # one at a time
            **self.shared(labels),
            **({} if s.max_picks_per_model is None else {"model chain": self.chain(labels)}),
        }

    def chain(self, labels: int) -> float:
        """Minutes of the models one after another when each picks at most its share
        (max_picks_per_model): per model, a selection's exploration and the selection, the
        labels of its share that the next version waits for (in waves), that version's
        training."""
        s, x = self.config.streaming, self.config.exploration
        share = int(s.max_picks_per_model)  # (only asked for when it is set)
        batch = min(share, self.config.selection.batch_size)
        explore_at_once = min(x.explorers, self.slots("explore"))
        explore = math.ceil(segments_per_selection(self.config, batch) / explore_at_once)
        label_at_once = min(s.max_labels_in_flight, self.slots("label"))
        per_model = (
            explore * self.segment
            + self.costs.select_minutes
            + math.ceil(self.every / label_at_once) * self.label
        )
        models = math.ceil(labels / share)
        return models * per_model + sum(self.period(v) for v in range(2, models + 1))

    def shared(self, labels: int) -> dict[str, float]:
        """Minutes of each executor several roles share, for their work to ``labels`` labels.
        Training there either keeps up (its work adds to the others') or runs all the time on
        min(members, workers) of them, leaving the rest to the others: whichever is quicker."""
        work, m = self.work(labels), self.config.model.ensemble_size
        out = {}
        for label in sorted(set(self.site.roles.values())):
            roles = [
                r for r in ("label", "explore", "select", "train") if self.site.roles[r] == label
            ]
            if len(roles) < 2:
                continue
            slots = self.slots(roles[0])
            other = sum(work[r] for r in roles if r != "train")
            minutes = (other + (work["train"] if "train" in roles else 0.0)) / slots
            busy = min(m, slots) if "train" in roles else 0
            if busy and slots > busy:
                minutes = min(minutes, other / (slots - busy))
            out[f"executor {label}"] = minutes
        return out

    def stop(self) -> tuple[str, float, int]:
        """(the stopping rule met first, minutes of streaming after model v1, labels by then)."""
        stopping, s = self.config.stopping, self.config.streaming
        budget, top = stopping.label_budget, stopping.max_iterations
        bounds = self.bounds(budget)
        slowest = max(bounds, key=bounds.__getitem__)
        stop = (f"label_budget ({slowest} the bottleneck)", bounds[slowest], budget)
        cap = (top - 1) * self.every
        if cap <= budget:  # the last model version may come first
            minutes = 0.0  # max_iterations 1: model v1 is the last
            if top > 1:
                before = sum(self.period(v) for v in range(2, top))  # one training at a time
                minutes = max(max(self.bounds(cap).values()), before) + self.period(top)
            if minutes < stop[1]:
                stop = (f"max_iterations ({top} model versions)", minutes, cap)
        if s.wall_time_limit_s is not None:
            left = max(0.0, s.wall_time_limit_s / 60 - self.initial() - self.period(1))
            if left < stop[1]:
                stop = ("wall_time_limit_s", left, int(stop[2] * left / stop[1]))
        return stop

    def versions_by(self, minutes: float, labels: int) -> int:
        """Versions published within ``minutes`` of streaming (trainings back to back at most)."""
        v, t = 1, 0.0
        while v < self.versions(labels) and t + self.period(v + 1) <= minutes + 1e-9:
            v += 1
            t += self.period(v)
        return v

    def initial(self) -> float:
        return math.ceil(self.n0 / self.slots("label")) * self.label

    def final(self, labels: int, version: int) -> float:
        """The final model on every label: members in waves, calibration, its report."""
        waves = math.ceil(self.config.model.ensemble_size / self.slots("train"))
        member = train_minutes(
            self.config, self.built, self.costs, version=version, n_train=self.n0 + labels
        )
        return waves * member + self.costs.calibrate_minutes + self.costs.report_minutes

    def iterations(self) -> tuple[int, int, float]:
        """(iterations, labels, minutes) of this campaign in mode iterations, where every step
        waits for the one before: the sum of each iteration's steps, each in waves of workers."""
        c, costs = self.config, self.costs
        batch, m = c.selection.batch_size, c.model.ensemble_size
        its = min(c.stopping.max_iterations, math.ceil(c.stopping.label_budget / batch))
        labels = min(c.stopping.label_budget, its * batch)
        explore = md_minutes(c, costs, n_steps=self.built["explore"].n_steps)
        step = (
            math.ceil(c.exploration.explorers / self.slots("explore")) * explore
            + math.ceil(batch / self.slots("label")) * self.label
            + costs.calibrate_minutes
            + costs.select_minutes
            + costs.report_minutes
        )
        train = sum(
            math.ceil(m / self.slots("train"))
            * train_minutes(c, self.built, costs, version=it, n_train=self.n0 + (it - 1) * batch)
            for it in range(1, its + 1)
        )
        return its, labels, self.initial() + train + its * step + self.final(labels, its + 1)


def streaming_estimate(
    config: CampaignConfig, site: SiteConfig, built: dict[str, Any], costs: CostModel
) -> list[str]:
    """Time to the first stopping rule with the roles overlapping, and the same campaign's time
    in mode iterations, from the cost model; with the assumptions."""
    pace = StreamingPace(config, site, built, costs)
    budget = config.stopping.label_budget
    rule, minutes, labels = pace.stop()
    versions = pace.versions_by(minutes, labels)
    total = pace.initial() + pace.period(1) + minutes + pace.final(labels, versions + 1)
    its, it_labels, it_total = pace.iterations()
    s = config.streaming
    return [
        f"initial labels: {pace.n0} ({_minutes(pace.initial())}), then model v1 "
        f"({_minutes(pace.period(1))}): one after the other, before any explorer starts",
        f"to the label budget ({budget} labels) each resource needs, alone at full speed:",
        *(f"  {line}" for line in _resource_lines(pace, budget)),
        f"streaming: stops on {rule} after {_minutes(minutes)} of streaming, {labels} labels, "
        f"model v{versions}",
        f"streaming, whole campaign: {_minutes(total)} (initial labels, model v1, streaming, "
        "final model; plus the tasks in flight at the stop)",
        f"mode iterations, for comparison: {_minutes(it_total)} ({its} iterations of train -> "
        f"explore -> select -> label -> report one after another, {it_labels} labels)",
        f"assumed: segments of {s.segment_steps} MD steps x {config.exploration.replicas} "
        f"replicas at {costs.md_ms_per_step_per_replica:g} ms per step per replica, "
        f"{pace.frames} candidates each (one per replica every record_every "
        f"{built['explore'].record_every} steps, as if no replica stopped early); no task start-up "
        f"time (model loading, torch.compile: short segments cost more); {pace.label:g} min per "
        f"{config.labeler.name} label; training {costs.train_s_per_epoch_per_100_structures:g} s "
        "per epoch per 100 structures, epochs as in mode iterations; calibrate/select/report "
        f"{costs.calibrate_minutes:g}/{costs.select_minutes:g}/{costs.report_minutes:g} min; "
        "every block of each executor up (change with --costs FILE.yaml)",
    ]


def _resource_lines(pace: StreamingPace, labels: int) -> list[str]:
    config, site = pace.config, pace.site
    s, x = config.streaming, config.exploration
    bounds = pace.bounds(labels)
    label_exec, explore_exec = site.roles["label"], site.roles["explore"]
    trained = range(2, pace.versions(labels) + 1)
    train = sum(pace.period(v) for v in trained)
    lines = [
        f"label    {labels} x {pace.label:g} min, {min(s.max_labels_in_flight, pace.slots('label'))}"
        f" at once (max_labels_in_flight {s.max_labels_in_flight}, {pace.slots('label')} "
        f"worker(s) of {label_exec}): {_minutes(bounds['label'])}",
        f"explore  {pace.segments(labels)} segments ({s.select_pool_factor:g} candidates and "
        f"{explore_steps_per_label(config)} replica MD steps per label, {pace.frames} candidates "
        f"per segment) x {_minutes(pace.segment)}, "
        f"{min(x.explorers, pace.slots('explore'))} at once ({x.explorers} explorer(s), "
        f"{pace.slots('explore')} worker(s) of {explore_exec}): {_minutes(bounds['explore'])}",
        f"select   {pace.selections(labels)} selections of <= {config.selection.batch_size}, one "
        f"at a time: {_minutes(bounds['select'])}",
        f"train    {len(trained)} versions after v1 (one per {pace.every} labels), one "
        f"at a time: {_minutes(train)} (not a bound: slower training means fewer versions)",
    ]
    if "model chain" in bounds:
        lines.append(
            f"models   {math.ceil(labels / s.max_picks_per_model)} one after another, each "
            f"picking <= {s.max_picks_per_model} (max_picks_per_model) once the one before is "
            f"trained on its picks: {_minutes(bounds['model chain'])}"
        )
    for name, minutes in bounds.items():
        if name.startswith("executor "):
            label = name.removeprefix("executor ")
            roles = [r for r in ("label", "explore", "select", "train") if site.roles[r] == label]
            lines.append(
                f"{name} ({', '.join(roles)} share its {pace.slots(roles[0])} worker(s)): "
                f"{_minutes(minutes)}"
            )
    return lines


def _minutes(minutes: float) -> str:
    if minutes < 1:
        return f"{minutes * 60:.1f} s"
    return f"{minutes:.1f} min" if minutes < 90 else f"{minutes / 60:.1f} h"
