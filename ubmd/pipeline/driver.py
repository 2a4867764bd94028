"""The active-learning DAG on parsl, with resume.

Per iteration: ensemble members train in parallel -> uncertainty fit + calibration -> explorers in
parallel -> selection on the pooled candidates -> labels in parallel, each appended to the store
by this (driver) process as it arrives -> report. Every task writes one artefact atomically
(:mod:`ubmd.campaign.layout`); on a restart a phase whose artefacts exist is not run again, a label
already in the store is not recomputed, and a label result on disk but not yet in the store is
appended without recomputing it.
"""

from __future__ import annotations

import concurrent.futures
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ubmd.campaign import steps
from ubmd.campaign.config import CampaignConfig
from ubmd.campaign.layout import CampaignLayout, read_json, write_json_atomic
from ubmd.campaign.roles import RoleClock, plot_timeline
from ubmd.pipeline import watchdog
from ubmd.pipeline.apps import Apps, TaskTracker
from ubmd.pipeline.display import Display
from ubmd.pipeline.liveness import InterchangeWatch
from ubmd.pipeline.parsl_config import make_config
from ubmd.pipeline.sites import SiteConfig


@dataclass
class RunSummary:
    iterations_done: int = 0
    labels_stored: int = 0
    labels_failed: int = 0
    stop_reason: str = ""
    timings: dict[str, float] = field(default_factory=dict)  # phase -> wall seconds (driver view)
    # (iteration, wall start, wall end) of each iteration and (iteration, phase, start, end) of
    # every app body that ran: what the orchestration-overhead benchmark compares
    iteration_spans: list[tuple[int, float, float]] = field(default_factory=list)
    body_spans: list[tuple[int, str, float, float]] = field(default_factory=list)


