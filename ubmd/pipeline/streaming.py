"""The streaming campaign (``mode: streaming``) on parsl: explorers, selection, labels and
training overlap, and no role waits for a whole iteration.

One event loop (this process, the store's only writer) keeps every role fed:

- each explorer runs segment after segment (:func:`ubmd.campaign.streaming.segment_task`),
  each with the newest published model, continuing its replicas where the last one left them;
- a selection runs once enough fresh candidates and exploration (``explore_steps_per_label``)
  are pooled, conditioned on every labelled structure and every pick still being labelled;
- picks are labelled as soon as they are picked, at most ``max_labels_in_flight`` at once, and
  each label is stored as it arrives;
- once ``train_every_labels`` new ok labels are stored, model version v+1 is trained (warm
  started from v) on a snapshot of the store, calibrated and published (``stream/models``).

Then come the stopping rules (label budget, target error, wall time, ``max_iterations`` model
versions), the tasks still running are waited for, and the final model is made as in the
iterations mode. Requests are written before their task is submitted, so a restart after a kill
submits again exactly what was running (:mod:`ubmd.campaign.stream_state`).
"""

from __future__ import annotations

import concurrent.futures
import time
from dataclasses import asdict, dataclass
from typing import Any

from ubmd.campaign import steps
from ubmd.campaign.config import CampaignConfig
from ubmd.campaign.layout import read_json, write_json_atomic
from ubmd.campaign.roles import RoleClock, plot_timeline
from ubmd.campaign.stream_layout import StreamLayout, publish_model, write_snapshot
from ubmd.campaign.stream_rules import next_selection_pool, stop_reason
from ubmd.campaign.stream_state import label_record, scan
from ubmd.pipeline.apps import Apps
from ubmd.pipeline.display import Display
from ubmd.pipeline.driver import Driver, RunSummary

SAVE_ROLES_EVERY_S = 10.0  # how often the role clock is written while running


@dataclass
class _Task:
    role: str  # what the role clock counts it as
    kind: str  # how the loop handles its end
    data: dict[str, Any]