class Driver:
    """Runs the DAG for one campaign; the only writer of the campaign's store."""

    def __init__(self, config: CampaignConfig, apps: Apps, store: Any, display: Display) -> None:
        self.config = config
        self.cfg = config.model_dump(mode="json")  # what tasks receive: plain data
        self.layout = CampaignLayout(config.campaign_dir)
        self.apps = apps
        self.store = store
        self.display = display
        self.tracker: TaskTracker = display.tracker
        self.summary = RunSummary()

    # -------------------------------------------------------------------- the loop
    def run(self) -> RunSummary:
        # each task's span by role, as a streaming campaign records them: the modes compare
        self.clock = RoleClock.load(self.layout.roles)
        self.clock.start_run()
        self._iteration = 0
        t_it = time.time()
        self.display.update(labels_before=steps.count_labels(self.store))
        steps.import_labelled(self.config, self.store)  # existing labels; duplicates are skipped
        self._label_phase(0)
        self.summary.iteration_spans.append((0, t_it, time.time()))
        it = 1
        while True:
            self._iteration = it
            t_it = time.time()
            reason = self._stop_reason(it)
            if reason:
                self.summary.stop_reason = reason
                break
            self.display.update(iteration=it)
            self._train_phase(it)
            self._explore_phase(it)
            n_selected = self._select_phase(it)
            if n_selected == 0 and self.config.stopping.stop_when_no_candidates:
                self.summary.stop_reason = f"iteration {it}: no new candidates"
                self._report_phase(it)
                self.summary.iterations_done = it
                break
            self._label_phase(it)
            self._report_phase(it)
            self.summary.iterations_done = it
            self.summary.iteration_spans.append((it, t_it, time.time()))
            self._save_roles(plot=False)
            it += 1
        self._final_phase()
        self._save_roles(plot=True)
        self.display.update(phase="finished", message=self.summary.stop_reason)
        return self.summary

    def _stop_reason(self, it: int) -> str:
        stopping = self.config.stopping
        if it > stopping.max_iterations:
            return f"reached max_iterations = {stopping.max_iterations}"
        n_al = steps.count_labels(self.store, min_iteration=1)
        if n_al >= stopping.label_budget:
            return f"label budget reached ({n_al} >= {stopping.label_budget})"
        previous = self.layout.report(it - 1)
        if stopping.target_force_rmse_eV_A is not None and previous.exists():
            rmse = read_json(previous).get("test", {}).get("force_rmse_eV_A")
            if rmse is not None and rmse <= stopping.target_force_rmse_eV_A:
                return f"held-out force RMSE {rmse:.4f} <= target {stopping.target_force_rmse_eV_A}"
        return ""

    def _save_roles(self, *, plot: bool) -> None:
        self.clock.add_phases(self.summary.body_spans)
        self.summary.body_spans.clear()
        self.clock.save(self.layout.roles)
        if plot:
            plot_timeline(self.clock, self.layout.reports / "timeline.png")

    # -------------------------------------------------------------------- phases
    def _timed(self, phase: str, t0: float) -> None:
        self.summary.timings[phase] = (
            self.summary.timings.get(phase, 0.0) + time.perf_counter() - t0
        )

    def _record(self, phase: str, result: Any) -> None:
        if isinstance(result, dict) and "_body_s" in result:
            t0, t1 = result["_body_s"]
            self.summary.body_spans.append((self._iteration, phase, t0, t1))

    def _wait(self, futures: list[Any], phase: str) -> list[Any]:
        results = []
        for fut in futures:
            while True:
                try:
                    results.append(fut.result(timeout=0.5))
                    self._record(phase, results[-1])
                    break
                except concurrent.futures.TimeoutError:
                    self.display.refresh()
                    self.apps.check_alive()
                except Exception as exc:
                    self.apps.task_failed(phase, exc)
        return results

    def _train_phase(self, it: int) -> None:
        t0 = time.perf_counter()
        self.display.update(phase="train")
        self._train_and_calibrate(it)
        self._timed("train", t0)

    def _train_and_calibrate(self, it: int | None) -> None:
        """Members (fine-tuned or from scratch) and their calibrated bundle of iteration ``it``
        (None: the final model, on every label, calibrated as the last iteration was)."""
        layout, size = self.layout, self.config.model.ensemble_size
        bundle = layout.bundle(it) if it is not None else layout.final_bundle
        if bundle.exists():
            return
        member = (lambda m: layout.member(it, m)) if it is not None else layout.final_member
        todo = [m for m in range(size) if not member(m).exists()]
        # nothing else runs in this phase: the members share the train executor's cores
        threads = self.apps.threads_alone("train_task", max(1, len(todo)))
        futures = []
        for m in todo:
            out = member(m)
            init = steps.warm_start_model(self.config, layout, it, m)
            futures.append(
                self.tracker.add(
                    "train",
                    self.apps.train_task(
                        self.cfg,
                        str(layout.store),
                        iteration=it,
                        member=m,
                        out=str(out),
                        init=None if init is None else str(init),
                        threads_override=threads,
                    ),
                )
            )
        self._wait(futures, "train")
        calibration_from = None
        if it is None:
            done = [i for i in layout.iterations_present() if layout.bundle(i).exists()]
            calibration_from = str(layout.bundle(done[-1])) if done else None
        fut = self.tracker.add(
            "calibrate",
            self.apps.bundle_task(
                self.cfg,
                str(layout.store),
                iteration=it,
                members=[str(member(m)) for m in range(size)],
                out=str(bundle),
                calibration_from=calibration_from,
            ),
        )
        self._wait([fut], "calibrate")

    def _final_phase(self) -> None:
        """Train and calibrate the model the campaign hands over, on every stored label."""
        t0 = time.perf_counter()
        self.display.update(phase="final model")
        self._train_and_calibrate(None)
        self._report(None)
        self._timed("final", t0)

    def _explore_phase(self, it: int) -> None:
        t0 = time.perf_counter()
        self.display.update(phase="explore")
        starts = self.layout.starts(it)
        if not starts.exists():
            steps.write_starts(self.config, self.store, it, starts)
        futures, ran = [], []
        for e in range(self.config.exploration.explorers):
            out = self.layout.explorer(it, e)
            if out.exists():
                continue
            ran.append(e)
            futures.append(
                self.tracker.add(
                    "explore",
                    self.apps.explore_task(
                        self.cfg,
                        bundle=str(self.layout.bundle(it)),
                        starts=str(starts),
                        iteration=it,
                        explorer=e,
                        out=str(out),
                    ),
                )
            )
        results = self._wait(futures, "explore")
        for e, result in zip(ran, results, strict=True):  # where the explorers' time went
            if isinstance(result, dict):
                stats = {k: v for k, v in result.items() if not k.startswith("_")}
                write_json_atomic(self.layout.explorer_stats(it, e), stats)
        if self.config.exploration.compile:
            eager = [r for r in results if isinstance(r, dict) and r.get("compiled") is False]
            if eager:  # compiling failed in a worker: the run goes on, slower; say so
                print(f"warning: iteration {it}: {len(eager)} explorer(s) ran eagerly because "
                      "torch.compile failed in the worker (see its log)", file=sys.stderr,
                      flush=True)  # fmt: skip
        self._timed("explore", t0)

    def _select_phase(self, it: int) -> int:
        t0 = time.perf_counter()
        self.display.update(phase="select")
        out = self.layout.selection(it)
        if not out.exists():
            cands = [
                str(self.layout.explorer(it, e)) for e in range(self.config.exploration.explorers)
            ]
            fut = self.tracker.add(
                "select",
                self.apps.select_task(
                    self.cfg,
                    bundle=str(self.layout.bundle(it)),
                    candidates=cands,
                    store_path=str(self.layout.store),
                    iteration=it,
                    out=str(out),
                ),
            )
            self._wait([fut], "select")
        self._timed("select", t0)
        return steps.count_frames(out)

    def _label_phase(self, it: int) -> None:
        t0 = time.perf_counter()
        self.display.update(phase="label" if it else "initial labels")
        selection = self.layout.selection(it)
        if it == 0 and not selection.exists():
            steps.write_initial_selection(self.config, selection)
        batch = steps.read_frames(selection)
        stored = steps.stored_hashes(self.store)
        futures: dict[Any, int] = {}
        for k, atoms in enumerate(batch):
            if steps.structure_key(atoms) in stored:
                continue  # labelled and stored in an earlier run
            result = self.layout.label(it, k)
            if result.exists():  # labelled, but the driver died before storing it
                self._store_label(result)
                continue
            fut = self.apps.label_task(
                self.cfg,
                selection=str(selection),
                iteration=it,
                index=k,
                out=str(result),
                workdir=str(self.layout.label_workdir(it, k)),
            )
            futures[self.tracker.add("label", fut)] = k
        pending = set(futures)
        while pending:
            done, pending = concurrent.futures.wait(
                pending, timeout=0.5, return_when=concurrent.futures.FIRST_COMPLETED
            )
            for fut in done:
                k = futures[fut]
                exc = fut.exception()
                if exc is None:
                    self._record("label", fut.result())
                    self._store_label(self.layout.label(it, k))
                else:  # the task itself died (after parsl's retries): record it, never drop it
                    self.apps.check_alive()  # unless its executor did: not the label's fault
                    steps.write_failed_label(
                        self.cfg,
                        selection=selection,
                        iteration=it,
                        index=k,
                        out=self.layout.label(it, k),
                        reason=f"task failed: {exc}",
                    )
                    self._store_label(self.layout.label(it, k))
            self.display.refresh()
            self.apps.check_alive()
        self._timed("label", t0)

    def _store_label(self, result: Path) -> None:
        ok = steps.append_label(self.store, result)
        if ok:
            self.summary.labels_stored += 1
        else:
            self.summary.labels_failed += 1
        self.display.update(
            labels_stored=self.summary.labels_stored, labels_failed=self.summary.labels_failed
        )

    def _report_phase(self, it: int) -> None:
        t0 = time.perf_counter()
        self.display.update(phase="report")
        self._report(it)
        self._timed("report", t0)

    def _report(self, it: int | None) -> None:
        """The report of iteration ``it``'s bundle (None: of the final model), unless written."""
        final = it is None
        out = self.layout.final_report if final else self.layout.report(it)
        if not out.exists():
            bundle = self.layout.final_bundle if final else self.layout.bundle(it)
            fut = self.tracker.add(
                "report",
                self.apps.report_task(
                    self.cfg,
                    bundle=str(bundle),
                    store_path=str(self.layout.store),
                    iteration=it,
                    out=str(out),
                ),
            )
            self._wait([fut], "report")
        self.display.update(last_report=read_json(out))


def run_campaign(config: CampaignConfig, site: SiteConfig, *, live: bool = True) -> RunSummary:
    """Validate, then run (or resume) the campaign on ``site``. Returns what happened."""
    import parsl

    from ubmd.campaign.validate import prepare_directory, validate_campaign
    from ubmd.store import StructureStore

    driver_class: type = Driver
    if config.mode == "streaming":  # no iterations: roles overlap (ubmd.pipeline.streaming)
        from ubmd.pipeline.streaming import StreamingDriver

        driver_class = StreamingDriver
    validate_campaign(config)  # every check that can fail before a task is submitted
    layout = prepare_directory(config)
    tracker = TaskTracker()
    # what parsl starts (interchange, worker pools) ends with this process, even on a SIGKILL;
    # watchdog.json says which processes those are while the run lasts
    guard = watchdog.start(layout.run_dir / "watchdog.log", state=layout.run_dir / "watchdog.json")
    dfk = parsl.load(make_config(site, layout.run_dir))
    try:
        apps = Apps(site, watch=InterchangeWatch.of(dfk.executors))
        with (
            StructureStore.open(layout.store, mode="a") as store,
            Display(tracker, enabled=live) as display,
        ):
            return driver_class(config, apps, store, display).run()
    finally:
        dfk.cleanup()
        parsl.clear()
        guard.stop()