class StreamingDriver:
    """The event loop of one streaming campaign; the only writer of its store."""

    def __init__(self, config: CampaignConfig, apps: Apps, store: Any, display: Display) -> None:
        self.base = Driver(config, apps, store, display)  # initial labels, final model
        self.config, self.cfg, self.spec = config, self.base.cfg, config.streaming
        self.apps, self.store, self.display = apps, store, display
        self.layout = self.base.layout
        self.sl = StreamLayout(self.layout.root)
        self.running: dict[Any, _Task] = {}
        self.clock = RoleClock.load(self.sl.roles)
        self.draining = False
        # a selection found nothing new to label: wait for a new model (trained at once on
        # whatever new labels there are), or stop when there is nothing to train on
        self.starved = ""
        self.min_pool_version = 0  # after starving: only the new model's candidates are news
        self._saved_at = 0.0

    @property
    def summary(self) -> RunSummary:
        return self.base.summary

    # ------------------------------------------------------------------ the loop
    def run(self) -> RunSummary:
        self.clock.start_run()
        t0 = time.monotonic()
        self.display.update(labels_before=steps.count_labels(self.store))  # a resume
        steps.import_labelled(self.config, self.store)
        self.base._iteration = 0  # what the base driver files its task spans under
        self.base._label_phase(0)  # nothing can explore before a first model: a barrier
        self._clock_base_spans()
        if not self.sl.starts.exists():
            steps.write_starts(self.config, self.store, 1, self.sl.starts)
        self.state = scan(self.sl, self.store, explorers=self.config.exploration.explorers)
        for path in self.state.done_labels:  # labelled before a kill, never stored
            self._store(path)
        self.state.outstanding -= {self._key_of(p) for p in self.state.done_labels}
        self.display.update(phase="streaming", iteration=self.state.version)
        while not (reason := self._stop_reason(t0)):
            self._schedule()
            if not self.running:
                raise RuntimeError("streaming campaign: nothing to run and no stopping rule met")
            self._wait_some()
        self.summary.stop_reason = reason
        self.display.update(phase="draining", message=reason)
        self.draining = True
        while self.running:
            self._wait_some()
        self.base._final_phase()
        self._clock_base_spans()
        self.summary.iterations_done = self.state.version
        self._save_roles(plot=True)
        self.display.update(phase="finished", message=reason)
        return self.summary

    def _stop_reason(self, t0: float) -> str:
        rmse = None  # read only when a target asks for it: this runs every turn of the loop
        if self.config.stopping.target_force_rmse_eV_A is not None and self.state.version:
            report = self.layout.report(self.state.version)
            if report.exists():
                rmse = read_json(report).get("test", {}).get("force_rmse_eV_A")
        return stop_reason(
            self.config,
            self.state,
            starved=self.starved,
            picks_on_the_way=self._picks_on_the_way(),
            newest_force_rmse=rmse,
            elapsed_s=time.monotonic() - t0,
        )

    def _schedule(self) -> None:
        self._schedule_training()
        if self.state.version == 0:
            return  # explorers and selections need a model
        self._schedule_segments()
        self._schedule_selection()
        self._schedule_labels()

    def _wait_some(self) -> None:
        done, _ = concurrent.futures.wait(
            list(self.running), timeout=0.5, return_when=concurrent.futures.FIRST_COMPLETED
        )
        for fut in done:
            task = self.running.pop(fut)
            result = None
            if fut.exception() is None:
                result = fut.result()
                if isinstance(result, dict) and "_body_s" in result:
                    self.clock.add(task.role, task.kind, tuple(result["_body_s"]))
            elif task.kind != "label":  # a label's failure is stored; the others end the run
                self.apps.task_failed(task.kind, fut.exception())
            else:
                self.apps.check_alive()  # unless its executor failed: not the label's fault
            handler = getattr(self, f"_on_{task.kind}")
            if task.kind == "segment":
                handler(task.data, None, result)
            else:
                handler(task.data, fut.exception())
        self.display.refresh()
        self.apps.check_alive()
        if time.monotonic() - self._saved_at > SAVE_ROLES_EVERY_S:
            self._save_roles(plot=False)

    def _clock_base_spans(self) -> None:
        """Move the spans of what the base driver ran (initial labels, final model) to the clock."""
        self.clock.add_phases(self.summary.body_spans)
        self.summary.body_spans.clear()

    def _submit(self, role: str, kind: str, future: Any, **data: Any) -> None:
        self.running[self.base.tracker.add(kind, future)] = _Task(role, kind, data)

    def _save_roles(self, *, plot: bool) -> None:
        self._saved_at = time.monotonic()
        self.clock.save(self.sl.roles)
        if plot:
            plot_timeline(self.clock, self.layout.reports / "timeline.png")

    # ------------------------------------------------------------------ training
    def _schedule_training(self) -> None:
        state = self.state
        if state.training is not None:
            if not any(t.kind in ("member", "bundle") for t in self.running.values()):
                self._submit_members(state.training)  # resumed: its tasks are not running
            return
        if self.draining or state.version >= self.config.stopping.max_iterations:
            return
        wanted = 1 if self._waiting_for_model() else self.spec.train_every_labels
        if state.version and state.n_ok - state.ok_in_snapshot < wanted:
            return
        v = state.version + 1
        write_snapshot(self.store, self.sl.snapshot(v))
        state.training, state.ok_in_snapshot = v, state.n_ok
        self._submit_members(v)

    def _waiting_for_model(self) -> bool:
        """Selections wait for a new model: the last found nothing new, or the newest model
        picked its ``max_picks_per_model`` and every one of them is in."""
        spent = self.state.picks_left(self.spec.max_picks_per_model) == 0
        return bool(self.starved) or (spent and not self._picks_on_the_way())

    def _selecting(self) -> bool:
        return any(t.kind == "select" for t in self.running.values())

    def _picks_on_the_way(self) -> bool:
        """A selection runs or waits to (its picks not known yet), or picks are not stored."""
        state = self.state
        return bool(state.outstanding) or state.pending_selection is not None or self._selecting()

    def _submit_members(self, v: int) -> None:
        if self.draining:
            return
        for m in range(self.config.model.ensemble_size):
            out = self.layout.member(v, m)
            if out.exists():
                continue
            init = steps.warm_start_model(self.config, self.layout, v, m)
            fut = self.apps.train_task(
                self.cfg,
                str(self.sl.snapshot(v)),
                iteration=v,
                member=m,
                out=str(out),
                init=None if init is None else str(init),
            )
            self._submit("train", "member", fut, version=v)
        if not any(t.kind == "member" for t in self.running.values()):
            self._submit_bundle(v)

    def _on_member(self, data: dict[str, Any], exc: Any) -> None:
        if not any(t.kind == "member" for t in self.running.values()):
            self._submit_bundle(data["version"])

    def _submit_bundle(self, v: int) -> None:
        # also while draining: its members are trained, calibrating and publishing is cheap
        if self.layout.bundle(v).exists():
            self._on_bundle({"version": v}, None)
            return
        size = self.config.model.ensemble_size
        fut = self.apps.bundle_task(
            self.cfg,
            str(self.sl.snapshot(v)),
            iteration=v,
            members=[str(self.layout.member(v, m)) for m in range(size)],
            out=str(self.layout.bundle(v)),
        )
        self._submit("train", "bundle", fut, version=v)

    def _on_bundle(self, data: dict[str, Any], exc: Any) -> None:
        v = data["version"]
        publish_model(self.sl, v, self.layout.bundle(v))
        self.state.version, self.state.training = v, None
        if self.starved:  # what older models found has nothing new in it
            self.starved, self.min_pool_version = "", v
        self.display.update(iteration=v, message=f"model v{v} published")
        evaluation = self.config.evaluation
        wanted = self.spec.reports and (evaluation.test_set or evaluation.test_sets)
        if wanted and not self.layout.report(v).exists():
            fut = self.apps.report_task(
                self.cfg,
                bundle=str(self.sl.model(v)),
                store_path=str(self.sl.snapshot(v)),
                iteration=v,
                out=str(self.layout.report(v)),
            )
            self._submit("report", "report", fut, version=v)

    def _on_report(self, data: dict[str, Any], exc: Any) -> None:
        self.display.update(last_report=read_json(self.layout.report(data["version"])))

    # ------------------------------------------------------------------ exploring
    def _schedule_segments(self) -> None:
        busy = {t.data["explorer"] for t in self.running.values() if t.kind == "segment"}
        for e in range(self.config.exploration.explorers):
            if e in busy or self.draining:
                continue
            s = self.state.pending_segments.pop(e, None)
            if s is None:  # a new segment, with the newest model
                s = self.state.next_segment[e]
                self.state.next_segment[e] = s + 1
                previous = self.sl.continuation(e, s - 1) if s else None
                request = {"version": self.state.version, "previous": previous and str(previous)}
                write_json_atomic(self.sl.segment_request(e, s), request)
            request = read_json(self.sl.segment_request(e, s))
            fut = self.apps.segment_task(
                self.cfg,
                bundle=str(self.sl.model(request["version"])),
                starts=str(self.sl.starts),
                previous=request["previous"],
                explorer=e,
                segment=s,
                out=str(self.sl.segment(e, s)),
                next_out=str(self.sl.continuation(e, s)),
            )
            self._submit("explore", "segment", fut, explorer=e, segment=s, **request)

    def _on_segment(self, data: dict[str, Any], exc: Any, result: Any) -> None:
        path = str(self.sl.segment(data["explorer"], data["segment"]))
        self.state.pool.append((path, data["version"], int(result["n_frames"])))

    # ------------------------------------------------------------------ selecting
    def _schedule_selection(self) -> None:
        state = self.state
        if self.draining or state.label_queue or self.starved:
            return
        if self._selecting():
            return
        p = state.pending_selection
        if p is None:
            p = self._new_selection()
            if p is None:
                return
        state.pending_selection = None
        request = read_json(self.sl.selection_request(p))
        fut = self.apps.select_stream_task(
            self.cfg,
            bundle=str(self.sl.model(request["version"])),
            segments=request["segments"],
            versions=request["versions"],
            condition=str(self.sl.condition(p)),
            batch_size=request["batch_size"],
            pick=p,
            out=str(self.sl.selection(p)),
        )
        self._submit("select", "select", fut, pick=p)

    def _new_selection(self) -> int | None:
        """Write the request of a new selection when its time has come; its number, or None."""
        from ubmd.campaign.frames import write_frames
        from ubmd.campaign.streaming import condition_frames

        state = self.state
        pool = next_selection_pool(self.config, state, min_pool_version=self.min_pool_version)
        if pool is None:
            return None
        p = state.n_selections
        state.n_selections += 1
        cond = condition_frames(self.store, state.in_flight_selections(self.sl))
        write_frames(self.sl.condition(p), cond)
        write_json_atomic(self.sl.selection_request(p), {"version": state.version, **asdict(pool)})
        state.count_picks(state.version, pool.batch_size)
        state.pool = []
        return p

    def _on_select(self, data: dict[str, Any], exc: Any) -> None:
        from ubmd.campaign.frames import read_frames

        p = data["pick"]
        self.state.picks[p] = read_frames(self.sl.selection(p))
        if not self.state.picks[p]:
            # e.g. every explorer stopped on its start structure, which is labelled already:
            # only a new model makes new candidates (the iterations mode's next iteration)
            self.starved = f"selection {p}: no new candidates"
        for k in range(len(self.state.picks[p])):
            self.state.outstanding.add((p, k))
            self.state.label_queue.append((p, k))

    # ------------------------------------------------------------------ labelling
    def _schedule_labels(self) -> None:
        state = self.state
        running = sum(t.kind == "label" for t in self.running.values())
        while state.label_queue and running < self.spec.max_labels_in_flight and not self.draining:
            p, k = state.label_queue.popleft()
            version = int(state.picks[p][k].info["iteration"])  # the explorer's model
            fut = self.apps.label_task(
                self.cfg,
                selection=str(self.sl.selection(p)),
                iteration=version,  # the store's iteration column: the explorer's model version
                index=k,
                out=str(self.sl.label(p, k)),
                workdir=str(self.sl.label_workdir(p, k)),
            )
            self._submit("label", "label", fut, pick=p, index=k, version=version)
            running += 1

    def _on_label(self, data: dict[str, Any], exc: Any) -> None:
        p, k = data["pick"], data["index"]
        out = self.sl.label(p, k)
        if exc is not None:  # the task itself died (after parsl's retries): record it
            steps.write_failed_label(
                self.cfg,
                selection=self.sl.selection(p),
                iteration=data["version"],
                index=k,
                out=out,
                reason=f"task failed: {exc}",
            )
        self._store(out)
        self.state.outstanding.discard((p, k))

    def _store(self, path: Any) -> None:
        before = self.summary.labels_stored
        self.base._store_label(path)
        if self.summary.labels_stored > before:
            version = int(label_record(path)["iteration"])
            self.state.n_ok += version >= 0
            self.state.n_ok_al += version >= 1

    def _key_of(self, path: Any) -> tuple[int, int]:
        return int(path.parent.name[1:]), int(path.stem)
